"""Nodes that fail on the embedded stack: a new slot that cannot boot, and a drain a PodDisruptionBudget blocks."""

from __future__ import annotations

import uuid

import pytest
from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException
from temporalio.service import RPCError, RPCStatusCode

from models.rollout import NodeState, Phase
from tests.e2e.cluster import E2ECluster

pytestmark = pytest.mark.slow


async def test_a_new_slot_that_cannot_boot_falls_back_and_the_failure_budget_pauses(e2e: E2ECluster) -> None:
    """The image is verified (checksum, os-release) by staging and again by the trial boot, so a broken image
    cannot be made that those checks pass and the machine's boot fails: the slot is damaged afterwards, as a disk
    fault or a kernel that cannot mount its root would do. The machine's supervisor is held (SIGSTOP; its node
    worker runs on) from the start until the trial boot has set ``next_entry``; then the new slot's superblock is
    zeroed and the machine may reboot. GRUB's fallback boots the old slot; the rollout must notice by itself."""
    broken, healthy = "node-1", "node-2"  # the plan runs nodes in name order: the broken one first
    tag = await e2e.select([broken, healthy])
    image = await e2e.new_image()
    host = e2e.host(broken)
    before, healthy_before = host.machine(), e2e.host(healthy).machine()
    old_version = (await e2e.nodes())[broken].os_image
    new_slot = host.inactive_slot()
    resource = e2e.os_resource(f"os-{tag}", image, tag, maxunavailable=1, failurebudget=0)

    with host.frozen():
        handle = await e2e.start(resource, "broken-boot")
        await e2e.wait_for(lambda: e2e.call(host.trial_slot), lambda s: s == new_slot, "the trial boot entry")
        assert host.slot_version(new_slot) == image.version  # verified and bootable until now
        await e2e.call(host.damage_slot, new_slot)

    status = await e2e.wait_status(handle, lambda s: s.paused and not s.in_flight, "paused by the failure budget")

    assert status.phase == Phase.PAUSED and "failure budget of 0" in status.pause_reason, status
    assert status.counts == {NodeState.FAILED: 1, NodeState.PENDING: 1}, status
    reason = status.failures[broken]
    assert f"slot {new_slot} ({image.version}) failed to boot" in reason, reason
    assert f"fell back to slot {before.booted_slot}" in reason, reason
    machine = host.machine()
    assert machine.last_boot_failed_slot == new_slot  # GRUB tried the new slot once ...
    assert (machine.booted_slot, machine.boots) == (before.booted_slot, before.boots + 1)  # ... and fell back
    assert host.saved_slot() == before.booted_slot and host.next_slot() is None, host.grubenv()
    node = (await e2e.nodes())[broken]
    assert node.os_image == old_version and node.ready and not node.unschedulable
    assert e2e.host(healthy).machine() == healthy_before  # the budget stopped the rollout before it
    with pytest.raises(RPCError) as missing:
        await e2e.client.get_workflow_handle(f"{handle.id}/{healthy}").describe()
    assert missing.value.status == RPCStatusCode.NOT_FOUND

    await handle.signal("resume")
    result = await e2e.result(handle)
    assert result.phase == Phase.COMPLETED_WITH_FAILURES, result
    assert result.counts == {NodeState.FAILED: 1, NodeState.SUCCEEDED: 1}
    assert (await e2e.nodes())[healthy].os_image == image.version


async def test_a_drain_blocked_by_a_pdb_times_out_uncordons_and_never_reboots(e2e: E2ECluster) -> None:
    blocked, other = "node-4", "node-5"
    tag = await e2e.select([blocked, other])
    image = await e2e.new_image()
    app = f"db-{uuid.uuid4().hex[:6]}"
    pod_name = f"{app}-0"
    pod = k8s.V1Pod(
        metadata=k8s.V1ObjectMeta(name=pod_name, namespace="default", labels={"app": app}),
        spec=k8s.V1PodSpec(node_name=blocked, containers=[k8s.V1Container(name="db", image="postgres:16")]),
    )
    budget = k8s.V1PodDisruptionBudget(
        metadata=k8s.V1ObjectMeta(name=app, namespace="default"),
        spec=k8s.V1PodDisruptionBudgetSpec(min_available=1, selector=k8s.V1LabelSelector(match_labels={"app": app})),
    )
    running = {"status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}}
    await e2e.call(e2e.core.create_namespaced_pod, "default", pod)
    try:
        await e2e.call(e2e.core.patch_namespaced_pod_status, pod_name, "default", running)
        await e2e.call(e2e.policy.create_namespaced_pod_disruption_budget, "default", budget)
        host = e2e.host(blocked)
        before, grubenv_before = host.machine(), host.grubenv_bytes()
        old_version = (await e2e.nodes())[blocked].os_image
        mark = await e2e.node_mark()
        resource = e2e.os_resource(f"os-{tag}", image, tag, maxunavailable=2, failurebudget=1, draintimeout=3)

        result = await e2e.result(await e2e.start(resource, "drain"))

        assert result.phase == Phase.COMPLETED_WITH_FAILURES, result
        assert result.counts == {NodeState.FAILED: 1, NodeState.SUCCEEDED: 1}, result
        reason = result.failures[blocked]
        assert reason.startswith("drain: ") and "timed out after 3s" in reason, reason
        assert f"disruption budget {app}" in reason and reason.endswith("the node was not rebooted"), reason
        assert host.machine() == before  # never rebooted
        assert host.grubenv_bytes() == grubenv_before  # no boot entry was touched
        node = (await e2e.nodes())[blocked]
        assert node.os_image == old_version and not node.unschedulable
        transitions = [t.cordoned for t in await e2e.cordon_transitions(mark) if t.node == blocked]
        assert transitions == [True, False]  # cordoned for the drain, uncordoned when it gave up
        await e2e.call(e2e.core.read_namespaced_pod, pod_name, "default")  # never evicted
    finally:
        for delete in (
            lambda: e2e.policy.delete_namespaced_pod_disruption_budget(app, "default"),
            lambda: e2e.core.delete_namespaced_pod(pod_name, "default", grace_period_seconds=0),
        ):
            try:
                await e2e.call(delete)
            except ApiException as exc:
                if exc.status != 404:
                    raise
