"""bench.makespan: the computed schedules on known cases, and a smoke run against the dev server (not timed)."""

from __future__ import annotations

import pytest

from bench import makespan
from tests.bench.output import tables, targets


def test_schedules_on_a_known_case() -> None:
    times = [4.0, 1.0, 1.0, 1.0, 1.0, 1.0]
    assert makespan.lower_bound(times, 2) == 4.5  # max(longest 4, total 9 / 2)
    assert makespan.batch_barrier(times, 2) == 4.0 + 1.0 + 1.0
    # Sliding: one slot runs the 4 s node while the other runs four 1 s nodes; the last starts at 4.
    assert makespan.sliding_window(times, 2) == 5.0
    assert makespan.sliding_window(times, 10) == makespan.batch_barrier(times, 10) == 4.0


def test_scaling_sets_the_lower_bound() -> None:
    times = makespan.scaled(makespan.durations(50, 1.0, seed=3), 5, bound_seconds=12.0)
    assert makespan.lower_bound(times, 5) == pytest.approx(12.0)
    assert makespan.durations(5, 1.0, seed=3) == makespan.durations(5, 1.0, seed=3)


def test_makespan_prints_measured_and_computed_figures(capsys: pytest.CaptureFixture[str]) -> None:
    assert makespan.main(["--nodes", "6", "--maxunavailable", "3", "--bound-seconds", "1.5"]) == 0
    text = capsys.readouterr().out
    rows = tables(text)["Makespan"]
    assert sorted(row[1] for row in rows) == ["computed", "computed", "computed", "measured"]
    ratios = {row[1]: float(row[3]) for row in rows}
    assert ratios["measured"] >= 1.0  # nothing beats the lower bound
    assert len(tables(text)["Ratios to the lower bound"]) == 2
    assert set(targets(text).values()) <= {"PASS", "MISS"} and len(targets(text)) == 1
