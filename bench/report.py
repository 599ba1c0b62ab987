"""How every benchmark prints: the machine, tables of figures, and targets marked PASS or MISS.

Tables are Markdown pipe tables padded for the terminal, so a run's output can be pasted into docs/benchmarks.md
as it is.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

MIB = 1024 * 1024


@dataclass(frozen=True)
class Target:
    """``value`` must stay at or below ``limit`` (every target here is "at most")."""

    name: str
    value: float
    limit: float
    unit: str = ""

    @property
    def met(self) -> bool:
        return self.value <= self.limit


def _cell(value: object) -> str:
    return str(value).replace("|", "\\|")  # a shell pipeline in a cell must not split it


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    cells = [[_cell(h) for h in headers], *[[_cell(c) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]

    def line(row: list[str]) -> str:
        return "| " + " | ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)) + " |"

    rule = "|" + "|".join("-" * (width + 2) for width in widths) + "|"
    return "\n".join([line(cells[0]), rule, *(line(row) for row in cells[1:])])


def print_table(title: str, headers: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    print(f"\n{title}\n")
    print(table(headers, rows), flush=True)


def _number(value: float, unit: str) -> str:
    return f"{value:.3g}{unit}" if abs(value) < 100 else f"{value:,.0f}{unit}"


def print_targets(targets: Sequence[Target]) -> bool:
    """Print every target with PASS or MISS; returns whether all were met."""
    rows = [
        (t.name, _number(t.value, t.unit), f"<= {_number(t.limit, t.unit)}", "PASS" if t.met else "MISS")
        for t in targets
    ]
    print_table("Targets", ("target", "measured", "limit", "result"), rows)
    return all(t.met for t in targets)


def _first_line(cmd: Sequence[str]) -> str:
    if shutil.which(cmd[0]) is None and not Path(cmd[0]).exists():
        return "not installed"
    try:
        out = subprocess.run(list(cmd), capture_output=True, text=True, timeout=30, check=False).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        return f"unavailable ({exc})"
    return out.strip().splitlines()[0] if out.strip() else "unknown"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _memory() -> str:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return f"{int(line.split()[1]) / MIB:.1f} GiB"
    except OSError:
        pass
    return "unknown"


def _os_name() -> str:
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                return line.split("=", 1)[1].strip('"')
    except OSError:
        pass
    return platform.system()


def code_version() -> str:
    """Which code the figures are of: the commit, and whether tracked files differ from it."""
    repo = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        changed = subprocess.run(
            ["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.splitlines()
    except (OSError, subprocess.CalledProcessError):
        return f"{repo} (not a git checkout)"
    return f"{repo} at {head}" + (f", {len(changed)} tracked file(s) changed" if changed else "")


def load_average() -> str:
    """The 1-minute load average: other work on the machine shows here and skews every figure."""
    one, five, _ = os.getloadavg()
    return f"{one:.2f} (1 min), {five:.2f} (5 min) on {os.cpu_count()} cores"


def print_machine(title: str, extra: Sequence[tuple[str, str]] = ()) -> None:
    """What the figures were measured on: they mean little without it."""
    rows = [
        ("cpu", f"{_cpu_model()}, {os.cpu_count()} cores"),
        ("memory", _memory()),
        ("os", f"{_os_name()}, kernel {platform.release()}"),
        ("python", f"{platform.python_implementation()} {platform.python_version()} ({sys.executable})"),
        ("code", code_version()),
        *extra,
        ("load at start", load_average()),
    ]
    print(f"# {title}")
    print_table("Machine", ("", ""), rows)


def tool_version(cmd: Sequence[str], width: int = 72) -> str:
    line = _first_line(cmd)
    return line if len(line) <= width else line[: width - 1] + "…"
