"""Rollout overhead: the real ClusterRollout over simulated nodes whose work is instant, against the floor.

Ours: the rollout and its NodeUpgrade children on the cluster worker, every node's host activities on the node's
own queue, served by one worker per node (the in-memory fleet of devstack.fake_fleet, one poller each). The floor
(bench.floor): the same number of no-op activities, counted from our histories, run in ``maxunavailable``
side-by-side sequences from as few plain workflows as the history limit allows, through the same dev server and
this same process. Both are timed from the start request to the last result, with the workers already polling;
for each maxunavailable they run on one fresh dev server, alternating which goes first.

The dev server runs with one partition per task queue (``--partitions``; the server's default is 4), the right
setting for a host's queue, which has a single worker; docs/benchmarks.md shows both.

    python -m bench.rollout [--nodes 1000] [--maxunavailable 50 1000] [--runs 1] [--partitions 1]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field

from temporalio.client import Client
from temporalio.worker import Worker

from bench.floor import FLOOR_ACTIVITY_QUEUE, FLOOR_TASK_QUEUE, FLOOR_WORKFLOW, BenchFloor, noop, plan
from bench.report import Target, print_machine, print_table, print_targets, tool_version
from bench.temporal_env import (
    DEFAULT_PARTITIONS,
    HISTORY_WARNING,
    TEMPORAL,
    CpuClock,
    HistoryStats,
    RolloutRun,
    collect,
    fleet,
    run_rollout,
    server_settings,
    start_dev_server,
)
from models.rollout import NodeState, Phase

TARGET_FLOOR_RATIO = 2.0
#: Event types grouped for the breakdown: where a rollout's events go.
_GROUPS = {
    "workflow tasks": ("WORKFLOW_TASK_",),
    "activities": ("ACTIVITY_TASK_",),
    "child workflows": ("CHILD_WORKFLOW_", "START_CHILD_WORKFLOW_"),
    "workflow start/end": ("WORKFLOW_EXECUTION_",),
}


@dataclass
class FloorRun:
    seconds: float
    histories: HistoryStats
    cpu: CpuClock


@dataclass
class Setting:
    maxunavailable: int
    ours: list[RolloutRun] = field(default_factory=list)
    floor: list[FloorRun] = field(default_factory=list)

    @property
    def ours_seconds(self) -> float:
        return statistics.median(r.seconds for r in self.ours)

    @property
    def floor_seconds(self) -> float:
        return statistics.median(r.seconds for r in self.floor)


async def run_floor(client: Client, activities: int, chains: int) -> FloorRun:
    inputs = plan(activities, chains)
    async with (
        Worker(client, task_queue=FLOOR_TASK_QUEUE, workflows=[BenchFloor]),
        Worker(client, task_queue=FLOOR_ACTIVITY_QUEUE, activities=[noop]),
    ):
        with CpuClock() as cpu:
            start = time.perf_counter()
            handles = [
                await client.start_workflow(
                    FLOOR_WORKFLOW,
                    inp,
                    id=f"bench-floor-{uuid.uuid4().hex[:8]}",
                    task_queue=FLOOR_TASK_QUEUE,
                    result_type=int,
                )
                for inp in inputs
            ]
            done = sum(await asyncio.gather(*(h.result() for h in handles)))
            seconds = time.perf_counter() - start
    if done != activities:
        raise RuntimeError(f"the floor ran {done} activities, not {activities}")
    executions = [(h.id, h.first_execution_run_id or "") for h in handles]
    return FloorRun(seconds, await collect(client, executions), cpu)


async def run_ours(client: Client, nodes: int, maxunavailable: int) -> RolloutRun:
    result = await run_rollout(client, fleet(nodes), maxunavailable)
    status = result.status
    if status.phase != Phase.SUCCEEDED or status.counts.get(NodeState.SUCCEEDED) != nodes:
        raise RuntimeError(f"the rollout did not upgrade every node: {status.phase} {status.counts}")
    return result


async def measure(nodes: int, maxunavailable: int, runs: int, partitions: int) -> Setting:
    setting = Setting(maxunavailable)
    env = await start_dev_server(partitions)
    try:
        for run in range(runs):
            # Ours first on even runs: the floor needs our activity count from the first one.
            order = ("ours", "floor") if run % 2 == 0 else ("floor", "ours")
            for what in order:
                if what == "ours":
                    ours = await run_ours(env.client, nodes, maxunavailable)
                    setting.ours.append(ours)
                    seconds = ours.seconds
                else:
                    activities = setting.ours[0].histories.activities
                    floor = await run_floor(env.client, activities, maxunavailable)
                    setting.floor.append(floor)
                    seconds = floor.seconds
                print(f"  maxunavailable {maxunavailable}, run {run + 1}/{runs}: {what} {seconds:.1f}s", flush=True)
    finally:
        await env.shutdown()
    return setting


def _group(by_type: Counter[str]) -> dict[str, int]:
    groups = dict.fromkeys([*_GROUPS, "other"], 0)
    for name, count in by_type.items():
        bare = name.removeprefix("EVENT_TYPE_")
        group = next((g for g, prefixes in _GROUPS.items() if bare.startswith(prefixes)), "other")
        groups[group] += count
    return groups


def _cpu(clock: CpuClock) -> float:
    return max(clock.server + clock.worker, 1e-9)


def report(nodes: int, settings: list[Setting]) -> None:
    rows = []
    for s in settings:
        ours, floor = s.ours[0], s.floor[0]
        for name, seconds, h, cpu in (
            ("ours", s.ours_seconds, ours.histories, ours.cpu),
            ("floor", s.floor_seconds, floor.histories, floor.cpu),
        ):
            rows.append(
                (
                    s.maxunavailable,
                    name,
                    f"{seconds:.1f}",
                    f"{h.activities / seconds:.0f}",
                    h.activities,
                    h.executions,
                    f"{h.events:,}",
                    f"{h.events / nodes:.1f}",
                    h.continued_as_new,
                    f"{h.largest:,}",
                    f"{cpu.server:.0f}",
                    f"{cpu.worker:.0f}",
                )
            )
    headers = (
        "maxunavailable", "run", "wall s", "activities/s", "activities", "executions", "events", "events/node",
        "continue-as-new", "largest history", "server cpu s", "worker cpu s",
    )  # fmt: skip
    print_table(f"Rollout of {nodes} instant nodes vs the floor (medians of wall time; counts of run 1)", headers, rows)
    print(
        "\nexecutions: workflow runs (rollout runs + children; floor workflows); events/node: all events of those "
        "histories divided by the node count; server cpu: the dev server process; worker cpu: this process "
        "(workflows, all workers, client)."
    )
    breakdown = []
    for s in settings:
        mine, bare = _group(s.ours[0].histories.by_type), _group(s.floor[0].histories.by_type)
        for group in mine:
            breakdown.append((s.maxunavailable, group, f"{mine[group] / nodes:.1f}", f"{bare[group] / nodes:.1f}"))
    print_table("Where the events go (per node)", ("maxunavailable", "events", "ours", "floor"), breakdown)
    print_table(
        "Ratios (CPU: dev server + this process, less sensitive than wall time to other work on the machine)",
        ("maxunavailable", "ours / floor (wall)", "ours / floor (cpu)", "ours / floor (events)"),
        [
            (
                s.maxunavailable,
                f"{s.ours_seconds / s.floor_seconds:.2f}",
                f"{_cpu(s.ours[0].cpu) / _cpu(s.floor[0].cpu):.2f}",
                f"{s.ours[0].histories.events / s.floor[0].histories.events:.2f}",
            )
            for s in settings
        ],
    )
    targets = []
    for s in settings:
        targets.append(
            Target(
                f"ours / floor, maxunavailable {s.maxunavailable}", s.ours_seconds / s.floor_seconds, TARGET_FLOOR_RATIO
            )
        )
        largest = max(r.histories.largest for r in s.ours)
        targets.append(
            Target(f"largest history, maxunavailable {s.maxunavailable}", largest, HISTORY_WARNING, " events")
        )
    print_targets(targets)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.rollout", description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=1000, help="simulated nodes (default 1000)")
    parser.add_argument(
        "--maxunavailable", type=int, nargs="+", default=[50, 1000], help="window sizes to run (default 50 1000)"
    )
    parser.add_argument("--runs", type=int, default=1, help="runs of ours and of the floor per window (default 1)")
    parser.add_argument(
        "--partitions", type=int, default=DEFAULT_PARTITIONS, help="dev server partitions per task queue (default 1)"
    )
    args = parser.parse_args(argv)
    if min(args.nodes, args.runs, args.partitions, *args.maxunavailable) < 1:
        parser.error("--nodes, --runs, --partitions and every --maxunavailable must be at least 1")
    print_machine(
        "Rollout overhead benchmark",
        [
            ("temporal", tool_version([str(TEMPORAL), "--version"])),
            ("dev server", "in memory; " + ", ".join(server_settings(args.partitions))),
        ],
    )
    settings = [asyncio.run(measure(args.nodes, mu, args.runs, args.partitions)) for mu in args.maxunavailable]
    report(args.nodes, settings)
    return 0


if __name__ == "__main__":
    sys.exit(main())
