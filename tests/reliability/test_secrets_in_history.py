"""No certificate or key ever reaches a workflow history: the spec names files, the hosts read them.

A real rollout downloads its image over mutual TLS (nginx with ``ssl_verify_client on``), with the CA, client
certificate and key present in the host's certificates directory. Then every history on the stack's Temporal
server (every rollout and every NodeUpgrade child the suite ran so far) is scanned, raw and with each payload
decoded, for PEM markers and for the base64 bodies of every certificate and key file the suite made.
"""

from __future__ import annotations

import base64
import contextlib
import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from devstack.nginx import Nginx
from tests.reliability.harness import GROUPS, SUITE_CA, Chaos
from tests.reliability.results import trial

pytestmark = [pytest.mark.slow, pytest.mark.reliability]

PEM_MARKERS = ("-----BEGIN", "PRIVATE KEY")


def pem_bodies(path: Path) -> list[str]:
    """The base64 lines of a PEM file, and all of them joined (the DER in base64)."""
    lines = [ln.strip() for ln in path.read_text().splitlines() if ln.strip() and not ln.startswith("-----")]
    return [*(ln for ln in lines if len(ln) >= 40), "".join(lines)]


def decoded_payloads(node: Any) -> Iterator[str]:
    """The data of every payload in a history's JSON, decoded (payloads are base64 there)."""
    if isinstance(node, dict):
        if isinstance(node.get("data"), str) and "metadata" in node:
            with contextlib.suppress(ValueError):
                yield base64.b64decode(node["data"]).decode(errors="replace")
        for value in node.values():
            yield from decoded_payloads(value)
    elif isinstance(node, list):
        for value in node:
            yield from decoded_payloads(value)


async def test_no_certificate_or_key_in_any_history(chaos: Chaos, tmp_path: Path) -> None:
    (node,) = GROUPS["stage"]
    image, tag = await chaos.new_image(), await chaos.select("stage")
    server = chaos.stack.image_server
    assert server is not None
    pair = chaos.ca.issue_client("history-client")
    certs = chaos.certs_dir(node)
    shutil.copyfile(pair.cert, certs / "client.crt")
    shutil.copyfile(pair.key, certs / "client.key")
    server_pair = chaos.ca.issue_server("history-image-server")
    with (
        Nginx(
            tmp_path / "nginx", server.root, server_pair.cert, server_pair.key, client_ca=chaos.ca.cert_path
        ) as nginx,
        trial("security", "no certificate or key contents in any workflow history (after an mTLS rollout)") as t,
    ):
        mtls = {"mtls": True, "cacert": SUITE_CA, "clientcert": "client.crt", "clientkey": "client.key"}
        await chaos.apply(chaos.resource("mtls-history", image, tag, imageurl=nginx.url(image.file_name), **mtls))
        status = await chaos.wait_os("mtls-history")
        assert status["phase"] == "Succeeded", status  # nginx refuses any client without the certificate
        (await chaos.view(node)).assert_in_service(image.version)

        secret_files = sorted({*chaos.stack.state_dir.rglob("*.crt"), *chaos.stack.state_dir.rglob("*.key")})
        secrets = {body: f.name for f in secret_files for body in pem_bodies(f)}
        assert len(secret_files) >= 4 and secrets
        histories = 0
        async for execution in chaos.client.list_workflows():
            history = await chaos.client.get_workflow_handle(execution.id, run_id=execution.run_id).fetch_history()
            raw = history.to_json()
            texts = [raw, *decoded_payloads(json.loads(raw))]
            for text in texts:
                for marker in PEM_MARKERS:
                    assert marker not in text, f"{marker!r} in the history of {execution.id}"
                for body, file_name in secrets.items():
                    assert body not in text, f"contents of {file_name} in the history of {execution.id}"
            histories += 1
        assert histories >= 2  # at least this rollout and its NodeUpgrade child
        t.times = histories
        t.outcome = (
            f"mTLS rollout {status['phase']}; {histories} histories scanned (raw and payloads decoded) against "
            f"{len(secret_files)} certificate and key files: none found"
        )
