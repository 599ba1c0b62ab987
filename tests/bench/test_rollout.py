"""Smoke test of bench.rollout with a handful of nodes (not timed): ours, the per-node no-op and the flat floor
run the same activities."""

from __future__ import annotations

import pytest

from bench import floor, rollout
from tests.bench.output import tables, targets


def test_flat_floor_plan_keeps_every_history_small_and_the_window() -> None:
    inputs = floor.plan(10_002, 50)
    assert sum(i.activities for i in inputs) == 10_002 and sum(i.chains for i in inputs) == 50
    assert all(i.activities <= floor.MAX_ACTIVITIES_PER_WORKFLOW for i in inputs)
    assert floor.plan(7, 3) == [floor.FloorInput(chains=3, activities=7)]


def test_rollout_prints_ours_the_per_node_no_op_and_the_floor_with_the_same_activities(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert rollout.main(["--nodes", "4", "--maxunavailable", "2"]) == 0
    text = capsys.readouterr().out
    rows = next(r for t, r in tables(text).items() if t.startswith("Rollout of 4 instant nodes"))
    by_run = {row[1]: row for row in rows}
    assert [row[0] for row in rows] == ["2", "2", "2"] and set(by_run) == {"ours", "per-node no-op", "flat floor"}
    ours = int(by_run["ours"][4])
    assert ours >= 4 * 5 and int(by_run["flat floor"][4]) == ours
    assert int(by_run["per-node no-op"][4]) == 4 * round(ours / 4)  # whole steps per node
    assert int(by_run["ours"][5]) == 5 and int(by_run["per-node no-op"][5]) == 5  # a parent and 4 children
    assert all(float(row[2]) > 0 for row in rows)
    assert set(targets(text)) == {"ours / flat floor, maxunavailable 2", "largest history, maxunavailable 2"}
