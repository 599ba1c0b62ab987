"""The two root slots as byte regions: a block device, or a partition inside a disk image file.

Everything that touches a slot's bytes goes through :class:`Slot`, so offsets and bounds are checked in one place.
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from models.host import HostConfig, HostErrorType, SlotConfig, SlotName
from node_worker.errors import HostError

CHUNK = 1024 * 1024
# Wiping this much of the start removes the filesystem signatures GRUB, blkid and the kernel look for
# (XFS at 0, ext2/3/4 superblock at 1024, btrfs at 64 KiB).
_WIPE_BYTES = 128 * 1024

# Progress of a byte-level operation: (bytes done, total bytes or None when unknown).
ByteProgress = Callable[[int, int | None], None]


@dataclass(frozen=True)
class Slot:
    """One slot: ``size`` bytes of ``path`` starting at ``offset``."""

    name: SlotName
    path: Path
    offset: int
    size: int
    config: SlotConfig

    @property
    def is_block_device(self) -> bool:
        try:
            return stat.S_ISBLK(os.stat(self.path).st_mode)
        except OSError:
            return False

    @property
    def debugfs_spec(self) -> str:
        """How e2fsprogs names this region (``disk.img?offset=N`` reads a partition inside an image file)."""
        return f"{self.path}?offset={self.offset}" if self.offset else str(self.path)

    def describe(self) -> str:
        where = f"{self.path}" + (f" at offset {self.offset}" if self.offset else "")
        return f"slot {self.name} ({where}, {self.size} bytes)"

    def read_chunks(self, length: int, start: int = 0) -> Iterator[bytes]:
        """The slot's bytes ``[start, start+length)`` in chunks of at most 1 MiB."""
        if start < 0 or length < 0 or start + length > self.size:
            raise ValueError(f"{self.describe()}: range {start}+{length} is outside the slot")
        fd = os.open(self.path, os.O_RDONLY)
        try:
            pos = start
            end = start + length
            while pos < end:
                data = os.pread(fd, min(CHUNK, end - pos), self.offset + pos)
                if not data:
                    raise HostError(HostErrorType.HOST_MISCONFIGURED, f"{self.describe()}: short read at {pos}")
                pos += len(data)
                yield data
        finally:
            os.close(fd)

    def hash_region(
        self, length: int, progress: ByteProgress | None = None, hasher: hashlib._Hash | None = None
    ) -> str:
        """sha256 of the first ``length`` bytes (the hasher, when given, is updated and left usable)."""
        h = hasher if hasher is not None else hashlib.sha256()
        done = 0
        for data in self.read_chunks(length):
            h.update(data)
            done += len(data)
            if progress is not None:
                progress(done, length)
        return h.hexdigest()

    def invalidate(self) -> None:
        """Make the slot unbootable: wipe its filesystem signatures, so neither GRUB nor a mount finds a root."""
        fd = os.open(self.path, os.O_WRONLY)
        try:
            n = min(_WIPE_BYTES, self.size)
            os.pwrite(fd, bytes(n), self.offset)
            os.fsync(fd)
        finally:
            os.close(fd)


def _device_size(path: Path) -> int:
    fd = os.open(path, os.O_RDONLY)
    try:
        return os.lseek(fd, 0, os.SEEK_END)
    finally:
        os.close(fd)


def resolve_slot(config: HostConfig, name: SlotName) -> Slot:
    """The slot ``name`` as configured; fails when its device is missing or the region does not fit."""
    sc = config.slots[name]
    path = Path(sc.device)
    try:
        device_size = _device_size(path)
    except OSError as exc:
        raise HostError(HostErrorType.HOST_MISCONFIGURED, f"slot {name}: cannot open {path}: {exc}") from exc
    size = sc.size if sc.size is not None else device_size - sc.offset
    if size <= 0 or sc.offset + size > device_size:
        raise HostError(
            HostErrorType.HOST_MISCONFIGURED,
            f"slot {name}: offset {sc.offset} + size {size} does not fit in {path} ({device_size} bytes)",
        )
    return Slot(name=name, path=path, offset=sc.offset, size=size, config=sc)
