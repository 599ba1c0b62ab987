"""Reading resources from YAML files, with errors a user can act on."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml


class DocumentError(Exception):
    """A file that cannot be read or is not YAML; the message names the file and, where known, the line."""


@dataclass(frozen=True)
class Document:
    path: str
    index: int  # 1-based position of the document in its file
    body: Any


class _KubeLoader(yaml.SafeLoader):
    """YAML as ``kubectl`` reads it (go-yaml v2): YAML 1.1 booleans, but no base-60 numbers and no timestamps.

    With PyYAML's defaults an unquoted ``starttime: 22:00:00`` would be the integer 79200 and
    ``2024-01-01 10:00:00`` a datetime, so a window the cluster accepts would be refused here.
    """


def _int_unless_sexagesimal(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> Any:
    text = loader.construct_scalar(node)
    return text if ":" in text else loader.construct_yaml_int(node)


def _float_unless_sexagesimal(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> Any:
    text = loader.construct_scalar(node)
    return text if ":" in text else loader.construct_yaml_float(node)


def _timestamp_as_text(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> Any:
    return loader.construct_scalar(node)


_KubeLoader.add_constructor("tag:yaml.org,2002:int", _int_unless_sexagesimal)
_KubeLoader.add_constructor("tag:yaml.org,2002:float", _float_unless_sexagesimal)
_KubeLoader.add_constructor("tag:yaml.org,2002:timestamp", _timestamp_as_text)


def parse_documents(text: str, name: str) -> list[Document]:
    """All non-empty YAML documents in ``text``; ``name`` labels them and the errors."""
    try:
        bodies = list(yaml.load_all(text, Loader=_KubeLoader))  # a SafeLoader: no arbitrary objects
    except yaml.YAMLError as exc:
        where = ""
        mark = getattr(exc, "problem_mark", None)
        if mark is not None:
            where = f" (line {mark.line + 1}, column {mark.column + 1})"
        problem = getattr(exc, "problem", None) or str(exc)
        raise DocumentError(f"{name}: not valid YAML{where}: {problem}") from exc
    except RecursionError as exc:  # PyYAML composes nested collections recursively
        raise DocumentError(f"{name}: not usable YAML: collections are nested too deeply") from exc
    except ValueError as exc:  # a scalar PyYAML resolved but Python refuses, e.g. an integer of 5000 digits
        raise DocumentError(f"{name}: not usable YAML: {str(exc).split(';')[0]}") from exc
    return [Document(name, i, body) for i, body in enumerate(bodies, start=1) if body is not None]


def load_documents(path: str | Path) -> list[Document]:
    """All non-empty YAML documents in a file (``-`` reads standard input)."""
    import sys

    name = str(path)
    try:
        text = sys.stdin.read() if name == "-" else Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DocumentError(f"{name}: cannot read: {exc}") from exc
    return parse_documents(text, name)
