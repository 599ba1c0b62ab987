"""The GRUB environment block, edited with the real ``grub-editenv`` (``grub2-editenv`` on some distributions).

``next_entry`` boots an entry once (our grub.cfg clears it as it boots); ``saved_entry`` is the default.

Every change is made to a copy that then replaces the block in one ``rename``: ``grub-editenv`` itself truncates
the file and writes it again, so a power cut (or a reader) in between would find no valid block, and GRUB would
boot its first entry whatever ``saved_entry`` said.
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

    def _run(self, *args: str, path: Path | None = None) -> str:
        cmd = [find_editenv(self._configured), str(path or self.path), *args]
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
        self._edit("set", *(f"{k}={v}" for k, v in values.items()))

    def unset(self, *names: str) -> None:
        self._edit("unset", *names)

    def create(self) -> None:
        self._edit("create", fresh=True)

    def _edit(self, *args: str, fresh: bool = False) -> None:
        """Run ``grub-editenv`` on a copy, get the copy to the disk, then put it in place atomically (see the
        module docstring); the directory is synced too, so the rename itself survives a power cut."""
        tmp = self.path.with_name(f".{self.path.name}.new")
        tmp.unlink(missing_ok=True)
        try:
            if not fresh and self.path.exists():  # grub-editenv starts a missing block afresh too
                shutil.copy2(self.path, tmp)
            self._run(*args, path=tmp)
            _fsync(tmp)
            os.replace(tmp, self.path)
        except OSError as exc:
            raise HostError(HostErrorType.HOST_MISCONFIGURED, f"cannot update {self.path}: {exc}") from exc
        finally:
            tmp.unlink(missing_ok=True)
        _fsync(self.path.parent)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
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
