"""The cluster worker is killed (SIGKILL) mid-rollout and replaced: the rollout resumes from its history and every
node is upgraded exactly once."""

from __future__ import annotations

import asyncio
import os
import signal

import pytest

from models.host import other_slot
from models.rollout import NodeState, Phase
from tests.e2e.cluster import E2ECluster, history_steps

pytestmark = pytest.mark.slow


async def test_a_killed_cluster_worker_is_replaced_and_every_node_is_upgraded_once(e2e: E2ECluster) -> None:
    names = ["node-1", "node-2", "node-3"]
    tag = await e2e.select(names)
    image = await e2e.new_image()
    before = {n: e2e.host(n).machine() for n in names}
    mark = await e2e.node_mark()
    handle = await e2e.start(e2e.os_resource(f"os-{tag}", image, tag, maxunavailable=1), "crash")

    # Kill it while the first node is between its trial boot and its return: host activities are running on the
    # node's own queue, and the rollout's next decisions are waiting for a workflow worker.
    first = e2e.host(names[0])
    assert first.next_slot() is None
    trial = first.inactive_slot()
    await e2e.wait_for(lambda: e2e.call(first.trial_slot), lambda s: s == trial, "the first node's trial boot")
    worker = next(p for p in e2e.stack.processes if p.name == "cluster-worker")
    os.kill(worker.popen.pid, signal.SIGKILL)
    assert await asyncio.to_thread(worker.popen.wait, 30) == -signal.SIGKILL
    e2e.stack.processes.remove(worker)
    e2e.stack._spawn("cluster-worker", [str(arg) for arg in worker.popen.args])  # type: ignore[union-attr]

    result = await e2e.result(handle)

    assert result.phase == Phase.SUCCEEDED and result.counts == {NodeState.SUCCEEDED: 3}, result
    nodes = await e2e.nodes()
    for name in names:
        host = e2e.host(name)
        machine = host.machine()
        new_slot = other_slot(before[name].booted_slot)
        assert machine.boots == before[name].boots + 1, name  # rebooted exactly once
        assert (machine.booted_slot, host.saved_slot(), nodes[name].os_image) == (new_slot, new_slot, image.version)
        assert not nodes[name].unschedulable
    assert e2e.image_fetches(image) == len(names)  # each node downloaded the image once
    transitions = await e2e.cordon_transitions(mark)
    for name in names:
        assert [t.cordoned for t in transitions if t.node == name] == [True, False], (name, transitions)
    started = [wid for kind, wid in history_steps(await handle.fetch_history()) if kind == "child started"]
    assert sorted(started) == [f"{handle.id}/{name}" for name in names]  # one node workflow each
