"""The cluster worker: runs the rollout workflows and the Kubernetes activities on queue ``kubeos-cluster``.

Stateless: any number of replicas may run (the deploy/ manifests run two); Temporal hands each task to one.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
from collections.abc import Callable, Sequence
from typing import Any

from temporalio.client import Client
from temporalio.worker import Worker

from activities import cluster
from activities.rollout import RolloutActivities
from models.rollout import CLUSTER_TASK_QUEUE
from workers.service import add_service_parser
from workflows.cluster_rollout import MAX_WINDOW, ClusterRollout
from workflows.node_upgrade import NodeUpgrade

log = logging.getLogger("kubeos_rollout.cluster_worker")

WORKFLOWS: Sequence[type] = (ClusterRollout, NodeUpgrade)
CLUSTER_ACTIVITIES: Sequence[Callable[..., Any]] = (
    cluster.list_nodes,
    cluster.get_node,
    cluster.cordon_node,
    cluster.uncordon_node,
    cluster.drain_node,
    cluster.wait_node_ready,
    cluster.record_event,
)


#: Workflows kept in this worker's memory between their tasks. Each rollout has up to ``MAX_WINDOW`` children
#: open at once; a worker whose cache cannot hold them all evicts one for every task it answers and replays its
#: history the next time (the SDK's default of 1,000 does exactly that at maxunavailable 1000). A cached
#: NodeUpgrade costs tens of KiB, so room for two full windows is cheap.
MAX_CACHED_WORKFLOWS = 2 * MAX_WINDOW + 100
MAX_CONCURRENT_ACTIVITIES = 64


def build_worker(
    client: Client,
    executor: concurrent.futures.ThreadPoolExecutor | None,
    *,
    web_ui: str = "",
    task_queue: str = CLUSTER_TASK_QUEUE,
    activities: Sequence[Callable[..., Any]] | None = None,
) -> Worker:
    """The worker, ready to ``run()``; the executor runs the synchronous Kubernetes activities. ``activities``
    replaces the Kubernetes ones and ``rollout_settings`` (the in-memory fleet of tests and benchmarks brings its
    own); the rollout's ``await_node_upgrade`` is always there."""
    rollout = RolloutActivities(client, web_ui)
    if activities is None:
        activities = [*CLUSTER_ACTIVITIES, rollout.rollout_settings]
    return Worker(
        client,
        task_queue=task_queue,
        workflows=list(WORKFLOWS),
        activities=[*activities, rollout.await_node_upgrade],
        activity_executor=executor,
        max_concurrent_activities=MAX_CONCURRENT_ACTIVITIES,
        max_cached_workflows=MAX_CACHED_WORKFLOWS,
    )


async def run_worker(client: Client, web_ui: str, stop: asyncio.Event) -> None:
    with concurrent.futures.ThreadPoolExecutor(max_workers=MAX_CONCURRENT_ACTIVITIES) as executor:
        worker = build_worker(client, executor, web_ui=web_ui)
        log.info("cluster worker polling %s on %s", CLUSTER_TASK_QUEUE, client.service_client.config.target_host)
        async with worker:
            await stop.wait()
            log.info("shutting down: finishing the tasks in hand")


def register(sub: Any) -> None:
    add_service_parser(
        sub, "worker", "run the cluster worker (rollout workflows and Kubernetes activities)", run_worker
    )
