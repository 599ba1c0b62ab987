"""CPU time and children of processes, read from ``/proc``: what the benchmarks charge to each server."""

from __future__ import annotations

import os
from pathlib import Path


def _stat_fields(pid: int) -> list[str] | None:
    """The fields of ``/proc/<pid>/stat`` after the command name (which may hold spaces), or None."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat[stat.rindex(")") + 2 :].split()


def process_cpu(pid: int | None) -> float:
    """User + system CPU seconds of ``pid`` (0 when it cannot be read)."""
    fields = _stat_fields(pid) if pid is not None else None
    if fields is None:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def child_pids(parent: int, name: str | None = None) -> list[int]:
    """The processes whose parent is ``parent`` (and whose command name is ``name``, if given)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
        if ppid == parent and (name is None or stat[stat.index("(") + 1 : stat.rindex(")")] == name):
            found.append(int(entry.name))
    return found
