"""The node worker process: serves one host's activities on ``kubeos-node-<NODE>``.

Reboot ordering: ``host_reboot`` only syncs and returns. The worker then stops polling and waits until the
running activities have finished and their results were reported (``Worker.shutdown``), and only then runs the
reboot command, so the workflow always learns that the reboot was ordered and no task is taken by a process that
is about to die. If the host does not go down after the command, the worker polls again (the boot id tells the
workflow that no reboot happened).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path

from temporalio.client import Client
from temporalio.worker import Worker

from activities.node import NodeActivities
from models.host import node_task_queue
from node_worker.agent import HostAgent
from node_worker.config import load_host_config
from node_worker.errors import HostError
from node_worker.nodelog import setup_process_logging
from workers.temporal_client import connect

_log = logging.getLogger("kubeos.node.worker")
# Activity threads: the host lock keeps disk operations one at a time; reads (report) may run beside them.
MAX_CONCURRENT_ACTIVITIES = 4
# How long a worker whose reboot command succeeded waits for the machine to go down before polling again.
REBOOT_GRACE = timedelta(minutes=5)


async def _connect(address: str | None, namespace: str | None, stop: asyncio.Event) -> Client | None:
    """Connect, retrying while the server is not up yet (a host may boot before Temporal is reachable)."""
    delay = 1.0
    while not stop.is_set():
        try:
            return await connect(address, namespace)
        except Exception as exc:  # the SDK raises plain RuntimeError for connection failures
            _log.warning("cannot reach Temporal (%s); retrying in %.0f s", exc, delay)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)
            delay = min(delay * 2, 30.0)
    return None


async def _wait_any(*aws: asyncio.Future[object] | asyncio.Task[object]) -> None:
    await asyncio.wait(aws, return_when=asyncio.FIRST_COMPLETED)


async def serve(node: str, config_path: Path, address: str | None = None, namespace: str | None = None) -> int:
    """Run until SIGTERM/SIGINT; returns the process exit code."""
    config = load_host_config(config_path)
    setup_process_logging(config)
    agent = HostAgent(config, node=node)
    try:
        status = agent.status()
        release = status.slots[status.booted_slot].os_release
        agent.log.info(
            f"node worker for {node} starting: booted slot {status.booted_slot} "
            f"({release.pretty_name if release else 'no os-release'}), boot id {status.boot_id}"
            f"{', trial boot' if status.trial else ''}"
        )
    except HostError as exc:  # serve anyway: the activities report the problem to the workflow
        agent.log.error(f"node worker for {node} starting on a host it cannot read: {exc}")

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    client = await _connect(address, namespace, stop)
    if client is None:
        return 0
    queue = node_task_queue(node)
    with ThreadPoolExecutor(MAX_CONCURRENT_ACTIVITIES, thread_name_prefix="host-activity") as pool:
        while not stop.is_set():
            reboot = asyncio.Event()

            def request_reboot(ev: asyncio.Event = reboot) -> None:
                loop.call_soon_threadsafe(ev.set)  # called on an activity thread

            activities = NodeActivities(agent, request_reboot)
            worker = Worker(
                client,
                task_queue=queue,
                activities=activities.all(),
                activity_executor=pool,
                max_concurrent_activities=MAX_CONCURRENT_ACTIVITIES,
                graceful_shutdown_timeout=timedelta(seconds=10),
            )
            running = asyncio.create_task(worker.run())
            _log.info("polling %s", queue)
            stopping = asyncio.create_task(stop.wait())
            rebooting = asyncio.create_task(reboot.wait())
            await _wait_any(running, stopping, rebooting)
            stopping.cancel()
            rebooting.cancel()
            if not running.done():
                await worker.shutdown()  # stops polling; returns once running activities reported their results
            if running.done() and not running.cancelled() and running.exception() is not None:
                _log.error("worker failed: %s", running.exception())
                return 1
            if not reboot.is_set():
                break
            if await asyncio.to_thread(agent.run_reboot_command):
                try:
                    await asyncio.wait_for(stop.wait(), REBOOT_GRACE.total_seconds())
                    break
                except TimeoutError:
                    agent.log.error("the host did not go down after the reboot command; serving again")
    _log.info("node worker for %s stopped", node)
    return 0
