"""The CR bridge: ``OS`` resources in, rollouts out, status back.

For each generation of each ``OS`` resource it starts one ``ClusterRollout`` (workflow id
``kubeos/<namespace>/<name>/<uid>/g<generation>``, so a re-applied resource or a restarted bridge finds the same
rollout instead of starting another). A newer generation first asks every running rollout of the resource to step
aside (``supersede``: running nodes finish, no new ones start) and starts only when they have ended, so two
rollouts never work on one node. Which rollouts run is asked of Temporal (the source of truth, which outlives the
bridge) as well as remembered, because a just-started workflow may not be listed yet.

The bridge keeps the status subresource current (phase, progress, counts, nodes, conditions, workflow id, Web UI
link) and records Kubernetes Events on every phase change and node failure. An invalid resource gets a
``Valid=False`` condition and a Warning event naming the fields, and no rollout.

The bridge holds no state of its own: on start it lists every resource and picks up where the status and
Temporal say it was (no second workflow, no repeated Events), asks the rollouts of resources deleted meanwhile to
step aside, then watches from the listed resourceVersion.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, cast
from urllib.parse import quote

from kubernetes import client as k8s
from kubernetes import watch
from kubernetes.client.exceptions import ApiException
from temporalio.client import Client, WorkflowExecutionStatus, WorkflowFailureError
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from activities.cluster import record_event
from activities.kube import api_client
from models.cluster import EventInput, ObjectRef
from models.os_resource import (
    API_VERSION,
    GROUP,
    KIND,
    NODESELECTOR_ALL,
    NODESELECTOR_NO_LABEL,
    PLURAL,
    VERSION,
    Condition,
    NodeStatus,
    OSStatus,
    check_os_document,
)
from models.rollout import ROLLOUT_WORKFLOW, TERMINAL_PHASES, NodeState, Phase, RolloutStatus
from workers.rollout_cmd import start_rollout
from workers.service import add_service_parser

log = logging.getLogger("kubeos_rollout.bridge")

#: Status lists at most this many nodes (running and failed first): etcd objects must stay small.
MAX_STATUS_NODES = 100
_NODE_ORDER = {NodeState.FAILED: 0, NodeState.RUNNING: 1, NodeState.ROLLING_BACK: 2, NodeState.REFUSED: 3}
_RUNNING = WorkflowExecutionStatus.RUNNING
#: A query answers within this, or the next sync tries again (no worker polling: it would wait long).
_QUERY_TIMEOUT = timedelta(seconds=10)
#: Pause before trying again to start a rollout when Temporal could not be reached.
_RETRY_SECONDS = 5.0


def rollout_id(namespace: str, name: str, uid: str, generation: int) -> str:
    return f"kubeos/{namespace}/{name}/{uid[:8] or 'nouid'}/g{generation}"


#: The ids :func:`rollout_id` makes (``kubeos-rollout start`` ids have no generation part and are left alone).
_ROLLOUT_ID = re.compile(r"^kubeos/(?P<namespace>[^/]+)/(?P<name>[^/]+)/[^/]+/g\d+$")


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
    #: The phase last announced with an Event (taken from the status after a restart, so none is repeated).
    phase: str = ""
    failed_seen: set[str] = field(default_factory=set)
    #: Conditions as last written, so that lastTransitionTime moves only when a condition's status changes.
    conditions: dict[str, Condition] = field(default_factory=dict)
    #: Rollouts of earlier generations this one waits for (they were asked to step aside).
    after: list[str] = field(default_factory=list)
    started: bool = False  # the workflow exists (started now, or found from an earlier bridge)
    done: bool = False
    #: The resource's nodeselector: two resources selecting the same nodes never roll out at the same time.
    selector: str = ""

    def overlaps(self, other: Tracked) -> bool:
        """Whether both may select one node: the same selector, or one of them selects every node."""
        return self.selector == other.selector or NODESELECTOR_ALL in (self.selector, other.selector)


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
        # A daemon thread, not the loop's executor: its request ends only with the watch's server-side timeout,
        # and nothing (not even asyncio.run's executor shutdown) should wait for that to stop the bridge.
        watcher = threading.Thread(
            target=self._watch, args=(resource_version, events, loop, halt), name="os-watch", daemon=True
        )
        watcher.start()
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

    async def _relist(self) -> str:
        listing = cast(
            dict[str, Any],
            await asyncio.to_thread(lambda: self._api.list_cluster_custom_object(GROUP, VERSION, PLURAL)),
        )
        present: set[tuple[str, str]] = set()
        for obj in listing.get("items", []):
            metadata = obj.get("metadata") or {}
            present.add((str(metadata.get("namespace") or "default"), str(metadata.get("name") or "")))
            await self._on_event("ADDED", obj)
        await self._supersede_orphans(present)
        return str(listing.get("metadata", {}).get("resourceVersion", ""))

    async def _supersede_orphans(self, present: set[tuple[str, str]]) -> None:
        """Rollouts whose resource was deleted while no bridge watched: the DELETED event is gone for good."""
        for workflow_id in sorted(await self._running_rollouts("kubeos/")):
            match = _ROLLOUT_ID.match(workflow_id)
            if match and (match["namespace"], match["name"]) not in present:
                await self._supersede(workflow_id, "the OS resource was deleted")

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
                    if halt.is_set():  # the bridge has stopped (its loop may be closed): drop the event
                        return
                    obj = event["object"]
                    resource_version = obj.get("metadata", {}).get("resourceVersion", resource_version)
                    loop.call_soon_threadsafe(events.put_nowait, (event["type"], obj))
            except ApiException as exc:
                if halt.is_set():
                    return
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
            for workflow_id in await self._retire(key):
                await self._supersede(workflow_id, "the OS resource was deleted")
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
        report = check_os_document(obj)
        if not report.valid:
            for earlier in await self._retire(key):
                await self._supersede(earlier, f"generation {generation} of the resource")
            await self._mark_invalid(namespace, name, uid, generation, [str(e) for e in report.errors], status)
            return
        tracked = Tracked(namespace, name, uid, generation, workflow_id, conditions=_conditions(status))
        assert report.spec is not None
        tracked.selector = report.spec.nodeselector or NODESELECTOR_NO_LABEL
        if status.get("workflowId") == workflow_id:  # an earlier bridge got this far: announce nothing twice
            tracked.phase = str(status.get("phase") or "")
            nodes = status.get("nodes")
            tracked.failed_seen = {
                str(n.get("name"))
                for n in (nodes if isinstance(nodes, list) else [])
                if isinstance(n, Mapping) and n.get("state") == NodeState.FAILED
            }
        tracked.after = await self._retire(key)
        self._tracked[key] = tracked
        self._starting[key] = asyncio.create_task(self._start_after(tracked, dict(obj)))

    async def _retire(self, key: tuple[str, str]) -> list[str]:
        """Stop following the resource's current generation (its pending start is cancelled); returns the
        rollouts that may still run for it, which the caller asks to step aside."""
        starter = self._starting.pop(key, None)
        if starter is not None:
            starter.cancel()
            await asyncio.wait({starter})
        current = self._tracked.pop(key, None)
        if current is None or current.done:
            return []
        return [*current.after, current.workflow_id]

    async def _start_after(self, tracked: Tracked, obj: dict[str, Any]) -> None:
        """Start the rollout of this generation once every earlier rollout of the resource has ended; keeps
        trying while Temporal cannot be reached (a later generation or a deletion cancels it)."""
        while True:
            try:
                await self._start(tracked, obj)
                return
            except Exception:
                log.exception("starting the rollout %s failed; trying again", tracked.workflow_id)
                await asyncio.sleep(_RETRY_SECONDS)

    async def _start(self, tracked: Tracked, obj: dict[str, Any]) -> None:
        if not await self._exists(tracked.workflow_id):
            prefix = tracked.workflow_id.split("/", 3)
            earlier = set(tracked.after) | await self._running_rollouts("/".join(prefix[:3]) + "/")
            earlier.discard(tracked.workflow_id)
            waiting = f"waiting for {', '.join(sorted(earlier))} to step aside" if earlier else ""
            await self._patch_status(tracked.namespace, tracked.name, self._pending_status(tracked, waiting))
            for workflow_id in sorted(earlier):
                if await self._supersede(workflow_id, f"generation {tracked.generation}"):
                    message = f"{workflow_id} asked to step aside for generation {tracked.generation}"
                    await self._event(tracked, "RolloutSuperseded", message, "Normal")
            for workflow_id in sorted(earlier):
                await self._await_end(workflow_id)
            await self._await_overlapping(tracked)
            try:
                handle = await start_rollout(self._client, obj, tracked.workflow_id)
                tracked.run_id = handle.result_run_id or ""
                await self._event(tracked, "RolloutStarted", f"rollout {tracked.workflow_id} started", "Normal")
            except WorkflowAlreadyStartedError:
                pass  # it exists after all (started between our look and now): follow it
        tracked.started = True
        await self._sync(tracked)

    async def _await_overlapping(self, tracked: Tracked) -> None:
        """Wait while another resource's rollout may work on the same nodes (the reference refuses two resources
        with one nodeselector; we queue the later one instead, so applying resources one after another works)."""
        ended: set[str] = set()
        while True:
            busy = sorted(
                other.workflow_id
                for key, other in self._tracked.items()
                if key != (tracked.namespace, tracked.name)
                and other.started
                and not other.done
                and other.workflow_id not in ended
                and tracked.overlaps(other)
            )
            if not busy:
                return
            waiting = f"waiting for {', '.join(busy)} to finish: it selects the same nodes"
            await self._patch_status(tracked.namespace, tracked.name, self._pending_status(tracked, waiting))
            for workflow_id in busy:
                await self._await_end(workflow_id)
                ended.add(workflow_id)

    async def _exists(self, workflow_id: str) -> bool:
        try:
            await self._client.get_workflow_handle(workflow_id).describe()
        except RPCError as exc:
            if exc.status == RPCStatusCode.NOT_FOUND:
                return False
            raise
        return True

    async def _running_rollouts(self, prefix: str) -> set[str]:
        """Running rollouts made by a bridge whose id starts with ``prefix``, as Temporal lists them."""
        query = f'WorkflowType="{ROLLOUT_WORKFLOW}" AND ExecutionStatus="Running" AND WorkflowId STARTS_WITH "{prefix}"'
        try:
            return {w.id async for w in self._client.list_workflows(query) if _ROLLOUT_ID.match(w.id)}
        except RPCError as exc:  # a visibility store without STARTS_WITH: what the bridge remembers must do
            log.warning("cannot list running rollouts (%s); relying on what this bridge has seen", exc.message)
            return set()

    async def _supersede(self, workflow_id: str, by: str) -> bool:
        """Ask a running rollout to step aside; False when it is not running (ended, or never started)."""
        handle = self._client.get_workflow_handle(workflow_id)
        try:
            description = await handle.describe()
            if description.status != _RUNNING:
                return False
            await handle.signal("supersede", by)
        except RPCError:
            return False
        log.info("asked %s to step aside for %s", workflow_id, by)
        return True

    async def _await_end(self, workflow_id: str) -> None:
        """Return once the rollout has ended, however it ended (an unreachable Temporal is an error)."""
        try:
            await self._client.get_workflow_handle(workflow_id).result()
        except WorkflowFailureError:
            pass  # failed, terminated, cancelled or timed out: ended all the same
        except RPCError as exc:
            if exc.status != RPCStatusCode.NOT_FOUND:
                raise

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
                    try:
                        await self._sync(tracked)
                    except Exception:  # the API server or Temporal went away for a moment: next round
                        log.exception("status of %s not synced", tracked.workflow_id)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=self._sync_seconds)

    async def _sync(self, tracked: Tracked) -> None:
        handle = self._client.get_workflow_handle(tracked.workflow_id, result_type=RolloutStatus)
        try:
            description = await handle.describe()
            if description.status == _RUNNING:
                status = await handle.query("status", result_type=RolloutStatus, rpc_timeout=_QUERY_TIMEOUT)
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
        if tracked.phase != status.phase:
            tracked.phase = str(status.phase)
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
        name = how.name.title().replace("_", "") if how else "Unknown"  # Terminated, TimedOut, ...
        status = OSStatus(
            phase=name,
            observedGeneration=tracked.generation,
            workflowId=tracked.workflow_id,
            webUI=self._link(tracked),
            conditions=self._stamped(tracked, [Condition(type="Completed", status="True", reason=name)]),
        )
        await self._patch_status(tracked.namespace, tracked.name, status)
        if tracked.phase != name:
            tracked.phase = name
            await self._event(tracked, f"Rollout{name}", f"the rollout workflow ended: {name}", "Warning")

    def _pending_status(self, tracked: Tracked, waiting: str) -> OSStatus:
        """The status of a generation whose rollout has not started yet: observedGeneration moves at once, so
        nobody mistakes the previous generation's phase for this one's. No workflowId yet: once one is shown,
        the workflow exists."""
        conditions = [
            Condition(type="Valid", status="True", reason="Accepted"),
            Condition(type="Completed", status="False", reason="Pending", message=waiting),
        ]
        return OSStatus(
            phase="Pending",
            progress="-",
            observedGeneration=tracked.generation,
            conditions=self._stamped(tracked, conditions),
        )

    @staticmethod
    def _stamped(tracked: Tracked, conditions: list[Condition]) -> list[Condition]:
        """lastTransitionTime is when a condition's status last changed (Kubernetes' convention), not now."""
        for condition in conditions:
            before = tracked.conditions.get(condition.type)
            if before is not None and before.status == condition.status and before.lastTransitionTime:
                condition.lastTransitionTime = before.lastTransitionTime
            else:
                condition.lastTransitionTime = _now()
            tracked.conditions[condition.type] = condition
        return conditions

    def _link(self, tracked: Tracked) -> str:
        if not self._web_ui:
            return ""
        return f"{self._web_ui}/namespaces/{self._client.namespace}/workflows/{quote(tracked.workflow_id, safe='')}"

    def _os_status(self, tracked: Tracked, status: RolloutStatus) -> OSStatus:
        counts = status.counts
        nodes = sorted(status.nodes, key=lambda e: (_NODE_ORDER.get(e.state, 9), e.name))[:MAX_STATUS_NODES]
        terminal = status.phase in TERMINAL_PHASES
        paused = status.paused and not terminal  # a finished rollout is not paused, whatever it was last
        conditions = [
            Condition(type="Valid", status="True", reason="Accepted"),
            Condition(
                type="Completed",
                status="True" if terminal else "False",
                reason=str(status.phase),
                message=f"{status.progress} nodes on {status.target_version}",
            ),
            Condition(
                type="Paused",
                status="True" if paused else "False",
                reason="Paused" if paused else "NotPaused",
                message=status.pause_reason if paused else "",
            ),
            Condition(
                type="Degraded",
                status="True" if status.failures else "False",
                reason="NodesFailed" if status.failures else "NoFailures",
                message="; ".join(f"{n}: {m}" for n, m in sorted(status.failures.items()))[:1000],
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
            conditions=self._stamped(tracked, conditions),
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


def _conditions(status: Mapping[str, Any]) -> dict[str, Condition]:
    """The conditions a resource's status holds now (unreadable ones are skipped: they are rewritten anyway)."""
    found: dict[str, Condition] = {}
    raw = status.get("conditions")
    for item in raw if isinstance(raw, list) else []:
        with contextlib.suppress(ValueError):
            condition = Condition.model_validate(item)
            found[condition.type] = condition
    return found


def _describe(obj: Mapping[str, Any]) -> str:
    metadata = obj.get("metadata") if isinstance(obj, Mapping) else None
    if isinstance(metadata, Mapping):
        return f"OS {metadata.get('namespace', 'default')}/{metadata.get('name', '?')}"
    return "an OS object"


async def run_bridge(client: Client, web_ui: str, stop: asyncio.Event) -> None:
    log.info("bridge watching %s resources", PLURAL)
    await Bridge(client, web_ui=web_ui).run(stop)


def register(sub: Any) -> None:
    add_service_parser(sub, "bridge", "watch OS resources and run a rollout for each generation", run_bridge)
