"""The cluster activities in Temporal's ActivityEnvironment, against the emulated API server over HTTP."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from temporalio.exceptions import ApplicationError, CancelledError
from temporalio.testing import ActivityEnvironment

from activities import cluster
from activities.kube import use_kubeconfig
from devstack.kubelet import Kubelet
from models.cluster import (
    CONTROL_PLANE_LABEL,
    LEGACY_MASTER_LABEL,
    MIRROR_POD_ANNOTATION,
    DrainInput,
    DrainResult,
    EventInput,
    ListNodesInput,
    NodeRef,
    ObjectRef,
    WaitNodeInput,
)
from tests.support.kube import KubeEnv, kube_env, write_machine

T = TypeVar("T")


@pytest.fixture
async def kube(tmp_path: Path) -> AsyncIterator[KubeEnv]:
    async with kube_env(tmp_path) as env:
        use_kubeconfig(env.kubeconfig)
        try:
            yield env
        finally:
            use_kubeconfig(None)


class Activity:
    """An ActivityEnvironment that records heartbeats and runs the (synchronous) activity on a thread."""

    def __init__(self) -> None:
        self.env = ActivityEnvironment()
        self.heartbeats: list[Any] = []
        self.env.on_heartbeat = lambda *details: self.heartbeats.append(details)

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.to_thread(self.env.run, fn, *args)


async def run(fn: Callable[..., T], *args: Any) -> T:
    return await Activity().run(fn, *args)


async def pods_left(kube: KubeEnv) -> list[str]:
    listing = await kube.call(kube.core.list_pod_for_all_namespaces)
    return sorted(f"{p.metadata.namespace}/{p.metadata.name}" for p in listing.items)


# ------------------------------------------------------------------------------------------------- nodes


async def test_list_nodes_sorted_selected_and_without_control_plane(kube: KubeEnv) -> None:
    await kube.add_node("worker-b", {"pool": "edge"})
    await kube.add_node("cp", {CONTROL_PLANE_LABEL: ""})
    await kube.add_node("old-master", {LEGACY_MASTER_LABEL: ""})
    await kube.add_node("worker-a", {"pool": "core"}, os_image="KubeOS 1.0.1", ready=False)

    result = await run(cluster.list_nodes, ListNodesInput())
    assert [n.name for n in result.nodes] == ["worker-a", "worker-b"]
    first = result.nodes[0]
    assert (first.os_image, first.ready, first.unschedulable, first.control_plane) == (
        "KubeOS 1.0.1",
        False,
        False,
        False,
    )
    assert first.labels["pool"] == "core"

    everything = await run(cluster.list_nodes, ListNodesInput(include_control_plane=True))
    assert [(n.name, n.control_plane) for n in everything.nodes] == [
        ("cp", True),
        ("old-master", True),
        ("worker-a", False),
        ("worker-b", False),
    ]
    edge = await run(cluster.list_nodes, ListNodesInput(label_selector="pool=edge"))
    assert [n.name for n in edge.nodes] == ["worker-b"]

    with pytest.raises(ApplicationError) as bad:
        await run(cluster.list_nodes, ListNodesInput(label_selector="pool in (edge"))
    assert bad.value.type == "InvalidInput" and bad.value.non_retryable


async def test_get_node_and_missing_node(kube: KubeEnv) -> None:
    await kube.add_node("n1", os_image="KubeOS 1.0.0")
    info = await run(cluster.get_node, NodeRef(node="n1"))
    assert (info.name, info.os_image, info.ready) == ("n1", "KubeOS 1.0.0", True)
    for activity in (cluster.get_node, cluster.cordon_node, cluster.uncordon_node):
        with pytest.raises(ApplicationError) as missing:
            await run(activity, NodeRef(node="nope"))
        assert missing.value.type == "NodeNotFound" and missing.value.non_retryable
    with pytest.raises(ApplicationError) as missing:
        await run(cluster.drain_node, DrainInput(node="nope"))
    assert missing.value.type == "NodeNotFound"


async def test_cordon_and_uncordon_are_idempotent(kube: KubeEnv) -> None:
    await kube.add_node("n1")
    assert (await run(cluster.cordon_node, NodeRef(node="n1"))).unschedulable is True
    assert (await run(cluster.cordon_node, NodeRef(node="n1"))).unschedulable is True
    assert (await run(cluster.uncordon_node, NodeRef(node="n1"))).unschedulable is False
    assert (await run(cluster.uncordon_node, NodeRef(node="n1"))).unschedulable is False
    assert [(t.node, t.unschedulable) for t in kube.emulator.cordon_log] == [("n1", True), ("n1", False)]
    node = await kube.call(kube.core.read_node, "n1")
    assert node.spec.unschedulable is None  # removed, as kubectl uncordon leaves it


# ------------------------------------------------------------------------------------------------- drain


async def test_drain_evicts_and_skips_daemonset_and_mirror_pods(kube: KubeEnv) -> None:
    await kube.add_node("n1")
    await kube.add_node("n2")
    await kube.call(kube.core.create_namespace, client.V1Namespace(metadata={"name": "apps"}))
    await kube.add_pod("web-1", "n1")
    await kube.add_pod("db-1", "n1", namespace="apps", owner=("StatefulSet", "db"))
    await kube.add_pod("bare", "n1", owner=None)
    await kube.add_pod("agent-n1", "n1", owner=("DaemonSet", "agent"))
    await kube.add_pod("etcd-n1", "n1", owner=None, annotations={MIRROR_POD_ANNOTATION: "hash"})
    await kube.add_pod("web-2", "n2")

    result = await run(cluster.drain_node, DrainInput(node="n1", timeout_seconds=30))
    assert result == DrainResult(
        evicted=["apps/db-1", "default/bare", "default/web-1"],
        deleted=[],
        skipped_daemonset=["default/agent-n1"],
        skipped_mirror=["default/etcd-n1"],
    )
    assert await pods_left(kube) == ["default/agent-n1", "default/etcd-n1", "default/web-2"]


async def test_drain_blocked_by_a_budget_times_out_naming_the_pods(kube: KubeEnv) -> None:
    await kube.add_node("n1")
    await kube.add_node("n2")
    await kube.add_pod("web-1", "n1", labels={"app": "web"})
    await kube.add_pod("web-2", "n2", labels={"app": "web"})
    await kube.add_pdb("web", {"app": "web"}, minAvailable=2)

    activity = Activity()
    with pytest.raises(ApplicationError) as timeout:
        await activity.run(cluster.drain_node, DrainInput(node="n1", timeout_seconds=1.5))
    error = timeout.value
    assert error.type == "DrainTimeout" and error.non_retryable
    assert "default/web-1" in str(error) and "disruption budget web needs 2 healthy pods" in str(error)
    assert error.details == (["default/web-1"],)
    assert activity.heartbeats and activity.heartbeats[-1][0]["blocked"] == ["default/web-1"]
    assert await pods_left(kube) == ["default/web-1", "default/web-2"]


async def test_drain_with_force_deletes_what_cannot_be_evicted(kube: KubeEnv) -> None:
    await kube.add_node("n1")
    await kube.add_pod("web-1", "n1", labels={"app": "web"})
    await kube.add_pod("free", "n1")
    await kube.add_pdb("web", {"app": "web"}, minAvailable=1)

    result = await run(cluster.drain_node, DrainInput(node="n1", timeout_seconds=10, force=True))
    assert (result.evicted, result.deleted) == (["default/free"], ["default/web-1"])
    assert await pods_left(kube) == []


async def test_drain_waits_for_evicted_pods_to_be_gone(kube: KubeEnv) -> None:
    await kube.add_node("n1")
    pod = await kube.add_pod("slow", "n1")
    await kube.call(kube.core.patch_namespaced_pod, "slow", "default", {"metadata": {"finalizers": ["example/x"]}})

    drain = asyncio.create_task(run(cluster.drain_node, DrainInput(node="n1", timeout_seconds=30)))
    for _ in range(100):  # the eviction marks the pod for deletion; its finalizer holds it
        current = await kube.call(kube.core.read_namespaced_pod, "slow", "default")
        if current.metadata.deletion_timestamp:
            break
        await asyncio.sleep(0.1)
    assert not drain.done()
    await kube.call(
        kube.core.patch_namespaced_pod,
        "slow",
        "default",
        [{"op": "remove", "path": "/metadata/finalizers"}],
    )
    result = await asyncio.wait_for(drain, 30)
    assert result.evicted == ["default/slow"] and pod.metadata.uid


async def test_drain_times_out_on_pods_that_never_go(kube: KubeEnv) -> None:
    await kube.add_node("n1")
    await kube.add_pod("stuck", "n1")
    await kube.call(kube.core.patch_namespaced_pod, "stuck", "default", {"metadata": {"finalizers": ["example/x"]}})
    with pytest.raises(ApplicationError) as timeout:
        await run(cluster.drain_node, DrainInput(node="n1", timeout_seconds=1.5))
    assert timeout.value.type == "DrainTimeout" and "still terminating: default/stuck" in str(timeout.value)


# ---------------------------------------------------------------------------------------- wait for ready


async def test_wait_node_ready_follows_the_kubelet_through_a_reboot(kube: KubeEnv, tmp_path: Path) -> None:
    machine = tmp_path / "machine"
    write_machine(machine, running=False, pretty_name="KubeOS 1.0.0")
    stop = asyncio.Event()
    kubelet = asyncio.create_task(Kubelet(kube.api, "n1", machine, poll_seconds=0.05).run(stop))
    try:
        activity = Activity()
        waiting = asyncio.create_task(
            activity.run(cluster.wait_node_ready, WaitNodeInput(node="n1", os_image="KubeOS 1.0.1", poll_seconds=0.1))
        )
        write_machine(machine, running=True, pretty_name="KubeOS 1.0.0")  # came back on the old image
        await asyncio.sleep(0.5)
        assert not waiting.done()
        write_machine(machine, running=True, pretty_name="KubeOS 1.0.1", boot_id="b2")
        info = await asyncio.wait_for(waiting, 30)
        assert (info.ready, info.os_image) == (True, "KubeOS 1.0.1")
        assert activity.heartbeats  # it heartbeated while waiting
    finally:
        stop.set()
        await asyncio.wait_for(kubelet, 10)


async def test_wait_node_ready_times_out(kube: KubeEnv) -> None:
    await kube.add_node("n1", os_image="KubeOS 1.0.0")
    with pytest.raises(ApplicationError) as timeout:
        await run(
            cluster.wait_node_ready,
            WaitNodeInput(node="n1", os_image="KubeOS 1.0.1", timeout_seconds=0.5, poll_seconds=0.1),
        )
    assert timeout.value.type == "NodeNotReady" and timeout.value.non_retryable
    assert "osImage='KubeOS 1.0.0'" in str(timeout.value)


async def test_wait_node_ready_stops_when_cancelled(kube: KubeEnv) -> None:
    activity = Activity()
    waiting = asyncio.create_task(
        activity.run(cluster.wait_node_ready, WaitNodeInput(node="absent", os_image="x", poll_seconds=0.1))
    )
    while not activity.heartbeats:
        await asyncio.sleep(0.05)
    activity.env.cancel()
    with pytest.raises(CancelledError):
        await asyncio.wait_for(waiting, 30)


# ------------------------------------------------------------------------------------------------ events


async def test_record_event(kube: KubeEnv) -> None:
    result = await run(
        cluster.record_event,
        EventInput(
            namespace="default",
            involved_object=ObjectRef(
                api_version="upgrade.openeuler.org/v1alpha1", kind="OS", name="os-sample", namespace="default"
            ),
            reason="NodeUpgraded",
            message="node-a now runs KubeOS 1.0.1",
        ),
    )
    event = await kube.call(kube.core.read_namespaced_event, result.name, result.namespace)
    assert (event.reason, event.type, event.count) == ("NodeUpgraded", "Normal", 1)
    assert event.involved_object.name == "os-sample" and event.source.component == "kubeos-rollout"
    listed = await kube.call(
        kube.core.list_namespaced_event, "default", field_selector="involvedObject.kind=OS,reason=NodeUpgraded"
    )
    assert [e.metadata.name for e in listed.items] == [result.name]


async def test_api_failures_stay_retryable(kube: KubeEnv) -> None:
    await kube.add_node("n1")
    kube.emulator.handler["get", "/api/v1/nodes/n1"] << 503
    with pytest.raises(ApiException) as unavailable:
        await run(cluster.get_node, NodeRef(node="n1"))
    assert unavailable.value.status == 503
