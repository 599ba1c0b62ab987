"""Inputs, outputs and state of the two workflows: ``ClusterRollout`` and its ``NodeUpgrade`` children."""

from __future__ import annotations

from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, Field

from models.os_resource import OSSpec

CLUSTER_TASK_QUEUE = "kubeos-cluster"
ROLLOUT_WORKFLOW = "ClusterRollout"
NODE_WORKFLOW = "NodeUpgrade"
#: Search attributes the rollout keeps current (Keyword); the dev stack registers them at start.
SA_TARGET_VERSION = "KubeOSTargetVersion"
SA_PHASE = "KubeOSPhase"
SEARCH_ATTRIBUTES = (SA_TARGET_VERSION, SA_PHASE)


class Phase(StrEnum):
    PLANNING = "Planning"
    RUNNING = "Running"
    PAUSED = "Paused"
    WAITING_FOR_WINDOW = "WaitingForWindow"
    ROLLING_BACK = "RollingBack"
    SUCCEEDED = "Succeeded"
    COMPLETED_WITH_FAILURES = "CompletedWithFailures"
    ROLLED_BACK = "RolledBack"
    SUPERSEDED = "Superseded"  # a newer generation of the OS resource took over; running nodes finished first


TERMINAL_PHASES = frozenset({Phase.SUCCEEDED, Phase.COMPLETED_WITH_FAILURES, Phase.ROLLED_BACK, Phase.SUPERSEDED})


class NodeState(StrEnum):
    PENDING = "Pending"
    RUNNING = "Running"
    SUCCEEDED = "Succeeded"  # on the target version, committed
    FAILED = "Failed"  # reported with a reason; the node is back on a committed slot and schedulable
    REFUSED = "Refused"  # never touched: not eligible (other major version, not Ready, ...)
    UP_TO_DATE = "UpToDate"  # already ran the target version from its committed slot (its preflight said so)
    ROLLING_BACK = "RollingBack"
    ROLLED_BACK = "RolledBack"  # returned to its previous version after the rollout was rolled back
    NOT_STARTED = "NotStarted"  # the rollout ended (rolled back, superseded, window closed) first


class NodeMode(StrEnum):
    UPGRADE = "upgrade"  # stage the image into the inactive slot, trial boot, commit
    SWITCH = "switch"  # boot the other slot, which must already hold the version (opstype rollback, revert)


class NodeEntry(BaseModel):
    """One node of the plan, as the rollout tracks it."""

    name: str
    from_version: str = ""
    state: NodeState = NodeState.PENDING
    message: str = ""


class CarriedNode(BaseModel):
    """A node whose NodeUpgrade was still running when the rollout continued as new: the next run follows it."""

    name: str
    child_id: str
    revert: bool = False


class RolloutState(BaseModel):
    """Everything a rollout carries across continue-as-new."""

    workflow_id: str = ""
    spec: OSSpec
    nodes: list[NodeEntry] = Field(default_factory=list)
    phase: Phase = Phase.PLANNING
    planned: bool = False
    max_unavailable: int
    paused: bool = False
    pause_reason: str = ""
    rollback_requested: bool = False
    rollback_reason: str = ""
    superseded_by: str = ""
    #: Failures that a resume has acknowledged; the budget counts the failures after them.
    acknowledged_failures: int = 0
    runs: int = 1
    search_attributes: bool = True
    carried: list[CarriedNode] = Field(default_factory=list)


class RolloutStatus(BaseModel):
    """The ``status`` query's answer and the workflow's result."""

    phase: Phase
    target_version: str
    opstype: str
    max_unavailable: int
    paused: bool
    pause_reason: str = ""
    rollback_reason: str = ""
    total: int
    counts: dict[str, int]
    in_flight: list[str]
    failures: dict[str, str] = Field(description="node name -> reason")
    nodes: list[NodeEntry]
    runs: int = Field(description="how many runs (continue-as-new) this rollout has used")

    @property
    def progress(self) -> str:
        done = self.counts.get(NodeState.SUCCEEDED, 0) + self.counts.get(NodeState.UP_TO_DATE, 0)
        return f"{done}/{self.total}"


class NodeUpgradeInput(BaseModel):
    node: str
    mode: NodeMode
    spec: OSSpec
    #: The version the node must report at the end (osversion, or the node's previous version when reverting).
    target_version: str


class NodeUpgradeResult(BaseModel):
    node: str
    outcome: Literal["succeeded", "failed", "up_to_date"]
    message: str = ""
    from_version: str = ""
    version: str = Field(default="", description="the version the node runs at the end")
    booted_slot: str = ""


class AwaitNodeUpgradeInput(BaseModel):
    node: str
    workflow_id: str = Field(description="the NodeUpgrade's workflow id")


class SetMaxUnavailableInput(BaseModel):
    value: int


class RolloutSettings(BaseModel):
    """What the cluster worker tells a new rollout about its environment."""

    search_attributes: bool = Field(description=f"{SA_TARGET_VERSION} and {SA_PHASE} are registered")
    web_ui: str = Field(default="", description="base URL of the Temporal Web UI, for links in the status")


class RolloutStartResult(BaseModel):
    """What ``kubeos-rollout start`` prints."""

    workflow_id: str
    run_id: str
    web_ui: str = ""


def status_from_state(state: RolloutState, in_flight: list[str]) -> RolloutStatus:
    counts: dict[str, int] = {}
    for entry in state.nodes:
        counts[entry.state] = counts.get(entry.state, 0) + 1
    return RolloutStatus(
        phase=state.phase,
        target_version=state.spec.osversion,
        opstype=state.spec.opstype,
        max_unavailable=state.max_unavailable,
        paused=state.paused,
        pause_reason=state.pause_reason,
        rollback_reason=state.rollback_reason,
        total=len(state.nodes),
        counts=counts,
        in_flight=sorted(in_flight),
        failures={e.name: e.message for e in state.nodes if e.state == NodeState.FAILED},
        nodes=state.nodes,
        runs=state.runs,
    )


def resource_identity(resource: dict[str, Any]) -> tuple[str, str]:
    """(namespace, name) of an OS resource; empty strings for a bare spec."""
    metadata = resource.get("metadata") if isinstance(resource, dict) else None
    if not isinstance(metadata, dict):
        return "", ""
    return str(metadata.get("namespace") or "default"), str(metadata.get("name") or "")
