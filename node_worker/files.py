"""Files read in chunks, in bounded memory: streamed into a slot or an HTTP request body, or hashed."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

from node_worker.slots import CHUNK, ByteProgress


def file_chunks(path: Path) -> Iterator[bytes]:
    """The file's bytes in chunks of at most 1 MiB; each call reads it afresh (a retried upload starts over)."""
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK):
            yield chunk


def sha256_file(path: Path, progress: ByteProgress | None = None) -> str:
    """The file's sha256 (hex); ``progress(done, size)`` after each chunk."""
    hasher = hashlib.sha256()
    size = path.stat().st_size
    done = 0
    for chunk in file_chunks(path):
        hasher.update(chunk)
        done += len(chunk)
        if progress is not None:
            progress(done, size)
    return hasher.hexdigest()
