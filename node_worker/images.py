"""Raw root filesystem images of a KubeOS version, for tests, the simulated hosts and the demo's image server.

A disk upgrade image (the seed's ``update.img``) is a raw ext4 root filesystem: what gets written into a slot
byte for byte. These images hold only ``/etc/os-release`` (and any extra files asked for), enough for the slot
logic and the kubelet stand-in, which read nothing else.
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
from collections.abc import Mapping
from pathlib import Path

from node_worker.files import sha256_file

DEFAULT_IMAGE_SIZE = 64 * 1024 * 1024
_VERSION_WORD = re.compile(r"^\d[\w.+~-]*$")


class ImageBuildError(Exception):
    pass


def os_release_text(pretty_name: str) -> str:
    """An os-release for ``KubeOS 1.0.1``: NAME is the first word, VERSION_ID the first word that is a version."""
    words = pretty_name.split()
    if not words:
        raise ImageBuildError("the version must not be empty, e.g. 'KubeOS 1.0.1'")
    version = next((w for w in words[1:] if _VERSION_WORD.match(w)), "")
    fields = {"NAME": words[0], "VERSION": " ".join(words[1:]), "ID": words[0].lower(), "VERSION_ID": version}
    fields["PRETTY_NAME"] = pretty_name
    return "".join(f'{key}="{value}"\n' for key, value in fields.items())


def make_rootfs(
    target: Path,
    size: int,
    pretty_name: str | None,
    *,
    offset: int = 0,
    label: str = "ROOT",
    extra_files: Mapping[str, bytes] | None = None,
) -> None:
    """Build an ext4 filesystem of ``size`` bytes at ``offset`` in ``target`` (created if missing; other bytes
    of an existing file are left alone). ``pretty_name`` None makes an empty filesystem (no os-release)."""
    if size < 1024 * 1024 or size % 4096:
        raise ImageBuildError(f"image size must be a multiple of 4096 bytes and at least 1 MiB, got {size}")
    if not target.exists():
        with target.open("wb") as f:
            f.truncate(offset + size)
    with tempfile.TemporaryDirectory(prefix="kubeos-rootfs-") as tree:
        root = Path(tree)
        files = dict(extra_files or {})
        if pretty_name is not None:
            files["etc/os-release"] = os_release_text(pretty_name).encode()
        for name, data in files.items():
            path = root / name.lstrip("/")
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        options = "nodiscard" + (f",offset={offset}" if offset else "")
        cmd = ["mkfs.ext4", "-q", "-F", "-L", label, "-E", options, "-d", tree, str(target), f"{size // 1024}k"]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise ImageBuildError(f"{' '.join(cmd)} failed: {proc.stderr.strip() or proc.stdout.strip()}")


def build_os_image(out: Path, pretty_name: str, size: int = DEFAULT_IMAGE_SIZE) -> str:
    """Write a raw root filesystem image holding ``pretty_name`` to ``out``; returns its sha256."""
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.unlink(missing_ok=True)
    try:
        make_rootfs(tmp, size, pretty_name)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return sha256_file(out)
