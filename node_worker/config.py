"""Reading the host configuration file (YAML or TOML, chosen by the file's suffix)."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from models.host import HostConfig


class ConfigError(Exception):
    """The host configuration cannot be used; the message names the file and every bad field."""


def load_host_config(path: str | Path) -> HostConfig:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read the host configuration: {exc}") from exc
    try:
        data: Any = tomllib.loads(text) if path.suffix == ".toml" else yaml.safe_load(text)
    except (tomllib.TOMLDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: not valid {'TOML' if path.suffix == '.toml' else 'YAML'}: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the host configuration must be a mapping")
    try:
        return HostConfig.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '(file)'}: {err['msg']}" for err in exc.errors()
        )
        raise ConfigError(f"{path}: invalid host configuration: {problems}") from exc


def write_host_config(config: HostConfig, path: str | Path) -> None:
    """Write ``config`` as YAML (used by ``host sim``); the file reads back to an equal config."""
    text = yaml.safe_dump(config.model_dump(mode="json", exclude_defaults=False), sort_keys=False)
    Path(path).write_text(text, encoding="utf-8")
