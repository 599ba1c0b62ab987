"""Reaching Temporal securely: TLS and mutual TLS from the CLI's own settings, and encrypted payloads."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import httpx
import pytest
from cryptography.exceptions import InvalidTag
from temporalio.api.common.v1 import Payload
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment

from devstack.fake_fleet import FakeFleet, FakeNode
from devstack.pki import CertificateAuthority
from models.host import node_task_queue
from models.rollout import ROLLOUT_WORKFLOW, RolloutStatus
from tests.support.tls_proxy import TLSProxy
from tests.workflows.test_cluster_rollout import disk_spec
from workers.codec import KEY_ENV, AESGCMCodec, codec_from_env
from workers.codec_server import CodecServer
from workers.temporal_client import connect

KEY = bytes(range(32))


@pytest.fixture
def pki(tmp_path: Path) -> CertificateAuthority:
    return CertificateAuthority(tmp_path / "pki", "temporal-ca")


def tls_env(monkeypatch: pytest.MonkeyPatch, address: str, ca: Path, cert: Path | None, key: Path | None) -> None:
    """The temporal CLI's variables, exactly as an operator would set them for every process."""
    for name in list(os.environ):
        if name.startswith("TEMPORAL_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("TEMPORAL_CONFIG_FILE", "/nonexistent/temporal.toml")
    monkeypatch.setenv("TEMPORAL_ADDRESS", address)
    monkeypatch.setenv("TEMPORAL_TLS_SERVER_CA_CERT_PATH", str(ca))
    monkeypatch.setenv("TEMPORAL_TLS_SERVER_NAME", "localhost")
    if cert is not None and key is not None:
        monkeypatch.setenv("TEMPORAL_TLS_CLIENT_CERT_PATH", str(cert))
        monkeypatch.setenv("TEMPORAL_TLS_CLIENT_KEY_PATH", str(key))


async def test_mutual_tls_from_the_cli_settings(
    temporal_env: WorkflowEnvironment, pki: CertificateAuthority, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = pki.issue_server("frontend")
    client_pair = pki.issue_client("worker")
    target = temporal_env.client.service_client.config.target_host
    async with TLSProxy(target, server.cert, server.key, client_ca=pki.cert_path) as proxy:
        tls_env(monkeypatch, proxy.address, pki.cert_path, client_pair.cert, client_pair.key)
        client = await connect()
        await client.count_workflows()  # a real round trip through TLS with our client certificate

        tls_env(monkeypatch, proxy.address, pki.cert_path, None, None)
        with pytest.raises(RuntimeError):
            anonymous = await connect()
            await anonymous.count_workflows()


async def test_tls_refuses_a_server_signed_by_another_ca(
    temporal_env: WorkflowEnvironment, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = CertificateAuthority(tmp_path / "real", "real-ca")
    other = CertificateAuthority(tmp_path / "other", "other-ca")
    server = real.issue_server("frontend")
    target = temporal_env.client.service_client.config.target_host
    async with TLSProxy(target, server.cert, server.key) as proxy:
        tls_env(monkeypatch, proxy.address, real.cert_path, None, None)
        await (await connect()).count_workflows()
        tls_env(monkeypatch, proxy.address, other.cert_path, None, None)
        with pytest.raises(RuntimeError):
            await (await connect()).count_workflows()


async def test_node_worker_process_connects_through_mutual_tls(
    temporal_env: WorkflowEnvironment, pki: CertificateAuthority, tmp_path: Path
) -> None:
    """The settings reach every process: a real node worker polls its queue through the mTLS proxy."""
    from node_worker.sim import create_sim_host

    config = create_sim_host(tmp_path / "host")
    server = pki.issue_server("frontend")
    client_pair = pki.issue_client("node")
    target = temporal_env.client.service_client.config.target_host
    node = f"tls-{uuid.uuid4().hex[:6]}"
    async with TLSProxy(target, server.cert, server.key, client_ca=pki.cert_path) as proxy:
        env = {k: v for k, v in os.environ.items() if not k.startswith("TEMPORAL_")}
        env.update(
            TEMPORAL_CONFIG_FILE="/nonexistent/temporal.toml",
            TEMPORAL_ADDRESS=proxy.address,
            TEMPORAL_TLS_SERVER_CA_CERT_PATH=str(pki.cert_path),
            TEMPORAL_TLS_SERVER_NAME="localhost",
            TEMPORAL_TLS_CLIENT_CERT_PATH=str(client_pair.cert),
            TEMPORAL_TLS_CLIENT_KEY_PATH=str(client_pair.key),
        )
        worker = subprocess.Popen(
            [sys.executable, "-m", "node_worker.cli", "node-worker", "--node", node, "--config", str(config)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        try:
            from devstack.stack import DevStack

            for _ in range(150):  # bounded: up to ~30 s for the process to start and poll
                if await DevStack._polled(temporal_env.client, node):
                    break
                assert worker.poll() is None, worker.stderr.read().decode() if worker.stderr else ""
                await asyncio.sleep(0.2)
            else:
                pytest.fail("the node worker never polled its queue through the mTLS proxy")
        finally:
            worker.terminate()
            await asyncio.to_thread(worker.wait, 30)  # the proxy runs on this loop: keep it serving
    assert node_task_queue(node).endswith(node)


async def test_api_key_from_the_environment_is_sent(
    temporal_env: WorkflowEnvironment, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TEMPORAL_CONFIG_FILE", "/nonexistent/temporal.toml")
    monkeypatch.setenv("TEMPORAL_API_KEY", "secret-key")
    monkeypatch.setenv("TEMPORAL_TLS", "false")  # the dev server is plaintext; production keeps TLS on
    client = await connect(temporal_env.client.service_client.config.target_host)
    assert client.api_key == "secret-key"
    await client.count_workflows()


# ------------------------------------------------------------------------------------------------- payloads


async def test_codec_round_trip_and_tamper_detection() -> None:
    codec = AESGCMCodec(KEY)
    original = Payload(metadata={"encoding": b"json/plain"}, data=b'{"osversion": "KubeOS 1.0.1"}')
    [sealed] = await codec.encode([original])
    assert b"KubeOS" not in sealed.SerializeToString()
    assert await codec.decode([sealed]) == [original]
    tampered = Payload()
    tampered.CopyFrom(sealed)
    tampered.data = sealed.data[:-1] + bytes([sealed.data[-1] ^ 1])
    with pytest.raises(InvalidTag):
        await codec.decode([tampered])
    with pytest.raises(InvalidTag):
        await AESGCMCodec(bytes(32)).decode([sealed])


def test_codec_key_from_environment_is_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_ENV, "zz")
    with pytest.raises(ValueError, match=KEY_ENV):
        codec_from_env()
    monkeypatch.setenv(KEY_ENV, "ab" * 16)
    with pytest.raises(ValueError, match="32 bytes"):
        codec_from_env()
    monkeypatch.setenv(KEY_ENV, KEY.hex())
    assert codec_from_env() is not None


async def test_encrypted_rollout_leaves_nothing_readable_in_history(temporal_env: WorkflowEnvironment) -> None:
    """With the codec on, the server stores ciphertext only; the codec server gives the Web UI the plain text."""
    codec = AESGCMCodec(KEY)
    target = temporal_env.client.service_client.config.target_host
    encrypted = await Client.connect(
        target, data_converter=dataclasses.replace(pydantic_data_converter, payload_codec=codec)
    )
    prefix = uuid.uuid4().hex[:6]
    fleet = FakeFleet([FakeNode(f"enc-{prefix}", "KubeOS 1.0.0")])
    async with fleet.workers(encrypted):
        handle = await encrypted.start_workflow(
            ROLLOUT_WORKFLOW, disk_spec(), id=f"enc-{prefix}", task_queue="kubeos-cluster", result_type=RolloutStatus
        )
        assert (await handle.result()).phase == "Succeeded"
    raw = await temporal_env.client.get_workflow_handle(handle.id).fetch_history()
    text = raw.to_json()
    assert "KubeOS 1.0.1" not in text and "images.example" not in text and "ab" * 32 not in text
    assert "binary/encrypted-aesgcm" in json.dumps(text) or "YmluYXJ5L2VuY3J5cHRlZC1hZXNnY20" in text

    first_input = raw.events[0].workflow_execution_started_event_attributes.input
    body = {"payloads": [json.loads(_to_json(p)) for p in first_input.payloads]}
    web_ui = "http://127.0.0.1:8233"
    with CodecServer(codec, origins=[web_ui]) as server:
        async with httpx.AsyncClient() as http:
            preflight = await http.options(f"{server.url}/default/decode", headers={"Origin": web_ui})
            assert preflight.headers["access-control-allow-origin"] == web_ui
            decoded = await http.post(f"{server.url}/decode", json=body, headers={"Origin": web_ui})
            assert decoded.status_code == 200
            garbage = await http.post(f"{server.url}/decode", content=b"not json")
            assert garbage.status_code == 400
    data = decoded.json()["payloads"][0]["data"]
    import base64

    assert "KubeOS 1.0.1" in base64.b64decode(data).decode()


def _to_json(payload: Payload) -> str:
    from google.protobuf import json_format

    return json_format.MessageToJson(payload)
