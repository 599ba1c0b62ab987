"""The node worker process: serves one host's activities on ``kubeos-node-<NODE>``.

Reboot ordering: ``host_reboot`` only syncs and returns. The worker then stops polling and waits until the
running activities have finished and their results were reported (``Worker.shutdown``), and only then runs the
reboot command, so the workflow always learns that the reboot was ordered and no task is taken by a process that
is about to die. If the host does not go down after the command, the worker polls again (the boot id tells the
workflow that no reboot happened).

The worker also undoes a trial boot that nobody committed by its deadline (``node_worker/trial.py``): when it
starts and every ``TRIAL_CHECK`` after, it reboots the host into its saved slot, the same way.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path
from typing import Any

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
# How often the worker looks for a trial boot past its deadline (reading one small file when there is none).
TRIAL_CHECK = timedelta(seconds=10)


async def _connect(address: str | None, namespace: str | None, *until: asyncio.Event) -> Client | None:
    """Connect, retrying while the server is not up yet (a host may boot before Temporal is reachable); None once
    any of ``until`` is set (stop, or a reboot the host decided on itself)."""
    delay = 1.0
    while not any(event.is_set() for event in until):
        try:
            return await connect(address, namespace)
        except Exception as exc:  # the SDK raises plain RuntimeError for connection failures
            _log.warning("cannot reach Temporal (%s); retrying in %.0f s", exc, delay)
            waits = [asyncio.create_task(event.wait()) for event in until]
            await _wait_any(*waits, timeout=delay)
            for wait in waits:
                wait.cancel()
            delay = min(delay * 2, 30.0)
    return None


async def _wait_any(*tasks: asyncio.Task[Any], timeout: float | None = None) -> None:
    """Wait until one of ``tasks`` is done, or ``timeout`` seconds have passed."""
    await asyncio.wait(tasks, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)


async def _watch_trial(agent: HostAgent, reboot: asyncio.Event) -> None:
    """Undo a trial boot nobody committed by its deadline: at once (the host may come back into one long after
    its rollout gave up) and then every ``TRIAL_CHECK``, whether or not Temporal is reachable."""
    while True:
        if not reboot.is_set():
            try:
                if await asyncio.to_thread(agent.end_expired_trial):
                    reboot.set()
            except HostError as exc:  # HostBusy: another operation holds the host; check again next time
                _log.warning("could not check the trial boot deadline: %s", exc)
        await asyncio.sleep(TRIAL_CHECK.total_seconds())


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
    # Set by host_reboot once its result is reported, or by the trial watch; either way the worker stops polling
    # and lets running activities report before the reboot command runs.
    reboot = asyncio.Event()
    watch = asyncio.create_task(_watch_trial(agent, reboot))
    try:
        code = await _serve(agent, node_task_queue(node), address, namespace, stop, reboot)
    finally:
        watch.cancel()
    _log.info("node worker for %s stopped", node)
    return code


async def _serve(
    agent: HostAgent,
    queue: str,
    address: str | None,
    namespace: str | None,
    stop: asyncio.Event,
    reboot: asyncio.Event,
) -> int:
    client: Client | None = None
    with ThreadPoolExecutor(MAX_CONCURRENT_ACTIVITIES, thread_name_prefix="host-activity") as pool:
        while not stop.is_set():
            if client is None:
                client = await _connect(address, namespace, stop, reboot)
            elif not reboot.is_set():
                if not await _poll(client, queue, agent, pool, stop, reboot):
                    return 1
                if not reboot.is_set():
                    break  # stopped
            if reboot.is_set():
                reboot.clear()
                if await _reboot(agent, stop):
                    break
    return 0


async def _poll(
    client: Client,
    queue: str,
    agent: HostAgent,
    pool: ThreadPoolExecutor,
    stop: asyncio.Event,
    reboot: asyncio.Event,
) -> bool:
    """Serve the node activities until stop or reboot; False when the worker itself failed."""
    loop = asyncio.get_running_loop()

    def request_reboot() -> None:
        loop.call_soon_threadsafe(reboot.set)  # called on an activity thread

    worker = Worker(
        client,
        task_queue=queue,
        activities=NodeActivities(agent, request_reboot).all(),
        activity_executor=pool,
        max_concurrent_activities=MAX_CONCURRENT_ACTIVITIES,
        graceful_shutdown_timeout=timedelta(seconds=10),
    )
    running = asyncio.create_task(worker.run())
    _log.info("polling %s", queue)
    waits = [asyncio.create_task(stop.wait()), asyncio.create_task(reboot.wait())]
    await _wait_any(running, *waits)
    for wait in waits:
        wait.cancel()
    if not running.done():
        await worker.shutdown()  # stops polling; returns once running activities reported their results
    if running.done() and not running.cancelled() and running.exception() is not None:
        _log.error("worker failed: %s", running.exception())
        return False
    return True


async def _reboot(agent: HostAgent, stop: asyncio.Event) -> bool:
    """Run the reboot command; True once the host goes down (this process is stopped), False when it did not
    and the worker should serve again (the boot id tells a waiting workflow that no reboot happened)."""
    if await asyncio.to_thread(agent.run_reboot_command):
        try:
            await asyncio.wait_for(stop.wait(), REBOOT_GRACE.total_seconds())
            return True
        except TimeoutError:
            agent.log.error("the host did not go down after the reboot command; serving again")
    return False
