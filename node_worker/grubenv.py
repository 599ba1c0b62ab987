"""The GRUB environment block, edited with the real ``grub-editenv`` (``grub2-editenv`` on some distributions).

``next_entry`` boots an entry once (our grub.cfg clears it as it boots); ``saved_entry`` is the default.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from models.host import SLOT_NAMES, HostConfig, HostErrorType, SlotName
from node_worker.errors import HostError

_PROGRAMS = ("grub-editenv", "grub2-editenv")


def find_editenv(configured: str = "") -> str:
    if configured:
        found = shutil.which(configured)
        if found is None:
            raise HostError(HostErrorType.HOST_MISCONFIGURED, f"grub_editenv: {configured!r} not found")
        return found
    for name in _PROGRAMS:
        found = shutil.which(name)
        if found is not None:
            return found
    raise HostError(HostErrorType.HOST_MISCONFIGURED, "neither grub-editenv nor grub2-editenv is installed")


class GrubEnv:
    def __init__(self, path: str | Path, program: str = "") -> None:
        self.path = Path(path)
        self._configured = program

    def _run(self, *args: str) -> str:
        cmd = [find_editenv(self._configured), str(self.path), *args]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=False)
        except (OSError, subprocess.SubprocessError) as exc:
            raise HostError(HostErrorType.HOST_MISCONFIGURED, f"{' '.join(cmd)}: {exc}") from exc
        if proc.returncode != 0:
            raise HostError(
                HostErrorType.HOST_MISCONFIGURED,
                f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr.strip() or proc.stdout.strip()}",
            )
        return proc.stdout

    def read(self) -> dict[str, str]:
        if not self.path.is_file():
            raise HostError(HostErrorType.HOST_MISCONFIGURED, f"the GRUB environment {self.path} does not exist")
        env = {}
        for line in self._run("list").splitlines():
            key, sep, value = line.partition("=")
            if sep:
                env[key] = value
        return env

    def check_writable(self) -> None:
        """Readable as a GRUB environment block and writable by us (without changing it)."""
        self.read()
        if not os.access(self.path, os.W_OK):
            raise HostError(HostErrorType.HOST_MISCONFIGURED, f"the GRUB environment {self.path} is not writable")

    def set(self, **values: str) -> None:
        self._run("set", *(f"{k}={v}" for k, v in values.items()))
        self._sync()

    def unset(self, *names: str) -> None:
        self._run("unset", *names)
        self._sync()

    def create(self) -> None:
        self._run("create")
        self._sync()

    def _sync(self) -> None:
        """The firmware reads this file after a power cut: get it to the disk now."""
        fd = os.open(self.path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def entry_slot(config: HostConfig, entry: str) -> SlotName | None:
    """The slot whose GRUB menu entry is ``entry`` (None: no such entry)."""
    for name in SLOT_NAMES:
        if config.entry(name) == entry:
            return name
    return None


def default_slot(config: HostConfig, env: dict[str, str]) -> SlotName:
    """The slot a normal boot takes: ``saved_entry``, or the first menu entry (A) when it names none, as GRUB does."""
    return entry_slot(config, env.get("saved_entry", "")) or "A"


def next_boot(config: HostConfig, env: dict[str, str]) -> tuple[SlotName, bool]:
    """The slot the next boot takes, as deploy/node/grub.cfg decides: ``next_entry`` once, else the default.

    Returns (slot, once): ``once`` when it came from next_entry (which the boot clears).
    """
    if env.get("next_entry"):
        # An unknown entry name makes GRUB take its first entry, like an unknown saved_entry.
        return entry_slot(config, env["next_entry"]) or "A", True
    return default_slot(config, env), False
