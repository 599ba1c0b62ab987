"""The GRUB environment block: edits replace it atomically, so a reader never finds a torn block."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from node_worker.errors import HostError
from node_worker.grubenv import GrubEnv


def test_edits_keep_other_variables_and_leave_no_temporary_file(tmp_path: Path) -> None:
    env = GrubEnv(tmp_path / "grubenv")
    env.set(saved_entry="A")  # a missing block is started afresh, as grub-editenv does
    env.set(next_entry="B")
    assert env.read() == {"saved_entry": "A", "next_entry": "B"}
    env.unset("next_entry")
    assert env.read() == {"saved_entry": "A"}
    assert (tmp_path / "grubenv").stat().st_size == 1024  # still a GRUB environment block
    assert [p.name for p in tmp_path.iterdir()] == ["grubenv"]


def test_a_reader_never_sees_a_torn_block_while_it_is_rewritten(tmp_path: Path) -> None:
    """grub-editenv truncates and rewrites the file; done in place, a concurrent read (a status call while the
    trial deadline ends a trial) failed with "invalid environment block"."""
    env = GrubEnv(tmp_path / "grubenv")
    env.create()
    env.set(saved_entry="A")
    errors: list[HostError] = []
    done = threading.Event()

    def write() -> None:
        try:
            for i in range(40):
                env.set(saved_entry="AB"[i % 2], next_entry="BA"[i % 2])
        finally:
            done.set()

    writer = threading.Thread(target=write)
    writer.start()
    reads = 0
    while not done.is_set() and reads < 2000:  # bounded
        try:
            assert env.read().get("saved_entry") in ("A", "B")
        except HostError as exc:
            errors.append(exc)
        reads += 1
    writer.join()
    assert reads > 10 and errors == []


def test_a_failed_edit_leaves_the_block_as_it_was(tmp_path: Path) -> None:
    env = GrubEnv(tmp_path / "grubenv")
    env.set(saved_entry="A")
    before = (tmp_path / "grubenv").read_bytes()
    with pytest.raises(HostError, match="grub-editenv"):
        env.set(**{"x" * 2000: "y"})  # does not fit into the 1 KiB block
    assert (tmp_path / "grubenv").read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["grubenv"]
