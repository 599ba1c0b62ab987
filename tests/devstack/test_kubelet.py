"""The kubelet stand-in against the emulated API server: machine.json in, Node status out."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from devstack.kubelet import Kubelet
from models.cluster import CONTROL_PLANE_LABEL, HOSTNAME_LABEL
from node_worker.sim import SimPaths, read_machine_state
from tests.support.kube import KubeEnv, kube, write_machine

__all__ = ["kube"]  # fixture used below

REPO = Path(__file__).resolve().parents[2]


async def node_or_none(kube: KubeEnv, name: str) -> client.V1Node | None:
    try:
        return await kube.call(kube.core.read_node, name)
    except ApiException as e:
        if e.status == 404:
            return None
        raise


def summary(node: client.V1Node | None) -> tuple[str, str, str] | None:
    if node is None or node.status is None:
        return None
    ready = next((c.status for c in node.status.conditions or [] if c.type == "Ready"), "")
    info = node.status.node_info
    return (ready, info.os_image if info else "", info.boot_id if info else "")


async def wait_for_node(kube: KubeEnv, name: str, check: Callable[[tuple[str, str, str] | None], bool]) -> Any:
    """Poll the Node until ``check(summary)`` holds (bounded: 20 s)."""
    last = None
    for _ in range(200):
        last = summary(await node_or_none(kube, name))
        if check(last):
            return last
        await asyncio.sleep(0.1)
    raise AssertionError(f"node {name} never matched; last seen {last}")


async def test_reported_state_follows_the_machine(kube: KubeEnv, tmp_path: Path) -> None:
    machine = tmp_path / "machine"
    write_machine(machine, running=True, pretty_name="KubeOS 1.0.0", boot_id="b1")
    stop = asyncio.Event()
    kubelet = Kubelet(kube.api, "node-a", machine, poll_seconds=0.05)
    task = asyncio.create_task(kubelet.run(stop))
    try:
        assert await wait_for_node(kube, "node-a", lambda s: s is not None) == ("True", "KubeOS 1.0.0", "b1")

        # Rebooting: nobody posts status, Ready turns Unknown and osImage stays what it was.
        write_machine(machine, running=False, pretty_name="KubeOS 1.0.1", boot_id="b1")
        assert await wait_for_node(kube, "node-a", lambda s: s is not None and s[0] == "Unknown") == (
            "Unknown",
            "KubeOS 1.0.0",
            "b1",
        )

        write_machine(machine, running=True, pretty_name="KubeOS 1.0.1", boot_id="b2")
        assert await wait_for_node(kube, "node-a", lambda s: s is not None and s[0] == "True") == (
            "True",
            "KubeOS 1.0.1",
            "b2",
        )
        node = await kube.call(kube.core.read_node, "node-a")
        ready = next(c for c in node.status.conditions if c.type == "Ready")
        assert ready.reason == "KubeletReady" and ready.last_transition_time is not None
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


async def test_registration_labels_and_control_plane(kube: KubeEnv, tmp_path: Path) -> None:
    write_machine(tmp_path, running=True)
    kubelet = Kubelet(kube.api, "cp-1", tmp_path, labels={"pool": "edge"}, control_plane=True)
    assert await kube.call(kubelet.sync_once) is True
    node = await kube.call(kube.core.read_node, "cp-1")
    labels = node.metadata.labels
    assert labels[HOSTNAME_LABEL] == "cp-1" and labels["pool"] == "edge" and CONTROL_PLANE_LABEL in labels
    assert node.status.addresses[0].address == "cp-1"


async def test_writes_only_on_change(kube: KubeEnv, tmp_path: Path) -> None:
    write_machine(tmp_path, running=True)
    kubelet = Kubelet(kube.api, "n1", tmp_path)
    assert await kube.call(kubelet.sync_once) is True
    version = (await kube.call(kube.core.read_node, "n1")).metadata.resource_version
    assert await kube.call(kubelet.sync_once) is False
    assert await kube.call(kubelet.sync_once) is False
    assert (await kube.call(kube.core.read_node, "n1")).metadata.resource_version == version
    write_machine(tmp_path, running=True, boot_id="b2")
    assert await kube.call(kubelet.sync_once) is True


async def test_restarted_kubelet_adopts_its_node_and_reregisters_a_deleted_one(kube: KubeEnv, tmp_path: Path) -> None:
    write_machine(tmp_path, running=True)
    await kube.call(Kubelet(kube.api, "n1", tmp_path).sync_once)
    await kube.call(kube.core.patch_node, "n1", {"spec": {"unschedulable": True}})

    restarted = Kubelet(kube.api, "n1", tmp_path, labels={"added": "later"})
    assert await kube.call(restarted.sync_once) is True
    node = await kube.call(kube.core.read_node, "n1")
    assert node.metadata.labels["added"] == "later"
    assert node.spec.unschedulable is True  # a kubelet restart does not uncordon

    await kube.call(kube.core.delete_node, "n1")
    write_machine(tmp_path, running=True, boot_id="b2")
    assert await kube.call(restarted.sync_once) is True
    assert summary(await node_or_none(kube, "n1")) == ("True", "KubeOS 1.0.0", "b2")


async def test_missing_or_torn_machine_file_is_not_ready(kube: KubeEnv, tmp_path: Path) -> None:
    machine = SimPaths(tmp_path)
    assert read_machine_state(machine) is None
    machine.machine.write_text('{"running": tr', encoding="utf-8")  # a torn write
    assert read_machine_state(machine) is None
    kubelet = Kubelet(kube.api, "n1", tmp_path)
    await kube.call(kubelet.sync_once)
    assert summary(await node_or_none(kube, "n1")) == ("Unknown", "", "")


async def test_kubelet_runs_as_a_process(kube: KubeEnv, tmp_path: Path) -> None:
    machine = tmp_path / "machine"
    write_machine(machine, running=True, pretty_name="KubeOS 2.0.0")
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "devstack.kubelet",
        "--kubeconfig",
        str(kube.kubeconfig),
        "--node",
        "proc-node",
        "--machine",
        str(machine),
        "--label",
        "pool=edge",
        "--poll",
        "0.1",
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert await wait_for_node(kube, "proc-node", lambda s: s is not None) == ("True", "KubeOS 2.0.0", "b1")
        node = await kube.call(kube.core.read_node, "proc-node")
        assert node.metadata.labels["pool"] == "edge"
    finally:
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 30) == 0
