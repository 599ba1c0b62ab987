"""The verified writer: bytes from any source go straight into the inactive slot, hashed on the way.

Both image sources use it: the HTTP download (``http_source``) and the root filesystem built from a container
image (``oci_rootfs``). Memory stays flat: chunks are written as they arrive, never collected. A
:class:`WritePipeline` hashes and writes on a second thread, so producing the next chunk (receiving it over TLS,
reading it from a file) overlaps with sha256 and ``pwrite``, which release the GIL.

A stamp file per slot in the staging directory records the checksum and size of the image that was verified in
that slot. Before a stamp is trusted (to skip a download, or to boot the slot) the slot's first ``size`` bytes are
hashed again: a local sequential read is far cheaper than the download it saves, and unlike sampling the first
MiB or comparing mtimes it proves that every byte GRUB will boot is the verified image.

A slot built from a container image also records the image's manifest (and index) digest: the ext4 image built
from it differs byte for byte on every build, so the same image staged again is recognised by its digest.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
import queue
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from models.host import HostErrorType
from node_worker.errors import HostError
from node_worker.slots import CHUNK, ByteProgress, Slot

# Buffers a pipeline owns: one being filled, the rest queued for or in the writing thread (memory: 4 MiB).
PIPELINE_BUFFERS = 4
# The writer asks the kernel to start writing back every this many bytes it wrote, so the final fsync finds
# little left to do: staging 1 GiB, the fsync at the end took 0.3 s without it and 0.01 s with it.
WRITEBACK_EVERY = 32 * CHUNK
_SYNC_FILE_RANGE_WRITE = 2  # start writeback of the range's dirty pages, do not wait for it


def _libc_sync_file_range() -> Callable[[int, int, int, int], int] | None:
    """Linux's ``sync_file_range`` (Python has no binding), or None where the C library lacks it."""
    try:
        function = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    function.restype = ctypes.c_int
    return function


_sync_file_range = _libc_sync_file_range()


@dataclass(frozen=True)
class Stamp:
    slot: str
    checksum: str
    size: int
    device: str
    offset: int
    manifest_digest: str = ""  # container images only: the platform manifest the slot was built from
    index_digest: str = ""  # ... and the image index that named it, if any


class StampStore:
    """``<staging_dir>/slot-<X>.json``: which verified image a slot holds."""

    def __init__(self, staging_dir: str | Path) -> None:
        self.dir = Path(staging_dir)

    def _path(self, slot: Slot) -> Path:
        return self.dir / f"slot-{slot.name}.json"

    def load(self, slot: Slot) -> Stamp | None:
        try:
            data = json.loads(self._path(slot).read_text(encoding="utf-8"))
            stamp = Stamp(**data)
        except (OSError, ValueError, TypeError):
            return None
        if stamp.slot != slot.name or stamp.device != str(slot.path) or stamp.offset != slot.offset:
            return None  # the configuration moved the slot: the stamp is about other bytes
        return stamp

    def save(self, slot: Slot, checksum: str, size: int, manifest_digest: str = "", index_digest: str = "") -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        stamp = Stamp(slot.name, checksum, size, str(slot.path), slot.offset, manifest_digest, index_digest)
        tmp = self._path(slot).with_suffix(".tmp")
        tmp.write_text(json.dumps(stamp.__dict__), encoding="utf-8")
        os.replace(tmp, self._path(slot))

    def clear(self, slot: Slot) -> None:
        self._path(slot).unlink(missing_ok=True)

    def verify(self, slot: Slot, checksum: str, progress: ByteProgress | None = None) -> bool:
        """Whether ``slot`` holds the verified image ``checksum`` right now (its bytes are hashed again)."""
        stamp = self.load(slot)
        if stamp is None or stamp.checksum != checksum.lower() or stamp.size > slot.size:
            return False
        return slot.hash_region(stamp.size, progress) == stamp.checksum

    def verify_container_image(
        self, slot: Slot, manifest_digest: str, progress: ByteProgress | None = None
    ) -> Stamp | None:
        """The stamp of ``slot`` if it holds a verified build of the container image ``manifest_digest``."""
        stamp = self.load(slot)
        if stamp is None or not manifest_digest or stamp.manifest_digest != manifest_digest:
            return None
        return stamp if self.verify(slot, stamp.checksum, progress) else None


class SlotWriter:
    """Writes a byte stream into ``slot`` from its start, hashing it; can resume after a prefix or restart.

    The slot's stamp is removed before the first byte changes, so a half-written slot is never taken for a
    verified one. The file is opened without truncation: for a partition inside a disk image file that keeps
    the rest of the disk intact.
    """

    def __init__(self, slot: Slot, stamps: StampStore, manifest_digest: str = "", index_digest: str = "") -> None:
        self.slot = slot
        self._stamps = stamps
        self._digests = (manifest_digest, index_digest)  # recorded in the stamp: see the module docstring
        self._hash = hashlib.sha256()
        self.position = 0
        self.touched = False
        self._fd = os.open(slot.path, os.O_WRONLY)
        self._writeback_from = 0  # position up to which writeback was started
        self._writeback = _sync_file_range is not None

    def __enter__(self) -> SlotWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def resume_after(self, length: int, progress: ByteProgress | None = None) -> None:
        """Continue after the first ``length`` bytes already in the slot (they are hashed again: a hash state
        cannot be saved across attempts)."""
        self.restart()
        self.slot.hash_region(length, progress, hasher=self._hash)
        self.position = self._writeback_from = length
        self.touched = True  # the stamp went when those bytes were written

    def restart(self) -> None:
        self._hash = hashlib.sha256()
        self.position = self._writeback_from = 0

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Hash ``data`` and write it at the current position (bytes in the slot are the bytes hashed)."""
        end = self.position + len(data)
        if end > self.slot.size:
            raise HostError(
                HostErrorType.IMAGE_TOO_LARGE,
                f"the image is larger than {self.slot.describe()}: more than {self.slot.size} bytes",
            )
        if not self.touched:
            self._stamps.clear(self.slot)
            self.touched = True
        self._hash.update(data)
        view = memoryview(data)
        while view:
            n = os.pwrite(self._fd, view, self.slot.offset + self.position)
            self.position += n
            view = view[n:]
        if self._writeback and self.position - self._writeback_from >= WRITEBACK_EVERY:
            self._start_writeback()

    def _start_writeback(self) -> None:
        """Start writing back what was written since the last call (an optimisation only: if the kernel refuses,
        e.g. for a file type it does not support, the final fsync still writes everything and reports errors)."""
        start, length = self._writeback_from, self.position - self._writeback_from
        self._writeback_from = self.position
        assert _sync_file_range is not None
        if _sync_file_range(self._fd, self.slot.offset + start, length, _SYNC_FILE_RANGE_WRITE) != 0:
            self._writeback = False

    def finish(self, expected: str | None) -> str:
        """Flush to the disk and check the hash; on a mismatch the slot is invalidated. Returns the sha256."""
        os.fsync(self._fd)
        calculated = self._hash.hexdigest()
        if expected is not None and calculated != expected.lower():
            self.invalidate()
            raise HostError(HostErrorType.CHECKSUM_MISMATCH, f"Checksum {calculated} mismatch to {expected}")
        self._stamps.save(self.slot, calculated, self.position, *self._digests)
        return calculated

    def invalidate(self) -> None:
        """Wipe the slot's filesystem signatures and forget its stamp: nothing will boot it."""
        self._stamps.clear(self.slot)
        self.slot.invalidate()


class WritePipeline:
    """Hashes and writes into a :class:`SlotWriter` on a second thread, in the order the chunks are handed over.

    The caller fills a buffer from :meth:`take` and hands it over with :meth:`submit` (it comes back to the free
    list once written), or hands over immutable chunks with :meth:`submit_bytes`; either way at most
    ``buffers`` chunks are in flight, so memory stays flat. An error of the writing thread (ImageTooLarge, a
    failed ``pwrite``) is raised in the caller at its next call. ``writer.position`` counts what is in the slot;
    it is final only after :meth:`drain`, which must come before ``finish``, ``restart`` or a resumed request.
    Leaving the ``with`` block stops the thread (and raises a pending error unless another one is on its way).
    """

    def __init__(self, writer: SlotWriter, buffers: int = PIPELINE_BUFFERS, size: int = CHUNK) -> None:
        self.writer = writer
        self._free: queue.SimpleQueue[bytearray] = queue.SimpleQueue()
        for _ in range(buffers):
            self._free.put(bytearray(size))
        self._work: queue.Queue[tuple[memoryview | bytes, bytearray | None] | None] = queue.Queue(buffers)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=f"slot-{writer.slot.name}-writer", daemon=True)
        self._thread.start()

    def __enter__(self) -> WritePipeline:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *rest: object) -> None:
        self.close()
        if exc_type is None:
            self._raise_pending()

    def take(self) -> bytearray:
        """A free buffer to fill (waits while all are in flight)."""
        self._raise_pending()
        buf = self._free.get()
        self._raise_pending()
        return buf

    def release(self, buf: bytearray) -> None:
        """Give back a taken buffer whose bytes are not to be written."""
        self._free.put(buf)

    def submit(self, buf: bytearray, length: int) -> None:
        """Write the first ``length`` bytes of a taken buffer; the buffer must not be touched until taken again."""
        self._raise_pending()
        self._work.put((memoryview(buf)[:length], buf))

    def submit_bytes(self, data: bytes) -> None:
        self._raise_pending()
        self._work.put((data, None))

    def drain(self) -> None:
        """Wait until everything submitted is in the slot (or the writing thread failed: then raise its error)."""
        self._work.join()
        self._raise_pending()

    def close(self) -> None:
        if self._thread.is_alive():
            self._work.put(None)
            self._thread.join()

    def _raise_pending(self) -> None:
        if self._error is not None:
            raise self._error

    def _run(self) -> None:
        while True:
            item = self._work.get()
            try:
                if item is None:
                    return
                data, buf = item
                if self._error is None:  # after a failure the rest is dropped, buffers still come back
                    try:
                        self.writer.write(data)
                    except BaseException as exc:  # handed to the caller, which raises it
                        self._error = exc
                if isinstance(data, memoryview):
                    data.release()
                if buf is not None:
                    self._free.put(buf)
            finally:
                self._work.task_done()


def write_stream(
    slot: Slot,
    stamps: StampStore,
    chunks: Iterable[bytes],
    expected: str | None,
    progress: ByteProgress | None = None,
    total: int | None = None,
    manifest_digest: str = "",
    index_digest: str = "",
) -> tuple[str, int]:
    """Write ``chunks`` into ``slot``, verify against ``expected`` (sha256 hex; None: record what was written).

    Returns (sha256, size). A failure after the first write leaves the slot invalidated. ``total``, when known,
    is refused up front if it does not fit. The digests of a container image the bytes were built from go into
    the stamp. The next chunk is produced while the previous ones are hashed and written.
    """
    if total is not None and total > slot.size:
        raise HostError(HostErrorType.IMAGE_TOO_LARGE, f"the image ({total} bytes) is larger than {slot.describe()}")
    with SlotWriter(slot, stamps, manifest_digest, index_digest) as writer:
        try:
            with WritePipeline(writer) as pipeline:
                for data in chunks:
                    pipeline.submit_bytes(data)
                    if progress is not None:
                        progress(writer.position, total)
                pipeline.drain()
            if progress is not None:
                progress(writer.position, total)
            return writer.finish(expected), writer.position
        except BaseException:
            if writer.touched:
                writer.invalidate()
            raise
