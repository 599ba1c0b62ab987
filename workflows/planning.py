"""Pure planning rules of a rollout: which nodes, in which order, and when the time window opens.

Deterministic (no I/O, no clock: the caller passes ``now``), so the workflow calls it directly and tests need
no Temporal at all.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from models.cluster import NodeInfo
from models.os_resource import (
    NODE_SELECTOR_LABEL,
    NODESELECTOR_ALL,
    NODESELECTOR_NO_LABEL,
    OSSpec,
    TimeWindow,
    os_major_version,
)
from models.rollout import NodeEntry, NodeState


def label_selector(spec: OSSpec) -> str:
    """The reference's ``nodeselector`` semantics as a Kubernetes label selector.

    Empty or ``no-label``: the nodes without the selector label; ``all-label``: every node; any other value: the
    nodes whose selector label has that value.
    """
    if spec.nodeselector in ("", NODESELECTOR_NO_LABEL):
        return f"!{NODE_SELECTOR_LABEL}"
    if spec.nodeselector == NODESELECTOR_ALL:
        return ""
    return f"{NODE_SELECTOR_LABEL}={spec.nodeselector}"


def plan_nodes(spec: OSSpec, nodes: list[NodeInfo]) -> list[NodeEntry]:
    """One entry per listed node, in name order: to do, or refused with the reason.

    Nodes on another major version are refused (the seed: no upgrades across major versions), as are nodes that
    are not Ready: draining and rebooting an unhealthy node would only hide why it is unhealthy. A node that
    already reports the target ``osImage`` is still to do: it is up to date only if it runs that version from its
    committed slot, not from a trial boot that nobody committed (whose next reboot returns it to the old version).
    Its NodeUpgrade finds out with one preflight and reports it up to date, or returns it to its committed slot and
    upgrades it.
    """
    target_major = os_major_version(spec.osversion)
    entries = []
    for node in sorted(nodes, key=lambda n: n.name):
        if node.control_plane and not spec.includecontrolplane:
            continue
        entry = NodeEntry(name=node.name, from_version=node.os_image)
        if node.os_image != spec.osversion and os_major_version(node.os_image) != target_major:
            entry.state = NodeState.REFUSED
            entry.message = (
                f"runs {node.os_image or 'an unknown OS'}; {spec.osversion} is another major version "
                "(upgrades across major versions are not supported)"
            )
        elif not node.ready:
            entry.state, entry.message = NodeState.REFUSED, "node is not Ready"
        elif node.os_image == spec.osversion:
            entry.message = f"reports {spec.osversion}: to check that it runs it from a committed slot"
        entries.append(entry)
    return entries


def check_only(spec: OSSpec, entry: NodeEntry) -> bool:
    """The node reported the target version when planned: its NodeUpgrade most likely only checks it, so it need
    not wait ``timeinterval`` after the node before it, nor make the next one wait."""
    return entry.from_version == spec.osversion


def seconds_until_open(window: TimeWindow | None, now: datetime) -> float | None:
    """0 when node operations may start now; the wait until the window opens; None when it never opens again."""
    if window is None or window.empty or window.contains(now):
        return 0.0
    now = now.replace(tzinfo=None)
    if window.daily:
        start = datetime.strptime(window.starttime, "%H:%M:%S").time()
        opening = datetime.combine(now.date(), start)
        if opening <= now:
            opening += timedelta(days=1)
        return (opening - now).total_seconds()
    start_dt = datetime.strptime(window.starttime, "%Y-%m-%d %H:%M:%S")
    if now < start_dt:
        return (start_dt - now).total_seconds()
    return None
