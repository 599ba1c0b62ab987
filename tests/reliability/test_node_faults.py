"""Faults of the node itself: a drain that can never finish, a new image that does not boot, a host that never
comes back from its reboot."""

from __future__ import annotations

import time

import pytest
from kubernetes.client import V1Pod, V1PodDisruptionBudget
from kubernetes.client.exceptions import ApiException

from models.host import SlotName, other_slot
from node_worker.machine import PANIC_MARKER
from node_worker.trial import TrialStore
from tests.e2e.cluster import Image
from tests.e2e.conftest import SLOT_SIZE
from tests.reliability.harness import GROUPS, NAMESPACE, Chaos, NodeView, node_message
from tests.reliability.results import trial
from workflows.node_upgrade import TRIAL_COMMIT_MARGIN

pytestmark = [pytest.mark.slow, pytest.mark.reliability]

(NODE,) = GROUPS["refuse"]


def trial_slot(view: NodeView) -> SlotName:
    """The slot an upgrade of this node boots into: the one it does not run."""
    return other_slot("B" if view.booted_slot == "B" else "A")


async def test_drain_blocked_forever_by_a_disruption_budget(chaos: Chaos) -> None:
    before = await chaos.view(NODE)
    image, tag = await chaos.new_image(), await chaos.select("refuse")
    pod = {
        "metadata": {"name": "pinned", "labels": {"app": "pinned"}},
        "spec": {"nodeName": NODE, "containers": [{"name": "main", "image": "busybox"}]},
        "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]},
    }
    budget = {
        "metadata": {"name": "pinned"},
        "spec": {"selector": {"matchLabels": {"app": "pinned"}}, "minAvailable": 1},
    }
    e2e = chaos.e2e
    await e2e.call(e2e.core.create_namespaced_pod, NAMESPACE, V1Pod.model_validate(pod))
    await e2e.call(
        e2e.policy.create_namespaced_pod_disruption_budget, NAMESPACE, V1PodDisruptionBudget.model_validate(budget)
    )
    try:
        with trial("fault", "a PodDisruptionBudget that blocks the drain forever (draintimeout 5 s)") as t:
            await chaos.apply(chaos.resource("drain-blocked", image, tag, draintimeout=5))
            status = await chaos.wait_os("drain-blocked")

            message = node_message(status, NODE)
            assert status["phase"] == "CompletedWithFailures", status
            assert "drain" in message and "timed out" in message and "not rebooted" in message, message
            after = await chaos.view(NODE)
            assert after.same_host_state(before), (before, after)  # never rebooted, boot entries untouched
            after.assert_in_service(before.os_image)  # uncordoned again
            still = await e2e.call(e2e.core.read_namespaced_pod, "pinned", NAMESPACE)
            assert still.spec is not None and still.spec.node_name == NODE  # the budget held: never evicted
            t.outcome = "drain gave up after 5 s; node uncordoned, never rebooted, boot entries untouched"
    finally:
        for delete in (e2e.policy.delete_namespaced_pod_disruption_budget, e2e.core.delete_namespaced_pod):
            try:
                await e2e.call(delete, "pinned", NAMESPACE)
            except ApiException as exc:
                if exc.status != 404:
                    raise


async def test_new_image_that_fails_to_boot(chaos: Chaos) -> None:
    before = await chaos.view(NODE)
    tag = await chaos.select("refuse")
    image = await chaos.special_image(SLOT_SIZE // 2, {PANIC_MARKER.lstrip("/"): b"this kernel panics\n"})
    with trial("fault", "a new image that fails to boot (its kernel panics; GRUB falls back)") as t:
        await chaos.apply(chaos.resource("boot-fails", image, tag))
        status = await chaos.wait_os("boot-fails")

        message = node_message(status, NODE)
        assert status["phase"] == "CompletedWithFailures" and "failed to boot" in message, status
        after = await chaos.view(NODE)
        tried = trial_slot(before)
        assert after.boots == before.boots + 1 and after.last_boot_failed_slot == tried, (before, after)
        assert after.booted_slot == before.booted_slot and after.saved_entry == before.saved_entry
        after.assert_in_service(before.os_image)
        boots = chaos.audit.of(NODE)
        assert any(b.attempt and b.slot == tried and b.verified for b in boots), boots  # it tried a verified slot
        assert chaos.audit.problems(NODE) == []
        t.outcome = f"one boot: slot {tried} did not come up, GRUB fell back to slot {after.booted_slot} (committed)"


async def hang_and_power_on(chaos: Chaos, name: str) -> tuple[Image, str]:
    """Roll out to the hang node while its machine hangs on reboot; check the failure and the node; then power
    the machine on again. Returns the image and the reported failure."""
    (node,) = GROUPS["hang"]
    before = await chaos.view(node)
    image, tag = await chaos.new_image(), await chaos.select("hang")
    paths = chaos.e2e.host(node).paths
    paths.hang_on_reboot.touch()
    await chaos.apply(chaos.resource(name, image, tag, boottimeout=15))
    status = await chaos.wait_os(name)

    message = node_message(status, node)
    assert status["phase"] == "CompletedWithFailures" and "did not come back within 15s" in message, status
    down = await chaos.view(node)
    assert not down.running and not down.ready and down.boots == before.boots, down
    assert not down.unschedulable, "a node reported failed must not stay cordoned"
    new_slot = trial_slot(before)
    # GRUB never ran: the old slot is still the default, the new one is asked for once.
    assert down.saved_entry == before.booted_slot and down.next_entry == new_slot, down

    # Power it on again: it boots the verified new slot once, as a trial nobody commits.
    paths.hang_on_reboot.unlink()
    chaos.restart(f"machine-{node}", hard=False)

    async def running() -> NodeView | None:
        view = await chaos.view(node)
        return view if view.running and view.ready and view.boots == before.boots + 1 else None

    back = await chaos.wait(running, f"{node} to run again")
    assert back.booted_slot == new_slot and back.saved_entry == before.booted_slot and not back.next_entry
    # The host keeps the trial's deadline: past it, it returns to its committed slot by itself.
    record = TrialStore(chaos.e2e.host(node).config.staging_dir).load()
    assert record is not None and record.slot == new_slot and record.deadline > time.time(), record
    assert record.deadline - record.set_at == 2 * 15 + TRIAL_COMMIT_MARGIN.total_seconds(), record
    assert chaos.audit.problems(node) == []
    return image, message


async def test_node_that_never_comes_back(chaos: Chaos) -> None:
    with trial("fault", "a node that never comes back from its reboot (boottimeout 15 s)") as t:
        await hang_and_power_on(chaos, "never-back")
        t.outcome = (
            "reported failed, uncordoned; powered on later, it boots the verified new slot once (uncommitted), "
            "holding the trial's deadline (2 x boottimeout + 300 s) past which it returns to its committed slot"
        )


async def test_a_rollout_to_the_version_of_an_uncommitted_trial_commits_it(chaos: Chaos) -> None:
    """After the hang, the node runs the new version from a slot nobody committed: its next reboot returns it to
    the old version. A rollout to that version must not call the node done while that is so: it returns the node
    to its committed slot, then upgrades it as any other, and the node ends committed on the new version."""
    (node,) = GROUPS["hang"]
    with trial("fault", "a rollout to the version a node runs as an uncommitted trial") as t:
        view = await chaos.view(node)
        if view.saved_entry == view.booted_slot:  # not on an uncommitted trial (this test runs alone): make one
            image, _message = await hang_and_power_on(chaos, "never-back-first")
        else:
            spec = ((await chaos.get("never-back")) or {}).get("spec") or {}
            image = Image(spec["osversion"], "", spec["imageurl"], spec["checksum"])
        before = await chaos.view(node)
        tag = await chaos.select("hang")
        await chaos.apply(chaos.resource("after-the-hang", image, tag))
        status = await chaos.wait_os("after-the-hang")
        after = await chaos.view(node)
        reported = node_message(status, node)
        assert status["phase"] == "Succeeded", status
        assert "first returned from an uncommitted trial boot" in reported, reported
        after.assert_in_service(image.version)  # committed, no pending one-time boot, Ready, uncordoned
        committed = before.saved_entry  # the simulated hosts' GRUB entries are named as their slots
        # Two boots: back into the committed slot, then the upgrade's trial boot of the slot verified again.
        assert after.boots == before.boots + 2 and after.booted_slot == before.booted_slot, (before, after)
        assert [b.slot for b in chaos.audit.of(node)][-2:] == [committed, before.booted_slot]
        assert TrialStore(chaos.e2e.host(node).config.staging_dir).load() is None
        assert chaos.audit.problems(node) == []
        t.outcome = (
            f"returned to its committed slot {committed} first, then upgraded as any node: slot "
            f"{after.booted_slot} committed on {image.version}, two boots, both verified"
        )
