"""The real kubectl against the emulator, as a person checking a ``kubeos-rollout dev`` cluster would use it:
``create`` of built-in kinds (sent as protobuf), ``wait`` (a watch-list stream with kubectl 1.37), and the
default tables of ``get``. Run with ``KUBECTL=/path/to/kubectl`` to try another kubectl version.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import re
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from devstack.kube_emulator import INITIAL_EVENTS_END
from devstack.kube_protobuf import MEDIA_TYPE as PROTOBUF
from tests.devstack.test_kube_emulator import GROUP, PLURAL, VERSION, create_os, os_resource
from tests.support.kube import KubeEnv, kube, need_kubectl

__all__ = ["kube"]  # fixture used below

pytestmark = pytest.mark.usefixtures("kubectl_installed")


@pytest.fixture
def kubectl_installed() -> None:
    need_kubectl()


def _pruned(value: Any) -> Any:
    """A value without empty members: JSON from kubectl keeps ``{}`` and nulls that protobuf cannot carry."""
    if isinstance(value, dict):
        kept = {k: _pruned(v) for k, v in value.items()}
        return {k: v for k, v in kept.items() if v not in (None, "", {}, [])}
    if isinstance(value, list):
        return [_pruned(v) for v in value]
    return value


# Each command creates an object named "x" of a built-in kind through client-go's typed clients.
CREATES = {
    "namespace": ["create", "namespace", "x"],
    "configmap": ["create", "configmap", "x", "--from-literal=a=b", "--from-literal=c=d"],
    "secret": ["create", "secret", "generic", "x", "--from-literal=password=s3cret", "--type=Opaque"],
    "deployment": [
        *("create", "deployment", "x", "--image=busybox:1.36", "--replicas=0", "--port=8080"),
        *("--", "sleep", "3600"),
    ],
    "poddisruptionbudget": ["create", "pdb", "x", "--selector=app=web", "--min-available=50%"],
    "service": ["create", "service", "nodeport", "x", "--tcp=80:http", "--node-port=30080"],
    "serviceaccount": ["create", "serviceaccount", "x"],
    "resourcequota": ["create", "quota", "x", "--hard=pods=4,cpu=2"],
}


@pytest.mark.parametrize("resource", sorted(CREATES))
async def test_kubectl_create_stores_what_kubectl_meant(kube: KubeEnv, resource: str) -> None:
    command = CREATES[resource]
    flags_end = command.index("--") if "--" in command else len(command)  # container args follow "--"
    dry_run = [*command[:flags_end], "--dry-run=client", "-o", "json", *command[flags_end:]]
    intended = json.loads(await kube.kubectl(*dry_run))
    assert "created" in await kube.kubectl(*command)
    sent = [r for r in kube.emulator.handler if r.headers.get("Content-Type") == PROTOBUF]
    assert sent, "kubectl sent no protobuf body: this test would not exercise the decoder"

    stored = json.loads(await kube.kubectl("get", resource, "x", "-o", "json"))

    def content(obj: dict[str, Any]) -> Any:
        return _pruned({k: v for k, v in obj.items() if k not in ("metadata", "status")})

    assert content(stored) == content(intended)
    for field in ("name", "labels", "annotations"):
        assert stored["metadata"].get(field) == intended["metadata"].get(field), field


async def test_kubectl_namespace_then_objects_in_it(kube: KubeEnv) -> None:
    await kube.kubectl("create", "namespace", "team-a")
    assert "Active" in await kube.kubectl("get", "namespace", "team-a")
    await kube.kubectl("create", "configmap", "settings", "-n", "team-a", "--from-literal=k=v")
    stored = await kube.call(kube.core.read_namespaced_config_map, "settings", "team-a")
    assert stored.data == {"k": "v"}
    assert "deleted" in await kube.kubectl("delete", "namespace", "team-a")
    with pytest.raises(ApiException) as gone:
        await kube.call(kube.core.read_namespaced_config_map, "settings", "team-a")
    assert gone.value.status == 404


async def test_kubectl_drain_evictions_carry_their_options(kube: KubeEnv) -> None:
    await kube.add_node("n1")
    await kube.add_pod("bare", "n1", owner=None)
    out = await kube.kubectl("drain", "n1", "--force", "--grace-period=7", "--timeout=30s")
    assert "drained" in out
    evictions = [r for r in kube.emulator.handler if r.url.path.endswith("/eviction")]
    assert [(r.data["kind"], r.data["deleteOptions"]["gracePeriodSeconds"]) for r in evictions] == [("Eviction", 7)]


async def test_kubectl_label_annotate_patch_and_delete(kube: KubeEnv) -> None:
    await kube.add_node("n1")
    await create_os(kube, os_resource())
    assert "labeled" in await kube.kubectl("label", "node", "n1", "upgrade.openeuler.org/pool=edge")
    assert "annotated" in await kube.kubectl("annotate", "os", "os-sample", "owner=ops")
    patch = json.dumps({"spec": {"maxunavailable": 1}})
    assert "patched" in await kube.kubectl("patch", "os", "os-sample", "--type", "merge", "-p", patch)
    node = await kube.call(kube.core.read_node, "n1")
    assert node.metadata.labels["upgrade.openeuler.org/pool"] == "edge"
    as_yaml = yaml.safe_load(await kube.kubectl("get", "os", "os-sample", "-o", "yaml"))
    assert as_yaml["metadata"]["annotations"] == {"owner": "ops"} and as_yaml["spec"]["maxunavailable"] == 1
    wide = (await kube.kubectl("get", "os", "-o", "wide")).splitlines()
    assert wide[0].split() == ["NAME", "OSVERSION", "OPSTYPE", "PHASE", "PROGRESS", "AGE"]
    assert "deleted" in await kube.kubectl("delete", "os", "os-sample")
    assert await kube.kubectl("get", "os") == ""


# -------------------------------------------------------------------------------------------------- wait


async def test_kubectl_wait_for_a_condition_and_a_jsonpath(kube: KubeEnv) -> None:
    await kube.add_node("n1", ready=False)
    await create_os(kube, os_resource())
    node_ready = asyncio.create_task(kube.kubectl("wait", "--for=condition=Ready", "node/n1", "--timeout=30s"))
    phase = "--for=jsonpath={.status.phase}=Running"
    os_running = asyncio.create_task(kube.kubectl("wait", phase, "os/os-sample", "--timeout=30s"))
    await kube.watching(2)
    ready = {"status": {"conditions": [{"type": "Ready", "status": "True"}]}}
    await kube.call(kube.core.patch_node_status, "n1", ready)
    args = (GROUP, VERSION, "default", PLURAL, "os-sample")
    await kube.call(kube.custom.patch_namespaced_custom_object_status, *args, {"status": {"phase": "Running"}})
    assert "condition met" in await asyncio.wait_for(node_ready, 60)
    assert "condition met" in await asyncio.wait_for(os_running, 60)

    # Already true: answered from the initial state, with no change to wait for.
    assert "condition met" in await kube.kubectl("wait", phase, "os/os-sample", "--timeout=30s")
    await watches_closed(kube)  # so the watch awaited next is the new one
    deleted = asyncio.create_task(kube.kubectl("wait", "--for=delete", "os/os-sample", "--timeout=30s"))
    await kube.watching()
    await kube.call(kube.custom.delete_namespaced_custom_object, *args)
    assert "condition met" in await asyncio.wait_for(deleted, 60)


async def watches_closed(kube: KubeEnv) -> None:
    """Wait until the watches of finished kubectl processes have ended (bounded: 30 s)."""
    for _ in range(600):
        if not kube.emulator.store.listeners:
            return
        await asyncio.sleep(0.05)
    raise AssertionError("watches stay open after their clients ended")


async def watch_events(kube: KubeEnv, path: str, **params: str) -> tuple[int, list[dict[str, Any]]]:
    """The events of a watch that ends by itself (timeoutSeconds=1)."""
    query = {"watch": "true", "timeoutSeconds": "1", **params}
    async with httpx.AsyncClient(base_url=kube.emulator.url, timeout=30) as http:
        answer = await http.get(path, params=query)
    return answer.status_code, [json.loads(line) for line in answer.text.splitlines() if line.strip()]


async def test_watch_list_sends_the_state_then_a_bookmark(kube: KubeEnv) -> None:
    await kube.add_node("n1")
    await kube.add_node("n2")
    watch_list = {"sendInitialEvents": "true", "allowWatchBookmarks": "true", "resourceVersionMatch": "NotOlderThan"}
    status, events = await watch_events(kube, "/api/v1/nodes", **watch_list)
    assert status == 200
    assert [(e["type"], e["object"]["metadata"].get("name")) for e in events] == [
        ("ADDED", "n1"),
        ("ADDED", "n2"),
        ("BOOKMARK", None),
    ]
    bookmark = events[-1]["object"]
    assert (bookmark["kind"], bookmark["apiVersion"]) == ("Node", "v1")
    assert bookmark["metadata"]["annotations"] == {INITIAL_EVENTS_END: "true"}
    assert bookmark["metadata"]["resourceVersion"] == str(kube.emulator.store.revision)

    # With a selector, the initial events are the selected objects only; the bookmark still ends them.
    _, selected = await watch_events(kube, "/api/v1/nodes", fieldSelector="metadata.name=n2", **watch_list)
    assert [e["type"] for e in selected] == ["ADDED", "BOOKMARK"]

    # sendInitialEvents=false: only what changes after the given version.
    since = bookmark["metadata"]["resourceVersion"]
    await kube.call(kube.core.patch_node, "n1", {"metadata": {"labels": {"a": "b"}}})
    _, later = await watch_events(kube, "/api/v1/nodes", **{**watch_list, "sendInitialEvents": "false"})
    assert later == []
    _, resumed = await watch_events(
        kube, "/api/v1/nodes", resourceVersion=since, **{**watch_list, "sendInitialEvents": "false"}
    )
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in resumed] == [("MODIFIED", "n1")]


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"sendInitialEvents": "true", "allowWatchBookmarks": "true"}, "resourceVersionMatch to NotOlderThan"),
        ({"sendInitialEvents": "true", "resourceVersionMatch": "NotOlderThan"}, "allowWatchBookmarks to true"),
        ({"resourceVersionMatch": "NotOlderThan"}, "unless sendInitialEvents is provided"),
    ],
)
async def test_watch_list_request_rules(kube: KubeEnv, params: dict[str, str], message: str) -> None:
    async with httpx.AsyncClient(base_url=kube.emulator.url, timeout=30) as http:
        answer = await http.get("/api/v1/nodes", params={"watch": "true", "timeoutSeconds": "1", **params})
    assert answer.status_code == 422 and message in answer.json()["message"]


# ------------------------------------------------------------------------------------------------ tables


def table_rows(table: str) -> tuple[list[str], list[dict[str, str]]]:
    """kubectl's table as (header, rows keyed by column): cells are cut at the header's column starts, so an
    empty cell or one with a space in it ("KubeOS 1.0.1") reads right."""
    lines = [line for line in table.splitlines() if line.strip()]
    starts = [m.start() for m in re.finditer(r"\S+(?: \S+)*", lines[0])]
    header = [lines[0][a:b].strip() for a, b in itertools.pairwise([*starts, None])]
    return header, [
        {name: line[a:b].strip() for name, (a, b) in zip(header, itertools.pairwise([*starts, None]), strict=True)}
        for line in lines[1:]
    ]


async def test_kubectl_get_events_shows_what_happened(kube: KubeEnv) -> None:
    now = datetime.now(UTC)
    event = client.CoreV1Event(
        metadata=client.V1ObjectMeta(name="os-sample.1"),
        involved_object=client.V1ObjectReference(kind="OS", name="os-sample", namespace="default"),
        reason="RolloutStarted",
        message="3 nodes to upgrade ",
        type="Normal",
        source=client.V1EventSource(component="kubeos-bridge", host="host-1"),
        first_timestamp=now - timedelta(minutes=5),
        last_timestamp=now - timedelta(minutes=3),
        count=2,
    )
    await kube.call(kube.core.create_namespaced_event, "default", event)
    header, [row] = table_rows(await kube.kubectl("get", "events"))
    assert header == ["LAST SEEN", "TYPE", "REASON", "OBJECT", "MESSAGE"]
    assert [row[c] for c in header[1:]] == ["Normal", "RolloutStarted", "os/os-sample", "3 nodes to upgrade"]
    assert row["LAST SEEN"].startswith("3m")
    header, [row] = table_rows(await kube.kubectl("get", "events", "-o", "wide"))
    assert header == [
        *("LAST SEEN", "TYPE", "REASON", "OBJECT", "SUBOBJECT", "SOURCE"),
        *("MESSAGE", "FIRST SEEN", "COUNT", "NAME"),
    ]
    assert (row["SUBOBJECT"], row["SOURCE"], row["COUNT"], row["NAME"]) == (
        "",
        "kubeos-bridge, host-1",
        "2",
        "os-sample.1",
    )
    assert row["FIRST SEEN"].startswith("5m")


async def test_kubectl_default_tables_of_nodes_pods_and_namespaces(kube: KubeEnv) -> None:
    await kube.add_node("n1", os_image="KubeOS 1.0.1", labels={"node-role.kubernetes.io/control-plane": ""})
    await kube.call(kube.core.patch_node, "n1", {"spec": {"unschedulable": True}})
    header, [node] = table_rows(await kube.kubectl("get", "nodes", "-o", "wide"))
    assert header == [
        *("NAME", "STATUS", "ROLES", "AGE", "VERSION", "INTERNAL-IP", "EXTERNAL-IP"),
        *("OS-IMAGE", "KERNEL-VERSION", "CONTAINER-RUNTIME"),
    ]
    assert [node[c] for c in header if c != "AGE"] == [
        *("n1", "Ready,SchedulingDisabled", "control-plane", "v1.30.0", "<none>", "<none>"),
        *("KubeOS 1.0.1", "6.1.0", "containerd://1.7.0"),
    ]
    assert table_rows(await kube.kubectl("get", "nodes"))[0] == ["NAME", "STATUS", "ROLES", "AGE", "VERSION"]

    await kube.add_pod("web-1", "n1")
    header, [pod] = table_rows(await kube.kubectl("get", "pods"))
    assert header == ["NAME", "READY", "STATUS", "RESTARTS", "AGE"]
    # No kubelet fills containerStatuses here, so no container counts as ready, as a server would print it.
    assert [pod[c] for c in header[:4]] == ["web-1", "0/1", "Running", "0"]
    header, [pod] = table_rows(await kube.kubectl("get", "pods", "-o", "wide"))
    assert header[5:] == ["IP", "NODE", "NOMINATED NODE", "READINESS GATES"]
    assert [pod[c] for c in header[5:]] == ["<none>", "n1", "<none>", "<none>"]

    header, namespaces = table_rows(await kube.kubectl("get", "namespaces"))
    assert header == ["NAME", "STATUS", "AGE"]
    assert {(n["NAME"], n["STATUS"]) for n in namespaces} >= {("default", "Active"), ("kube-system", "Active")}
