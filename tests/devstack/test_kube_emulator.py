"""The Kubernetes API emulator over real HTTP: the official client and the real kubectl against it."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from kubernetes import client, watch
from kubernetes.client.exceptions import ApiException

from activities.kube import new_api_client
from devstack.kube_emulator import KubeEmulator, parse_api_path
from devstack.kube_protobuf import MAGIC
from devstack.kube_protobuf import MEDIA_TYPE as PROTOBUF
from devstack.kube_resources import OS_CRD_FILE, builtin_kinds, load_crd_documents
from devstack.kube_tables import as_table, human_duration
from tests.support.kube import KubeEnv, kube, kube_env, need_kubectl

__all__ = ["kube"]  # fixture used below

GROUP, VERSION, PLURAL = "upgrade.openeuler.org", "v1alpha1", "os"
OS_SPEC = {
    "imagetype": "disk",
    "opstype": "upgrade",
    "osversion": "KubeOS 1.0.1",
    "maxunavailable": 2,
    "dockerimage": "",
    "imageurl": "https://images.example/update.img",
    "checksum": "a" * 64,
    "flagSafe": False,
    "mtls": False,
    "cacert": "ca.crt",
    "clientcert": "",
    "clientkey": "",
}


def os_resource(name: str = "os-sample", **spec: Any) -> dict[str, Any]:
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "OS", "metadata": {"name": name}, "spec": OS_SPEC | spec}


async def create_os(kube: KubeEnv, body: dict[str, Any], namespace: str = "default") -> dict[str, Any]:
    created: dict[str, Any] = await kube.call(
        kube.custom.create_namespaced_custom_object, GROUP, VERSION, namespace, PLURAL, body
    )
    return created


def status_of(e: ApiException) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(e.body)
    return body


def test_api_paths() -> None:
    assert parse_api_path("/api/v1/namespaces") == parse_api_path("/api/v1/namespaces/")
    ns = parse_api_path("/api/v1/namespaces/kube-system")
    assert ns is not None and (ns.plural, ns.name, ns.namespace) == ("namespaces", "kube-system", None)
    evict = parse_api_path("/api/v1/namespaces/d/pods/p/eviction")
    assert evict is not None and (evict.namespace, evict.plural, evict.name, evict.subresource) == (
        "d",
        "pods",
        "p",
        "eviction",
    )
    status = parse_api_path(f"/apis/{GROUP}/{VERSION}/namespaces/d/os/x/status")
    assert status is not None and (status.group, status.subresource) == (GROUP, "status")
    assert parse_api_path("/apis/policy") is None and parse_api_path("/version") is None


# ------------------------------------------------------------------------------------------------ objects


async def test_create_fills_metadata_and_answers_201(kube: KubeEnv) -> None:
    node = await kube.add_node("n1")
    assert node.kind == "Node" and node.api_version == "v1"
    assert node.metadata and node.metadata.uid and node.metadata.resource_version and node.metadata.creation_timestamp
    _, code, _ = await kube.call(
        kube.core.create_namespaced_config_map_with_http_info, "default", client.V1ConfigMap(metadata={"name": "c"})
    )
    assert code == 201
    with pytest.raises(ApiException) as conflict:
        await kube.add_node("n1")
    assert conflict.value.status == 409 and status_of(conflict.value)["reason"] == "AlreadyExists"


async def test_namespace_comes_from_the_url_and_must_exist(kube: KubeEnv) -> None:
    body = {"metadata": {"name": "c1"}, "data": {"k": "v"}}
    with pytest.raises(ApiException) as missing:
        await kube.call(kube.core.create_namespaced_config_map, "team-a", body)
    assert missing.value.status == 404 and 'namespaces "team-a" not found' in status_of(missing.value)["message"]
    await kube.call(kube.core.create_namespace, client.V1Namespace(metadata={"name": "team-a"}))
    created = await kube.call(kube.core.create_namespaced_config_map, "team-a", body)
    assert created.metadata.namespace == "team-a"
    names = [n.metadata.name for n in (await kube.call(kube.core.list_namespace)).items]
    assert {"default", "kube-system", "team-a"} <= set(names)
    with pytest.raises(ApiException) as mismatch:
        await kube.call(
            kube.core.create_namespaced_config_map,
            "default",
            {**body, "metadata": {"name": "x", "namespace": "team-a"}},
        )
    assert mismatch.value.status == 400


async def test_label_and_field_selectors(kube: KubeEnv) -> None:
    await kube.add_node("edge-1", {"pool": "edge", "zone": "a"})
    await kube.add_node("edge-2", {"pool": "edge", "zone": "b", "gpu": "yes"})
    await kube.add_node("core-1", {"pool": "core", "zone": "a"})

    async def nodes(selector: str) -> list[str]:
        listing = await kube.call(kube.core.list_node, label_selector=selector)
        return [n.metadata.name for n in listing.items]

    assert await nodes("pool=edge") == ["edge-1", "edge-2"]
    assert await nodes("pool=edge,!gpu") == ["edge-1"]
    assert await nodes("zone in (a),pool!=edge") == ["core-1"]
    assert await nodes("") == ["core-1", "edge-1", "edge-2"]
    with pytest.raises(ApiException) as bad:
        await nodes("pool=edge,(")
    assert bad.value.status == 400

    await kube.add_pod("a", "edge-1")
    await kube.add_pod("b", "edge-2")
    by_node = await kube.call(kube.core.list_pod_for_all_namespaces, field_selector="spec.nodeName=edge-1")
    assert [p.metadata.name for p in by_node.items] == ["a"]
    by_name = await kube.call(kube.core.list_namespaced_pod, "default", field_selector="metadata.name=b")
    assert [p.metadata.name for p in by_name.items] == ["b"]


async def test_cordon_transitions_are_recorded(kube: KubeEnv) -> None:
    for name in ("n1", "n2", "n3"):
        await kube.add_node(name)
    await kube.call(kube.core.patch_node, "n1", {"spec": {"unschedulable": True}})
    await kube.call(kube.core.patch_node, "n2", {"spec": {"unschedulable": True}})
    await kube.call(kube.core.patch_node, "n1", {"spec": {"unschedulable": None}})
    await kube.call(kube.core.patch_node, "n3", {"spec": {"unschedulable": True}})
    await kube.call(kube.core.patch_node, "n3", {"spec": {"unschedulable": True}})  # no transition
    log = kube.emulator.cordon_log
    assert [(t.node, t.unschedulable) for t in log] == [("n1", True), ("n2", True), ("n1", False), ("n3", True)]
    assert all(a.at <= b.at for a, b in itertools.pairwise(log))
    assert kube.emulator.max_cordoned() == 2
    assert kube.emulator.cordoned_now() == {"n2", "n3"}
    n1 = await kube.call(kube.core.read_node, "n1")
    assert n1.spec.unschedulable is None


async def test_node_status_patch_merges_conditions(kube: KubeEnv) -> None:
    await kube.add_node("n1")
    await kube.call(
        kube.core.patch_node_status, "n1", {"status": {"conditions": [{"type": "DiskPressure", "status": "False"}]}}
    )
    node = await kube.call(
        kube.core.patch_node_status, "n1", {"status": {"conditions": [{"type": "Ready", "status": "False"}]}}
    )
    assert {c.type: c.status for c in node.status.conditions} == {"Ready": "False", "DiskPressure": "False"}
    assert node.status.node_info.os_image == "KubeOS 1.0.0"
    # A patch of the main resource does not touch status (nodes have a status subresource).
    node = await kube.call(kube.core.patch_node, "n1", {"status": {"nodeInfo": {"osImage": "forged"}}})
    assert node.status.node_info.os_image == "KubeOS 1.0.0"


async def test_put_checks_the_resource_version(kube: KubeEnv) -> None:
    node = await kube.add_node("n1", {"a": "1"})
    stale = node.metadata.resource_version
    node.metadata.labels["a"] = "2"
    updated = await kube.call(kube.core.replace_node, "n1", node)
    assert updated.metadata.labels["a"] == "2" and updated.metadata.resource_version != stale
    node.metadata.labels["a"] = "3"
    with pytest.raises(ApiException) as conflict:
        await kube.call(kube.core.replace_node, "n1", node)  # still carries the stale resourceVersion
    assert conflict.value.status == 409 and status_of(conflict.value)["reason"] == "Conflict"


async def test_custom_resource_status_is_separate_and_generation_follows_spec(kube: KubeEnv) -> None:
    created = await create_os(kube, {**os_resource(), "status": {"phase": "forged"}})
    assert created["kind"] == "OS" and created["metadata"]["generation"] == 1
    assert "status" not in created  # status is only written through /status

    args = (GROUP, VERSION, "default", PLURAL, "os-sample")
    with_status = await kube.call(
        kube.custom.patch_namespaced_custom_object_status, *args, {"status": {"phase": "Running"}}
    )
    assert with_status["status"] == {"phase": "Running"} and with_status["metadata"]["generation"] == 1

    changed = await kube.call(
        kube.custom.patch_namespaced_custom_object,
        *args,
        {"spec": {"osversion": "KubeOS 1.0.2"}, "status": {"phase": "forged"}},
        _content_type="application/merge-patch+json",
    )
    assert changed["spec"]["osversion"] == "KubeOS 1.0.2"
    assert changed["status"] == {"phase": "Running"}
    assert changed["metadata"]["generation"] == 2

    # /status ignores everything but status.
    status_only = await kube.call(
        kube.custom.patch_namespaced_custom_object_status,
        *args,
        {"spec": {"osversion": "nope"}, "status": {"phase": "Done"}},
    )
    assert status_only["spec"]["osversion"] == "KubeOS 1.0.2" and status_only["status"]["phase"] == "Done"

    replaced = await kube.call(kube.custom.replace_namespaced_custom_object, *args, {**status_only, "status": {}})
    assert replaced["status"] == {"phase": "Done"}

    with pytest.raises(ApiException) as strategic:  # no merge keys without Go types: refused, as by a cluster
        await kube.call(
            kube.custom.patch_namespaced_custom_object,
            *args,
            {"spec": {"maxunavailable": 3}},
            _content_type="application/strategic-merge-patch+json",
        )
    assert strategic.value.status == 415


async def test_custom_resources_follow_the_crd_schema(kube: KubeEnv) -> None:
    with pytest.raises(ApiException) as invalid:
        await create_os(kube, os_resource(maxunavailable=0, opstype="sideways"))
    status = status_of(invalid.value)
    assert invalid.value.status == 422 and status["reason"] == "Invalid"
    assert sorted(c["field"] for c in status["details"]["causes"]) == ["spec.maxunavailable", "spec.opstype"]
    assert 'OS.upgrade.openeuler.org "os-sample" is invalid' in status["message"]

    stored = await create_os(kube, {**os_resource(), "spec": {**OS_SPEC, "undeclared": "x"}})
    assert "undeclared" not in stored["spec"]  # pruned, as a real API server does
    args = (GROUP, VERSION, "default", PLURAL, "os-sample")
    patched = await kube.call(
        kube.custom.patch_namespaced_custom_object_status, *args, {"status": {"phase": "Running", "bogus": 1}}
    )
    assert patched["status"] == {"phase": "Running"}


async def test_dry_run_writes_nothing_and_status_needs_the_subresource(kube: KubeEnv) -> None:
    await kube.add_node("n1")
    dry = await kube.call(kube.core.patch_node, "n1", {"metadata": {"labels": {"x": "y"}}}, dry_run="All")
    assert dry.metadata.labels["x"] == "y"
    assert "x" not in (await kube.call(kube.core.read_node, "n1")).metadata.labels
    await kube.call(kube.core.create_namespaced_config_map, "default", {"metadata": {"name": "c"}}, dry_run="All")
    assert (await kube.call(kube.core.list_namespaced_config_map, "default")).items == []
    await kube.call(kube.core.create_namespaced_config_map, "default", {"metadata": {"name": "c"}})
    async with httpx.AsyncClient(base_url=kube.emulator.url) as http:  # config maps have no /status
        answer = await http.patch(
            "/api/v1/namespaces/default/configmaps/c/status",
            json={"data": {"a": "b"}},
            headers={"Content-Type": "application/merge-patch+json"},
        )
    assert answer.status_code == 404


async def test_finalizers_hold_deletion(kube: KubeEnv) -> None:
    await create_os(kube, {**os_resource(), "metadata": {"name": "held", "finalizers": ["kubeos/bridge"]}})
    args = (GROUP, VERSION, "default", PLURAL, "held")
    await kube.call(kube.custom.delete_namespaced_custom_object, *args)
    terminating = await kube.call(kube.custom.get_namespaced_custom_object, *args)
    assert terminating["metadata"]["deletionTimestamp"]
    await kube.call(
        kube.custom.patch_namespaced_custom_object,
        *args,
        [{"op": "remove", "path": "/metadata/finalizers"}],
        _content_type="application/json-patch+json",  # the client would send a list as a merge patch
    )
    with pytest.raises(ApiException) as gone:
        await kube.call(kube.custom.get_namespaced_custom_object, *args)
    assert gone.value.status == 404


async def test_events_are_stored_and_selectable(kube: KubeEnv) -> None:
    event = client.CoreV1Event(
        metadata=client.V1ObjectMeta(name="os-sample.1"),
        involved_object=client.V1ObjectReference(kind="OS", name="os-sample", namespace="default"),
        reason="RolloutStarted",
        message="3 nodes to upgrade",
        type="Normal",
    )
    await kube.call(kube.core.create_namespaced_event, "default", event)
    listing = await kube.call(
        kube.core.list_namespaced_event, "default", field_selector="involvedObject.name=os-sample"
    )
    assert [(e.reason, e.message) for e in listing.items] == [("RolloutStarted", "3 nodes to upgrade")]
    other = await kube.call(kube.core.list_namespaced_event, "default", field_selector="involvedObject.name=x")
    assert other.items == []


def pb(number: int, payload: bytes | int) -> bytes:
    """One protobuf field (numbers below 16, payloads below 128 bytes): a varint or length-delimited."""
    if isinstance(payload, int):
        return bytes([number << 3, payload])
    return bytes([number << 3 | 2, len(payload)]) + payload


def envelope(api_version: bytes, kind: bytes, raw: bytes) -> bytes:
    return MAGIC + pb(1, pb(1, api_version) + pb(2, kind)) + pb(2, raw) + pb(3, b"") + pb(4, b"")


async def post_protobuf(kube: KubeEnv, path: str, body: bytes) -> httpx.Response:
    async with httpx.AsyncClient(base_url=kube.emulator.url) as http:
        return await http.post(path, content=body, headers={"Content-Type": PROTOBUF})


async def test_protobuf_bodies_are_decoded(kube: KubeEnv) -> None:
    # As client-go writes it: every non-pointer field, zero or not (generateName "", generation 0, an empty
    # creationTimestamp); zeros are dropped, the labels map entry is kept.
    meta = pb(1, b"team-b") + pb(2, b"") + pb(7, 0) + pb(8, b"") + pb(11, pb(1, b"env") + pb(2, b"dev"))
    answer = await post_protobuf(kube, "/api/v1/namespaces", envelope(b"v1", b"Namespace", pb(1, meta)))
    assert answer.status_code == 201, answer.text
    stored = await kube.call(kube.core.read_namespace, "team-b")
    assert stored.metadata.labels == {"env": "dev"} and stored.status.phase == "Active"

    # A deployment whose replicas pointer is set to 0 keeps it; a zero non-pointer field is omitted.
    spec = pb(1, 0) + pb(5, 0)
    raw = pb(1, pb(1, b"web")) + pb(2, spec)
    answer = await post_protobuf(
        kube, "/apis/apps/v1/namespaces/team-b/deployments", envelope(b"apps/v1", b"Deployment", raw)
    )
    assert answer.status_code == 201, answer.text
    assert answer.json()["spec"] == {"replicas": 0}


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (envelope(b"v1", b"ConfigMap", pb(1, pb(1, b"c")) + pb(9, b"x")), "field 9 of ConfigMap is not understood"),
        (envelope(b"v1", b"ServiceAccount", pb(1, pb(1, b"s")) + pb(2, pb(1, b"t"))), "field 2 of Object"),
        (b'{"metadata": {"name": "c"}}', "does not start with the Kubernetes protobuf prefix"),
    ],
)
async def test_protobuf_that_cannot_be_read_in_full_is_refused(kube: KubeEnv, body: bytes, message: str) -> None:
    answer = await post_protobuf(kube, "/api/v1/namespaces/default/configmaps", body)
    assert answer.status_code == 415 and message in answer.json()["message"]
    assert (await kube.call(kube.core.list_namespaced_config_map, "default")).items == []  # nothing half-stored


def test_human_durations_match_the_api_server() -> None:
    cases = {0: "0s", 119: "119s", 120: "2m", 125: "2m5s", 600: "10m", 3 * 3600: "3h", 3 * 3600 + 60: "3h1m"}
    cases |= {47 * 3600: "47h", 50 * 3600: "2d2h", 8 * 86400: "8d", 800 * 86400: "2y70d", 9 * 365 * 86400: "9y"}
    assert {seconds: human_duration(seconds) for seconds in cases} == cases


def test_events_of_both_apis_print_alike() -> None:
    kinds = {k.group: k for k in builtin_kinds() if k.plural == "events"}
    core = {
        "metadata": {"name": "e1"},
        "involvedObject": {"kind": "Node", "name": "n1"},
        "reason": "Rebooted",
        "message": "to slot B",
        "type": "Normal",
        "eventTime": "2026-01-01T00:00:00.000000Z",
        "reportingComponent": "kubeos",
    }
    new = {
        "apiVersion": "events.k8s.io/v1",
        "metadata": {"name": "e1"},
        "regarding": {"kind": "Node", "name": "n1"},
        "reason": "Rebooted",
        "note": "to slot B",
        "type": "Normal",
        "eventTime": "2026-01-01T00:00:00.000000Z",
        "reportingController": "kubeos",
    }
    old_row = as_table(kinds[""], [core], "1")["rows"][0]["cells"]
    new_row = as_table(kinds["events.k8s.io"], [new], "1")["rows"][0]["cells"]
    assert old_row == new_row
    assert old_row[1:8] == ["Normal", "Rebooted", "node/n1", "", "kubeos", "to slot B", old_row[0]]
    assert old_row[8:] == [1, "e1"]


# ------------------------------------------------------------------------------------------------ eviction


async def evict(kube: KubeEnv, name: str, namespace: str = "default") -> int:
    body = client.V1Eviction(metadata=client.V1ObjectMeta(name=name, namespace=namespace))
    try:
        _, code, _ = await kube.call(kube.core.create_namespaced_pod_eviction_with_http_info, name, namespace, body)
    except ApiException as e:
        return int(e.status)
    return int(code)


async def pod_names(kube: KubeEnv) -> list[str]:
    return [p.metadata.name for p in (await kube.call(kube.core.list_namespaced_pod, "default")).items]


async def test_eviction_without_budget_deletes_the_pod(kube: KubeEnv) -> None:
    await kube.add_node("n1")
    await kube.add_pod("p1", "n1")
    assert await evict(kube, "p1") == 201
    assert await pod_names(kube) == []
    assert await evict(kube, "p1") == 404


async def test_eviction_honours_min_available(kube: KubeEnv) -> None:
    await kube.add_node("n1")
    for i in range(3):
        await kube.add_pod(f"web-{i}", "n1", labels={"app": "web"})
    await kube.add_pdb("web", {"app": "web"}, minAvailable=2)
    assert await evict(kube, "web-0") == 201
    body = client.V1Eviction(metadata=client.V1ObjectMeta(name="web-1", namespace="default"))
    with pytest.raises(ApiException) as refused:
        await kube.call(kube.core.create_namespaced_pod_eviction, "web-1", "default", body)
    assert refused.value.status == 429
    status = status_of(refused.value)
    assert status["reason"] == "TooManyRequests"
    assert "needs 2 healthy pods and has 2 currently" in status["details"]["causes"][0]["message"]
    assert await pod_names(kube) == ["web-1", "web-2"]


async def test_eviction_honours_max_unavailable_percent_and_unhealthy_pods(kube: KubeEnv) -> None:
    await kube.add_node("n1")
    # The budget counts the pods the controller wants (its replicas), not the pods left after evictions.
    await kube.add_owner("db", "StatefulSet", replicas=5)
    for i in range(4):
        await kube.add_pod(f"db-{i}", "n1", labels={"app": "db"}, owner=("StatefulSet", "db"))
    await kube.add_pod("db-broken", "n1", labels={"app": "db"}, owner=("StatefulSet", "db"), phase="Pending")
    await kube.add_pdb("db", {"app": "db"}, maxUnavailable="25%")  # of 5: 2 may be unavailable, 3 must stay
    assert await evict(kube, "db-broken") == 201  # unhealthy: the budget (4 healthy >= 3) allows it
    assert await evict(kube, "db-0") == 201  # 3 healthy left, and 3 must stay
    assert await evict(kube, "db-1") == 429


async def test_eviction_budget_of_bare_pods_counts_the_pods(kube: KubeEnv) -> None:
    await kube.add_node("n1")
    for i in range(2):
        await kube.add_pod(f"solo-{i}", "n1", labels={"app": "solo"}, owner=None)
    await kube.add_pdb("solo", {"app": "solo"}, maxUnavailable=1)
    assert await evict(kube, "solo-0") == 201
    assert await evict(kube, "solo-1") == 201  # no controller: the one pod left is all that is expected


async def test_eviction_with_two_budgets_is_refused(kube: KubeEnv) -> None:
    await kube.add_node("n1")
    await kube.add_pod("p", "n1", labels={"app": "x", "tier": "y"}, owner=None)
    await kube.add_pdb("one", {"app": "x"}, minAvailable=0)
    await kube.add_pdb("two", {"tier": "y"}, minAvailable=0)
    assert await evict(kube, "p") == 500
    assert await pod_names(kube) == ["p"]


# ---------------------------------------------------------------------------------------------------- watch


def collect(stream_fn: Any, count: int, **kwargs: Any) -> list[tuple[str, dict[str, Any]]]:
    """Read up to ``count`` watch events (bounded by the server-side timeout)."""
    w = watch.Watch()
    events = []
    for event in w.stream(stream_fn, timeout_seconds=10, **kwargs):
        events.append((event["type"], event["object"]))
        if len(events) >= count:
            w.stop()
    return events


async def test_watch_custom_resources_and_resume(kube: KubeEnv) -> None:
    list_os = kube.custom.list_namespaced_custom_object
    where = {"group": GROUP, "version": VERSION, "namespace": "default", "plural": PLURAL}
    watcher = asyncio.create_task(kube.call(collect, list_os, 3, **where))
    await kube.watching()
    created = await create_os(kube, os_resource())
    args = (GROUP, VERSION, "default", PLURAL, "os-sample")
    await kube.call(kube.custom.patch_namespaced_custom_object_status, *args, {"status": {"phase": "Running"}})
    await kube.call(kube.custom.delete_namespaced_custom_object, *args)
    events = await asyncio.wait_for(watcher, 30)
    assert [t for t, _ in events] == ["ADDED", "MODIFIED", "DELETED"]
    assert events[1][1]["status"] == {"phase": "Running"}

    # A restarted watcher resumes after what it has seen: no second ADDED.
    since = created["metadata"]["resourceVersion"]
    resumed = await kube.call(collect, list_os, 2, resource_version=since, **where)
    assert [t for t, _ in resumed] == ["MODIFIED", "DELETED"]


async def test_watch_with_selector_sees_objects_leave(kube: KubeEnv) -> None:
    await kube.add_node("n1", {"pool": "edge"})
    list_nodes = kube.core.list_node
    watcher = asyncio.create_task(kube.call(collect, list_nodes, 2, label_selector="pool=edge"))
    await kube.watching()
    await kube.call(kube.core.patch_node, "n1", {"metadata": {"labels": {"pool": "core"}}})
    events = await asyncio.wait_for(watcher, 30)
    assert [(t, o.metadata.name) for t, o in events] == [("ADDED", "n1"), ("DELETED", "n1")]


async def test_watch_from_an_unknown_old_version_is_expired(kube: KubeEnv) -> None:
    kube.emulator.store.changes = type(kube.emulator.store.changes)(kube.emulator.store.changes, maxlen=2)
    for name in ("a", "b", "c"):
        await kube.add_node(name)
    with pytest.raises(ApiException) as expired:
        await kube.call(collect, kube.core.list_node, 1, resource_version="2")
    assert expired.value.status == 410


# ------------------------------------------------------------------------------------------------- kubectl


async def test_kubectl_nodes_cordon_and_custom_columns(kube: KubeEnv) -> None:
    need_kubectl()
    await kube.add_node("node-a", os_image="KubeOS 1.0.0")
    await kube.add_node("node-b", os_image="KubeOS 1.0.1", labels={"node-role.kubernetes.io/control-plane": ""})
    out = await kube.kubectl("get", "nodes", "-o", "custom-columns=NAME:.metadata.name,OS:.status.nodeInfo.osImage")
    assert out.split() == ["NAME", "OS", "node-a", "KubeOS", "1.0.0", "node-b", "KubeOS", "1.0.1"]
    assert "cordoned" in await kube.kubectl("cordon", "node-a")
    table = await kube.kubectl("get", "nodes")
    assert "Ready,SchedulingDisabled" in table and "control-plane" in table
    assert "uncordoned" in await kube.kubectl("uncordon", "node-a")
    assert [(t.node, t.unschedulable) for t in kube.emulator.cordon_log] == [("node-a", True), ("node-a", False)]
    assert "kube-system" in await kube.kubectl("get", "namespaces")
    described = await kube.kubectl("describe", "node", "node-b")
    assert "KubeOS 1.0.1" in described


async def test_kubectl_apply_and_get_os(kube: KubeEnv, tmp_path: Path) -> None:
    need_kubectl()
    manifest = tmp_path / "os.yaml"
    manifest.write_text(yaml.safe_dump(os_resource()), encoding="utf-8")
    assert "created" in await kube.kubectl("apply", "-f", str(manifest))
    listing = await kube.kubectl("get", "os")
    assert listing.splitlines()[0].split() == ["NAME", "OSVERSION", "OPSTYPE", "PHASE", "PROGRESS", "AGE"]
    assert listing.splitlines()[1].split()[:4] == ["os-sample", "KubeOS", "1.0.1", "upgrade"]

    manifest.write_text(yaml.safe_dump(os_resource(osversion="KubeOS 1.0.2", maxunavailable=1)), encoding="utf-8")
    assert "configured" in await kube.kubectl("apply", "-f", str(manifest))
    stored = await kube.call(kube.custom.get_namespaced_custom_object, GROUP, VERSION, "default", PLURAL, "os-sample")
    assert stored["spec"]["osversion"] == "KubeOS 1.0.2" and stored["spec"]["maxunavailable"] == 1
    assert stored["metadata"]["generation"] == 2
    assert "unchanged" in await kube.kubectl("apply", "-f", str(manifest))
    as_json = json.loads(await kube.kubectl("get", "os", "os-sample", "-o", "json"))
    assert as_json["spec"]["osversion"] == "KubeOS 1.0.2"
    assert "deleted" in await kube.kubectl("delete", "-f", str(manifest))
    assert await kube.kubectl("get", "os") == ""  # "No resources found" goes to stderr


async def test_kubectl_watches_os_status(kube: KubeEnv) -> None:
    need_kubectl()
    await create_os(kube, os_resource())
    watching = asyncio.create_task(kube.kubectl("get", "os", "--watch", "--request-timeout=4s", check=False))
    await kube.watching()
    args = (GROUP, VERSION, "default", PLURAL, "os-sample")
    status = {"status": {"phase": "Running", "progress": "1/3"}}
    await kube.call(kube.custom.patch_namespaced_custom_object_status, *args, status)
    lines = (await asyncio.wait_for(watching, 30)).splitlines()
    assert lines[0].split()[:3] == ["NAME", "OSVERSION", "OPSTYPE"]
    assert lines[-1].split()[:6] == ["os-sample", "KubeOS", "1.0.1", "upgrade", "Running", "1/3"]


async def test_kubectl_refuses_the_seed_placeholders(kube: KubeEnv, tmp_path: Path) -> None:
    need_kubectl()
    manifest = tmp_path / "seed.yaml"
    manifest.write_text(
        yaml.safe_dump(os_resource(maxunavailable="edit.node.upgrade.number", flagSafe="imageurl.safety")),
        encoding="utf-8",
    )
    out = await kube.kubectl("apply", "-f", str(manifest), check=False)
    assert "spec.maxunavailable" in out and "spec.flagSafe" in out and "must be of type" in out
    assert await kube.kubectl("get", "os") == ""


async def test_kubectl_drain_uses_eviction(kube: KubeEnv) -> None:
    need_kubectl()
    await kube.add_node("n1")
    await kube.add_owner("web", "ReplicaSet", replicas=1)
    await kube.add_owner("agent", "DaemonSet")
    await kube.add_pod("app", "n1", owner=("ReplicaSet", "web"))
    await kube.add_pod("agent-x", "n1", owner=("DaemonSet", "agent"))
    out = await kube.kubectl("drain", "n1", "--ignore-daemonsets", "--timeout=30s")
    assert "evicting pod default/app" in out or "drained" in out
    assert await pod_names(kube) == ["agent-x"]


# ----------------------------------------------------------------------------------------------- set-up


async def test_crd_from_file_or_through_the_api(tmp_path: Path) -> None:
    if OS_CRD_FILE.is_file():
        async with kube_env(tmp_path / "file", crds=load_crd_documents(OS_CRD_FILE)) as kube:
            assert (await create_os(kube, os_resource()))["kind"] == "OS"
    async with kube_env(tmp_path / "api", crds=[]) as kube:
        with pytest.raises(ApiException) as unknown:
            await create_os(kube, os_resource())
        assert unknown.value.status == 404
        from models.crd import os_crd

        await kube.call(client.ApiextensionsV1Api(kube.api).create_custom_resource_definition, os_crd())
        assert (await create_os(kube, os_resource()))["metadata"]["name"] == "os-sample"
        crds = await kube.call(client.ApiextensionsV1Api(kube.api).list_custom_resource_definition)
        assert [c.metadata.name for c in crds.items] == ["os.upgrade.openeuler.org"]


async def test_emulator_runs_as_a_process(tmp_path: Path) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "devstack.kube_emulator",
        "--kubeconfig",
        str(kubeconfig),
        stdout=asyncio.subprocess.PIPE,
        cwd=Path(__file__).resolve().parents[2],
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
    )
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 30)
        assert b"listening on http://127.0.0.1:" in line
        api = new_api_client(kubeconfig)
        try:
            core = client.CoreV1Api(api)
            names = [n.metadata.name for n in (await asyncio.to_thread(core.list_namespace)).items]
            assert "default" in names
        finally:
            api.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 30) == 0


async def test_stop_ends_open_watches(tmp_path: Path) -> None:
    emulator = await KubeEmulator().start()
    api = new_api_client(emulator.write_kubeconfig(tmp_path / "kubeconfig"))
    try:
        core = client.CoreV1Api(api)
        watcher = asyncio.create_task(asyncio.to_thread(collect, core.list_node, 5))
        while not emulator.store.listeners:
            await asyncio.sleep(0.05)
        await asyncio.wait_for(emulator.stop(), 10)
        assert await asyncio.wait_for(watcher, 30) == []
    finally:
        api.close()


@pytest.mark.parametrize("name", ["..", ".", "a/b", "50%"])
async def test_names_that_are_not_path_segments_are_refused(kube: KubeEnv, name: str) -> None:
    body = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": {}}
    with pytest.raises(ApiException) as refused:
        await kube.call(kube.core.create_namespaced_config_map, "default", body)
    assert refused.value.status == 422 and "metadata.name" in str(refused.value.body)
