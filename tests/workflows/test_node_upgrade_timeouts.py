"""NodeUpgrade's long timeouts, at their defaults, on the time-skipping test server with the fake fleet.

The test server skips time only while no activity is running or waiting in a queue, so a host that "never comes
back" is one whose worker keeps answering HostNotRebooted (its boot id never changes: the fake fleet's ``hangs``
knob); a host whose worker is gone would leave the activity in its queue, and the server would wait the 600
seconds in real time. The same goes for the drain: the activity itself waits out ``draintimeout`` (the
end-to-end drain test does that in real time with a short one), so here the fake reports the timeout at once and
the test checks that the default timeouts reach the activity and what the workflow does with the outcome.
"""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

from temporalio import activity
from temporalio.testing import WorkflowEnvironment

from devstack.fake_fleet import FakeFleet, FakeNode
from models.cluster import DrainInput, DrainResult
from models.os_resource import parse_os_spec
from models.rollout import (
    CLUSTER_TASK_QUEUE,
    NODE_WORKFLOW,
    ROLLOUT_WORKFLOW,
    NodeMode,
    NodeState,
    NodeUpgradeInput,
    NodeUpgradeResult,
    Phase,
    RolloutSettings,
    RolloutStatus,
)

OLD, NEW = "KubeOS 1.0.0", "KubeOS 1.0.1"


def resource() -> dict[str, Any]:
    """An upgrade with the default drain and boot timeouts (300 s and 600 s)."""
    spec = {
        "imagetype": "disk",
        "opstype": "upgrade",
        "osversion": NEW,
        "maxunavailable": 1,
        "imageurl": "https://images.example/update.img",
        "checksum": "cd" * 32,
        "cacert": "ca.crt",
    }
    return {"apiVersion": "upgrade.openeuler.org/v1alpha1", "kind": "OS", "metadata": {"name": "os"}, "spec": spec}


class TestServerFleet(FakeFleet):
    """The fake fleet on the time-skipping server, which has no custom search attributes; drains are recorded."""

    __test__ = False  # not a test class, whatever its name says

    def __init__(self, nodes: list[FakeNode]) -> None:
        super().__init__(nodes, step=0)
        #: (timeout_seconds, the activity's start-to-close timeout) of every drain.
        self.drains: list[tuple[float, timedelta | None]] = []

    @activity.defn(name="rollout_settings")
    async def rollout_settings(self) -> RolloutSettings:
        return RolloutSettings(search_attributes=False)

    @activity.defn(name="drain_node")
    async def drain_node(self, params: DrainInput) -> DrainResult:
        self.drains.append((params.timeout_seconds, activity.info().start_to_close_timeout))
        return await FakeFleet.drain_node(self, params)


def node(**knobs: Any) -> FakeNode:
    return FakeNode(f"n-{uuid.uuid4().hex[:8]}", OLD, **knobs)


async def test_a_host_that_never_comes_back_is_failed_after_the_boot_timeout(
    time_skipping_env: WorkflowEnvironment,
) -> None:
    env = time_skipping_env
    hung = node(hangs=True)
    fleet = TestServerFleet([hung])
    async with fleet.workers(env.client):
        started = await env.get_current_time()
        handle = await env.client.start_workflow(
            ROLLOUT_WORKFLOW,
            resource(),
            id=f"ts-hang-{uuid.uuid4().hex[:8]}",
            task_queue=CLUSTER_TASK_QUEUE,
            result_type=RolloutStatus,
        )
        result = await handle.result()
        waited = await env.get_current_time() - started

    assert result.phase == Phase.COMPLETED_WITH_FAILURES and result.counts == {NodeState.FAILED: 1}, result
    message = result.failures[hung.name]
    assert message.startswith("the host did not come back within 600s after the reboot"), message
    assert message.endswith("slot A is still its saved boot entry"), message
    assert waited >= timedelta(seconds=600)  # the whole boot timeout, skipped
    assert hung.reboots == 1 and hung.saved == "A" and not hung.cordoned
    assert [(n, c) for n, c, _ in fleet.cordon_log] == [(hung.name, True), (hung.name, False)]


async def test_a_drain_that_times_out_uncordons_and_never_reboots(time_skipping_env: WorkflowEnvironment) -> None:
    env = time_skipping_env
    blocked = node(drain_blocked=True)
    fleet = TestServerFleet([blocked])
    upgrade = NodeUpgradeInput(
        node=blocked.name, mode=NodeMode.UPGRADE, spec=parse_os_spec(resource()), target_version=NEW
    )
    async with fleet.workers(env.client):
        result = await env.client.execute_workflow(
            NODE_WORKFLOW,
            upgrade,
            id=f"ts-drain-{uuid.uuid4().hex[:8]}",
            task_queue=CLUSTER_TASK_QUEUE,
            result_type=NodeUpgradeResult,
        )

    assert result.outcome == "failed", result
    assert result.message.startswith("drain: ") and "drain of node timed out" in result.message, result.message
    assert result.message.endswith("the node was not rebooted"), result.message
    # The default draintimeout reached the activity, and the workflow gave it that long plus a minute.
    assert fleet.drains == [(300, timedelta(seconds=360))]
    assert blocked.reboots == 0 and blocked.next_entry is None and blocked.saved == blocked.booted == "A"
    assert not blocked.cordoned
    assert [(n, c) for n, c, _ in fleet.cordon_log] == [(blocked.name, True), (blocked.name, False)]
