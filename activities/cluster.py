"""Cluster activities: the Kubernetes side of a rollout, over the official ``kubernetes`` client.

Contract (models in ``models/cluster.py``; run on the cluster worker, queue ``kubeos-cluster``):

==================  ==================  ================  ================================================
activity            input               output            notes
==================  ==================  ================  ================================================
``list_nodes``      ListNodesInput      ListNodesResult   sorted by name; control-plane nodes only if asked
``get_node``        NodeRef             NodeInfo          NodeNotFound
``cordon_node``     NodeRef             NodeInfo          idempotent; NodeNotFound
``uncordon_node``   NodeRef             NodeInfo          idempotent; NodeNotFound
``drain_node``      DrainInput          DrainResult       heartbeats; DrainTimeout, NodeNotFound
``wait_node_ready`` WaitNodeInput       NodeInfo          heartbeats; NodeNotReady at the timeout
``record_event``    EventInput          EventResult       a core/v1 Event about any object
==================  ==================  ================  ================================================

Errors: ``ApplicationError`` with a ``ClusterErrorType`` type and ``non_retryable=True`` for the outcomes a
retry cannot change; transient API failures surface as ordinary exceptions and are retried by the workflow's
retry policy. ``drain_node`` and ``wait_node_ready`` heartbeat every poll, so give them a heartbeat timeout
of a few tens of seconds; both stop early when the activity is cancelled.

Drain, as ``kubectl drain --ignore-daemonsets --delete-emptydir-data``: the node's pods (field selector
``spec.nodeName``) are evicted through the Eviction API so PodDisruptionBudgets are honoured; DaemonSet pods
and mirror (static) pods are left alone, as their controllers would recreate them at once. A refused eviction
(429) is retried with backoff until the drain timeout; with ``force`` (the OS spec's ``evictpodforce``) the
pod is deleted instead. The drain ends when every evicted pod is gone.

The activities are synchronous (the client is) and run on the worker's thread pool. Which cluster they talk
to is decided once per process by ``activities.kube`` (``use_kubeconfig``, else KUBECONFIG, else in-cluster).
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

from kubernetes import client
from kubernetes.client.exceptions import ApiException
from temporalio import activity
from temporalio.exceptions import ApplicationError, CancelledError

from activities.kube import api_client
from models.cluster import (
    CONTROL_PLANE_LABEL,
    LEGACY_MASTER_LABEL,
    MIRROR_POD_ANNOTATION,
    ClusterErrorType,
    DrainInput,
    DrainResult,
    EventInput,
    EventResult,
    ListNodesInput,
    ListNodesResult,
    NodeInfo,
    NodeRef,
    WaitNodeInput,
)

T = TypeVar("T")

_BACKOFF_FIRST_SECONDS = 1.0
_BACKOFF_MAX_SECONDS = 10.0


def _core() -> client.CoreV1Api:
    return client.CoreV1Api(api_client())


def _fail(message: str, kind: ClusterErrorType, *details: Any) -> ApplicationError:
    return ApplicationError(message, *details, type=kind.value, non_retryable=True)


def _api_call(what: str, call: Callable[[], T]) -> T:
    """Run one API call, turning the answers a retry cannot change into non-retryable errors."""
    try:
        return call()
    except ApiException as e:
        if e.status == 403:
            raise _fail(f"{what}: forbidden ({e.reason}); check the worker's RBAC", ClusterErrorType.FORBIDDEN) from e
        if e.status in (400, 422):
            raise _fail(f"{what}: rejected by the API server: {e.body}", ClusterErrorType.INVALID_INPUT) from e
        raise


def _node_call(node: str, what: str, call: Callable[[], T]) -> T:
    try:
        return _api_call(f"{what} node {node}", call)
    except ApiException as e:
        if e.status == 404:
            raise _fail(f"node {node} does not exist", ClusterErrorType.NODE_NOT_FOUND) from e
        raise


def _sleep(seconds: float) -> None:
    """Wait, but give up at once when the activity is cancelled (only heartbeating activities learn it)."""
    activity.wait_for_cancelled_sync(max(seconds, 0.0))
    if activity.is_cancelled():
        raise CancelledError("activity cancelled")


def node_info(node: client.V1Node) -> NodeInfo:
    """The parts of a Node the rollout looks at."""
    meta = node.metadata or client.V1ObjectMeta()
    labels = dict(meta.labels or {})
    status = node.status or client.V1NodeStatus()
    ready = any(c.type == "Ready" and c.status == "True" for c in status.conditions or [])
    return NodeInfo(
        name=meta.name or "",
        os_image=(status.node_info.os_image if status.node_info else "") or "",
        ready=ready,
        unschedulable=bool(node.spec.unschedulable) if node.spec else False,
        labels=labels,
        control_plane=CONTROL_PLANE_LABEL in labels or LEGACY_MASTER_LABEL in labels,
    )


# ------------------------------------------------------------------------------------------------- nodes


@activity.defn
def list_nodes(params: ListNodesInput) -> ListNodesResult:
    """The nodes matching the label selector, control-plane nodes only when asked, sorted by name."""
    nodes = _api_call(
        f"list nodes with selector {params.label_selector!r}",
        lambda: _core().list_node(label_selector=params.label_selector or None),
    )
    infos = [node_info(n) for n in nodes.items]
    if not params.include_control_plane:
        infos = [i for i in infos if not i.control_plane]
    return ListNodesResult(nodes=sorted(infos, key=lambda i: i.name))


@activity.defn
def get_node(ref: NodeRef) -> NodeInfo:
    return node_info(_node_call(ref.node, "get", lambda: _core().read_node(ref.node)))


def _set_unschedulable(node: str, unschedulable: bool) -> NodeInfo:
    current = node_info(_node_call(node, "get", lambda: _core().read_node(node)))
    if current.unschedulable == unschedulable:
        return current  # idempotent: no write, so a retried activity does not touch the node again
    # kubectl cordon/uncordon send the same strategic merge patch; null removes the field.
    body = {"spec": {"unschedulable": True if unschedulable else None}}
    verb = "cordon" if unschedulable else "uncordon"
    return node_info(_node_call(node, verb, lambda: _core().patch_node(node, body)))


@activity.defn
def cordon_node(ref: NodeRef) -> NodeInfo:
    """Mark the node unschedulable (idempotent)."""
    return _set_unschedulable(ref.node, True)


@activity.defn
def uncordon_node(ref: NodeRef) -> NodeInfo:
    """Mark the node schedulable again (idempotent)."""
    return _set_unschedulable(ref.node, False)


@activity.defn
def wait_node_ready(params: WaitNodeInput) -> NodeInfo:
    """Poll until the node is Ready and reports ``params.os_image``; a missing Node counts as not ready yet."""
    deadline = time.monotonic() + params.timeout_seconds
    last: NodeInfo | None = None
    while True:
        try:
            last = node_info(_api_call(f"get node {params.node}", lambda: _core().read_node(params.node)))
        except ApiException as e:
            if e.status != 404:
                raise
            last = None
        if last is not None and last.ready and last.os_image == params.os_image:
            return last
        seen = "missing" if last is None else f"ready={last.ready} osImage={last.os_image!r}"
        activity.heartbeat(seen)
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise _fail(
                f"node {params.node} not Ready with osImage {params.os_image!r} after "
                f"{params.timeout_seconds:g}s (last seen: {seen})",
                ClusterErrorType.NODE_NOT_READY,
                last.model_dump() if last else None,
            )
        _sleep(min(params.poll_seconds, remaining))


# ------------------------------------------------------------------------------------------------- drain


@dataclass(frozen=True)
class _Pod:
    """The few facts of a pod the drain needs, taken once from the listing."""

    namespace: str
    name: str
    uid: str
    mirror: bool
    daemonset: bool

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    @classmethod
    def of(cls, pod: client.V1Pod) -> _Pod:
        meta = pod.metadata or client.V1ObjectMeta()
        return cls(
            namespace=meta.namespace or "",
            name=meta.name or "",
            uid=meta.uid or "",
            mirror=MIRROR_POD_ANNOTATION in (meta.annotations or {}),
            daemonset=any(ref.kind == "DaemonSet" for ref in meta.owner_references or []),
        )


def _evict(pod: _Pod, grace: int | None) -> str | None:
    """Ask for an eviction: None when granted (or the pod is already gone), else the refusal's message."""
    body = client.V1Eviction(
        metadata=client.V1ObjectMeta(name=pod.name, namespace=pod.namespace),
        delete_options=client.V1DeleteOptions(grace_period_seconds=grace) if grace is not None else None,
    )
    try:
        _api_call(
            f"evict pod {pod.key}",
            lambda: _core().create_namespaced_pod_eviction(pod.name, pod.namespace, body),
        )
    except ApiException as e:
        if e.status == 404:
            return None
        # 429: a PodDisruptionBudget allows no disruption now. 500 with "more than one PodDisruptionBudget" is
        # a misconfiguration the API server refuses for good; both keep the pod, so both are "blocked".
        if e.status in (429, 500):
            return _status_message(e)
        raise
    return None


def _status_message(e: ApiException) -> str:
    try:
        status = json.loads(e.body or "{}")
    except ValueError:
        return str(e.reason)
    causes = [c.get("message", "") for c in (status.get("details") or {}).get("causes") or []]
    return "; ".join([status.get("message", "") or str(e.reason), *[c for c in causes if c]])


def _delete(pod: _Pod, grace: int | None) -> None:
    try:
        _api_call(
            f"delete pod {pod.key}",
            lambda: _core().delete_namespaced_pod(pod.name, pod.namespace, grace_period_seconds=grace),
        )
    except ApiException as e:
        if e.status != 404:
            raise


def _still_there(pod: _Pod) -> bool:
    """True while this very pod (same uid: a controller may recreate the name) still exists."""
    try:
        current = _core().read_namespaced_pod(pod.name, pod.namespace)
    except ApiException as e:
        if e.status == 404:
            return False
        raise
    return bool(current.metadata and current.metadata.uid == pod.uid)


@activity.defn
def drain_node(params: DrainInput) -> DrainResult:
    """Evict every pod of the node but DaemonSet and mirror pods, honouring PodDisruptionBudgets."""
    deadline = time.monotonic() + params.timeout_seconds
    _node_call(params.node, "get", lambda: _core().read_node(params.node))  # a typo must not "drain" nothing
    listing = _api_call(
        f"list pods of node {params.node}",
        lambda: _core().list_pod_for_all_namespaces(field_selector=f"spec.nodeName={params.node}"),
    )
    pods = [_Pod.of(p) for p in listing.items]

    skipped_ds = sorted(p.key for p in pods if p.daemonset and not p.mirror)
    skipped_mirror = sorted(p.key for p in pods if p.mirror)
    pending = {p.key: p for p in pods if not p.mirror and not p.daemonset}
    evicted: list[_Pod] = []
    deleted: list[_Pod] = []
    grace = params.grace_period_seconds
    backoff = _BACKOFF_FIRST_SECONDS

    while pending:
        blocked: dict[str, str] = {}
        for key, pod in sorted(pending.items()):
            refusal = _evict(pod, grace)
            if refusal is None:
                evicted.append(pod)
            elif params.force:
                _delete(pod, grace)
                deleted.append(pod)
            else:
                blocked[key] = refusal
        pending = {key: pending[key] for key in blocked}
        if not pending:
            break
        activity.heartbeat({"evicted": len(evicted), "blocked": sorted(blocked)})
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            why = "; ".join(f"{key}: {reason}" for key, reason in sorted(blocked.items()))
            raise _fail(
                f"drain of node {params.node} timed out after {params.timeout_seconds:g}s; "
                f"evictions refused for {len(blocked)} pod(s): {why}",
                ClusterErrorType.DRAIN_TIMEOUT,
                sorted(blocked),
            )
        _sleep(min(backoff, remaining))
        backoff = min(backoff * 2, _BACKOFF_MAX_SECONDS)

    # Evictions and deletions are requests; the drain is done when the pods are really gone.
    leaving = evicted + deleted
    while leaving:
        leaving = [p for p in leaving if _still_there(p)]
        if not leaving:
            break
        activity.heartbeat({"terminating": sorted(p.key for p in leaving)})
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            names = sorted(p.key for p in leaving)
            raise _fail(
                f"drain of node {params.node} timed out after {params.timeout_seconds:g}s; "
                f"pods still terminating: {', '.join(names)}",
                ClusterErrorType.DRAIN_TIMEOUT,
                names,
            )
        _sleep(min(1.0, remaining))

    return DrainResult(
        evicted=sorted(p.key for p in evicted),
        deleted=sorted(p.key for p in deleted),
        skipped_daemonset=skipped_ds,
        skipped_mirror=skipped_mirror,
    )


# ------------------------------------------------------------------------------------------------ events


@activity.defn
def record_event(params: EventInput) -> EventResult:
    """Write a core/v1 Event (what ``kubectl describe`` shows under Events)."""
    obj = params.involved_object
    now = datetime.now(UTC)
    # Kubernetes' own recorders name events <object>.<unique suffix>; the nanosecond clock is unique enough
    # for one writer and keeps events sortable by name.
    name = f"{obj.name}.{time.time_ns():x}"
    event = client.CoreV1Event(
        metadata=client.V1ObjectMeta(name=name, namespace=params.namespace),
        involved_object=client.V1ObjectReference(
            api_version=obj.api_version,
            kind=obj.kind,
            name=obj.name,
            namespace=obj.namespace or None,
            uid=obj.uid or None,
        ),
        reason=params.reason,
        message=params.message,
        type=params.type,
        source=client.V1EventSource(component=params.component, host=socket.gethostname()),
        reporting_component=params.component,
        reporting_instance=socket.gethostname(),
        first_timestamp=now,
        last_timestamp=now,
        count=1,
    )
    created = _api_call(
        f"record event {params.reason} about {obj.kind} {obj.name}",
        lambda: _core().create_namespaced_event(params.namespace, event),
    )
    return EventResult(name=created.metadata.name, namespace=created.metadata.namespace)


ACTIVITIES = [list_nodes, get_node, cordon_node, uncordon_node, drain_node, wait_node_ready, record_event]
