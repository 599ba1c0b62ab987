"""Rollout overhead: the real ClusterRollout over simulated nodes whose work is instant, against the floor.

Ours: the rollout and its NodeUpgrade children on the cluster worker, every node's host activities on the node's
own queue, served by one worker per node (the in-memory fleet of devstack.fake_fleet, one poller each).
Two references (bench.floor) run the same number of no-op activities, counted from our histories, through the
same dev server and this same process:
- flat floor: ``maxunavailable`` side-by-side sequences in as few plain workflows as the history limit allows;
  the least Temporal needs to run these activities in this order. The target is measured against it.
- per-node no-op: a parent running one child per node, ``maxunavailable`` at a time, each child its no-op steps
  one after the other: the rollout's shape without its code. It is not a floor for ours (its activities all go
  through one queue, where four of a node's ten steps reach our cluster worker eagerly), but it tells what the
  one-workflow-per-node shape costs by itself.
Each is timed from the start request to the last result, with the workers already polling; for each
maxunavailable all run on one fresh dev server, the order reversed on every other run.

The dev server runs with one partition per task queue (``--partitions``; the server's default is 4), the right
setting for a host's queue, which has a single worker; docs/benchmarks.md shows both.

    python -m bench.rollout [--nodes 1000] [--maxunavailable 50 1000] [--runs 1] [--partitions 1]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field

from temporalio.client import Client
from temporalio.worker import Worker

from bench.floor import (
    FLEET_FLOOR_WORKFLOW,
    FLOOR_ACTIVITY_QUEUE,
    FLOOR_TASK_QUEUE,
    FLOOR_WORKFLOW,
    MAX_FLEET_FLOOR_NODES,
    BenchFleetFloor,
    BenchFloor,
    BenchNodeFloor,
    FleetFloorInput,
    noop,
    plan,
)
from bench.report import Target, print_machine, print_table, print_targets, tool_version
from bench.temporal_env import (
    DEFAULT_PARTITIONS,
    HISTORY_WARNING,
    TEMPORAL,
    CpuClock,
    HistoryStats,
    collect,
    family_histories,
    fleet,
    run_rollout,
    server_settings,
    start_dev_server,
)
from models.rollout import NodeState, Phase
from workers.cli import exit_process

TARGET_FLOOR_RATIO = 2.0
OURS, PER_NODE, FLAT = "ours", "per-node no-op", "flat floor"
#: Event types grouped for the breakdown: where a rollout's events go.
_GROUPS = {
    "workflow tasks": ("WORKFLOW_TASK_",),
    "activities": ("ACTIVITY_TASK_", "MARKER_RECORDED"),
    "child workflows": ("CHILD_WORKFLOW_", "START_CHILD_WORKFLOW_"),
    "workflow start/end": ("WORKFLOW_EXECUTION_",),
}


@dataclass
class Measurement:
    seconds: float
    histories: HistoryStats
    cpu: CpuClock

    @property
    def cpu_seconds(self) -> float:
        return max(self.cpu.server + self.cpu.worker, 1e-9)


@dataclass
class Setting:
    maxunavailable: int
    runs: dict[str, list[Measurement]] = field(default_factory=dict)

    def seconds(self, variant: str) -> float:
        return statistics.median(m.seconds for m in self.runs[variant])

    def cpu(self, variant: str) -> float:
        return statistics.median(m.cpu_seconds for m in self.runs[variant])

    def first(self, variant: str) -> Measurement:
        return self.runs[variant][0]


def _floor_workers(client: Client, window: int) -> tuple[Worker, Worker]:
    """The references' workers. Their workflow cache holds every open workflow (the SDK's default of 1,000 does
    not when a parent runs 1,000 children), so they never replay: a floor is the best case."""
    workflows = Worker(
        client,
        task_queue=FLOOR_TASK_QUEUE,
        workflows=[BenchFloor, BenchFleetFloor, BenchNodeFloor],
        activities=[noop],  # its local activities
        max_cached_workflows=max(1000, 2 * window + 10),
    )
    return workflows, Worker(client, task_queue=FLOOR_ACTIVITY_QUEUE, activities=[noop])


async def run_flat_floor(client: Client, activities: int, chains: int, local: int) -> Measurement:
    workflows, activity_worker = _floor_workers(client, chains)
    async with workflows, activity_worker:
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
                for inp in plan(activities, chains, local)
            ]
            done = sum(await asyncio.gather(*(h.result() for h in handles)))
            seconds = time.perf_counter() - start
    if done != activities:
        raise RuntimeError(f"the flat floor ran {done} activities, not {activities}")
    executions = [(h.id, h.first_execution_run_id or "") for h in handles]
    return Measurement(seconds, await collect(client, executions), cpu)


async def run_per_node_floor(client: Client, nodes: int, steps: int, local_steps: int, window: int) -> Measurement:
    workflows, activity_worker = _floor_workers(client, window)
    async with workflows, activity_worker:
        with CpuClock() as cpu:
            start = time.perf_counter()
            handle = await client.start_workflow(
                FLEET_FLOOR_WORKFLOW,
                FleetFloorInput(nodes=nodes, steps=steps, window=window, local_steps=local_steps),
                id=f"bench-fleet-floor-{uuid.uuid4().hex[:8]}",
                task_queue=FLOOR_TASK_QUEUE,
                result_type=int,
            )
            done = await handle.result()
            seconds = time.perf_counter() - start
    if done != nodes * steps:
        raise RuntimeError(f"the per-node no-op ran {done} activities, not {nodes * steps}")
    histories, _ = await family_histories(client, handle.id, handle.first_execution_run_id or "")
    return Measurement(seconds, histories, cpu)


async def run_ours(client: Client, nodes: int, maxunavailable: int) -> Measurement:
    result = await run_rollout(client, fleet(nodes), maxunavailable)
    status = result.status
    if status.phase != Phase.SUCCEEDED or status.counts.get(NodeState.SUCCEEDED) != nodes:
        raise RuntimeError(f"the rollout did not upgrade every node: {status.phase} {status.counts}")
    return Measurement(result.seconds, result.histories, result.cpu)


async def run_variant(variant: str, client: Client, nodes: int, window: int, setting: Setting) -> Measurement:
    if variant == OURS:
        return await run_ours(client, nodes, window)
    # The references run as many activities as ours, as many of them local.
    ours = setting.first(OURS).histories
    if variant == FLAT:
        return await run_flat_floor(client, ours.activities, window, ours.local_activities)
    steps, local_steps = round(ours.activities / nodes), round(ours.local_activities / nodes)
    return await run_per_node_floor(client, nodes, steps, local_steps, window)


async def measure(nodes: int, maxunavailable: int, runs: int, partitions: int, variants: list[str]) -> Setting:
    setting = Setting(maxunavailable)
    env = await start_dev_server(partitions)
    try:
        for run in range(runs):
            # Ours first on even runs (the references need its activity count), last on odd ones.
            order = [OURS, PER_NODE, FLAT] if run % 2 == 0 else [FLAT, PER_NODE, OURS]
            for variant in order:
                if variant not in variants or (variant == PER_NODE and nodes > MAX_FLEET_FLOOR_NODES):
                    continue
                measurement = await run_variant(variant, env.client, nodes, maxunavailable, setting)
                setting.runs.setdefault(variant, []).append(measurement)
                print(
                    f"  maxunavailable {maxunavailable}, run {run + 1}/{runs}: {variant} {measurement.seconds:.1f}s",
                    flush=True,
                )
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


def report(nodes: int, settings: list[Setting]) -> None:
    rows = []
    for s in settings:
        for variant in (OURS, PER_NODE, FLAT):
            if variant not in s.runs:
                continue
            h, cpu = s.first(variant).histories, s.first(variant).cpu
            seconds = s.seconds(variant)
            rows.append(
                (
                    s.maxunavailable,
                    variant,
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
    print_table(f"Rollout of {nodes} instant nodes vs the floor (median wall time; counts of run 1)", headers, rows)
    print(
        "\nexecutions: workflow runs (rollout runs and children; floor workflows); events/node: all events of those "
        "histories divided by the node count; server cpu: the dev server process; worker cpu: this process "
        "(workflows, every worker, the client)."
    )
    breakdown = []
    for s in settings:
        groups = {variant: _group(s.first(variant).histories.by_type) for variant in s.runs}
        for group in groups[OURS]:
            breakdown.append(
                (
                    s.maxunavailable,
                    group,
                    *(f"{groups[v][group] / nodes:.1f}" for v in (OURS, PER_NODE, FLAT) if v in groups),
                )
            )
    variants_shown = [v for v in (OURS, PER_NODE, FLAT) if v in settings[0].runs]
    print_table("Where the events go (per node)", ("maxunavailable", "events", *variants_shown), breakdown)
    ratio_rows = []
    for s in settings:
        per_node = PER_NODE in s.runs
        ratio_rows.append(
            (
                s.maxunavailable,
                f"{s.seconds(OURS) / s.seconds(FLAT):.2f}",
                f"{s.cpu(OURS) / s.cpu(FLAT):.2f}",
                f"{s.seconds(OURS) / s.seconds(PER_NODE):.2f}" if per_node else "-",
                f"{s.seconds(PER_NODE) / s.seconds(FLAT):.2f}" if per_node else "-",
            )
        )
    print_table(
        "Ratios (cpu: dev server + this process, less sensitive than wall time to other work on the machine)",
        (
            "maxunavailable",
            "ours / flat (wall)",
            "ours / flat (cpu)",
            "ours / per-node no-op (wall)",
            "per-node no-op / flat (wall)",
        ),
        ratio_rows,
    )
    targets = []
    for s in settings:
        targets.append(
            Target(
                f"ours / flat floor, maxunavailable {s.maxunavailable}",
                s.seconds(OURS) / s.seconds(FLAT),
                TARGET_FLOOR_RATIO,
            )
        )
        largest = max(m.histories.largest for m in s.runs[OURS])
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
    parser.add_argument("--runs", type=int, default=1, help="runs of ours and of each floor per window (default 1)")
    parser.add_argument(
        "--partitions", type=int, default=DEFAULT_PARTITIONS, help="dev server partitions per task queue (default 1)"
    )
    parser.add_argument(
        "--skip-per-node",
        action="store_true",
        help="leave out the per-node no-op (it is for attribution only; the target is against the flat floor)",
    )
    args = parser.parse_args(argv)
    variants = [OURS, FLAT] if args.skip_per_node else [OURS, PER_NODE, FLAT]
    if min(args.nodes, args.runs, args.partitions, *args.maxunavailable) < 1:
        parser.error("--nodes, --runs, --partitions and every --maxunavailable must be at least 1")
    print_machine(
        "Rollout overhead benchmark",
        [
            ("temporal", tool_version([str(TEMPORAL), "--version"])),
            ("dev server", "in memory; " + ", ".join(server_settings(args.partitions))),
        ],
    )
    if args.nodes > MAX_FLEET_FLOOR_NODES:
        print(f"\nThe per-node no-op runs up to {MAX_FLEET_FLOOR_NODES} nodes: skipped.")
    settings = [
        asyncio.run(measure(args.nodes, mu, args.runs, args.partitions, variants)) for mu in args.maxunavailable
    ]
    report(args.nodes, settings)
    return 0


if __name__ == "__main__":
    exit_process(main())  # not sys.exit: see workers.cli.exit_process
