"""Bad input: it is refused with the field and the reason, starts nothing, and never takes the bridge down.

Three layers:

* OS resources with certificate names that leave the certificates directory, odd URL schemes and oversized
  fields, created through the stack's Kubernetes API: the API server refuses them (schema) or the running bridge
  marks them ``Invalid`` naming the field; no rollout starts.
* The bridge's handler fed arbitrary bodies (hypothesis) against a Kubernetes API emulator and a Temporal dev
  server: bodies the emulator accepts are handled as the watch would deliver them; bodies its CRD schema
  refuses are handed to the handler directly, since a real API server or an older CRD might let them through.
* The OS spec itself is fuzzed in ``tests/models/test_os_resource_properties.py`` (every document gets a
  verdict, never an exception); the rules these inputs meet live in ``models/os_resource.py``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any, cast

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from kubernetes.client.exceptions import ApiException
from temporalio.client import Client

from activities.kube import use_kubeconfig
from models.os_resource import API_VERSION, GROUP, KIND, PLURAL, VERSION, check_os_document
from tests.conftest import start_dev_server
from tests.models.samples import resource
from tests.models.test_os_resource_properties import json_like, keys, mutated_resources
from tests.reliability.harness import Chaos
from tests.reliability.results import record, trial
from tests.support.kube import KubeEnv, kube_env
from workers.bridge import Bridge, rollout_id
from workers.temporal_client import data_converter

pytestmark = pytest.mark.reliability

HTTPS = "https://127.0.0.1:8443/update.img"

#: (name, spec fields, the field the refusal must name)
TRAVERSAL = [
    ("dotdot-cacert", {"cacert": "../../etc/shadow"}, "spec.cacert"),
    ("absolute-cacert", {"cacert": "/etc/ssl/private/server.key"}, "spec.cacert"),
    ("parent-clientcert", {"mtls": True, "clientcert": "..", "clientkey": "client.key"}, "spec.clientcert"),
    ("nested-clientkey", {"mtls": True, "clientcert": "client.crt", "clientkey": "certs/../../k"}, "spec.clientkey"),
    ("backslash-cacert", {"cacert": "..\\..\\ca.crt"}, "spec.cacert"),
    ("empty-cacert-on-https", {"cacert": ""}, "spec.cacert"),
]
SCHEMES = [
    ("file-url", {"imageurl": "file:///etc/passwd"}, "spec.imageurl"),
    ("ftp-url", {"imageurl": "ftp://127.0.0.1/update.img"}, "spec.imageurl"),
    ("gopher-url", {"imageurl": "gopher://127.0.0.1/update.img"}, "spec.imageurl"),
    ("javascript-url", {"imageurl": "javascript:alert(1)"}, "spec.imageurl"),
    ("data-url", {"imageurl": "data:application/octet-stream;base64,AAAA"}, "spec.imageurl"),
    ("scheme-relative-url", {"imageurl": "//127.0.0.1/update.img"}, "spec.imageurl"),
    ("https-without-host", {"imageurl": "https:///update.img"}, "spec.imageurl"),
    ("http-without-flagsafe", {"imageurl": "http://127.0.0.1/update.img", "flagSafe": False}, "spec.imageurl"),
]
OVERSIZED = [
    ("huge-imageurl", {"imageurl": HTTPS + "?" + "a" * 100_000}, "spec.imageurl"),
    ("huge-osversion", {"osversion": "KubeOS 1." + "9" * 5_000}, "spec.osversion"),
    ("huge-cacert", {"cacert": "c" * 10_000}, "spec.cacert"),
    ("huge-checksum", {"checksum": "a" * 100_000}, "spec.checksum"),
    ("huge-nodeselector", {"nodeselector": "n" * 1_000}, "spec.nodeselector"),
    ("huge-maxunavailable", {"maxunavailable": 2**40}, "spec.maxunavailable"),
]


async def refused(chaos: Chaos, name: str, fields: dict[str, Any], field: str) -> str:
    """Create the resource; return how it was refused (and check nothing started)."""
    body = resource("disk")
    body["metadata"]["name"] = name
    body["spec"].update({"imageurl": HTTPS, "nodeselector": "nobody", **fields})
    try:
        await chaos.apply(body)
    except ApiException as exc:
        assert exc.status in (400, 422), exc
        assert field.removeprefix("spec.") in str(exc.body), exc.body
        return "API server"
    status = await chaos.wait_os(name, limit=60)
    message = " ".join(c.get("message", "") for c in status.get("conditions", []))
    assert status["phase"] == "Invalid" and field in message, status
    assert await chaos.rollout_ids(name) == []
    await chaos.delete(name)
    return "bridge (Invalid)"


@pytest.mark.slow
@pytest.mark.parametrize(
    ("title", "cases"),
    [
        ("certificate names leaving the certificates directory", TRAVERSAL),
        ("URL schemes other than https (and http without flagSafe)", SCHEMES),
        ("oversized fields (up to 100 kB)", OVERSIZED),
    ],
    ids=["traversal", "schemes", "oversized"],
)
async def test_bad_resources_are_refused_naming_the_field(
    chaos: Chaos, title: str, cases: list[tuple[str, dict[str, Any], str]]
) -> None:
    with trial("bad input", title, times=len(cases)) as t:
        by: dict[str, int] = {}
        for name, fields, named in cases:
            where = await refused(chaos, f"bad-{name}", fields, named)
            by[where] = by.get(where, 0) + 1
        assert not chaos.stack.dead()
        t.outcome = "refused naming the field, no rollout: " + ", ".join(f"{n} by the {w}" for w, n in by.items())


# ------------------------------------------------------------------------------------------------- fuzzing


@dataclass
class Fuzz:
    bridge: Bridge
    kube: KubeEnv
    client: Client
    examples: int = 0
    failure: str = ""
    started: float = field(default_factory=time.monotonic)


@pytest.fixture(scope="module")
async def fuzz(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Fuzz]:
    """A bridge of its own: an emulator with the OS CRD, a dev server nobody else uses, no cluster worker."""
    temporal = await start_dev_server()
    try:
        async with kube_env(tmp_path_factory.mktemp("fuzz")) as kube:
            use_kubeconfig(kube.kubeconfig)
            try:
                client = await Client.connect(
                    temporal.client.service_client.config.target_host, data_converter=data_converter()
                )
                fuzz = Fuzz(Bridge(client), kube, client)
                yield fuzz
            finally:
                use_kubeconfig(None)
        if fuzz.examples:
            record(
                "bad input",
                "arbitrary resource bodies through the CR bridge's handler (hypothesis)",
                times=fuzz.examples,
                seconds=time.monotonic() - fuzz.started,
                passed=not fuzz.failure,
                outcome=fuzz.failure
                or "never raised; valid ones followed, named invalid ones marked Invalid with every field error",
            )
    finally:
        await temporal.shutdown()


names = st.text(max_size=20) | st.sampled_from(["os-a", "os-b", "..", "a/b", "UPPER", "x" * 300, ""])
metadata = st.fixed_dictionaries(
    {},
    optional={
        "name": names | json_like,
        "namespace": st.sampled_from(["default", "kube-system", "no-such-ns", "a/b"]) | json_like,
        "uid": st.uuids().map(str) | json_like,
        "generation": st.integers(min_value=-3, max_value=2**62) | json_like,
    },
)


@st.composite
def bodies(draw: st.DrawFn) -> Any:
    """Any mapping (a watch event's object always is one), or an OS resource with its spec, envelope or
    metadata mangled."""
    if draw(st.integers(0, 3)) == 0:
        return draw(st.dictionaries(keys, json_like, max_size=6))
    doc: dict[str, Any] = draw(mutated_resources())
    if draw(st.booleans()):
        doc["metadata"] = draw(metadata)
    return doc


def _key(obj: Any) -> tuple[str, str] | None:
    meta = obj.get("metadata") if isinstance(obj, Mapping) else None
    if not isinstance(meta, Mapping) or not meta.get("name"):
        return None
    return str(meta.get("namespace") or "default"), str(meta["name"])


async def _store(kube: KubeEnv, obj: Any) -> dict[str, Any] | None:
    """The object as the API server keeps it (pruned, defaulted), or None when it refuses the body."""
    key = _key(obj)
    if key is None or not isinstance(obj, dict):
        return None
    body = {**obj, "apiVersion": API_VERSION, "kind": KIND}
    try:
        stored = await kube.call(kube.custom.create_namespaced_custom_object, GROUP, VERSION, key[0], PLURAL, body)
    except (ApiException, ValueError):
        return None
    return cast(dict[str, Any], stored)


async def _status(kube: KubeEnv, namespace: str, name: str) -> dict[str, Any]:
    obj = await kube.call(kube.custom.get_namespaced_custom_object, GROUP, VERSION, namespace, PLURAL, name)
    return dict(cast(dict[str, Any], obj).get("status") or {})


async def _forget(fuzz: Fuzz, stored: dict[str, Any] | None) -> None:
    """Undo one example: stop pending starts, forget tracked resources, delete what was stored."""
    bridge = fuzz.bridge
    for task in bridge._starting.values():
        task.cancel()
    if bridge._starting:
        await asyncio.wait(set(bridge._starting.values()))
    bridge._starting.clear()
    bridge._tracked.clear()
    if stored is not None:
        meta = stored["metadata"]
        await fuzz.kube.call(
            fuzz.kube.custom.delete_namespaced_custom_object, GROUP, VERSION, meta["namespace"], PLURAL, meta["name"]
        )


async def _check_handled(
    fuzz: Fuzz, kind: str, target: Any, stored: dict[str, Any] | None, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR, logger="kubeos_rollout.bridge"):
        caplog.clear()
        await fuzz.bridge._handle(kind, target)
        await fuzz.bridge._on_event(kind, target)  # what the watch loop calls: must not raise either
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text
    key = _key(target)
    event(f"{kind}: " + ("no name" if key is None else "stored" if stored is not None else "refused by the API"))
    if key is None or kind == "DELETED":
        assert key is None or key not in fuzz.bridge._tracked
        return
    report = check_os_document(target)
    event("valid" if report.valid else "invalid")
    if report.valid:
        meta = target["metadata"]
        generation = meta.get("generation")
        generation = generation if isinstance(generation, int) and generation > 0 else 1
        expected = rollout_id(key[0], key[1], str(meta.get("uid") or ""), generation)
        assert fuzz.bridge._tracked[key].workflow_id == expected
    else:
        assert key not in fuzz.bridge._tracked
        if stored is not None:
            status = await _status(fuzz.kube, *key)
            message = status["conditions"][0]["message"]
            assert status["phase"] == "Invalid" and all(e.field in message for e in report.errors), status


FUZZ_EXAMPLES = 150


@settings(
    max_examples=FUZZ_EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(kind=st.sampled_from(["ADDED", "MODIFIED", "DELETED"]), body=bodies())
async def test_bridge_answers_any_body(fuzz: Fuzz, kind: str, body: Any, caplog: pytest.LogCaptureFixture) -> None:
    """The handler never raises; a named resource is followed (valid) or reported ``Invalid`` (not)."""
    fuzz.examples += 1
    stored = await _store(fuzz.kube, body)
    target = stored if stored is not None else body
    try:
        await _check_handled(fuzz, kind, target, stored, caplog)
    except Exception as exc:
        fuzz.failure = fuzz.failure or f"FAILED: {type(exc).__name__}: {str(exc)[:200]}"
        raise
    finally:
        await _forget(fuzz, stored)
