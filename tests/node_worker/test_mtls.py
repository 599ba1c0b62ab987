"""Mutual TLS against a real nginx (``ssl_verify_client on``): staged with the client pair, refused without it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from devstack.nginx import Nginx
from models.host import HostErrorType
from node_worker.errors import HostError
from tests.node_worker.conftest import CLIENT_CERT, CLIENT_KEY, NEW, Image, Pki, SimHost, disk_source


@pytest.fixture(scope="module")
def nginx(tmp_path_factory: pytest.TempPathFactory, pki: Pki, image_root: Path) -> Iterator[Nginx]:
    with Nginx(
        tmp_path_factory.mktemp("nginx"), image_root, pki.server.cert, pki.server.key, client_ca=pki.ca.cert_path
    ) as server:
        yield server


def test_mtls_download_with_client_certificate(host: SimHost, nginx: Nginx, new_image: Image) -> None:
    source = disk_source(nginx.url(new_image.name), new_image, mtls=True, clientcert=CLIENT_CERT, clientkey=CLIENT_KEY)
    host.agent.preflight(source)
    out = host.agent.stage(source)
    assert out.checksum == new_image.sha256 and out.os_release is not None and out.os_release.pretty_name == NEW


def test_mtls_server_refuses_a_client_without_certificate(host: SimHost, nginx: Nginx, new_image: Image) -> None:
    url = nginx.url(new_image.name)
    before = host.slot_digest("B")
    with pytest.raises(HostError) as err:
        host.agent.stage(disk_source(url, new_image, mtls=False))
    assert err.value.kind == HostErrorType.DOWNLOAD_FAILED and not err.value.retryable
    assert str(err.value) == f"Failed to download upgrade image from {url}, status: 400"
    assert host.slot_digest("B") == before


def test_mtls_server_refuses_a_certificate_from_another_ca(
    host: SimHost, nginx: Nginx, new_image: Image, tmp_path: Path
) -> None:
    from devstack.pki import CertificateAuthority

    stranger = CertificateAuthority(tmp_path, "stranger").issue_client("intruder")
    (host.paths.certs / "intruder.crt").write_bytes(stranger.cert.read_bytes())
    (host.paths.certs / "intruder.key").write_bytes(stranger.key.read_bytes())
    source = disk_source(
        nginx.url(new_image.name), new_image, mtls=True, clientcert="intruder.crt", clientkey="intruder.key"
    )
    with pytest.raises(HostError) as err:
        host.agent.stage(source)
    assert err.value.kind == HostErrorType.DOWNLOAD_FAILED and "status: 400" in str(err.value)
