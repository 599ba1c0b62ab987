"""Reading a slot's filesystem without mounting it (``debugfs``): its ``os-release`` (or from the mounted root)
and its identity (label, UUID).

kubelet reports ``PRETTY_NAME`` as the node's osImage, so that is the version a slot "holds".
"""

from __future__ import annotations

import posixpath
import re
import shlex
import subprocess
from dataclasses import dataclass
from pathlib import Path

from models.host import OsRelease
from node_worker.slots import Slot

# Where os-release lives, in the order of the os-release(5) specification.
OS_RELEASE_PATHS = ("/etc/os-release", "/usr/lib/os-release")
_MAX_BYTES = 64 * 1024
_MAX_LINKS = 8
_LINK_RE = re.compile(r'^Fast link dest: "(?P<dest>.*)"$', re.MULTILINE)
_TYPE_RE = re.compile(r"Type: (?P<type>\w+)")
_SUPERBLOCK_RE = re.compile(r"^Filesystem (?P<field>volume name|UUID):[ \t]*(?P<value>.*)$", re.MULTILINE)


class OsReleaseUnreadable(Exception):
    """The slot holds no filesystem we can read, or no os-release in it."""


def parse_os_release(text: str) -> OsRelease:
    values: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, raw = line.partition("=")
        try:
            words = shlex.split(raw)
        except ValueError:
            words = [raw.strip("\"'")]
        values[key.strip()] = " ".join(words)
    return OsRelease(
        name=values.get("NAME", ""), version_id=values.get("VERSION_ID", ""), pretty_name=values.get("PRETTY_NAME", "")
    )


def _debugfs(spec: str, request: str) -> tuple[str, str]:
    """Run one read-only debugfs request; (stdout, error lines). debugfs exits 0 even when the request fails."""
    try:
        proc = subprocess.run(
            ["debugfs", "-R", request, spec], capture_output=True, text=True, errors="replace", timeout=60, check=False
        )
    except FileNotFoundError as exc:
        raise OsReleaseUnreadable("debugfs is not installed (package e2fsprogs)") from exc
    except subprocess.TimeoutExpired as exc:
        raise OsReleaseUnreadable(f"debugfs {request!r} timed out") from exc
    errors = [ln for ln in proc.stderr.splitlines() if ln.strip() and not ln.startswith("debugfs ")]
    if proc.returncode != 0 and not errors:
        errors = [f"debugfs exited with {proc.returncode}"]
    return proc.stdout, "; ".join(errors)


def _read_file_in_fs(spec: str, path: str) -> str:
    """A file's text inside the filesystem at ``spec``, following symlinks (``/etc/os-release`` often is one)."""
    for _ in range(_MAX_LINKS):
        info, err = _debugfs(spec, f"stat {path}")
        if err:
            raise OsReleaseUnreadable(err.replace("ext2_lookup", "lookup"))
        kind = _TYPE_RE.search(info)
        if kind and kind.group("type") == "symlink":
            link = _LINK_RE.search(info)
            if link is None:  # a long symlink keeps its target in a block; read it like a file
                target, err = _debugfs(spec, f"cat {path}")
                if err:
                    raise OsReleaseUnreadable(err)
            else:
                target = link.group("dest")
            path = posixpath.normpath(posixpath.join(posixpath.dirname(path), target))
            continue
        if kind is None or kind.group("type") != "regular":
            raise OsReleaseUnreadable(f"{path} is not a regular file")
        text, err = _debugfs(spec, f"cat {path}")
        if err:
            raise OsReleaseUnreadable(err)
        return text[:_MAX_BYTES]
    raise OsReleaseUnreadable(f"too many symbolic links at {path}")


def slot_has_file(slot: Slot, path: str) -> bool:
    """Whether the filesystem in ``slot`` holds ``path`` (False when there is no such file or no filesystem)."""
    _info, err = _debugfs(slot.debugfs_spec, f"stat {path}")
    return not err


def read_slot_os_release(slot: Slot) -> OsRelease:
    """The os-release inside ``slot``, read with debugfs; raises :class:`OsReleaseUnreadable`."""
    problems = []
    for path in OS_RELEASE_PATHS:
        try:
            release = parse_os_release(_read_file_in_fs(slot.debugfs_spec, path))
        except OsReleaseUnreadable as exc:
            problems.append(str(exc))
            if "superblock" in str(exc).lower() or "super-block" in str(exc).lower():
                break  # not a filesystem at all: the second path cannot help
            continue
        if not release.pretty_name:
            problems.append(f"{path} has no PRETTY_NAME")
            continue
        return release
    raise OsReleaseUnreadable(f"{slot.describe()} holds no readable os-release: {'; '.join(problems)}")


def read_root_os_release(root: str | Path) -> OsRelease:
    """The os-release of a mounted root filesystem."""
    problems = []
    for path in OS_RELEASE_PATHS:
        try:
            release = parse_os_release((Path(root) / path.lstrip("/")).read_text(encoding="utf-8")[:_MAX_BYTES])
        except OSError as exc:
            problems.append(str(exc))
            continue
        if release.pretty_name:
            return release
        problems.append(f"{path} has no PRETTY_NAME")
    raise OsReleaseUnreadable(f"{root} holds no readable os-release: {'; '.join(problems)}")


@dataclass(frozen=True)
class FsIdentity:
    """What ``root=LABEL=…`` / ``root=UUID=…`` and blkid see of a filesystem."""

    label: str
    uuid: str


def read_slot_fs_identity(slot: Slot) -> FsIdentity | None:
    """The label and UUID of the ext filesystem in ``slot``; None when it holds none (empty or invalidated)."""
    try:
        out, err = _debugfs(slot.debugfs_spec, "stats -h")
    except OsReleaseUnreadable:
        return None
    fields = {m["field"]: m["value"].strip() for m in _SUPERBLOCK_RE.finditer(out)}
    if err or not fields.get("UUID"):
        return None
    label = fields.get("volume name", "")
    return FsIdentity(label="" if label == "<none>" else label, uuid=fields["UUID"].lower())
