"""Which slot this host booted, and which boot this is.

The booted slot comes from ``root=`` on the kernel command line, matched against each slot's identities
(PARTUUID, PARTLABEL, filesystem LABEL/UUID, or the device path), never from a digit in a device name: that
guess breaks on ``nvme0n1p3`` or ``sda12``.
"""

from __future__ import annotations

import os
import shlex
import stat
import subprocess
from pathlib import Path

from models.host import SLOT_NAMES, HostConfig, HostErrorType, SlotConfig, SlotName
from node_worker.errors import HostError

_ROOT_KINDS = {"PARTUUID": "partuuid", "PARTLABEL": "partlabel", "LABEL": "fslabel", "UUID": "fsuuid"}
# blkid's low-level probe names for the same identities.
_BLKID_KEYS = {"PART_ENTRY_UUID": "partuuid", "PART_ENTRY_NAME": "partlabel", "LABEL": "fslabel", "UUID": "fsuuid"}


def kernel_root(cmdline: str) -> str:
    """The value of the last ``root=`` (the kernel uses the last one), or ``""``."""
    root = ""
    for word in shlex.split(cmdline):
        if word.startswith("root="):
            root = word[len("root=") :]
    return root


def _probe_identities(device: str) -> dict[str, str]:
    """Identities of a block device as blkid sees them (only used for identities the config leaves out)."""
    try:
        if not stat.S_ISBLK(os.stat(device).st_mode):
            return {}
        out = subprocess.run(
            ["blkid", "-p", "-o", "export", device], capture_output=True, text=True, timeout=30, check=False
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    found = {}
    for line in out.splitlines():
        key, _, value = line.partition("=")
        if key in _BLKID_KEYS:
            found[_BLKID_KEYS[key]] = value
    return found


def _matches(root: str, sc: SlotConfig) -> bool:
    kind, sep, value = root.partition("=")
    if sep and kind in _ROOT_KINDS:
        attr = _ROOT_KINDS[kind]
        known = getattr(sc, attr) or _probe_identities(sc.device).get(attr, "")
        if not known:
            return False
        # UUIDs are case-insensitive; labels are not.
        return known.lower() == value.lower() if "UUID" in kind else known == value
    if root.startswith("/"):
        # /dev/sda2, /dev/disk/by-partuuid/...: the same device node after following symlinks.
        return sc.offset == 0 and os.path.realpath(root) == os.path.realpath(sc.device)
    return False


def booted_slot(config: HostConfig) -> SlotName:
    path = Path(config.kernel_cmdline)
    try:
        cmdline = path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise HostError(HostErrorType.HOST_MISCONFIGURED, f"cannot read the kernel command line {path}: {exc}") from exc
    root = kernel_root(cmdline)
    if not root:
        raise HostError(HostErrorType.HOST_MISCONFIGURED, f"no root= on the kernel command line ({path})")
    hits = [name for name in SLOT_NAMES if _matches(root, config.slots[name])]
    if len(hits) != 1:
        what = "neither slot" if not hits else "both slots"
        raise HostError(
            HostErrorType.HOST_MISCONFIGURED,
            f"cannot tell the booted slot: root={root} matches {what}; set partuuid, partlabel, fslabel or fsuuid "
            "of slots A and B in the host configuration",
        )
    return hits[0]


def boot_id(config: HostConfig) -> str:
    """The kernel's random id of this boot: it changes on every reboot."""
    path = Path(config.boot_id_file)
    try:
        value = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise HostError(HostErrorType.HOST_MISCONFIGURED, f"cannot read the boot id {path}: {exc}") from exc
    if not value:
        raise HostError(HostErrorType.HOST_MISCONFIGURED, f"the boot id file {path} is empty")
    return value
