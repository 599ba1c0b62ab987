"""The Temporal side of the rollout benchmarks: the dev server from the venv, a rollout over the in-memory fleet,
and the figures read back from the histories (events, activities, continue-as-new, the largest history).

Histories are found by following the rollout's own records (each run's continue-as-new event names the next run,
each child-started event names the child), not through visibility, which is eventually consistent.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from temporalio.api.enums.v1 import EventType
from temporalio.api.history.v1 import HistoryEvent
from temporalio.client import Client
from temporalio.common import SearchAttributeKey
from temporalio.testing import WorkflowEnvironment

from devstack.fake_fleet import FakeFleet, FakeNode
from devstack.procstat import child_pids, process_cpu
from models.rollout import CLUSTER_TASK_QUEUE, ROLLOUT_WORKFLOW, SEARCH_ATTRIBUTES, RolloutStatus
from workers.temporal_client import data_converter

TEMPORAL = Path(sys.executable).parent / "temporal"
OLD, NEW = "KubeOS 1.0.0", "KubeOS 1.0.1"
#: Temporal warns at 10,240 events in one history (the hard limit is 51,200).
HISTORY_WARNING = 10_240
#: Partitions per task queue. One is right for a host's queue, which has one worker: with the server's default of
#: 4, a thousand node queues make the server load and sync 8,000 partitions (it then rate-limits its own calls).
DEFAULT_PARTITIONS = 1
_FETCH_CONCURRENCY = 32
#: The marker the SDKs record for a local activity.
LOCAL_ACTIVITY_MARKER = "core_local_activity"


def server_settings(partitions: int, suggest_continue_as_new: int | None = None) -> list[str]:
    """The dev server's dynamic configuration for a benchmark: ``partitions`` per task queue, and optionally the
    history length at which Temporal suggests continue-as-new (the server's default is 4,096 events)."""
    settings = [
        f"matching.numTaskqueueReadPartitions={partitions}",
        f"matching.numTaskqueueWritePartitions={partitions}",
    ]
    if suggest_continue_as_new is not None:
        settings.append(f"limit.historyCount.suggestContinueAsNew={suggest_continue_as_new}")
    return settings


async def start_dev_server(
    partitions: int = DEFAULT_PARTITIONS, suggest_continue_as_new: int | None = None
) -> WorkflowEnvironment:
    """A Temporal dev server (in memory) on 127.0.0.1 with the rollout's search attributes registered."""
    if not TEMPORAL.exists():
        raise RuntimeError(f"{TEMPORAL} is missing: install the dev extras (make deps)")
    settings = server_settings(partitions, suggest_continue_as_new)
    args = [arg for setting in settings for arg in ("--dynamic-config-value", setting)]
    return await WorkflowEnvironment.start_local(
        data_converter=data_converter(),
        dev_server_existing_path=str(TEMPORAL),
        dev_server_log_level="error",
        search_attributes=[SearchAttributeKey.for_keyword(name) for name in SEARCH_ATTRIBUTES],
        dev_server_extra_args=args,
    )


def os_resource(maxunavailable: int) -> dict[str, Any]:
    """A disk upgrade to ``NEW``; the fake fleet never downloads, so the URL and checksum are only well formed."""
    return {
        "apiVersion": "upgrade.openeuler.org/v1alpha1",
        "kind": "OS",
        "metadata": {"name": "bench"},
        "spec": {
            "imagetype": "disk",
            "opstype": "upgrade",
            "osversion": NEW,
            "maxunavailable": maxunavailable,
            "imageurl": "https://images.example/update.img",
            "checksum": "ab" * 32,
            "cacert": "ca.crt",
        },
    }


def fleet(nodes: int, durations: list[float] | None = None, step: float = 0.0) -> FakeFleet:
    """``nodes`` fake nodes on ``OLD``, named so that plan order is index order; ``durations[i]`` is node i's own
    work time (default: none, instant nodes)."""
    prefix = uuid.uuid4().hex[:6]
    width = len(str(max(nodes - 1, 0)))
    return FakeFleet(
        [
            FakeNode(f"n{i:0{width}d}-{prefix}", OLD, work_seconds=durations[i] if durations else 0.0)
            for i in range(nodes)
        ],
        step=step,
    )


def server_pid() -> int | None:
    """The dev server is this process's child: its CPU time tells the server's share of the cost."""
    pids = child_pids(os.getpid(), "temporal")
    return pids[0] if pids else None


@dataclass
class CpuClock:
    """CPU seconds of the dev server and of this process (workflows, activities, client) over a measurement."""

    server_pid: int | None = field(default_factory=server_pid)
    server: float = 0.0
    worker: float = 0.0

    def __enter__(self) -> CpuClock:
        self._server, self._worker = process_cpu(self.server_pid), time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server = process_cpu(self.server_pid) - self._server
        self.worker = time.process_time() - self._worker


@dataclass
class HistoryStats:
    executions: int = 0
    events: int = 0
    largest: int = 0
    largest_id: str = ""
    #: activities scheduled on a task queue plus local activities (one marker each)
    activities: int = 0
    local_activities: int = 0
    continued_as_new: int = 0
    by_type: Counter[str] = field(default_factory=Counter)

    def add(self, workflow_id: str, events: list[HistoryEvent]) -> None:
        self.executions += 1
        self.events += len(events)
        if len(events) > self.largest:
            self.largest, self.largest_id = len(events), workflow_id
        for event in events:
            self.by_type[EventType.Name(event.event_type)] += 1
            if (
                event.event_type == EventType.EVENT_TYPE_MARKER_RECORDED
                and event.marker_recorded_event_attributes.marker_name == LOCAL_ACTIVITY_MARKER
            ):
                self.local_activities += 1
        self.activities = self.by_type["EVENT_TYPE_ACTIVITY_TASK_SCHEDULED"] + self.local_activities
        self.continued_as_new = self.by_type["EVENT_TYPE_WORKFLOW_EXECUTION_CONTINUED_AS_NEW"]


async def fetch_events(client: Client, workflow_id: str, run_id: str) -> list[HistoryEvent]:
    handle = client.get_workflow_handle(workflow_id, run_id=run_id)
    return [event async for event in handle.fetch_history_events()]


async def collect(client: Client, executions: list[tuple[str, str]], stats: HistoryStats | None = None) -> HistoryStats:
    """Add the histories of ``executions`` (workflow id, run id) to ``stats``."""
    stats = stats or HistoryStats()
    limit = asyncio.Semaphore(_FETCH_CONCURRENCY)

    async def one(workflow_id: str, run_id: str) -> None:
        async with limit:
            stats.add(workflow_id, await fetch_events(client, workflow_id, run_id))

    await asyncio.gather(*(one(wid, rid) for wid, rid in executions))
    return stats


async def family_histories(
    client: Client, workflow_id: str, first_run_id: str
) -> tuple[HistoryStats, list[tuple[str, str]]]:
    """The histories of every run of a workflow (continue-as-new chain) and of every child it started; and the
    children as (workflow id, run id)."""
    stats = HistoryStats()
    children: list[tuple[str, str]] = []
    run_id: str | None = first_run_id
    while run_id:
        events = await fetch_events(client, workflow_id, run_id)
        stats.add(workflow_id, events)
        run_id = None
        for event in events:
            if event.event_type == EventType.EVENT_TYPE_CHILD_WORKFLOW_EXECUTION_STARTED:
                child = event.child_workflow_execution_started_event_attributes.workflow_execution
                children.append((child.workflow_id, child.run_id))
            elif event.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CONTINUED_AS_NEW:
                run_id = event.workflow_execution_continued_as_new_event_attributes.new_execution_run_id
    return await collect(client, children, stats), children


@dataclass
class RolloutRun:
    workflow_id: str
    seconds: float
    status: RolloutStatus
    histories: HistoryStats
    children: list[tuple[str, str]]
    cpu: CpuClock


async def run_rollout(client: Client, nodes: FakeFleet, maxunavailable: int) -> RolloutRun:
    """The real ClusterRollout over ``nodes``; timed from the start request to the result (workers already up)."""
    async with nodes.workers(client, node_pollers=1):
        with CpuClock() as cpu:
            start = time.perf_counter()
            handle = await client.start_workflow(
                ROLLOUT_WORKFLOW,
                os_resource(maxunavailable),
                id=f"bench-rollout-{uuid.uuid4().hex[:8]}",
                task_queue=CLUSTER_TASK_QUEUE,
                result_type=RolloutStatus,
            )
            status = await handle.result()
            seconds = time.perf_counter() - start
    histories, children = await family_histories(client, handle.id, handle.first_execution_run_id or "")
    return RolloutRun(handle.id, seconds, status, histories, children, cpu)
