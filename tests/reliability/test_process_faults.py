"""Processes that die mid-rollout: the cluster worker, a node worker, the Temporal server, the CR bridge.

Each scenario is a real rollout on the embedded stack, started by applying an OS resource. At the end every node
must run the new version from a committed slot, schedulable, having booted only verified images, and the
rollout's workflow and the resource's status must say so.
"""

from __future__ import annotations

import os
import signal

import pytest
from temporalio.client import WorkflowExecutionStatus

from devstack.image_server import Fault, ImageServer
from tests.reliability.harness import GROUPS, MIB, Chaos, NodeLog
from tests.reliability.results import trial

pytestmark = [pytest.mark.slow, pytest.mark.reliability]

#: Where a held download stalls: well inside a 16 MiB image.
HOLD_AT = 4 * MIB
#: A node selector no node has: a rollout of nothing.
NO_NODES = "nobody"


def image_server(chaos: Chaos) -> ImageServer:
    assert chaos.stack.image_server is not None
    return chaos.stack.image_server


async def held(fault: Fault) -> bool:
    return fault.held.is_set()


async def logged(log: NodeLog, line: str) -> bool:
    return line in log.text()


async def assert_rollout_succeeded(chaos: Chaos, workflow_id: str, nodes: tuple[str, ...]) -> None:
    """The workflow completed with every node Succeeded, and no workflow task failed on the way."""
    state, result = await chaos.rollout(workflow_id)
    assert state == WorkflowExecutionStatus.COMPLETED and result is not None, (workflow_id, state)
    assert result.phase == "Succeeded", result
    assert {e.name: str(e.state) for e in result.nodes} == dict.fromkeys(nodes, "Succeeded"), result.nodes
    assert await chaos.task_failures(workflow_id, *await chaos.children(workflow_id)) == []


async def test_cluster_worker_killed_three_times_mid_rollout(chaos: Chaos) -> None:
    first, second = nodes = GROUPS["fleet"]
    before = await chaos.views(nodes)
    image, tag = await chaos.new_image(), await chaos.select("fleet")
    logs = {node: chaos.node_log(node) for node in nodes}
    with trial("fault", "kill -9 the cluster worker mid-rollout (3 kills in one rollout)", times=3) as t:
        await chaos.apply(chaos.resource("kill-cluster-worker", image, tag, maxunavailable=1))
        for node, line in ((first, "staging "), (first, "reboot requested"), (second, "staging ")):
            await chaos.wait(lambda: logged(logs[node], line), f"{node}: {line.strip()}")  # noqa: B023
            chaos.restart("cluster-worker")

        status = await chaos.wait_os("kill-cluster-worker")
        assert status["phase"] == "Succeeded" and status["succeeded"] == 2, status
        await assert_rollout_succeeded(chaos, status["workflowId"], nodes)
        for node in nodes:
            after = await chaos.view(node)
            after.assert_in_service(image.version)
            assert after.boots == before[node].boots + 1, (before[node], after)
            assert after.booted_slot != before[node].booted_slot
        assert chaos.audit.problems(*nodes) == []
        t.outcome = (
            f"rollout {status['phase']} ({status['progress']}); each node booted once, into its verified slot, "
            "and is committed and schedulable; no workflow task failed on replay"
        )


async def test_node_worker_killed_mid_stage(chaos: Chaos) -> None:
    (node,) = GROUPS["stage"]
    before = await chaos.view(node)
    image, tag = await chaos.new_image(), await chaos.select("stage")
    fault = Fault(hold_after=HOLD_AT)
    image_server(chaos).faults[image.file_name] = fault
    log = chaos.node_log(node)
    with trial("fault", "kill -9 the node worker mid-stage") as t:
        try:
            await chaos.apply(chaos.resource("kill-node-worker", image, tag))
            await chaos.wait(lambda: held(fault), "the download to be in progress")
            killed = chaos.node_worker_pid(node)
            assert killed is not None
            os.kill(killed, signal.SIGKILL)

            async def restarted() -> bool:
                pid = chaos.node_worker_pid(node)
                return pid is not None and pid != killed

            await chaos.wait(restarted, "the machine to start its node worker again (systemd's Restart=always)")
        finally:
            fault.release.set()
        status = await chaos.wait_os("kill-node-worker", limit=300)

        assert status["phase"] == "Succeeded", status
        await assert_rollout_succeeded(chaos, status["workflowId"], (node,))
        after = await chaos.view(node)
        after.assert_in_service(image.version)
        assert after.boots == before.boots + 1 and after.booted_slot != before.booted_slot, (before, after)
        text = log.text()
        assert "node worker exited with -9; restarting it" in text
        assert text.count("staging ") == 2, text  # the killed attempt, and the retry after its heartbeat timeout
        assert chaos.audit.problems(node) == []
        gets = image_server(chaos).gets(image.file_name)
        resumed = [r.headers["range"] for r in gets[1:] if "range" in r.headers]
        how = f"resumed with Range {resumed[0]}" if resumed else "started over"
        t.outcome = (
            f"the machine restarted the worker; the stage was retried after its heartbeat timeout and {how}; "
            f"rollout {status['phase']}, one boot into the verified slot"
        )


async def test_temporal_restarted_twice_mid_rollout(chaos: Chaos) -> None:
    nodes = GROUPS["fleet"]
    before = await chaos.views(nodes)
    image, tag = await chaos.new_image(), await chaos.select("fleet")
    fault = Fault(hold_after=HOLD_AT)
    image_server(chaos).faults[image.file_name] = fault
    logs = [chaos.node_log(node) for node in nodes]

    async def rebooting() -> bool:
        return any("reboot requested" in log.text() for log in logs)

    with trial("fault", "restart the Temporal dev server mid-rollout (kill -9, same port and database)", times=2) as t:
        try:
            await chaos.apply(chaos.resource("restart-temporal", image, tag, maxunavailable=len(nodes)))
            await chaos.wait(lambda: held(fault), "a download to be in progress")
            await chaos.restart_temporal()  # with a stage activity running on a node worker
        finally:
            fault.release.set()
        await chaos.wait(rebooting, "a node to reboot")
        await chaos.restart_temporal()  # with a node down, its worker gone

        status = await chaos.wait_os("restart-temporal")
        assert status["phase"] == "Succeeded" and status["succeeded"] == len(nodes), status
        await assert_rollout_succeeded(chaos, status["workflowId"], nodes)
        for node in nodes:
            after = await chaos.view(node)
            after.assert_in_service(image.version)
            assert after.boots == before[node].boots + 1, (before[node], after)
        assert chaos.audit.problems(*nodes) == []
        t.outcome = (
            f"every worker reconnected; rollout {status['phase']} ({status['progress']}), "
            "each node booted once into its verified slot"
        )


async def _reported_rollout(chaos: Chaos, name: str) -> str:
    """The rollout the resource's status names once it runs ("" before)."""
    status = await chaos.status(name)
    return str(status.get("workflowId", "")) if status.get("phase") == "Running" else ""


async def test_bridge_restarted_while_resources_change(chaos: Chaos) -> None:
    first, second = nodes = GROUPS["fleet"]
    before = await chaos.views(nodes)
    v1, v2, tag = await chaos.new_image(), await chaos.new_image(), await chaos.select("fleet")
    fault = Fault(hold_after=HOLD_AT)
    image_server(chaos).faults[v1.file_name] = fault
    with trial("fault", "kill -9 the CR bridge while OS resources are changed, created and deleted") as t:
        await chaos.apply(chaos.resource("bridge-gone", v1, NO_NODES))
        assert (await chaos.wait_os("bridge-gone"))["phase"] == "Succeeded"
        await chaos.apply(chaos.resource("bridge-main", v1, tag))
        try:
            await chaos.wait(lambda: held(fault), f"{first} to be staging {v1.version}")
            g1_id = await chaos.wait(lambda: _reported_rollout(chaos, "bridge-main"), "the bridge to report it")
            args = chaos.kill("bridge")
            # While no bridge watches: a new generation, a new invalid and a new valid resource, a deletion.
            await chaos.patch_spec(
                "bridge-main", {"osversion": v2.version, "imageurl": v2.url, "checksum": v2.checksum}
            )
            await chaos.apply(chaos.resource("bridge-bad", v2, tag, cacert="../../etc/shadow"))
            await chaos.apply(chaos.resource("bridge-empty", v2, NO_NODES))
            await chaos.delete("bridge-gone")
            chaos.spawn_again("bridge", args)
            await chaos.wait(lambda: chaos.signalled(g1_id, "supersede"), "the first rollout to be asked to step aside")
        finally:
            fault.release.set()

        main = await chaos.wait_os("bridge-main", generation=2)
        assert main["phase"] == "Succeeded" and main["succeeded"] == 2, main
        g2_id = str(main["workflowId"])
        assert g1_id.endswith("/g1") and g2_id.endswith("/g2"), (g1_id, g2_id)
        assert await chaos.rollout_ids("bridge-main") == sorted([g1_id, g2_id])
        state, first_run = await chaos.rollout(g1_id)
        assert first_run is not None and first_run.phase == "Superseded", (state, first_run)
        assert {e.name: str(e.state) for e in first_run.nodes} == {first: "Succeeded", second: "NotStarted"}
        await assert_rollout_succeeded(chaos, g2_id, nodes)

        bad = await chaos.wait_os("bridge-bad")
        assert bad["phase"] == "Invalid" and "spec.cacert" in bad["conditions"][0]["message"], bad
        assert await chaos.rollout_ids("bridge-bad") == []
        empty = await chaos.wait_os("bridge-empty")
        assert empty["phase"] == "Succeeded" and empty["total"] == 0, empty
        assert await chaos.get("bridge-gone") is None and len(await chaos.rollout_ids("bridge-gone")) == 1

        for node, boots in ((first, 2), (second, 1)):  # first: v1 (generation 1), then v2; second: v2 only
            after = await chaos.view(node)
            after.assert_in_service(v2.version)
            assert after.boots == before[node].boots + boots, (before[node], after)
        assert chaos.audit.problems(*nodes) == []
        t.outcome = (
            "generation 1 was asked to step aside, finished its running node and ended Superseded; generation 2 "
            f"then ran ({main['progress']}); the invalid resource got Invalid naming spec.cacert and no rollout; "
            "the deleted one got no second rollout"
        )
