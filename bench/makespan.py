"""Makespan: our sliding window against the original's batch barrier and the lower bound, on skewed durations.

Node durations are drawn from a lognormal distribution (seeded) and scaled so that the lower bound,
max(longest node, total / maxunavailable), is ``--bound-seconds``. Then:

- ours, MEASURED: the real ClusterRollout on the Temporal dev server over the in-memory fleet, each node's stage
  sleeping for its duration; wall time from the start request to the result;
- sliding window, COMPUTED: the same order and window with no orchestration cost (each node starts the moment
  a slot frees), i.e. what ours would take if every Temporal round trip were free;
- batch barrier, COMPUTED: the original KubeOS behaviour, ``maxunavailable`` nodes at a time in the same order,
  the next batch only when the whole batch is done (exact, from the same durations);
- lower bound, COMPUTED.

The node's own orchestration cost (its steps' round trips through Temporal) is read from the children's
histories: their run time minus their duration.

``--suggest-continue-as-new N`` makes Temporal suggest continue-as-new after N events, so that a small run shows
what a large one does every ~4,096 parent events: the rollout lets its running nodes finish before it continues.

    python -m bench.makespan [--nodes 200] [--maxunavailable 20] [--sigma 1.0] [--seed 7] [--bound-seconds 60]
                             [--suggest-continue-as-new N]
"""

from __future__ import annotations

import argparse
import asyncio
import heapq
import random
import statistics
from dataclasses import dataclass

from temporalio.client import Client

from bench.report import Target, print_machine, print_table, print_targets, tool_version
from bench.temporal_env import (
    DEFAULT_PARTITIONS,
    TEMPORAL,
    fetch_events,
    fleet,
    run_rollout,
    server_settings,
    start_dev_server,
)
from models.rollout import NodeState, Phase
from workers.cli import exit_process


def durations(nodes: int, sigma: float, seed: int) -> list[float]:
    rng = random.Random(seed)
    return [rng.lognormvariate(0.0, sigma) for _ in range(nodes)]


def lower_bound(times: list[float], window: int) -> float:
    return max(max(times), sum(times) / window)


def batch_barrier(times: list[float], window: int) -> float:
    """Batches of ``window`` in order; each batch takes as long as its slowest node."""
    return sum(max(times[i : i + window]) for i in range(0, len(times), window))


def sliding_window(times: list[float], window: int) -> float:
    """In order, each node starting as soon as any of the ``window`` slots is free."""
    slots = [0.0] * min(window, len(times))
    for t in times:
        heapq.heappush(slots, heapq.heappop(slots) + t)
    return max(slots)


def scaled(times: list[float], window: int, bound_seconds: float) -> list[float]:
    factor = bound_seconds / lower_bound(times, window)
    return [t * factor for t in times]


@dataclass
class Measured:
    seconds: float
    #: (duration, the child's run time from its history) per node
    nodes: list[tuple[float, float]]
    continued_as_new: int


async def child_run_times(client: Client, children: list[tuple[str, str]]) -> dict[str, float]:
    """Each NodeUpgrade child's time from its first to its last event, keyed by node name."""
    times: dict[str, float] = {}
    for workflow_id, run_id in children:
        events = await fetch_events(client, workflow_id, run_id)
        span = events[-1].event_time.ToDatetime() - events[0].event_time.ToDatetime()
        times[workflow_id.rsplit("/", 1)[-1]] = span.total_seconds()
    return times


async def measure(times: list[float], window: int, suggest_continue_as_new: int | None) -> Measured:
    env = await start_dev_server(suggest_continue_as_new=suggest_continue_as_new)
    try:
        nodes = fleet(len(times), durations=times)
        run = await run_rollout(env.client, nodes, window)
        status = run.status
        if status.phase != Phase.SUCCEEDED or status.counts.get(NodeState.SUCCEEDED) != len(times):
            raise RuntimeError(f"the rollout did not upgrade every node: {status.phase} {status.counts}")
        run_times = await child_run_times(env.client, run.children)
        pairs = [(node.work_seconds, run_times[name]) for name, node in nodes.nodes.items() if name in run_times]
        return Measured(run.seconds, pairs, run.histories.continued_as_new)
    finally:
        await env.shutdown()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.makespan", description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=200, help="simulated nodes (default 200)")
    parser.add_argument("--maxunavailable", type=int, default=20, help="the window (default 20)")
    parser.add_argument("--sigma", type=float, default=1.0, help="lognormal sigma: the skew (default 1.0)")
    parser.add_argument("--seed", type=int, default=7, help="random seed of the durations (default 7)")
    parser.add_argument(
        "--bound-seconds", type=float, default=60.0, help="the lower bound after scaling (default 60 s)"
    )
    parser.add_argument(
        "--suggest-continue-as-new",
        type=int,
        metavar="N",
        help="history length at which the server suggests continue-as-new (server default 4096)",
    )
    args = parser.parse_args(argv)
    if args.nodes < 1 or args.maxunavailable < 1 or args.sigma < 0 or args.bound_seconds <= 0:
        parser.error("--nodes and --maxunavailable must be at least 1, --sigma at least 0, --bound-seconds positive")
    print_machine(
        "Makespan benchmark",
        [
            ("temporal", tool_version([str(TEMPORAL), "--version"])),
            (
                "dev server",
                "in memory; " + ", ".join(server_settings(DEFAULT_PARTITIONS, args.suggest_continue_as_new)),
            ),
        ],
    )
    window = args.maxunavailable
    times = scaled(durations(args.nodes, args.sigma, args.seed), window, args.bound_seconds)
    print_table(
        "Node durations (lognormal, scaled)",
        ("nodes", "maxunavailable", "sigma", "seed", "min s", "median s", "mean s", "max s", "total s"),
        [
            (
                args.nodes,
                window,
                args.sigma,
                args.seed,
                f"{min(times):.2f}",
                f"{statistics.median(times):.2f}",
                f"{statistics.mean(times):.2f}",
                f"{max(times):.2f}",
                f"{sum(times):.1f}",
            )
        ],
    )
    measured = asyncio.run(measure(times, window, args.suggest_continue_as_new))
    report(times, window, measured)
    return 0


def report(times: list[float], window: int, measured: Measured) -> None:
    bound = lower_bound(times, window)
    barrier = batch_barrier(times, window)
    ideal = sliding_window(times, window)
    rows = [
        ("lower bound: max(longest, total / maxunavailable)", "computed", bound),
        ("sliding window, no orchestration cost", "computed", ideal),
        (
            f"sliding window, ours (ClusterRollout on the dev server; {measured.continued_as_new} continue-as-new)",
            "measured",
            measured.seconds,
        ),
        ("batch barrier, the original (whole batch, then the next)", "computed", barrier),
    ]
    print_table(
        "Makespan",
        ("schedule", "how", "makespan s", "/ lower bound"),
        [(name, how, f"{seconds:.1f}", f"{seconds / bound:.2f}") for name, how, seconds in rows],
    )
    overheads = [run_time - duration for duration, run_time in measured.nodes]
    if overheads:
        print(
            f"\nPer-node orchestration cost (child run time minus its duration, from {len(overheads)} histories): "
            f"median {statistics.median(overheads):.2f} s, max {max(overheads):.2f} s. The sliding window computed "
            f"on the children's measured run times: {sliding_window([r for _, r in measured.nodes], window):.1f} s."
        )
    print_table(
        "Ratios to the lower bound",
        ("", "ratio"),
        [
            ("ours (measured) / lower bound", f"{measured.seconds / bound:.2f}"),
            ("batch barrier (computed) / lower bound", f"{barrier / bound:.2f}"),
        ],
    )
    print_targets([Target("ours (measured) / batch barrier (computed)", measured.seconds / barrier, 1.0)])


if __name__ == "__main__":
    exit_process(main())  # not sys.exit: see workers.cli.exit_process
