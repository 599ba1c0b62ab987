"""An in-memory fleet behind the real activity names, to test the workflows' logic fast and exactly.

Each fake node has two slots, a GRUB environment (saved/next entry) and a boot id, and behaves like the real host
library would: a trial boot of a slot whose image is "broken" falls back to the saved entry. The end-to-end
tests (tests/e2e) run the same workflows against the real node worker, simulated disks and the API emulator.

Shared by the workflow tests (tests/workflows) and the rollout benchmarks (bench/), which is why it lives here
and not under tests/.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from temporalio import activity
from temporalio.client import Client
from temporalio.exceptions import ApplicationError
from temporalio.worker import PollerBehaviorSimpleMaximum, Worker

from models.cluster import (
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
from models.host import (
    HostAwaitRebootInput,
    HostAwaitRebootOutput,
    HostCommitInput,
    HostCommitOutput,
    HostErrorType,
    HostPreflightInput,
    HostPreflightOutput,
    HostPrepareRollbackInput,
    HostPrepareRollbackOutput,
    HostRebootInput,
    HostRebootOutput,
    HostStageInput,
    HostStageOutput,
    HostStatus,
    HostSwitchBackInput,
    HostSwitchBackOutput,
    HostTrialBootInput,
    HostTrialBootOutput,
    OsRelease,
    SlotName,
    SlotState,
    node_task_queue,
    other_slot,
)
from models.rollout import CLUSTER_TASK_QUEUE, RolloutSettings
from workers.cluster_worker import build_worker

STEP = 0.02  # default seconds a fake drain or stage takes, so that nodes overlap as real ones do
#: Seconds between heartbeats of a long fake stage (the real one heartbeats per MiB written).
HEARTBEAT_EVERY = 1.0


@dataclass
class FakeNode:
    name: str
    version: str
    control_plane: bool = False
    ready: bool = True
    slots: dict[str, str | None] = field(default_factory=dict)
    booted: SlotName = "A"
    saved: SlotName = "A"
    next_entry: SlotName | None = None
    boots: int = 1
    cordoned: bool = False
    reboots: int = 0
    #: Versions whose image fails to boot on this node (GRUB falls back to the saved entry).
    broken_versions: set[str] = field(default_factory=set)
    #: Pods that a PodDisruptionBudget protects: the drain can never finish.
    drain_blocked: bool = False
    #: The host never comes back after a reboot.
    hangs: bool = False
    #: The trial boot's deadline passes before the commit arrives: the host refuses it (TrialExpired).
    trial_expires: bool = False
    labels: dict[str, str] = field(default_factory=dict)
    #: Extra seconds this node's stage takes: the node's own duration (download, write) in makespan benchmarks.
    work_seconds: float = 0.0

    def __post_init__(self) -> None:
        self.slots = self.slots or {"A": self.version, "B": None}

    @property
    def running_version(self) -> str:
        return self.slots[self.booted] or ""

    def status(self) -> HostStatus:
        def slot_state(slot: SlotName) -> SlotState:
            version = self.slots[slot]
            release = OsRelease(name="KubeOS", pretty_name=version) if version else None
            return SlotState(slot=slot, grub_entry=slot, booted=slot == self.booted, size=1 << 20, os_release=release)

        return HostStatus(
            node=self.name,
            booted_slot=self.booted,
            inactive_slot=other_slot(self.booted),
            slots={"A": slot_state("A"), "B": slot_state("B")},
            grubenv={"saved_entry": self.saved, **({"next_entry": self.next_entry} if self.next_entry else {})},
            saved_slot=self.saved,
            next_slot=self.next_entry,
            trial=self.booted != self.saved,
            boot_id=f"{self.name}-boot-{self.boots}",
        )


class FakeFleet:
    """``step``: seconds every drain and stage takes on top of a node's ``work_seconds`` (0: instant nodes)."""

    def __init__(self, nodes: list[FakeNode], step: float = STEP) -> None:
        self.nodes = {n.name: n for n in nodes}
        self.step = step
        #: (node, cordoned, monotonic time) for every cordon change, as the API emulator records them.
        self.cordon_log: list[tuple[str, bool, float]] = []
        self.started: list[str] = []  # nodes in the order their preflight ran

    def max_cordoned_at_once(self) -> int:
        current: set[str] = set()
        peak = 0
        for node, cordoned, _ in sorted(self.cordon_log, key=lambda e: e[2]):
            (current.add if cordoned else current.discard)(node)
            peak = max(peak, len(current))
        return peak

    # ---------------------------------------------------------------------------------------- cluster side

    @activity.defn(name="rollout_settings")
    async def rollout_settings(self) -> RolloutSettings:
        return RolloutSettings(search_attributes=True)

    @activity.defn(name="list_nodes")
    async def list_nodes(self, params: ListNodesInput) -> ListNodesResult:
        listed = [
            NodeInfo(
                name=n.name,
                os_image=n.running_version,
                ready=n.ready,
                unschedulable=n.cordoned,
                labels=n.labels,
                control_plane=n.control_plane,
            )
            for n in self.nodes.values()
            if params.include_control_plane or not n.control_plane
        ]
        return ListNodesResult(nodes=sorted(listed, key=lambda n: n.name))

    def _info(self, node: FakeNode) -> NodeInfo:
        return NodeInfo(
            name=node.name,
            os_image=node.running_version,
            ready=node.ready,
            unschedulable=node.cordoned,
            control_plane=node.control_plane,
        )

    @activity.defn(name="cordon_node")
    async def cordon_node(self, ref: NodeRef) -> NodeInfo:
        node = self.nodes[ref.node]
        if not node.cordoned:
            node.cordoned = True
            self.cordon_log.append((node.name, True, time.monotonic()))
        return self._info(node)

    @activity.defn(name="uncordon_node")
    async def uncordon_node(self, ref: NodeRef) -> NodeInfo:
        node = self.nodes[ref.node]
        if node.cordoned:
            node.cordoned = False
            self.cordon_log.append((node.name, False, time.monotonic()))
        return self._info(node)

    @activity.defn(name="drain_node")
    async def drain_node(self, params: DrainInput) -> DrainResult:
        await asyncio.sleep(self.step)
        if self.nodes[params.node].drain_blocked:
            raise ApplicationError(
                "drain of node timed out: default/db-0 (PodDisruptionBudget db)",
                type="DrainTimeout",
                non_retryable=True,
            )
        return DrainResult(evicted=[f"default/app-{params.node}"])

    @activity.defn(name="wait_node_ready")
    async def wait_node_ready(self, params: WaitNodeInput) -> NodeInfo:
        node = self.nodes[params.node]
        if node.running_version != params.os_image:
            raise ApplicationError(
                f"node {node.name} reports {node.running_version}", type="NodeNotReady", non_retryable=True
            )
        return self._info(node)

    @activity.defn(name="get_node")
    async def get_node(self, ref: NodeRef) -> NodeInfo:
        return self._info(self.nodes[ref.node])

    @activity.defn(name="record_event")
    async def record_event(self, params: EventInput) -> EventResult:
        return EventResult(name="event", namespace=params.namespace)

    def cluster_activities(self) -> list[Callable[..., Any]]:
        return [
            self.rollout_settings,
            self.list_nodes,
            self.cordon_node,
            self.uncordon_node,
            self.drain_node,
            self.wait_node_ready,
            self.get_node,
            self.record_event,
        ]

    @contextlib.asynccontextmanager
    async def workers(
        self, client: Client, task_queue: str = CLUSTER_TASK_QUEUE, node_pollers: int = 5
    ) -> AsyncIterator[None]:
        """The cluster worker (real workflows, fake activities) and one fake host worker per node.

        A Temporal worker serves one task queue, so each node needs its own; ``node_pollers`` caps each one's
        concurrent polls (5 is the SDK's default; a thousand fake nodes in one process need only 1).
        """
        polls = PollerBehaviorSimpleMaximum(node_pollers)
        async with contextlib.AsyncExitStack() as stack:
            await stack.enter_async_context(
                build_worker(client, None, task_queue=task_queue, activities=self.cluster_activities())
            )
            for node in self.nodes.values():
                host = FakeHost(node, self)
                await stack.enter_async_context(
                    Worker(
                        client,
                        task_queue=node_task_queue(node.name),
                        activities=host.activities(),
                        activity_task_poller_behavior=polls,
                    )
                )
            yield


async def _work(seconds: float) -> None:
    """Take ``seconds``, heartbeating as a real long host step does (its heartbeat timeout would end it)."""
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        await asyncio.sleep(min(left, HEARTBEAT_EVERY))
        activity.heartbeat()


class FakeHost:
    """The node activities of one fake node, named as the real ones."""

    def __init__(self, node: FakeNode, fleet: FakeFleet) -> None:
        self.node = node
        self.fleet = fleet

    @activity.defn(name="host_preflight")
    async def host_preflight(self, params: HostPreflightInput) -> HostPreflightOutput:
        self.fleet.started.append(self.node.name)
        status = self.node.status()
        return HostPreflightOutput(status=status, target_slot=status.inactive_slot, already_staged=False)

    @activity.defn(name="host_stage")
    async def host_stage(self, params: HostStageInput) -> HostStageOutput:
        await _work(self.fleet.step + self.node.work_seconds)
        slot = other_slot(self.node.booted)
        self.node.slots[slot] = params.source.osversion
        return HostStageOutput(
            slot=slot,
            checksum=params.source.checksum,
            size=1 << 20,
            reused=False,
            os_release=OsRelease(name="KubeOS", pretty_name=params.source.osversion),
        )

    @activity.defn(name="host_prepare_rollback")
    async def host_prepare_rollback(self, params: HostPrepareRollbackInput) -> HostPrepareRollbackOutput:
        other = other_slot(self.node.booted)
        if self.node.slots[other] != params.osversion:
            raise ApplicationError(
                f"slot {other} holds {self.node.slots[other]}, not {params.osversion}",
                type=HostErrorType.ROLLBACK_TARGET_MISMATCH,
                non_retryable=True,
            )
        return HostPrepareRollbackOutput(
            target_slot=other, booted_slot=self.node.booted, os_release=OsRelease(pretty_name=params.osversion)
        )

    @activity.defn(name="host_trial_boot")
    async def host_trial_boot(self, params: HostTrialBootInput) -> HostTrialBootOutput:
        self.node.next_entry = params.target_slot
        return HostTrialBootOutput(target_slot=params.target_slot, booted_slot=self.node.booted, grubenv={})

    @activity.defn(name="host_reboot")
    async def host_reboot(self, params: HostRebootInput) -> HostRebootOutput:
        node = self.node
        before = node.status().boot_id
        node.reboots += 1
        if not node.hangs:
            # GRUB: next_entry once, else saved_entry; a broken image falls back to the saved entry.
            choice = node.next_entry or node.saved
            node.next_entry = None
            if node.slots[choice] in node.broken_versions:
                choice = node.saved
            node.booted = choice
            node.boots += 1
        return HostRebootOutput(boot_id=before, command=["fake-reboot"])

    @activity.defn(name="host_await_reboot")
    async def host_await_reboot(self, params: HostAwaitRebootInput) -> HostAwaitRebootOutput:
        status = self.node.status()
        if status.boot_id == params.previous_boot_id:
            raise ApplicationError("host has not rebooted yet", type=HostErrorType.NOT_REBOOTED)
        return HostAwaitRebootOutput(status=status)

    @activity.defn(name="host_commit")
    async def host_commit(self, params: HostCommitInput) -> HostCommitOutput:
        if self.node.trial_expires and self.node.booted != self.node.saved:
            raise ApplicationError(
                f"refusing to commit slot {params.slot}: its trial boot was not committed by its deadline; "
                f"the host returns to slot {self.node.saved} by itself",
                type=HostErrorType.TRIAL_EXPIRED,
                non_retryable=True,
            )
        self.node.saved = params.slot
        return HostCommitOutput(saved_slot=params.slot, grubenv={"saved_entry": params.slot})

    @activity.defn(name="host_switch_back")
    async def host_switch_back(self, params: HostSwitchBackInput) -> HostSwitchBackOutput:
        self.node.saved = params.slot
        self.node.next_entry = None
        return HostSwitchBackOutput(
            saved_slot=params.slot,
            booted_slot=self.node.booted,
            reboot_needed=self.node.booted != params.slot,
            grubenv={"saved_entry": params.slot},
        )

    def activities(self) -> list[Callable[..., Any]]:
        return [
            self.host_preflight,
            self.host_stage,
            self.host_prepare_rollback,
            self.host_trial_boot,
            self.host_reboot,
            self.host_await_reboot,
            self.host_commit,
            self.host_switch_back,
        ]
