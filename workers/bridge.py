"""The CR bridge: ``OS`` resources in, rollouts out, status back.

For each generation of each ``OS`` resource it starts one ``ClusterRollout`` (workflow id
``kubeos/<namespace>/<name>/<uid>/g<generation>``, so a re-applied resource or a restarted bridge finds the same
rollout instead of starting another). A newer generation first asks the running rollout to step aside
(``supersede``: running nodes finish, no new ones start) and starts only when it has ended, so two rollouts never
work on one node. The bridge keeps the status subresource current (phase, progress, counts, nodes, conditions,
workflow id, Web UI link) and records Kubernetes Events on every phase change and node failure. An invalid
resource gets a ``Valid=False`` condition and a Warning event naming the fields, and no rollout.

The bridge holds no state of its own: on start it lists every resource and picks up where the status says it
was, then watches from the listed resourceVersion.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, cast
from urllib.parse import quote

from kubernetes import client as k8s
from kubernetes import watch
from kubernetes.client.exceptions import ApiException
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.service import RPCError

from activities.cluster import record_event
from activities.kube import api_client, use_kubeconfig
from models.cluster import EventInput, ObjectRef
from models.os_resource import (
    API_VERSION,
    GROUP,
    KIND,
    PLURAL,
    VERSION,
    Condition,
    NodeStatus,
    OSStatus,
    check_os_document,
)
from models.rollout import TERMINAL_PHASES, NodeState, Phase, RolloutStatus
from workers.rollout_cmd import start_rollout
from workers.temporal_client import connect

log = logging.getLogger("kubeos_rollout.bridge")

#: Status lists at most this many nodes (running and failed first): etcd objects must stay small.
MAX_STATUS_NODES = 100
_NODE_ORDER = {NodeState.FAILED: 0, NodeState.RUNNING: 1, NodeState.ROLLING_BACK: 2, NodeState.REFUSED: 3}
_RUNNING = WorkflowExecutionStatus.RUNNING


def rollout_id(namespace: str, name: str, uid: str, generation: int) -> str:
    return f"kubeos/{namespace}/{name}/{uid[:8] or 'nouid'}/g{generation}"


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class Tracked:
    """A resource generation the bridge is following."""

    namespace: str
    name: str
    uid: str
    generation: int
    workflow_id: str
    run_id: str = ""
    last: RolloutStatus | None = None
    failed_seen: set[str] = field(default_factory=set)
    started: bool = False  # the workflow exists (started now, or found from an earlier bridge)
    done: bool = False


class Bridge:
    def __init__(self, client: Client, *, web_ui: str = "", sync_seconds: float = 2.0) -> None:
        self._client = client
        self._web_ui = web_ui.rstrip("/")
        self._sync_seconds = sync_seconds
        self._api = k8s.CustomObjectsApi(api_client())
        self._tracked: dict[tuple[str, str], Tracked] = {}
        #: One task per resource that waits for an older rollout to step aside, then starts the new one.
        self._starting: dict[tuple[str, str], asyncio.Task[None]] = {}

    # ---------------------------------------------------------------------------------------- main loop

    async def run(self, stop: asyncio.Event) -> None:
        events: asyncio.Queue[tuple[str, dict[str, Any]]] = asyncio.Queue()
        loop = asyncio.get_running_loop()
        halt = threading.Event()
        resource_version = await self._relist()
        watcher = loop.run_in_executor(None, self._watch, resource_version, events, loop, halt)
        syncer = asyncio.create_task(self._sync_forever(stop))
        try:
            while not stop.is_set():
                getter = asyncio.create_task(events.get())
                stopper = asyncio.create_task(stop.wait())
                done, _ = await asyncio.wait({getter, stopper}, return_when=asyncio.FIRST_COMPLETED)
                for task in (getter, stopper):
                    if task not in done:
                        task.cancel()
                if getter in done:
                    kind, obj = getter.result()
                    await self._on_event(kind, obj)
        finally:
            halt.set()
            syncer.cancel()
            for starter in self._starting.values():
                starter.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await syncer
            with contextlib.suppress(Exception):
                await asyncio.wait_for(watcher, timeout=5)

    async def _relist(self) -> str:
        listing = cast(
            dict[str, Any],
            await asyncio.to_thread(lambda: self._api.list_cluster_custom_object(GROUP, VERSION, PLURAL)),
        )
        for obj in listing.get("items", []):
            await self._on_event("ADDED", obj)
        return str(listing.get("metadata", {}).get("resourceVersion", ""))

    def _watch(
        self,
        resource_version: str,
        events: asyncio.Queue[tuple[str, dict[str, Any]]],
        loop: asyncio.AbstractEventLoop,
        halt: threading.Event,
    ) -> None:
        """Runs in a thread (the client is synchronous); hands events to the event loop, re-lists on 410."""
        while not halt.is_set():
            try:
                stream = watch.Watch().stream(
                    self._api.list_cluster_custom_object,
                    GROUP,
                    VERSION,
                    PLURAL,
                    resource_version=resource_version or None,
                    timeout_seconds=5,
                )
                for event in stream:
                    obj = event["object"]
                    resource_version = obj.get("metadata", {}).get("resourceVersion", resource_version)
                    loop.call_soon_threadsafe(events.put_nowait, (event["type"], obj))
                    if halt.is_set():
                        return
            except ApiException as exc:
                if exc.status == 410:  # our resourceVersion is too old: start from a fresh list
                    resource_version = asyncio.run_coroutine_threadsafe(self._relist(), loop).result()
                else:
                    log.warning("watch of OS resources failed (%s); retrying", exc.reason)
                    halt.wait(2)
            except Exception as exc:  # the API server went away: keep trying, the bridge must not die
                log.warning("watch of OS resources interrupted: %s; retrying", exc)
                halt.wait(2)

    # ---------------------------------------------------------------------------------------- resources

    async def _on_event(self, kind: str, obj: Mapping[str, Any]) -> None:
        try:
            await self._handle(kind, obj)
        except Exception:  # one bad resource or a passing API failure must not stop the bridge
            log.exception("handling %s of %s failed", kind, _describe(obj))

    async def _handle(self, kind: str, obj: Mapping[str, Any]) -> None:
        metadata = obj.get("metadata") if isinstance(obj.get("metadata"), Mapping) else None
        if metadata is None or not metadata.get("name"):
            log.warning("ignoring an OS object without metadata.name")
            return
        namespace = str(metadata.get("namespace") or "default")
        name = str(metadata["name"])
        key = (namespace, name)
        if kind == "DELETED":
            tracked = self._tracked.pop(key, None)
            if tracked and not tracked.done:
                await self._supersede(tracked, "the OS resource was deleted")
            return
        generation = metadata.get("generation")
        generation = generation if isinstance(generation, int) and generation > 0 else 1
        uid = str(metadata.get("uid") or "")
        raw_status = obj.get("status")
        status: Mapping[str, Any] = raw_status if isinstance(raw_status, Mapping) else {}
        workflow_id = rollout_id(namespace, name, uid, generation)
        current = self._tracked.get(key)
        if current is not None and current.workflow_id == workflow_id:
            return  # a status update of ours, or a re-apply of the same spec
        previous_id = str(status.get("workflowId") or "")
        report = check_os_document(obj)
        if not report.valid:
            if current is not None and not current.done:
                await self._supersede(current, f"generation {generation} of the resource")
            self._tracked.pop(key, None)
            await self._mark_invalid(namespace, name, uid, generation, [str(e) for e in report.errors], status)
            return
        tracked = Tracked(namespace, name, uid, generation, workflow_id)
        older = current if current is not None and not current.done else None
        if older is None and previous_id and previous_id != workflow_id:
            older = Tracked(namespace, name, uid, generation - 1, previous_id)  # known from status after a restart
        self._tracked[key] = tracked
        task = self._starting.pop(key, None)
        if task is not None:
            task.cancel()
        self._starting[key] = asyncio.create_task(self._start_after(tracked, older, dict(obj)))

    async def _start_after(self, tracked: Tracked, older: Tracked | None, obj: dict[str, Any]) -> None:
        if older is not None:
            await self._supersede(older, f"generation {tracked.generation}")
            await self._await_end(older.workflow_id)
        try:
            handle = await start_rollout(self._client, obj, tracked.workflow_id)
            tracked.run_id = handle.result_run_id or ""
            started = True
        except WorkflowAlreadyStartedError:
            started = False  # it ran and completed before (bridge restarted): only its status is needed
        tracked.started = True
        if started:
            await self._event(tracked, "RolloutStarted", f"rollout {tracked.workflow_id} started", "Normal")
        await self._sync(tracked)

    async def _supersede(self, tracked: Tracked, by: str) -> None:
        handle = self._client.get_workflow_handle(tracked.workflow_id)
        with contextlib.suppress(RPCError):
            description = await handle.describe()
            if description.status == _RUNNING:
                await handle.signal("supersede", by)
                log.info("asked %s to step aside for %s", tracked.workflow_id, by)

    async def _await_end(self, workflow_id: str) -> None:
        handle = self._client.get_workflow_handle(workflow_id)
        with contextlib.suppress(Exception):
            await handle.result()

    async def _mark_invalid(
        self, namespace: str, name: str, uid: str, generation: int, errors: list[str], status: Mapping[str, Any]
    ) -> None:
        if status.get("phase") == "Invalid" and status.get("observedGeneration") == generation:
            return  # already reported (e.g. after a bridge restart)
        message = "; ".join(errors)
        new_status = OSStatus(
            phase="Invalid",
            progress="-",
            observedGeneration=generation,
            conditions=[
                Condition(
                    type="Valid", status="False", reason="InvalidSpec", message=message, lastTransitionTime=_now()
                )
            ],
        )
        await self._patch_status(namespace, name, new_status)
        ref = Tracked(namespace, name, uid, generation, "")
        await self._event(ref, "InvalidSpec", f"no rollout started: {message}", "Warning")

    # ---------------------------------------------------------------------------------------- status

    async def _sync_forever(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            for tracked in list(self._tracked.values()):
                if tracked.started and not tracked.done:
                    await self._sync(tracked)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=self._sync_seconds)

    async def _sync(self, tracked: Tracked) -> None:
        handle = self._client.get_workflow_handle(tracked.workflow_id, result_type=RolloutStatus)
        try:
            description = await handle.describe()
            if description.status == _RUNNING:
                status = await handle.query("status", result_type=RolloutStatus)
            elif description.status == WorkflowExecutionStatus.COMPLETED:
                status = await handle.result()
            else:  # failed, terminated, cancelled, timed out
                await self._report_ended(tracked, description.status)
                return
        except RPCError as exc:
            log.debug("status of %s not available yet: %s", tracked.workflow_id, exc.message)
            return
        tracked.run_id = description.run_id or tracked.run_id
        await self._publish(tracked, status)

    async def _publish(self, tracked: Tracked, status: RolloutStatus) -> None:
        previous = tracked.last
        tracked.last = status
        if previous is not None and previous.model_dump() == status.model_dump():
            return
        if previous is None or previous.phase != status.phase:
            reason = f"Rollout{status.phase}"
            kind = "Warning" if status.phase in (Phase.PAUSED, Phase.COMPLETED_WITH_FAILURES) else "Normal"
            detail = status.pause_reason or status.rollback_reason
            await self._event(
                tracked, reason, f"{status.phase}: {status.progress}" + (f" ({detail})" if detail else ""), kind
            )
        for node, why in sorted(status.failures.items()):
            if node not in tracked.failed_seen:
                tracked.failed_seen.add(node)
                await self._event(tracked, "NodeFailed", f"{node}: {why}", "Warning")
        if status.phase in TERMINAL_PHASES:
            tracked.done = True
        await self._patch_status(tracked.namespace, tracked.name, self._os_status(tracked, status))

    async def _report_ended(self, tracked: Tracked, how: WorkflowExecutionStatus | None) -> None:
        tracked.done = True
        name = how.name.title() if how else "Unknown"
        status = OSStatus(
            phase=name,
            observedGeneration=tracked.generation,
            workflowId=tracked.workflow_id,
            webUI=self._link(tracked),
            conditions=[Condition(type="Completed", status="True", reason=name, lastTransitionTime=_now())],
        )
        await self._patch_status(tracked.namespace, tracked.name, status)
        await self._event(tracked, f"Rollout{name}", f"the rollout workflow ended: {name}", "Warning")

    def _link(self, tracked: Tracked) -> str:
        if not self._web_ui:
            return ""
        return f"{self._web_ui}/namespaces/{self._client.namespace}/workflows/{quote(tracked.workflow_id, safe='')}"

    def _os_status(self, tracked: Tracked, status: RolloutStatus) -> OSStatus:
        counts = status.counts
        nodes = sorted(status.nodes, key=lambda e: (_NODE_ORDER.get(e.state, 9), e.name))[:MAX_STATUS_NODES]
        terminal = status.phase in TERMINAL_PHASES
        conditions = [
            Condition(type="Valid", status="True", reason="Accepted", lastTransitionTime=_now()),
            Condition(
                type="Completed",
                status="True" if terminal else "False",
                reason=str(status.phase),
                message=f"{status.progress} nodes on {status.target_version}",
                lastTransitionTime=_now(),
            ),
            Condition(
                type="Paused",
                status="True" if status.paused else "False",
                reason="Paused" if status.paused else "Running",
                message=status.pause_reason,
                lastTransitionTime=_now(),
            ),
            Condition(
                type="Degraded",
                status="True" if status.failures else "False",
                reason="NodesFailed" if status.failures else "NoFailures",
                message="; ".join(f"{n}: {m}" for n, m in sorted(status.failures.items()))[:1000],
                lastTransitionTime=_now(),
            ),
        ]
        return OSStatus(
            phase=str(status.phase),
            progress=status.progress,
            observedGeneration=tracked.generation,
            workflowId=tracked.workflow_id,
            runId=tracked.run_id,
            webUI=self._link(tracked),
            total=status.total,
            succeeded=counts.get(NodeState.SUCCEEDED, 0) + counts.get(NodeState.UP_TO_DATE, 0),
            failed=counts.get(NodeState.FAILED, 0),
            inProgress=len(status.in_flight),
            nodes=[NodeStatus(name=e.name, state=str(e.state), message=e.message[:300]) for e in nodes],
            conditions=conditions,
        )

    async def _patch_status(self, namespace: str, name: str, status: OSStatus) -> None:
        body = {"status": status.model_dump(mode="json")}
        try:
            await asyncio.to_thread(
                self._api.patch_namespaced_custom_object_status, GROUP, VERSION, namespace, PLURAL, name, body
            )
        except ApiException as exc:
            if exc.status != 404:  # deleted meanwhile: nothing to report on
                log.warning("status of OS %s/%s not written: %s", namespace, name, exc.reason)

    async def _event(self, tracked: Tracked, reason: str, message: str, kind: str) -> None:
        event = EventInput(
            namespace=tracked.namespace,
            involved_object=ObjectRef(
                api_version=API_VERSION, kind=KIND, name=tracked.name, namespace=tracked.namespace, uid=tracked.uid
            ),
            reason=reason,
            message=message[:1000],
            type="Warning" if kind == "Warning" else "Normal",
        )
        try:
            await asyncio.to_thread(record_event, event)
        except Exception as exc:  # events are best effort; the status carries the same facts
            log.warning("event %s for OS %s/%s not recorded: %s", reason, tracked.namespace, tracked.name, exc)


def _describe(obj: Mapping[str, Any]) -> str:
    metadata = obj.get("metadata") if isinstance(obj, Mapping) else None
    if isinstance(metadata, Mapping):
        return f"OS {metadata.get('namespace', 'default')}/{metadata.get('name', '?')}"
    return "an OS object"


async def run_bridge(address: str | None, namespace: str | None, web_ui: str, kubeconfig: str | None) -> None:
    if kubeconfig:
        use_kubeconfig(kubeconfig)
    client = await connect(address, namespace)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    log.info("bridge watching %s resources", PLURAL)
    await Bridge(client, web_ui=web_ui).run(stop)


def register(sub: Any) -> None:
    parser = sub.add_parser("bridge", help="watch OS resources and run a rollout for each generation")
    parser.add_argument("--address", help="Temporal frontend host:port (default: TEMPORAL_ADDRESS or profile)")
    parser.add_argument("--namespace", help="Temporal namespace (default: TEMPORAL_NAMESPACE or profile)")
    parser.add_argument("--kubeconfig", help="kubeconfig file (default: KUBECONFIG, in-cluster, ~/.kube/config)")
    parser.add_argument("--web-ui", default="", help="Temporal Web UI base URL, for links in the OS status")
    parser.set_defaults(handler=_main)


def _main(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    asyncio.run(run_bridge(args.address, args.namespace, args.web_ui, args.kubeconfig))
    return 0
