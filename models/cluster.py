"""The Kubernetes side: inputs and outputs of the cluster activities (``activities/cluster.py``).

The activity contract itself (names, errors, heartbeats) is written at the top of ``activities/cluster.py``.
Every model is frozen and forbids unknown fields, so a typo in a workflow fails at once instead of being
silently dropped on the wire.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

CONTROL_PLANE_LABEL = "node-role.kubernetes.io/control-plane"
# Clusters older than 1.24 (and some installers still) mark control-plane nodes with this label instead.
LEGACY_MASTER_LABEL = "node-role.kubernetes.io/master"
HOSTNAME_LABEL = "kubernetes.io/hostname"
MIRROR_POD_ANNOTATION = "kubernetes.io/config.mirror"


class ClusterErrorType(StrEnum):
    """``ApplicationError.type`` of the failures the cluster activities raise (all non-retryable).

    Transient API failures (connection refused, 5xx, 409 conflicts) are raised as ordinary exceptions and
    retried by the activity's retry policy.
    """

    NODE_NOT_FOUND = "NodeNotFound"
    DRAIN_TIMEOUT = "DrainTimeout"  # pods still there at the drain timeout (PDBs blocking, or slow deletion)
    NODE_NOT_READY = "NodeNotReady"  # not Ready with the expected osImage at the timeout
    INVALID_INPUT = "InvalidInput"  # e.g. an unparsable label selector rejected by the API server
    FORBIDDEN = "Forbidden"  # RBAC: the worker's service account may not do this


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class NodeRef(_Model):
    node: str = Field(min_length=1, description="the Node's metadata.name")


class NodeInfo(_Model):
    """What the rollout needs to know about one Node."""

    name: str
    os_image: str = Field(description="status.nodeInfo.osImage (the booted OS's PRETTY_NAME)")
    ready: bool = Field(description="the Ready condition is True")
    unschedulable: bool = Field(description="spec.unschedulable (cordoned)")
    labels: dict[str, str] = Field(default_factory=dict)
    control_plane: bool = Field(description=f"labelled {CONTROL_PLANE_LABEL} (or the legacy master label)")


class ListNodesInput(_Model):
    label_selector: str = Field(default="", description="a Kubernetes label selector, e.g. 'pool=edge,!gpu'")
    include_control_plane: bool = False


class ListNodesResult(_Model):
    nodes: list[NodeInfo] = Field(description="sorted by name")


class DrainInput(_Model):
    node: str = Field(min_length=1)
    timeout_seconds: float = Field(default=300.0, gt=0, description="the whole drain, evictions and waits")
    force: bool = Field(default=False, description="evictpodforce: delete the pods that cannot be evicted")
    grace_period_seconds: int | None = Field(
        default=None, ge=0, description="passed to evictions/deletions; None = each pod's own"
    )


class DrainResult(_Model):
    """Pods are named ``namespace/name``; every list is sorted."""

    evicted: list[str] = Field(default_factory=list, description="removed through the Eviction API")
    deleted: list[str] = Field(default_factory=list, description="deleted because force was set")
    skipped_daemonset: list[str] = Field(default_factory=list)
    skipped_mirror: list[str] = Field(default_factory=list)


class WaitNodeInput(_Model):
    node: str = Field(min_length=1)
    os_image: str = Field(description="the osImage the node must report (the OS spec's osversion)")
    timeout_seconds: float = Field(default=600.0, gt=0)
    poll_seconds: float = Field(default=2.0, gt=0)


class ObjectRef(_Model):
    """The object an Event is about (core/v1 ObjectReference, the fields that matter)."""

    api_version: str = Field(description="e.g. 'upgrade.openeuler.org/v1alpha1' or 'v1'")
    kind: str = Field(min_length=1)
    name: str = Field(min_length=1)
    namespace: str = Field(default="", description="empty for cluster-scoped objects such as Nodes")
    uid: str = ""


class EventInput(_Model):
    namespace: str = Field(default="default", description="where the Event is stored")
    involved_object: ObjectRef
    reason: str = Field(min_length=1, description="UpperCamelCase, e.g. 'NodeUpgraded'")
    message: str
    type: Literal["Normal", "Warning"] = "Normal"
    component: str = Field(default="kubeos-rollout", description="source.component / reportingController")


class EventResult(_Model):
    name: str
    namespace: str
