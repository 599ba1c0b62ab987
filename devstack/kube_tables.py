"""The ``Table`` answers behind ``kubectl get``'s default and ``-o wide`` output, column for column as the
API server's printers build them (k8s.io/kubernetes pkg/printers/internalversion).

The server always sends every column and cell; a column of priority 1 is shown by kubectl only with
``-o wide``. Durations are rendered as the server renders them (``HumanDuration``: 45s, 3m20s, 5h, 12d).
Custom kinds print their CRD's ``additionalPrinterColumns``; kinds without a printer here print NAME and AGE.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from devstack.kube_resources import Kind
from devstack.kube_semantics import JSON


@dataclass(frozen=True)
class Column:
    name: str
    priority: int = 0  # 1: only with -o wide
    format: str = ""  # "name" marks the column that holds the object's name


Cells = Callable[[JSON, datetime], list[Any]]

NAME = Column("Name", format="name")
AGE = Column("Age")


# ----------------------------------------------------------------------------------------------- helpers


def _parse_time(timestamp: Any) -> datetime | None:
    if not isinstance(timestamp, str) or not timestamp:
        return None
    try:
        return datetime.fromisoformat(timestamp.replace("Z", "+00:00"))
    except ValueError:
        return None


def human_duration(seconds: float) -> str:
    """apimachinery's ``duration.HumanDuration``: precise while short, coarser as it grows."""
    if seconds < -1:
        return "<invalid>"
    total = max(0, int(seconds))
    if total < 120:
        return f"{total}s"
    minutes, hours, days = total // 60, total // 3600, total // 86400
    if minutes < 10:
        return f"{minutes}m{total % 60}s" if total % 60 else f"{minutes}m"
    if minutes < 180:
        return f"{minutes}m"
    if hours < 8:
        return f"{hours}h{minutes % 60}m" if minutes % 60 else f"{hours}h"
    if hours < 48:
        return f"{hours}h"
    if hours < 192:
        return f"{days}d{hours % 24}h" if hours % 24 else f"{days}d"
    if hours < 24 * 365 * 2:
        return f"{days}d"
    years = days // 365
    if hours < 24 * 365 * 8:
        return f"{years}y{days % 365}d" if days % 365 else f"{years}y"
    return f"{years}y"


def human_age(timestamp: Any, now: datetime | None = None) -> str:
    """The AGE (or LAST SEEN) of a timestamp; ``<unknown>`` when there is none, as for a zero time."""
    then = _parse_time(timestamp)
    if then is None:
        return "<unknown>"
    return human_duration(((now or datetime.now(UTC)) - then).total_seconds())


def _meta(obj: Mapping[str, Any]) -> JSON:
    meta = obj.get("metadata")
    return meta if isinstance(meta, dict) else {}


def _part(obj: Any, *keys: str) -> Any:
    """A nested field, None where any level is missing."""
    for key in keys:
        obj = obj.get(key) if isinstance(obj, Mapping) else None
    return obj


def _json_path(obj: Any, path: str) -> Any:
    return _part(obj, *path.strip(".").split("."))


def _age(obj: JSON, now: datetime) -> str:
    return human_age(_meta(obj).get("creationTimestamp"), now)


def _or_none(value: Any) -> Any:
    return value if value not in (None, "") else "<none>"


# ----------------------------------------------------------------------------------------------- printers


def _namespace(obj: JSON, now: datetime) -> list[Any]:
    return [_meta(obj).get("name", ""), _part(obj, "status", "phase") or "", _age(obj, now)]


def _node_roles(labels: Mapping[str, str]) -> str:
    prefix = "node-role.kubernetes.io/"
    roles = {key[len(prefix) :] for key in labels if key.startswith(prefix) and key != prefix}
    if labels.get("kubernetes.io/role"):
        roles.add(labels["kubernetes.io/role"])
    return ",".join(sorted(roles)) or "<none>"


def _node(obj: JSON, now: datetime) -> list[Any]:
    meta, info = _meta(obj), _part(obj, "status", "nodeInfo") or {}
    conditions = _part(obj, "status", "conditions") or []
    ready = next((c for c in conditions if c.get("type") == "Ready"), None)
    status = ["Unknown" if ready is None else "Ready" if ready.get("status") == "True" else "NotReady"]
    if _part(obj, "spec", "unschedulable"):
        status.append("SchedulingDisabled")
    addresses = _part(obj, "status", "addresses") or []

    def address(kind: str) -> str:
        return next((a.get("address", "") for a in addresses if a.get("type") == kind), "<none>")

    return [
        meta.get("name", ""),
        ",".join(status),
        _node_roles(meta.get("labels") or {}),
        _age(obj, now),
        info.get("kubeletVersion", ""),
        address("InternalIP"),
        address("ExternalIP"),
        info.get("osImage") or "<unknown>",
        info.get("kernelVersion") or "<unknown>",
        info.get("containerRuntimeVersion") or "<unknown>",
    ]


def _pod_state(obj: JSON) -> tuple[str, int, int]:
    """(STATUS, ready containers, restarts) from the container statuses, as ``printPod`` reads them."""
    status = obj.get("status") or {}
    reason = status.get("reason") or status.get("phase") or ""
    ready = restarts = 0
    running = False
    for container in reversed(status.get("containerStatuses") or []):
        restarts += int(container.get("restartCount") or 0)
        state = container.get("state") or {}
        waiting, terminated = state.get("waiting") or {}, state.get("terminated")
        if waiting.get("reason"):
            reason = waiting["reason"]
        elif terminated is not None and terminated.get("reason"):
            reason = terminated["reason"]
        elif terminated is not None:
            signal = terminated.get("signal")
            reason = f"Signal:{signal}" if signal else f"ExitCode:{terminated.get('exitCode', 0)}"
        elif container.get("ready") and "running" in state:
            running = True
            ready += 1
    if reason == "Completed" and running:
        conditions = status.get("conditions") or []
        is_ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)
        reason = "Running" if is_ready else "NotReady"
    if _meta(obj).get("deletionTimestamp"):
        reason = "Unknown" if status.get("reason") == "NodeLost" else "Terminating"
    return reason, ready, restarts


def _pod(obj: JSON, now: datetime) -> list[Any]:
    spec, status = obj.get("spec") or {}, obj.get("status") or {}
    reason, ready, restarts = _pod_state(obj)
    gates = spec.get("readinessGates") or []
    if gates:
        true = {c.get("type") for c in status.get("conditions") or [] if c.get("status") == "True"}
        gates_cell = f"{sum(1 for g in gates if g.get('conditionType') in true)}/{len(gates)}"
    else:
        gates_cell = "<none>"
    return [
        _meta(obj).get("name", ""),
        f"{ready}/{len(spec.get('containers') or [])}",
        reason,
        restarts,
        _age(obj, now),
        _or_none(status.get("podIP")),
        _or_none(spec.get("nodeName")),
        _or_none(status.get("nominatedNodeName")),
        gates_cell,
    ]


def _core_event(obj: JSON) -> JSON:
    """An events.k8s.io/v1 Event in core/v1 field names (the server prints both with one printer)."""
    if obj.get("apiVersion") != "events.k8s.io/v1":
        return obj
    renamed = {
        "regarding": "involvedObject",
        "note": "message",
        "deprecatedFirstTimestamp": "firstTimestamp",
        "deprecatedLastTimestamp": "lastTimestamp",
        "deprecatedCount": "count",
        "deprecatedSource": "source",
        "reportingController": "reportingComponent",
    }
    return {renamed.get(key, key): value for key, value in obj.items()}


def _event(obj: JSON, now: datetime) -> list[Any]:
    event = _core_event(obj)
    first = human_age(event.get("firstTimestamp") or event.get("eventTime"), now)
    last = human_age(event["lastTimestamp"], now) if event.get("lastTimestamp") else first
    count = event.get("count") or 1  # singleton events of the new API carry no count
    series = event.get("series")
    if isinstance(series, dict):
        last, count = human_age(series.get("lastObservedTime"), now), series.get("count", count)
    involved = event.get("involvedObject") or {}
    target = str(involved.get("kind", "")).lower()
    if involved.get("name"):
        target = f"{target}/{involved['name']}"
    source = event.get("source") or {}
    component = source.get("component") or event.get("reportingComponent") or ""
    instance = source.get("host") or event.get("reportingInstance") or ""
    return [
        last,
        event.get("type", ""),
        event.get("reason", ""),
        target,
        involved.get("fieldPath", ""),
        f"{component}, {instance}" if instance else component,
        str(event.get("message", "")).strip(),
        first,
        count,
        _meta(obj).get("name", ""),
    ]


def _config_map(obj: JSON, now: datetime) -> list[Any]:
    count = len(obj.get("data") or {}) + len(obj.get("binaryData") or {})
    return [_meta(obj).get("name", ""), count, _age(obj, now)]


def _images(obj: JSON) -> tuple[str, str]:
    containers = _part(obj, "spec", "template", "spec", "containers") or []
    return ",".join(c.get("name", "") for c in containers), ",".join(c.get("image", "") for c in containers)


def _selector(obj: JSON) -> str:
    selector = _part(obj, "spec", "selector") or {}
    terms = [f"{k}={v}" for k, v in sorted((selector.get("matchLabels") or {}).items())]
    for expression in selector.get("matchExpressions") or []:
        values = ",".join(expression.get("values") or [])
        operator = str(expression.get("operator", "")).lower()
        key = expression.get("key", "")
        if operator in ("in", "notin"):
            terms.append(f"{key} {operator} ({values})")
        else:
            terms.append(key if operator == "exists" else f"!{key}")
    return ",".join(terms) or "<none>"


def _deployment(obj: JSON, now: datetime) -> list[Any]:
    status = obj.get("status") or {}
    replicas = _part(obj, "spec", "replicas")
    containers, images = _images(obj)
    return [
        _meta(obj).get("name", ""),
        f"{status.get('readyReplicas', 0)}/{1 if replicas is None else replicas}",
        status.get("updatedReplicas", 0),
        status.get("availableReplicas", 0),
        _age(obj, now),
        containers,
        images,
        _selector(obj),
    ]


def _pod_disruption_budget(obj: JSON, now: datetime) -> list[Any]:
    spec = obj.get("spec") or {}
    return [
        _meta(obj).get("name", ""),
        "N/A" if spec.get("minAvailable") is None else spec["minAvailable"],
        "N/A" if spec.get("maxUnavailable") is None else spec["maxUnavailable"],
        _part(obj, "status", "disruptionsAllowed") or 0,
        _age(obj, now),
    ]


def _default(obj: JSON, now: datetime) -> list[Any]:
    return [_meta(obj).get("name", ""), _age(obj, now)]


_WIDE_WORKLOAD = (Column("Containers", 1), Column("Images", 1), Column("Selector", 1))
_EVENT_COLUMNS = (
    Column("Last Seen"),
    Column("Type"),
    Column("Reason"),
    Column("Object"),
    Column("Subobject", 1),
    Column("Source", 1),
    Column("Message"),
    Column("First Seen", 1),
    Column("Count", 1),
    Column("Name", 1, "name"),
)

# (group, plural) -> columns and the function giving a row's cells.
PRINTERS: dict[tuple[str, str], tuple[tuple[Column, ...], Cells]] = {
    ("", "namespaces"): ((NAME, Column("Status"), AGE), _namespace),
    ("", "nodes"): (
        (
            NAME,
            Column("Status"),
            Column("Roles"),
            AGE,
            Column("Version"),
            Column("Internal-IP", 1),
            Column("External-IP", 1),
            Column("OS-Image", 1),
            Column("Kernel-Version", 1),
            Column("Container-Runtime", 1),
        ),
        _node,
    ),
    ("", "pods"): (
        (
            NAME,
            Column("Ready"),
            Column("Status"),
            Column("Restarts"),
            AGE,
            Column("IP", 1),
            Column("Node", 1),
            Column("Nominated Node", 1),
            Column("Readiness Gates", 1),
        ),
        _pod,
    ),
    ("", "events"): (_EVENT_COLUMNS, _event),
    ("events.k8s.io", "events"): (_EVENT_COLUMNS, _event),
    ("", "configmaps"): ((NAME, Column("Data"), AGE), _config_map),
    ("apps", "deployments"): (
        (NAME, Column("Ready"), Column("Up-to-date"), Column("Available"), AGE, *_WIDE_WORKLOAD),
        _deployment,
    ),
    ("policy", "poddisruptionbudgets"): (
        (NAME, Column("Min Available"), Column("Max Unavailable"), Column("Allowed Disruptions"), AGE),
        _pod_disruption_budget,
    ),
}


def _custom(kind: Kind) -> tuple[tuple[Column, ...], Cells]:
    """A CRD's additionalPrinterColumns (dates humanised here, so every cell is plain text to kubectl)."""
    columns = (NAME, *(Column(c.name, c.priority) for c in kind.printer_columns))

    def cells(obj: JSON, now: datetime) -> list[Any]:
        row: list[Any] = [_meta(obj).get("name", "")]
        for column in kind.printer_columns:
            value = _json_path(obj, column.json_path)
            row.append(human_age(value, now) if column.type == "date" and value else value)
        return row

    return columns, cells


def printer(kind: Kind) -> tuple[tuple[Column, ...], Cells]:
    if kind.custom and kind.printer_columns:
        return _custom(kind)
    return PRINTERS.get((kind.group, kind.plural), ((NAME, AGE), _default))


def as_table(kind: Kind, objects: Iterable[JSON], resource_version: str) -> JSON:
    """A meta.k8s.io/v1 Table, what ``kubectl get`` asks for to print its default columns."""
    columns, cells = printer(kind)
    now = datetime.now(UTC)
    return {
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": {"resourceVersion": resource_version},
        "columnDefinitions": [
            {
                "name": c.name,
                "type": "string",  # durations are sent rendered
                "format": c.format,
                "description": "",
                "priority": c.priority,
            }
            for c in columns
        ],
        "rows": [
            {
                "cells": cells(obj, now),
                "object": {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": _meta(obj)},
            }
            for obj in objects
        ],
    }
