"""Rollouts on the embedded stack: the window, pause and resume, and the rollback signal, on real hosts."""

from __future__ import annotations

from typing import Any, cast

import pytest

from models.host import SimMachineState, other_slot
from models.os_resource import GROUP, PLURAL, VERSION
from models.rollout import NodeState, Phase, RolloutStatus
from tests.e2e.cluster import E2ECluster, history_steps, max_cordoned_at_once
from tests.workflows.replay import fetch, replay

pytestmark = pytest.mark.slow


def assert_upgraded(e2e: E2ECluster, name: str, before: SimMachineState, version: str) -> None:
    """One reboot into the other slot, committed there, and that slot holds ``version``."""
    host = e2e.host(name)
    machine = host.machine()
    new_slot = other_slot(before.booted_slot)
    assert (machine.booted_slot, machine.pretty_name, machine.boots) == (new_slot, version, before.boots + 1), name
    assert host.saved_slot() == new_slot and host.next_slot() is None, f"{name}: {host.grubenv()}"
    assert host.slot_version(new_slot) == version


async def test_five_nodes_two_at_a_time_from_an_os_resource(e2e: E2ECluster) -> None:
    """Through the CR bridge: the OS resource starts the rollout, which never has more than 2 nodes cordoned."""
    names = sorted(h.name for h in e2e.stack.hosts)
    assert len(names) == 5
    tag = await e2e.select(names)
    image = await e2e.new_image()
    before = {n: e2e.host(n).machine() for n in names}
    mark = await e2e.node_mark()
    resource = e2e.os_resource(f"os-{tag}", image, tag, maxunavailable=2)

    await e2e.call(e2e.custom.create_namespaced_custom_object, GROUP, VERSION, "default", PLURAL, resource)

    async def os_status() -> dict[str, Any]:
        obj = await e2e.call(e2e.custom.get_namespaced_custom_object, GROUP, VERSION, "default", PLURAL, f"os-{tag}")
        return dict(cast(dict[str, Any], obj).get("status") or {})

    started = await e2e.wait_for(os_status, lambda s: bool(s.get("workflowId")), "the bridge starts the rollout")
    handle = e2e.client.get_workflow_handle(started["workflowId"], result_type=RolloutStatus)
    result = await e2e.result(handle)

    assert result.phase == Phase.SUCCEEDED, result
    assert result.counts == {NodeState.SUCCEEDED: 5}
    transitions = await e2e.cordon_transitions(mark)
    assert max_cordoned_at_once(transitions) <= 2, transitions
    for name in names:  # each node cordoned once, then uncordoned
        assert [t.cordoned for t in transitions if t.node == name] == [True, False], (name, transitions)
    nodes = await e2e.nodes()
    for name in names:
        assert nodes[name].os_image == image.version and nodes[name].ready and not nodes[name].unschedulable
        assert_upgraded(e2e, name, before[name], image.version)
    final = await e2e.wait_for(os_status, lambda s: s.get("phase") == "Succeeded", "the bridge reports the result")
    assert final["progress"] == "5/5"

    # The real run replays with today's code: the rollout and one of its node workflows.
    await replay(await fetch(e2e.client, handle.id))
    await replay(await fetch(e2e.client, f"{handle.id}/{names[0]}"))


async def test_pause_stops_new_nodes_and_resume_finishes(e2e: E2ECluster) -> None:
    names = ["node-1", "node-2", "node-3"]
    tag = await e2e.select(names)
    image = await e2e.new_image()
    before = {n: e2e.host(n).machine() for n in names}
    handle = await e2e.start(e2e.os_resource(f"os-{tag}", image, tag, maxunavailable=1), "pause")

    await e2e.wait_status(handle, lambda s: bool(s.in_flight), "a node in flight")
    await handle.signal("pause", "maintenance window")
    paused = await e2e.wait_status(handle, lambda s: s.phase == Phase.PAUSED and not s.in_flight, "paused, idle")
    assert paused.pause_reason == "maintenance window"
    waiting = [e.name for e in paused.nodes if e.state == NodeState.PENDING]
    assert waiting, paused  # the pause came before the last node
    for name in waiting:  # not a byte of these hosts changed
        host = e2e.host(name)
        assert host.machine() == before[name] and host.saved_slot() == before[name].booted_slot

    await handle.signal("resume")
    result = await e2e.result(handle)

    assert result.phase == Phase.SUCCEEDED and result.counts == {NodeState.SUCCEEDED: 3}, result
    for name in names:
        assert_upgraded(e2e, name, before[name], image.version)
    # The history proves it: while paused, a node finished and no new one started.
    steps = history_steps(await handle.fetch_history())
    during = steps[steps.index(("signal", "pause")) : steps.index(("signal", "resume"))]
    assert any(kind == "child completed" for kind, _ in during), steps
    assert not any(kind == "child started" for kind, _ in during), steps


async def test_rollback_signal_returns_upgraded_nodes_to_their_previous_version(e2e: E2ECluster) -> None:
    names = ["node-3", "node-4", "node-5"]
    tag = await e2e.select(names)
    image = await e2e.new_image()
    before = {n: e2e.host(n).machine() for n in names}
    saved_before = {n: e2e.host(n).saved_slot() for n in names}
    os_before = {n: v.os_image for n, v in (await e2e.nodes()).items() if n in names}
    handle = await e2e.start(e2e.os_resource(f"os-{tag}", image, tag, maxunavailable=1), "rollback")

    await e2e.wait_status(handle, lambda s: s.counts.get(NodeState.SUCCEEDED, 0) >= 1, "a node upgraded")
    await handle.signal("rollback", "latency regression")
    result = await e2e.result(handle)

    assert result.phase == Phase.ROLLED_BACK and result.rollback_reason == "latency regression", result
    assert {e.state for e in result.nodes} <= {NodeState.ROLLED_BACK, NodeState.NOT_STARTED}, result
    rolled = [e.name for e in result.nodes if e.state == NodeState.ROLLED_BACK]
    assert rolled, result
    nodes = await e2e.nodes()
    for name in names:  # every node where it began: osImage, booted slot, saved_entry
        host = e2e.host(name)
        machine = host.machine()
        assert nodes[name].os_image == os_before[name] and not nodes[name].unschedulable
        assert (machine.booted_slot, machine.pretty_name) == (before[name].booted_slot, before[name].pretty_name)
        assert host.saved_slot() == saved_before[name] and host.next_slot() is None
        # a rolled back node went there and back (two reboots); the others never rebooted
        assert machine.boots == before[name].boots + (2 if name in rolled else 0), name
    for name in rolled:  # the version it was upgraded to is still in the other slot
        assert e2e.host(name).slot_version(other_slot(before[name].booted_slot)) == image.version
