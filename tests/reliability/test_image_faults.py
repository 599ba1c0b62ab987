"""Faults of the image source: a dropped connection (resumed), and every way a download must be refused.

A refused download must leave the node exactly as it was: same version, slot, boot count and boot entries,
schedulable, with the failure reported on the OS resource and by the rollout. Each refusal runs twice, each time
as its own single-node rollout.
"""

from __future__ import annotations

import contextlib
import datetime
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from temporalio.client import WorkflowExecutionStatus

from devstack.image_server import Fault, ImageServer
from devstack.nginx import Nginx
from devstack.pki import CertificateAuthority
from devstack.stack import CA_FILE_NAME, IMAGE_VERSIONS
from node_worker.slots import resolve_slot
from node_worker.writer import StampStore
from tests.e2e.cluster import Image
from tests.e2e.conftest import SLOT_SIZE
from tests.reliability.harness import GROUPS, MIB, SUITE_CA, Chaos, node_message
from tests.reliability.results import trial

pytestmark = [pytest.mark.slow, pytest.mark.reliability]

REPEATS = 2
(NODE,) = GROUPS["refuse"]


def image_server(chaos: Chaos) -> ImageServer:
    assert chaos.stack.image_server is not None
    return chaos.stack.image_server


async def test_connection_dropped_mid_transfer(chaos: Chaos) -> None:
    (node,) = GROUPS["stage"]
    before = await chaos.view(node)
    image, tag = await chaos.new_image(), await chaos.select("stage")
    image_server(chaos).faults[image.file_name] = Fault(cut_after=[3 * MIB, 7 * MIB])
    with trial("fault", "the image server drops the connection mid-transfer (twice in one download)", times=2) as t:
        await chaos.apply(chaos.resource("dropped-connection", image, tag))
        status = await chaos.wait_os("dropped-connection")

        assert status["phase"] == "Succeeded", status
        gets = image_server(chaos).gets(image.file_name)
        ranges = [r.headers.get("range", "") for r in gets]
        assert len(gets) == 3 and ranges[0] == "" and all(r.startswith("bytes=") for r in ranges[1:]), ranges
        after = await chaos.view(node)
        after.assert_in_service(image.version)
        assert after.boots == before.boots + 1, (before, after)
        assert chaos.audit.problems(node) == []
        t.outcome = f"resumed with {', '.join(ranges[1:])}; whole image verified; rollout {status['phase']}"


# ------------------------------------------------------------------------------------------------- refusals


@contextlib.contextmanager
def refused_source(chaos: Chaos, kind: str, image: Image, big: Image, workdir: Path) -> Iterator[dict[str, Any]]:
    """The OS spec fields that make the download fail as ``kind`` says (servers run while the block runs)."""
    server = image_server(chaos)
    if kind == "checksum":
        _url, other = chaos.stack.images[IMAGE_VERSIONS[-1]]  # a real image's digest, just not this one's
        yield {"checksum": other}
    elif kind == "404":
        yield {"imageurl": server.url(f"missing-{image.file_name}")}
    elif kind == "too-large":
        yield {"imageurl": big.url, "checksum": big.checksum, "osversion": big.version}
    elif kind == "wrong-ca":
        foreign = CertificateAuthority(workdir / "foreign", "foreign-ca")
        cert = foreign.issue_server("foreign-image-server")
        with ImageServer(server.root, tls=(cert.cert, cert.key)) as other_server:
            yield {"imageurl": other_server.url(image.file_name), "cacert": CA_FILE_NAME}
    elif kind == "expired":
        now = datetime.datetime.now(datetime.UTC)
        cert = chaos.ca.issue(
            "expired-image-server",
            hosts=("127.0.0.1",),
            not_before=now - datetime.timedelta(days=2),
            not_after=now - datetime.timedelta(days=1),
        )
        with ImageServer(server.root, tls=(cert.cert, cert.key)) as expired_server:
            yield {"imageurl": expired_server.url(image.file_name), "cacert": SUITE_CA}
    elif kind == "mtls-no-client-cert":
        cert = chaos.ca.issue_server("mtls-image-server")
        with Nginx(workdir / "nginx", server.root, cert.cert, cert.key, client_ca=chaos.ca.cert_path) as nginx:
            yield {"imageurl": nginx.url(image.file_name), "cacert": SUITE_CA}
    else:
        raise ValueError(kind)


REFUSALS = {
    # kind: (what the table calls it, what the node's failure must say)
    "checksum": ("checksum mismatch", "mismatch"),
    "404": ("image 404", "status: 404"),
    "too-large": ("image larger than the slot", "larger than"),
    "wrong-ca": ("TLS: image server signed by another CA", "TLS verification"),
    "expired": ("TLS: expired server certificate", "expired"),
    "mtls-no-client-cert": ("mTLS: server requires a client certificate, the node has none", "status: 400"),
}


def inactive_stamp(chaos: Chaos, node: str) -> str:
    """The checksum the host's staging stamp claims its inactive slot holds ("" when none)."""
    host = chaos.e2e.host(node)
    slot = resolve_slot(host.config, host.inactive_slot())
    stamp = StampStore(host.config.staging_dir).load(slot)
    return stamp.checksum if stamp else ""


@pytest.mark.parametrize("kind", sorted(REFUSALS))
async def test_download_refused_leaves_the_node_untouched(chaos: Chaos, kind: str, tmp_path: Path) -> None:
    title, expected = REFUSALS[kind]
    image, tag = await chaos.new_image(), await chaos.select("refuse")
    big = await chaos.special_image(SLOT_SIZE + 8 * MIB) if kind == "too-large" else image
    with trial("fault", title, times=REPEATS) as t, refused_source(chaos, kind, image, big, tmp_path) as fields:
        reported = []
        for attempt in range(REPEATS):
            before = await chaos.view(NODE)
            name = f"refuse-{kind}-{attempt}"
            await chaos.apply(chaos.resource(name, image, tag, **fields))
            status = await chaos.wait_os(name)

            message = node_message(status, NODE)
            assert status["phase"] == "CompletedWithFailures" and status["failed"] == 1, status
            assert expected in message, message
            state, result = await chaos.rollout(status["workflowId"])
            assert state == WorkflowExecutionStatus.COMPLETED and result is not None
            assert expected in result.failures[NODE], result.failures
            after = await chaos.view(NODE)
            assert after.same_host_state(before), (before, after)
            after.assert_in_service(before.os_image)
            if kind == "checksum":  # the slot was written, then invalidated: nothing claims it holds an image
                assert inactive_stamp(chaos, NODE) == ""
            reported.append(error_type(message))
        assert chaos.audit.problems(NODE) == []
        t.outcome = f"node untouched and schedulable; reported as {', '.join(sorted(set(reported)))} ({expected!r})"


def error_type(message: str) -> str:
    """``Failed: stage: ChecksumMismatch: Checksum ...`` -> ``stage: ChecksumMismatch``."""
    parts = message.split(": ")
    return ": ".join(parts[1:3]) if len(parts) > 2 else message
