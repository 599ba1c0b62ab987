"""WritePipeline: hashing and writing on a second thread keeps order, bounds memory and hands errors back."""

from __future__ import annotations

import errno
import hashlib
import threading
from collections.abc import Iterator

import pytest

from models.host import HostErrorType
from node_worker import writer as writer_module
from node_worker.errors import HostError
from node_worker.slots import CHUNK
from node_worker.writer import PIPELINE_BUFFERS, SlotWriter, WritePipeline, write_stream
from tests.node_worker.conftest import SLOT_SIZE, SimHost, fail_pwrite

MIB = 1024 * 1024


def _writer_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("slot-") and t.name.endswith("-writer")]


def _chunk(i: int, size: int = CHUNK) -> bytes:
    """Distinct content per chunk, so a reordered or repeated chunk changes the hash."""
    return hashlib.sha256(str(i).encode()).digest() * (size // 32)


def test_buffers_are_reused_and_written_in_order(host: SimHost) -> None:
    slot = host.agent.slot("B")
    chunks = [_chunk(i) for i in range(20)]
    taken: set[int] = set()
    with SlotWriter(slot, host.agent.stamps) as writer:
        with WritePipeline(writer) as pipeline:
            for data in chunks:
                buf = pipeline.take()
                taken.add(id(buf))
                buf[: len(data)] = data
                pipeline.submit(buf, len(data))
            pipeline.drain()
            assert writer.position == 20 * CHUNK
        checksum = writer.finish(None)

    assert len(taken) <= PIPELINE_BUFFERS  # 20 MiB went through the same few buffers
    expected = hashlib.sha256(b"".join(chunks)).hexdigest()
    assert checksum == expected and slot.hash_region(20 * CHUNK) == expected
    assert _writer_threads() == []


def test_partial_buffers_and_bytes_chunks_mix_in_order(host: SimHost) -> None:
    slot = host.agent.slot("B")
    pieces = [_chunk(1, 4096), _chunk(2, 100_000), _chunk(3, 32)]
    with SlotWriter(slot, host.agent.stamps) as writer:
        with WritePipeline(writer) as pipeline:
            buf = pipeline.take()
            buf[: len(pieces[0])] = pieces[0]
            pipeline.submit(buf, len(pieces[0]))
            pipeline.submit_bytes(pieces[1])
            buf = pipeline.take()
            buf[: len(pieces[2])] = pieces[2]
            pipeline.submit(buf, len(pieces[2]))
        checksum = writer.finish(None)
    assert checksum == hashlib.sha256(b"".join(pieces)).hexdigest()


def test_slot_too_small_mid_stream_is_raised_in_the_caller(host: SimHost) -> None:
    """The writing thread refuses the chunk past the slot's end; the caller gets ImageTooLarge at its next call
    instead of feeding a thread that no longer writes, and the buffers are not lost (no call blocks)."""
    slot = host.agent.slot("B")
    with SlotWriter(slot, host.agent.stamps) as writer:
        with pytest.raises(HostError) as err, WritePipeline(writer) as pipeline:
            for _ in range(SLOT_SIZE // CHUNK + 2 * PIPELINE_BUFFERS):
                buf = pipeline.take()
                pipeline.submit(buf, len(buf))
            pipeline.drain()
        assert writer.position == SLOT_SIZE  # everything up to the end went in, nothing beyond
    assert err.value.kind == HostErrorType.IMAGE_TOO_LARGE
    assert _writer_threads() == []


def test_drain_raises_the_writing_threads_error(host: SimHost) -> None:
    slot = host.agent.slot("B")
    with SlotWriter(slot, host.agent.stamps) as writer:
        with pytest.raises(HostError), WritePipeline(writer) as pipeline:  # leaving the block raises it too
            pipeline.submit_bytes(bytes(slot.size - 10))
            pipeline.submit_bytes(bytes(20))
            with pytest.raises(HostError, match="larger than"):
                pipeline.drain()
            with pytest.raises(HostError):  # it stays raised: nothing more is written after a failure
                pipeline.take()
        assert writer.position == slot.size - 10


def test_a_failing_pwrite_stops_write_stream_and_invalidates_the_slot(
    host: SimHost, monkeypatch: pytest.MonkeyPatch
) -> None:
    slot = host.agent.slot("B")
    fail_pwrite(monkeypatch, on_call=3)
    produced = {"n": 0}

    def chunks() -> Iterator[bytes]:
        for i in range(16):
            produced["n"] += 1
            yield _chunk(i)

    with pytest.raises(OSError) as err:
        write_stream(slot, host.agent.stamps, chunks(), None)

    assert err.value.errno == errno.EIO
    assert produced["n"] < 16  # the producer stopped soon after the failure, not at the end
    assert host.agent.stamps.load(slot) is None
    assert next(slot.read_chunks(64 * 1024)) == bytes(64 * 1024)  # invalidated: signatures wiped
    assert _writer_threads() == []


def test_write_stream_reports_progress_up_to_the_whole_size(host: SimHost) -> None:
    slot = host.agent.slot("B")
    chunks = [_chunk(i) for i in range(6)]
    seen: list[tuple[int, int | None]] = []
    sha, size = write_stream(slot, host.agent.stamps, chunks, None, lambda d, t: seen.append((d, t)), total=6 * MIB)
    assert (sha, size) == (hashlib.sha256(b"".join(chunks)).hexdigest(), 6 * MIB)
    assert seen[-1] == (6 * MIB, 6 * MIB)
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)  # never goes back
    assert host.agent.stamps.load(slot) is not None


def test_writeback_is_started_behind_the_writes(host: SimHost, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every WRITEBACK_EVERY bytes the range just written is handed to the kernel's writeback, so the final fsync
    has little left; a kernel that refuses (returns -1) only turns it off, the writes go on."""
    calls: list[tuple[int, int, int]] = []
    answer = {"rc": 0}

    def recording(fd: int, offset: int, length: int, flags: int) -> int:
        calls.append((offset, length, flags))
        return answer["rc"]

    monkeypatch.setattr(writer_module, "WRITEBACK_EVERY", 4 * MIB)
    monkeypatch.setattr(writer_module, "_sync_file_range", recording)
    slot = host.agent.slot("B")
    write_stream(slot, host.agent.stamps, [_chunk(i) for i in range(10)], None)
    assert calls == [(slot.offset, 4 * MIB, 2), (slot.offset + 4 * MIB, 4 * MIB, 2)]

    calls.clear()
    answer["rc"] = -1
    chunks = [_chunk(i) for i in range(10)]
    sha, _ = write_stream(slot, host.agent.stamps, chunks, None)
    assert len(calls) == 1 and sha == hashlib.sha256(b"".join(chunks)).hexdigest()
