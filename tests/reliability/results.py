"""Counting what the reliability suite tried, and rendering the table of docs/reliability.md from a real run.

Each scenario runs inside :func:`trial`, which appends one JSON line (what was tried, how many times, the outcome
the test observed, passed or not) to ``$KUBEOS_RELIABILITY_RESULTS/results.jsonl`` when that variable is set.
``python -m tests.reliability.results DIR [--doc docs/reliability.md]`` turns the lines into the table and
replaces the part of the document between the two result markers.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

RESULTS_ENV = "KUBEOS_RELIABILITY_RESULTS"
RESULTS_FILE = "results.jsonl"
RUN_FILE = "run.json"
BEGIN = "<!-- results:begin -->"
END = "<!-- results:end -->"
SECTIONS = ("fault", "bad input", "security")


@dataclass
class Trial:
    """One scenario: ``times`` is how often the fault or input was applied; ``outcome`` what the test saw."""

    section: str
    name: str
    times: int = 1
    outcome: str = ""
    passed: bool = False
    seconds: float = 0.0
    known_bug: bool = False  # an expected failure (xfail): reported as a known bug, not as a failed run


def results_dir() -> Path | None:
    value = os.environ.get(RESULTS_ENV, "")
    return Path(value) if value else None


def _append(record: dict[str, object], file_name: str = RESULTS_FILE) -> None:
    directory = results_dir()
    if directory is None:
        return
    directory.mkdir(parents=True, exist_ok=True)
    with (directory / file_name).open("a", encoding="utf-8") as out:
        out.write(json.dumps(record) + "\n")


@contextmanager
def trial(section: str, name: str, times: int = 1, *, known_bug: bool = False) -> Iterator[Trial]:
    """Record the scenario run inside the block; a failure is recorded with its first line, then re-raised.
    With ``known_bug`` the outcome the test set before its failing assertion is kept."""
    if section not in SECTIONS:
        raise ValueError(f"section must be one of {SECTIONS}, got {section!r}")
    record = Trial(section, name, times, known_bug=known_bug)
    started = time.monotonic()
    try:
        yield record
        record.passed = True
    except BaseException as exc:
        first_line = (str(exc).strip().splitlines() or [""])[0]
        if not (known_bug and record.outcome):
            record.outcome = f"FAILED: {type(exc).__name__}: {first_line}"[:300]
        raise
    finally:
        record.seconds = round(time.monotonic() - started, 1)
        _append(asdict(record))


def record(section: str, name: str, *, times: int, passed: bool, outcome: str, seconds: float) -> None:
    """Record a scenario whose count is only known at the end (e.g. hypothesis examples)."""
    _append(asdict(Trial(section, name, times, outcome, passed, round(seconds, 1))))


def record_run(seconds: float, tests: str) -> None:
    """How long the whole suite took (written once at its end)."""
    directory = results_dir()
    if directory is None:
        return
    directory.mkdir(parents=True, exist_ok=True)
    info = {
        "finished": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "seconds": round(seconds),
        "cpus": os.cpu_count(),
        "tests": tests,
    }
    (directory / RUN_FILE).write_text(json.dumps(info) + "\n", encoding="utf-8")


# ------------------------------------------------------------------------------------------------- report


def load(directory: Path) -> list[Trial]:
    lines = (directory / RESULTS_FILE).read_text(encoding="utf-8").splitlines()
    return [Trial(**json.loads(line)) for line in lines if line.strip()]


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render(trials: list[Trial], run: dict[str, object] | None) -> str:
    """The markdown table: one row per scenario name (repeated runs summed), grouped by section."""
    rows: dict[tuple[str, str], list[Trial]] = {}
    for t in trials:
        rows.setdefault((t.section, t.name), []).append(t)
    lines = []
    if run:
        lines.append(f"Run finished {run['finished']} on {run['cpus']} CPUs in {run['seconds']} s ({run['tests']}).")
        lines.append("")
    lines += ["| kind | fault or input | tried | result | seconds | outcome |", "|---|---|---|---|---|---|"]
    for section in SECTIONS:
        for (sec, name), group in rows.items():
            if sec != section:
                continue
            tried = sum(t.times for t in group)
            failed = [t for t in group if not t.passed]
            if all(t.known_bug for t in group):
                result = "known bug, not fixed" if failed else "FIXED (the xfail test passed)"
            else:
                result = "passed" if not failed else f"FAILED ({len(failed)} of {len(group)} runs)"
            outcomes = list(dict.fromkeys(t.outcome for t in (failed or group) if t.outcome))
            seconds = f"{sum(t.seconds for t in group):.0f}"
            outcome = _cell(" / ".join(outcomes))
            lines.append(f"| {section} | {_cell(name)} | {tried} | {result} | {seconds} | {outcome} |")
    return "\n".join(lines) + "\n"


def update_document(doc: Path, table: str) -> None:
    text = doc.read_text(encoding="utf-8")
    start, end = text.find(BEGIN), text.find(END)
    if start < 0 or end < start:
        raise SystemExit(f"{doc}: the markers {BEGIN} and {END} are missing")
    doc.write_text(text[: start + len(BEGIN)] + "\n" + table + text[end:], encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.reliability.results", description=__doc__.splitlines()[0])
    parser.add_argument("directory", type=Path, help=f"the directory ${RESULTS_ENV} pointed at")
    parser.add_argument("--doc", type=Path, help="replace the table between the result markers of this file")
    args = parser.parse_args(argv)
    run_file = args.directory / RUN_FILE
    run = json.loads(run_file.read_text(encoding="utf-8")) if run_file.exists() else None
    table = render(load(args.directory), run)
    if args.doc is None:
        sys.stdout.write(table)
    else:
        update_document(args.doc, table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
