"""The CR bridge against the Kubernetes API emulator (in-process), a Temporal dev server and the in-memory fleet.

Each test runs the real ``Bridge`` (watch, status subresource, Events) and the real workflows; only the hosts and
the cluster activities are the fake fleet's, so a rollout takes well under a second unless a test holds it with
the ``pause`` signal.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, cast
from urllib.parse import quote

import pytest
from kubernetes import client as k8s
from temporalio.client import Client, WorkflowHandle
from temporalio.testing import WorkflowEnvironment

from activities.kube import use_kubeconfig
from devstack.fake_fleet import FakeFleet, FakeNode
from models.os_resource import API_VERSION, GROUP, KIND, PLURAL, VERSION
from models.rollout import ROLLOUT_WORKFLOW, Phase, RolloutStatus
from tests.support.kube import KubeEnv, kube_env
from workers.bridge import Bridge, rollout_id

OLD, NEW, NEWER = "KubeOS 1.0.0", "KubeOS 1.0.1", "KubeOS 1.0.2"
WEB_UI = "http://127.0.0.1:8233"
LIMIT = 60.0  # seconds any awaited state may take on a busy 2-core machine


# ------------------------------------------------------------------------------------------------ helpers


@pytest.fixture
async def kube(tmp_path: Path) -> AsyncIterator[KubeEnv]:
    async with kube_env(tmp_path) as env:
        use_kubeconfig(env.kubeconfig)  # the bridge and record_event use the process-wide client
        try:
            yield env
        finally:
            use_kubeconfig(None)


def fleet(count: int = 3, work_seconds: float = 0.0, broken: str | None = None) -> FakeFleet:
    prefix = uuid.uuid4().hex[:6]
    nodes = [FakeNode(f"n{i}-{prefix}", OLD, work_seconds=work_seconds) for i in range(count)]
    if broken:
        nodes[0].broken_versions.add(broken)
    return FakeFleet(nodes)


def slow_fleet(count: int) -> FakeFleet:
    """Nodes slow enough (a second each) for :func:`held` to pause the rollout before it ends; call
    :func:`speed_up` once it is held."""
    return fleet(count, work_seconds=1.0)


def speed_up(nodes: FakeFleet) -> None:
    for node in nodes.nodes.values():
        node.work_seconds = 0.0


def os_resource(name: str, namespace: str = "default", **overrides: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "imagetype": "disk",
        "opstype": "upgrade",
        "osversion": NEW,
        "maxunavailable": 1,
        "dockerimage": "",
        "imageurl": "https://images.example/update.img",
        "checksum": "ab" * 32,
        "flagSafe": False,
        "mtls": False,
        "cacert": "ca.crt",
    }
    spec.update(overrides)
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    }


@contextlib.asynccontextmanager
async def running_bridge(client: Client) -> AsyncIterator[Bridge]:
    stop = asyncio.Event()
    bridge = Bridge(client, web_ui=WEB_UI, sync_seconds=0.2)
    task = asyncio.create_task(bridge.run(stop))
    try:
        yield bridge
    finally:
        stop.set()
        await asyncio.wait_for(task, LIMIT)


async def create(kube: KubeEnv, resource: dict[str, Any]) -> dict[str, Any]:
    namespace = resource["metadata"]["namespace"]
    created = await kube.call(kube.custom.create_namespaced_custom_object, GROUP, VERSION, namespace, PLURAL, resource)
    return cast(dict[str, Any], created)


async def patch_spec(kube: KubeEnv, obj: dict[str, Any], **spec: Any) -> dict[str, Any]:
    meta = obj["metadata"]
    patched = await kube.call(
        kube.custom.patch_namespaced_custom_object,
        GROUP,
        VERSION,
        meta["namespace"],
        PLURAL,
        meta["name"],
        {"spec": spec},
    )
    return cast(dict[str, Any], patched)


async def get(kube: KubeEnv, namespace: str, name: str) -> dict[str, Any]:
    obj = await kube.call(kube.custom.get_namespaced_custom_object, GROUP, VERSION, namespace, PLURAL, name)
    return cast(dict[str, Any], obj)


async def wait_status(
    kube: KubeEnv, obj: dict[str, Any], predicate: Callable[[dict[str, Any]], bool]
) -> dict[str, Any]:
    """Poll the resource until ``predicate(status)`` holds (bounded)."""
    meta = obj["metadata"]
    deadline = asyncio.get_running_loop().time() + LIMIT
    status: dict[str, Any] = {}
    while asyncio.get_running_loop().time() < deadline:
        status = (await get(kube, meta["namespace"], meta["name"])).get("status") or {}
        if predicate(status):
            return status
        await asyncio.sleep(0.1)
    raise AssertionError(f"status of {meta['name']} never got there; last: {status}")


def finished(generation: int, phase: str = "Succeeded") -> Callable[[dict[str, Any]], bool]:
    return lambda s: s.get("observedGeneration") == generation and s.get("phase") == phase


def workflow_of(obj: dict[str, Any]) -> str:
    meta = obj["metadata"]
    return rollout_id(meta["namespace"], meta["name"], meta["uid"], meta["generation"])


async def held(client: Client, workflow_id: str) -> WorkflowHandle[Any, RolloutStatus]:
    """Pause the rollout as soon as it exists and wait until no node is in flight: it stays Running, idle."""
    handle = client.get_workflow_handle(workflow_id, result_type=RolloutStatus)
    deadline = asyncio.get_running_loop().time() + LIMIT
    while True:
        try:
            await handle.signal("pause", "held by the test")
            break
        except Exception:
            if asyncio.get_running_loop().time() > deadline:
                raise
            await asyncio.sleep(0.05)
    while True:
        status = await handle.query("status", result_type=RolloutStatus)
        if status.phase == Phase.PAUSED and not status.in_flight:
            return handle
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"the rollout did not pause: {status}")
        await asyncio.sleep(0.05)


async def rollouts_of(client: Client, obj: dict[str, Any]) -> list[str]:
    """Every ClusterRollout Temporal knows for this resource (any generation, any state)."""
    meta = obj["metadata"]
    prefix = f"kubeos/{meta['namespace']}/{meta['name']}/"
    query = f'WorkflowType="{ROLLOUT_WORKFLOW}" AND WorkflowId STARTS_WITH "{prefix}"'
    return sorted([w.id async for w in client.list_workflows(query)])


async def events_of(kube: KubeEnv, obj: dict[str, Any]) -> list[k8s.CoreV1Event]:
    meta = obj["metadata"]
    listing = await kube.call(kube.core.list_namespaced_event, meta["namespace"])
    return [e for e in listing.items if e.involved_object.name == meta["name"]]


async def reasons_of(kube: KubeEnv, obj: dict[str, Any]) -> list[str]:
    return [e.reason or "" for e in await events_of(kube, obj)]


# ------------------------------------------------------------------------------------------------ tests


async def test_status_fields_and_events_of_a_rollout_with_a_failed_node(
    kube: KubeEnv, temporal_env: WorkflowEnvironment
) -> None:
    nodes = fleet(3, broken=NEW)  # the first node's new image does not boot: GRUB falls back
    client = temporal_env.client
    async with nodes.workers(client), running_bridge(client):
        obj = await create(kube, os_resource("fields", maxunavailable=2, failurebudget=1))
        status = await wait_status(kube, obj, finished(1, "CompletedWithFailures"))

    workflow_id = workflow_of(obj)
    assert status["workflowId"] == workflow_id
    assert status["runId"]
    assert status["webUI"] == f"{WEB_UI}/namespaces/default/workflows/{quote(workflow_id, safe='')}"
    assert (status["progress"], status["total"], status["succeeded"], status["failed"], status["inProgress"]) == (
        "2/3",
        3,
        2,
        1,
        0,
    )
    states = {n["name"]: n["state"] for n in status["nodes"]}
    broken = sorted(nodes.nodes)[0]
    assert states == {name: "Failed" if name == broken else "Succeeded" for name in nodes.nodes}
    assert status["nodes"][0]["name"] == broken  # failed nodes first
    assert "failed to boot" in status["nodes"][0]["message"]
    conditions = {c["type"]: c for c in status["conditions"]}
    assert {t: c["status"] for t, c in conditions.items()} == {
        "Valid": "True",
        "Completed": "True",
        "Paused": "False",
        "Degraded": "True",
    }
    assert broken in conditions["Degraded"]["message"]
    assert all(c["lastTransitionTime"].endswith("Z") for c in conditions.values())

    events = await events_of(kube, obj)
    by_reason = {e.reason: e for e in events}
    assert {"RolloutStarted", "RolloutRunning", "RolloutCompletedWithFailures", "NodeFailed"} <= set(by_reason)
    assert by_reason["NodeFailed"].type == "Warning" and broken in (by_reason["NodeFailed"].message or "")
    assert by_reason["RolloutStarted"].involved_object.kind == KIND
    assert by_reason["RolloutStarted"].involved_object.uid == obj["metadata"]["uid"]
    assert workflow_id in (by_reason["RolloutStarted"].message or "")


async def test_the_same_resource_applied_twice_is_one_rollout(
    kube: KubeEnv, temporal_env: WorkflowEnvironment, tmp_path: Path
) -> None:
    import yaml

    manifest = tmp_path / "os.yaml"
    resource = os_resource("twice", namespace="team-a")
    manifest.write_text(yaml.safe_dump(resource))
    await kube.kubectl("apply", "-f", "-", stdin="apiVersion: v1\nkind: Namespace\nmetadata:\n  name: team-a\n")
    client = temporal_env.client
    async with fleet(2).workers(client), running_bridge(client):
        await kube.kubectl("apply", "-f", str(manifest))
        await kube.kubectl("apply", "-f", str(manifest))  # unchanged: no new generation
        obj = await get(kube, "team-a", "twice")
        await wait_status(kube, obj, finished(1))
        await kube.kubectl("apply", "-f", str(manifest))  # and once more after it finished
        await asyncio.sleep(1.0)  # five sync rounds: time enough for a second rollout to show, if one started
        assert (await get(kube, "team-a", "twice"))["metadata"]["generation"] == 1
        assert await rollouts_of(client, obj) == [workflow_of(obj)]
        assert (await reasons_of(kube, obj)).count("RolloutStarted") == 1


async def test_a_changed_spec_supersedes_the_running_rollout_then_runs_alone(
    kube: KubeEnv, temporal_env: WorkflowEnvironment
) -> None:
    nodes = slow_fleet(3)
    client = temporal_env.client
    async with nodes.workers(client), running_bridge(client):
        first = await create(kube, os_resource("changed"))
        old = await held(client, workflow_of(first))
        speed_up(nodes)
        second = await patch_spec(kube, first, osversion=NEWER, maxunavailable=2)
        assert second["metadata"]["generation"] == 2
        old_result = await asyncio.wait_for(old.result(), LIMIT)
        status = await wait_status(kube, second, finished(2))

    assert old_result.phase == Phase.SUPERSEDED
    assert "NotStarted" in {e.state for e in old_result.nodes}  # it stopped early, as asked
    assert status["workflowId"] == workflow_of(second) != workflow_of(first)
    assert all(n.running_version == NEWER and not n.cordoned for n in nodes.nodes.values())
    assert await rollouts_of(client, first) == sorted([workflow_of(first), workflow_of(second)])
    old_run = await client.get_workflow_handle(workflow_of(first)).describe()
    new_run = await client.get_workflow_handle(workflow_of(second)).describe()
    assert old_run.close_time is not None and old_run.close_time <= new_run.start_time  # never side by side
    assert nodes.max_cordoned_at_once() <= 2
    reasons = await reasons_of(kube, first)
    assert reasons.count("RolloutStarted") == 2 and "RolloutSuperseded" in reasons


async def test_generations_in_quick_succession_never_overlap(kube: KubeEnv, temporal_env: WorkflowEnvironment) -> None:
    nodes = slow_fleet(2)
    client = temporal_env.client
    async with nodes.workers(client), running_bridge(client):
        first = await create(kube, os_resource("quick"))
        await held(client, workflow_of(first))
        speed_up(nodes)
        await patch_spec(kube, first, osversion=NEWER)
        last = await patch_spec(kube, first, osversion=NEWER, maxunavailable=2)
        await wait_status(kube, last, finished(3))
        ids = await rollouts_of(client, first)

    runs = sorted([await client.get_workflow_handle(i).describe() for i in ids], key=lambda d: d.start_time)
    assert runs[0].id == workflow_of(first) and runs[-1].id == workflow_of(last)
    for before, after in itertools.pairwise(runs):
        assert before.close_time is not None and before.close_time <= after.start_time, (before.id, after.id)
    assert nodes.max_cordoned_at_once() <= 2
    assert all(n.running_version == NEWER for n in nodes.nodes.values())


async def test_an_invalid_resource_gets_a_condition_and_a_warning_naming_the_field_and_no_rollout(
    kube: KubeEnv, temporal_env: WorkflowEnvironment
) -> None:
    client = temporal_env.client
    async with running_bridge(client):
        obj = await create(kube, os_resource("invalid", imageurl="http://images.example/update.img"))
        status = await wait_status(kube, obj, lambda s: s.get("phase") == "Invalid")
        invalid = [e for e in await events_of(kube, obj) if e.reason == "InvalidSpec"]
        assert await rollouts_of(client, obj) == []

    assert status["observedGeneration"] == 1 and not status.get("workflowId")
    (valid,) = [c for c in status["conditions"] if c["type"] == "Valid"]
    assert valid["status"] == "False" and valid["reason"] == "InvalidSpec"
    assert "spec.imageurl" in valid["message"] and "flagSafe" in valid["message"]
    assert len(invalid) == 1 and invalid[0].type == "Warning" and "spec.imageurl" in (invalid[0].message or "")


async def test_an_invalid_generation_stops_the_running_rollout(
    kube: KubeEnv, temporal_env: WorkflowEnvironment
) -> None:
    client = temporal_env.client
    async with slow_fleet(2).workers(client), running_bridge(client):
        first = await create(kube, os_resource("goes-bad"))
        handle = await held(client, workflow_of(first))
        second = await patch_spec(kube, first, checksum="not-a-checksum")
        status = await wait_status(kube, second, lambda s: s.get("phase") == "Invalid")
        result = await asyncio.wait_for(handle.result(), LIMIT)
    assert status["observedGeneration"] == 2
    assert "spec.checksum" in next(c["message"] for c in status["conditions"] if c["type"] == "Valid")
    assert result.phase == Phase.SUPERSEDED
    assert await rollouts_of(client, first) == [workflow_of(first)]


async def test_a_restarted_bridge_follows_the_running_rollout_without_a_second_one(
    kube: KubeEnv, temporal_env: WorkflowEnvironment
) -> None:
    client = temporal_env.client
    nodes = slow_fleet(3)
    async with nodes.workers(client):
        async with running_bridge(client):
            obj = await create(kube, os_resource("restart"))
            handle = await held(client, workflow_of(obj))
            speed_up(nodes)
            await wait_status(kube, obj, lambda s: s.get("phase") == "Paused")
        # No bridge: the rollout goes on without it.
        await handle.signal("resume")
        async with running_bridge(client):
            status = await wait_status(kube, obj, finished(1))
            events_before = await reasons_of(kube, obj)
        async with running_bridge(client):  # and once more, after the end
            await asyncio.sleep(1.0)  # five sync rounds: time enough for a repeated Event or rollout to show
            events_after = await reasons_of(kube, obj)

    assert status["workflowId"] == workflow_of(obj) and status["progress"] == "3/3"
    assert await rollouts_of(client, obj) == [workflow_of(obj)]
    assert events_before.count("RolloutStarted") == 1 and events_before.count("RolloutRunning") == 1
    assert events_after == events_before


async def test_deleting_a_resource_supersedes_its_rollout(kube: KubeEnv, temporal_env: WorkflowEnvironment) -> None:
    client = temporal_env.client
    async with slow_fleet(2).workers(client), running_bridge(client):
        obj = await create(kube, os_resource("deleted"))
        handle = await held(client, workflow_of(obj))
        await kube.call(kube.custom.delete_namespaced_custom_object, GROUP, VERSION, "default", PLURAL, "deleted")
        result = await asyncio.wait_for(handle.result(), LIMIT)
    assert result.phase == Phase.SUPERSEDED
    assert all(e.state == "NotStarted" for e in result.nodes if e.state != "Succeeded")


async def test_a_resource_deleted_while_no_bridge_ran_has_its_rollout_superseded(
    kube: KubeEnv, temporal_env: WorkflowEnvironment
) -> None:
    client = temporal_env.client
    async with slow_fleet(2).workers(client):
        async with running_bridge(client):
            obj = await create(kube, os_resource("gone-meanwhile"))
            handle = await held(client, workflow_of(obj))
        await kube.call(
            kube.custom.delete_namespaced_custom_object, GROUP, VERSION, "default", PLURAL, "gone-meanwhile"
        )
        async with running_bridge(client):
            result = await asyncio.wait_for(handle.result(), LIMIT)
    assert result.phase == Phase.SUPERSEDED


async def test_two_resources_selecting_the_same_nodes_take_turns(
    kube: KubeEnv, temporal_env: WorkflowEnvironment
) -> None:
    nodes = slow_fleet(2)
    client = temporal_env.client
    async with nodes.workers(client), running_bridge(client):
        first = await create(kube, os_resource("first"))
        held_first = await held(client, workflow_of(first))
        second = await create(kube, os_resource("second", osversion=NEWER))
        waiting = await wait_status(kube, second, lambda s: "same nodes" in str(s.get("conditions")))
        assert waiting["phase"] == "Pending" and not await rollouts_of(client, second)
        speed_up(nodes)
        await held_first.signal("resume")
        await wait_status(kube, first, finished(1))
        await wait_status(kube, second, finished(1))
    first_run = await client.get_workflow_handle(workflow_of(first)).describe()
    second_run = await client.get_workflow_handle(workflow_of(second)).describe()
    assert first_run.close_time is not None and first_run.close_time <= second_run.start_time
    assert all(n.running_version == NEWER for n in nodes.nodes.values())
