"""ClusterRollout and NodeUpgrade logic on a real Temporal dev server, with an in-memory fleet."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from temporalio.client import Client, WorkflowFailureError, WorkflowHandle, WorkflowUpdateFailedError
from temporalio.testing import WorkflowEnvironment

from devstack.fake_fleet import FakeFleet, FakeNode
from models.rollout import (
    ROLLOUT_WORKFLOW,
    NodeState,
    Phase,
    RolloutStatus,
    SetMaxUnavailableInput,
)
from tests.conftest import start_dev_server

OLD, NEW = "KubeOS 1.0.0", "KubeOS 1.0.1"
CHECKSUM = "ab" * 32


def disk_spec(**overrides: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "imagetype": "disk",
        "opstype": "upgrade",
        "osversion": NEW,
        "maxunavailable": 2,
        "imageurl": "https://images.example/update.img",
        "checksum": CHECKSUM,
        "cacert": "ca.crt",
        "boottimeout": 30,
    }
    spec.update(overrides)
    return {"apiVersion": "upgrade.openeuler.org/v1alpha1", "kind": "OS", "metadata": {"name": "os"}, "spec": spec}


def fleet(count: int, **node_args: Any) -> FakeFleet:
    prefix = uuid.uuid4().hex[:6]
    return FakeFleet([FakeNode(f"n{i}-{prefix}", OLD, **node_args) for i in range(count)])


async def start(client: Client, resource: dict[str, Any]) -> WorkflowHandle[Any, RolloutStatus]:
    return await client.start_workflow(
        ROLLOUT_WORKFLOW,
        resource,
        id=f"test-rollout-{uuid.uuid4().hex[:8]}",
        task_queue="kubeos-cluster",
        result_type=RolloutStatus,
    )


async def wait_for(handle: WorkflowHandle[Any, RolloutStatus], predicate: Any, limit: float = 30.0) -> RolloutStatus:
    """Poll the status query until ``predicate(status)`` holds (bounded)."""
    deadline = asyncio.get_running_loop().time() + limit
    while True:
        status = await handle.query("status", result_type=RolloutStatus)
        if predicate(status):
            return status
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"condition not reached; last status: {status}")
        await asyncio.sleep(0.1)


async def cancel_mid_gate(client: Client, handle: WorkflowHandle[Any, RolloutStatus], node: FakeNode) -> None:
    """Once ``node`` has rebooted into its trial (a host that hangs there: mid health gate), cancel the rollout;
    both it and the node's workflow must end cancelled, the latter after putting the host back."""
    for _ in range(300):  # bounded: the reboot follows the stage within seconds
        if node.reboots:
            break
        await asyncio.sleep(0.1)
    assert node.reboots == 1 and node.next_entry == "B"
    await handle.cancel()
    with pytest.raises(WorkflowFailureError):
        await handle.result()
    with pytest.raises(WorkflowFailureError):
        await client.get_workflow_handle(f"{handle.id}/{node.name}").result()


async def test_upgrades_every_node_with_at_most_maxunavailable_cordoned(temporal_env: WorkflowEnvironment) -> None:
    nodes = fleet(5)
    async with nodes.workers(temporal_env.client):
        result = await (await start(temporal_env.client, disk_spec(maxunavailable=2))).result()
    assert result.phase == Phase.SUCCEEDED
    assert result.counts == {NodeState.SUCCEEDED: 5}
    assert all(n.running_version == NEW and n.saved == n.booted == "B" for n in nodes.nodes.values())
    assert all(not n.cordoned for n in nodes.nodes.values())
    assert nodes.max_cordoned_at_once() == 2  # the window was used, and never exceeded


async def test_plan_checks_up_to_date_refuses_other_major_and_not_ready_excludes_control_plane(
    temporal_env: WorkflowEnvironment,
) -> None:
    prefix = uuid.uuid4().hex[:6]
    nodes = FakeFleet(
        [
            FakeNode(f"a-{prefix}", OLD),
            FakeNode(f"b-{prefix}", NEW),
            FakeNode(f"c-{prefix}", "KubeOS 2.0.0"),
            FakeNode(f"d-{prefix}", OLD, ready=False),
            FakeNode(f"e-{prefix}", OLD, control_plane=True),
        ]
    )
    async with nodes.workers(temporal_env.client):
        result = await (await start(temporal_env.client, disk_spec())).result()
    states = {e.name.split("-")[0]: e.state for e in result.nodes}
    assert states == {
        "a": NodeState.SUCCEEDED,
        "b": NodeState.UP_TO_DATE,
        "c": NodeState.REFUSED,
        "d": NodeState.REFUSED,
    }
    refused = {e.name.split("-")[0]: e.message for e in result.nodes if e.state == NodeState.REFUSED}
    assert "major version" in refused["c"] and "not Ready" in refused["d"]
    assert nodes.nodes[f"e-{prefix}"].running_version == OLD  # control plane untouched
    # The node on the target version was only asked (one preflight): never cordoned, never rebooted.
    up_to_date = nodes.nodes[f"b-{prefix}"]
    assert up_to_date.name in nodes.started and up_to_date.reboots == 0
    assert all(name != up_to_date.name for name, _, _ in nodes.cordon_log)


async def test_a_node_running_an_uncommitted_trial_is_returned_to_its_committed_slot_then_upgraded(
    temporal_env: WorkflowEnvironment,
) -> None:
    """Trials nobody committed (their rollout gave up): one of the target version, which reports the target
    osImage and is not up to date, and one of another version, whose inactive slot is the only committed one."""
    prefix = uuid.uuid4().hex[:6]
    other = "KubeOS 1.0.2"
    nodes = FakeFleet(
        [
            FakeNode(f"a-{prefix}", NEW, slots={"A": OLD, "B": NEW}, booted="B", saved="A"),
            FakeNode(f"b-{prefix}", other, slots={"A": OLD, "B": other}, booted="B", saved="A"),
        ]
    )
    async with nodes.workers(temporal_env.client):
        result = await (await start(temporal_env.client, disk_spec(maxunavailable=1))).result()
    assert result.phase == Phase.SUCCEEDED and result.counts == {NodeState.SUCCEEDED: 2}, result
    for entry in result.nodes:
        node = nodes.nodes[entry.name]
        # Back to A (committed, never overwritten) with a reboot, then staged into B and committed there.
        assert node.slots == {"A": OLD, "B": NEW} and node.booted == node.saved == "B", node
        assert node.reboots == 2 and not node.cordoned and node.next_entry is None
        assert "first returned from an uncommitted trial boot of" in entry.message and "to slot A" in entry.message
        assert entry.from_version == OLD  # what a rollback would return it to: its committed version
    assert nodes.max_cordoned_at_once() == 1


async def test_a_commit_the_host_refuses_returns_the_node_to_its_old_slot(temporal_env: WorkflowEnvironment) -> None:
    nodes = fleet(1, trial_expires=True)  # the trial boot's deadline passed before the commit
    node = next(iter(nodes.nodes.values()))
    async with nodes.workers(temporal_env.client):
        result = await (await start(temporal_env.client, disk_spec())).result()
    assert result.phase == Phase.COMPLETED_WITH_FAILURES
    message = result.failures[node.name]
    assert message.startswith("commit: ") and "not committed by its deadline" in message, message
    assert "returned to slot A (KubeOS 1.0.0)" in message
    assert node.booted == node.saved == "A" and node.next_entry is None and not node.cordoned
    assert node.reboots == 2  # the trial, and the return to A


async def test_pause_stops_new_nodes_and_resume_finishes(temporal_env: WorkflowEnvironment) -> None:
    nodes = fleet(4)
    async with nodes.workers(temporal_env.client):
        handle = await start(temporal_env.client, disk_spec(maxunavailable=1))
        await handle.signal("pause", "maintenance")
        paused = await wait_for(handle, lambda s: s.phase == Phase.PAUSED and not s.in_flight)
        started = len(nodes.started)
        await asyncio.sleep(0.5)
        assert len(nodes.started) == started < 4  # nothing new while paused
        assert paused.pause_reason == "maintenance"
        await handle.signal("resume")
        result = await handle.result()
    assert result.phase == Phase.SUCCEEDED and result.counts == {NodeState.SUCCEEDED: 4}


async def test_rollback_signal_returns_upgraded_nodes_to_their_previous_version(
    temporal_env: WorkflowEnvironment,
) -> None:
    nodes = fleet(4)
    async with nodes.workers(temporal_env.client):
        handle = await start(temporal_env.client, disk_spec(maxunavailable=1))
        await wait_for(handle, lambda s: s.counts.get(NodeState.SUCCEEDED, 0) >= 2)
        await handle.signal("rollback", "bad latency")
        result = await handle.result()
    assert result.phase == Phase.ROLLED_BACK
    assert result.rollback_reason == "bad latency"
    rolled = [e for e in result.nodes if e.state == NodeState.ROLLED_BACK]
    assert len(rolled) >= 2
    assert {e.state for e in result.nodes} <= {NodeState.ROLLED_BACK, NodeState.NOT_STARTED}
    for node in nodes.nodes.values():
        assert node.running_version == OLD and node.saved == node.booted and not node.cordoned


async def test_failed_boot_falls_back_and_failure_budget_pauses(temporal_env: WorkflowEnvironment) -> None:
    nodes = fleet(4)
    first = sorted(nodes.nodes)[0]
    nodes.nodes[first].broken_versions.add(NEW)
    async with nodes.workers(temporal_env.client):
        handle = await start(temporal_env.client, disk_spec(maxunavailable=1, failurebudget=0))
        status = await wait_for(handle, lambda s: s.paused and not s.in_flight)
        assert status.phase == Phase.PAUSED
        assert "failure budget" in status.pause_reason
        assert "failed to boot" in status.failures[first]
        assert len(nodes.started) == 1  # the rollout stopped at the first failure
        broken = nodes.nodes[first]
        assert broken.running_version == OLD and broken.saved == "A" and not broken.cordoned
        await handle.signal("resume")
        result = await handle.result()
    assert result.phase == Phase.COMPLETED_WITH_FAILURES
    assert result.counts == {NodeState.FAILED: 1, NodeState.SUCCEEDED: 3}


async def test_failure_policy_rollback_reverts_upgraded_nodes(temporal_env: WorkflowEnvironment) -> None:
    nodes = fleet(3)
    last = sorted(nodes.nodes)[-1]
    nodes.nodes[last].broken_versions.add(NEW)
    async with nodes.workers(temporal_env.client):
        handle = await start(temporal_env.client, disk_spec(maxunavailable=1, failurepolicy="rollback"))
        result = await handle.result()
    assert result.phase == Phase.ROLLED_BACK
    assert "automatic rollback" in result.rollback_reason
    assert result.counts == {NodeState.ROLLED_BACK: 2, NodeState.FAILED: 1}
    assert all(n.running_version == OLD for n in nodes.nodes.values())


async def test_blocked_drain_uncordons_and_never_reboots(temporal_env: WorkflowEnvironment) -> None:
    nodes = fleet(2)
    blocked = sorted(nodes.nodes)[0]
    nodes.nodes[blocked].drain_blocked = True
    async with nodes.workers(temporal_env.client):
        result = await (await start(temporal_env.client, disk_spec(failurebudget=1))).result()
    node = nodes.nodes[blocked]
    assert result.nodes[0].state == NodeState.FAILED and "drain" in result.failures[blocked]
    assert node.reboots == 0 and not node.cordoned and node.next_entry is None
    assert result.counts[NodeState.SUCCEEDED] == 1


async def test_opstype_rollback_switches_to_the_other_slot(temporal_env: WorkflowEnvironment) -> None:
    prefix = uuid.uuid4().hex[:6]
    nodes = FakeFleet(
        [
            FakeNode(f"a-{prefix}", NEW, slots={"A": OLD, "B": NEW}, booted="B", saved="B"),
            FakeNode(f"b-{prefix}", NEW, slots={"A": "KubeOS 1.0.2", "B": NEW}, booted="B", saved="B"),
        ]
    )
    rollback = disk_spec(opstype="rollback", imagetype="", osversion=OLD, imageurl="", checksum="", cacert="")
    async with nodes.workers(temporal_env.client):
        result = await (await start(temporal_env.client, rollback | {})).result()
    a, b = nodes.nodes[f"a-{prefix}"], nodes.nodes[f"b-{prefix}"]
    assert a.running_version == OLD and a.saved == "A"
    assert result.failures[b.name].startswith("rollback:") and "not KubeOS 1.0.0" in result.failures[b.name]
    assert b.running_version == NEW and b.reboots == 0


async def test_set_max_unavailable_is_validated_and_applied(temporal_env: WorkflowEnvironment) -> None:
    nodes = fleet(6)
    async with nodes.workers(temporal_env.client):
        handle = await start(temporal_env.client, disk_spec(maxunavailable=1))
        with pytest.raises(WorkflowUpdateFailedError):
            await handle.execute_update("set_max_unavailable", SetMaxUnavailableInput(value=0), result_type=int)
        assert await handle.execute_update("set_max_unavailable", SetMaxUnavailableInput(value=3), result_type=int) == 3
        result = await handle.result()
    assert result.max_unavailable == 3 and result.phase == Phase.SUCCEEDED


async def test_invalid_input_fails_at_once_listing_every_field(temporal_env: WorkflowEnvironment) -> None:
    bad = disk_spec(imageurl="ftp://x/y", checksum="nothex", maxunavailable=0)
    async with fleet(1).workers(temporal_env.client):
        handle = await start(temporal_env.client, bad)
        with pytest.raises(WorkflowFailureError) as failure:
            await handle.result()
    message = str(failure.value.cause)
    for name in ("spec.imageurl", "spec.checksum", "spec.maxunavailable"):
        assert name in message


async def test_bare_spec_input_is_accepted(temporal_env: WorkflowEnvironment) -> None:
    nodes = fleet(1)
    async with nodes.workers(temporal_env.client):
        result = await (await start(temporal_env.client, disk_spec()["spec"])).result()
    assert result.phase == Phase.SUCCEEDED


@pytest.fixture
async def short_history_env() -> AsyncIterator[WorkflowEnvironment]:
    """A dev server that suggests continue-as-new after 40 events, so that a few nodes make a rollout continue."""
    env = await start_dev_server("--dynamic-config-value", "limit.historyCount.suggestContinueAsNew=40")
    try:
        yield env
    finally:
        await env.shutdown()


def fleet_led_by(first: Any, others: int = 5) -> tuple[FakeFleet, FakeNode, list[FakeNode]]:
    """A fleet whose first node in plan order is ``FakeNode(name, OLD, **first)``, followed by ``others`` plain
    ones: (fleet, first node, the others)."""
    prefix = uuid.uuid4().hex[:6]
    lead = FakeNode(f"n0-{prefix}", OLD, **first)
    rest = [FakeNode(f"n{i}-{prefix}", OLD) for i in range(1, others + 1)]
    return FakeFleet([lead, *rest]), lead, rest


async def test_continue_as_new_keeps_histories_small(short_history_env: WorkflowEnvironment) -> None:
    env = short_history_env
    nodes = fleet(8)
    async with nodes.workers(env.client):
        handle = await start(env.client, disk_spec(maxunavailable=2))
        result = await handle.result()
    assert result.phase == Phase.SUCCEEDED and result.counts == {NodeState.SUCCEEDED: 8}
    assert result.runs > 1
    assert nodes.max_cordoned_at_once() <= 2


async def test_continue_as_new_does_not_wait_for_the_running_nodes(short_history_env: WorkflowEnvironment) -> None:
    """A slow node started in the first run is carried into the next ones and followed there, while the other
    slot of the window keeps upgrading nodes: continue-as-new is no batch barrier."""
    env = short_history_env
    nodes, slow, others = fleet_led_by({"work_seconds": 8.0})  # first in plan order; its stage takes 8 s
    async with nodes.workers(env.client):
        result = await (await start(env.client, disk_spec(maxunavailable=2))).result()
    assert result.phase == Phase.SUCCEEDED and result.counts == {NodeState.SUCCEEDED: 6}
    assert result.runs > 1
    assert all(n.reboots == 1 for n in nodes.nodes.values())
    cordons = {(node, cordoned): at for node, cordoned, at in nodes.cordon_log}
    # Every other node went through the second slot while the slow one was still staging (it cordons after).
    assert all(cordons[(n.name, False)] < cordons[(slow.name, True)] for n in others)


async def test_a_carried_node_that_fails_is_reported_failed_by_the_next_run(
    short_history_env: WorkflowEnvironment,
) -> None:
    env = short_history_env
    nodes, broken, _ = fleet_led_by({"work_seconds": 6.0, "broken_versions": {NEW}})
    async with nodes.workers(env.client):
        result = await (await start(env.client, disk_spec(maxunavailable=2, failurebudget=1))).result()
    assert result.runs > 1
    assert result.counts == {NodeState.SUCCEEDED: 5, NodeState.FAILED: 1}
    assert "failed to boot" in result.failures[broken.name]
    assert broken.booted == broken.saved == "A" and not broken.cordoned


async def test_cancelling_a_rollout_cancels_the_nodes_carried_across_continue_as_new(
    short_history_env: WorkflowEnvironment,
) -> None:
    env = short_history_env
    # Stages for 4 s, then never comes back from its trial reboot: mid-gate when the rollout is cancelled.
    nodes, stuck, _ = fleet_led_by({"work_seconds": 4.0, "hangs": True})
    async with nodes.workers(env.client):
        handle = await start(env.client, disk_spec(maxunavailable=2, boottimeout=300))
        await wait_for(handle, lambda s: s.runs > 1 and s.counts.get(NodeState.SUCCEEDED) == 5)
        await cancel_mid_gate(env.client, handle, stuck)
    assert stuck.saved == "A" and stuck.next_entry is None and not stuck.cordoned


async def test_cancelling_a_rollout_puts_the_running_node_back(temporal_env: WorkflowEnvironment) -> None:
    nodes = fleet(1, hangs=True)  # the host never comes back from its trial reboot: the node is mid-gate
    node = next(iter(nodes.nodes.values()))
    async with nodes.workers(temporal_env.client):
        handle = await start(temporal_env.client, disk_spec(boottimeout=300))
        await cancel_mid_gate(temporal_env.client, handle, node)
    assert node.saved == "A" and node.next_entry is None and not node.cordoned


async def test_a_budget_tripped_by_the_last_node_does_not_leave_the_rollout_paused(
    temporal_env: WorkflowEnvironment,
) -> None:
    nodes = fleet(2)
    last = sorted(nodes.nodes)[-1]
    nodes.nodes[last].broken_versions.add(NEW)
    async with nodes.workers(temporal_env.client):
        result = await (await start(temporal_env.client, disk_spec(maxunavailable=1))).result()
    assert result.phase == Phase.COMPLETED_WITH_FAILURES
    assert not result.paused and result.pause_reason == ""
    assert "failed to boot" in result.failures[last]
