"""The download path on its own terms: redirects, proxies, resumes that splice, errors of the writing thread, and
no thread left behind (real HTTPS servers on 127.0.0.1)."""

from __future__ import annotations

import base64
import errno
import gzip
import http.server
import select
import shutil
import socket
import socketserver
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from devstack.image_server import Fault, ImageServer
from devstack.net import serving
from models.host import HostErrorType
from node_worker.errors import HostError
from node_worker.http_source import MAX_REDIRECTS
from node_worker.osrelease import OsReleaseUnreadable, read_slot_os_release
from tests.node_worker.conftest import Image, Pki, SimHost, disk_source, fail_pwrite

MIB = 1024 * 1024


def _writer_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("slot-") and t.name.endswith("-writer")]


class _RedirectHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _RedirectServer

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        self.server.hits.append(self.path)
        self.server.auth.append(self.headers.get("Authorization"))
        if self.path == "/gzipped":  # an encoded body, although the client asked for identity
            body = gzip.compress(b"not the image")
            self.send_response(200)
            self.send_header("Content-Encoding", "gzip")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        location = self.server.routes.get(self.path)
        self.send_response(302 if location is not None else 404)
        if location is not None:
            self.send_header("Location", location)
        self.send_header("Content-Length", "0")
        self.end_headers()


class _RedirectServer(http.server.ThreadingHTTPServer):
    daemon_threads = True
    routes: dict[str, str]
    hits: list[str]
    auth: list[str | None]


@pytest.fixture
def redirector(pki: Pki) -> Iterator[_RedirectServer]:
    """An HTTPS server (same CA as the image server) that answers 302 to the Location in ``routes[path]``, and a
    gzip-encoded body at ``/gzipped``."""
    server = _RedirectServer(("127.0.0.1", 0), _RedirectHandler)
    server.routes, server.hits, server.auth = {}, [], []
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(str(pki.server.cert), str(pki.server.key))
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    with serving(server):
        yield server


def _base(server: _RedirectServer) -> str:
    return f"https://127.0.0.1:{server.server_address[1]}"


def test_redirects_are_followed_relative_and_absolute(
    host: SimHost, redirector: _RedirectServer, https_server: ImageServer, new_image: Image
) -> None:
    """Credentials in the URL go as Basic auth to that server, not to the one it redirects to."""
    redirector.routes = {"/a/start": "next", "/a/next": https_server.url(new_image.name)}
    url = _base(redirector).replace("https://", "https://node:s%40cret@") + "/a/start"
    out = host.agent.stage(disk_source(url, new_image))
    assert out.checksum == new_image.sha256
    assert redirector.hits == ["/a/start", "/a/next"]  # "next" was resolved against /a/start
    assert redirector.auth == ["Basic " + base64.b64encode(b"node:s@cret").decode()] * 2
    gets = https_server.gets(new_image.name)
    assert len(gets) == 1 and "authorization" not in gets[0].headers
    assert gets[0].headers["host"] == f"127.0.0.1:{https_server.port}"


def test_redirect_from_https_to_http_is_refused(
    host: SimHost, redirector: _RedirectServer, http_server: ImageServer, new_image: Image
) -> None:
    redirector.routes = {"/img": http_server.url(new_image.name)}
    before = host.slot_digest("B")
    url = f"{_base(redirector)}/img"
    with pytest.raises(HostError) as err:
        host.agent.stage(disk_source(url, new_image))
    assert err.value.kind == HostErrorType.UNSAFE_ADDRESS and not err.value.retryable
    assert str(err.value) == f"{url} redirected to {http_server.url(new_image.name)}, not https"
    assert http_server.gets(new_image.name) == []  # not even asked
    assert host.slot_digest("B") == before
    assert _writer_threads() == []


def test_endless_redirects_fail_without_retry(host: SimHost, redirector: _RedirectServer, new_image: Image) -> None:
    redirector.routes = {"/loop": "/loop"}
    with pytest.raises(HostError, match="redirects") as err:
        host.agent.stage(disk_source(f"{_base(redirector)}/loop", new_image))
    assert err.value.kind == HostErrorType.DOWNLOAD_FAILED
    assert len(redirector.hits) == MAX_REDIRECTS + 1


def test_an_encoded_body_is_refused(host: SimHost, redirector: _RedirectServer, new_image: Image) -> None:
    """The checksum is of the image as it is: a server that compresses it anyway is refused, not decoded."""
    before = host.slot_digest("B")
    with pytest.raises(HostError, match="Content-Encoding 'gzip'") as err:
        host.agent.stage(disk_source(f"{_base(redirector)}/gzipped", new_image))
    assert err.value.kind == HostErrorType.DOWNLOAD_FAILED
    assert host.slot_digest("B") == before


class _ConnectProxy(socketserver.ThreadingTCPServer):
    """A minimal forward proxy for https: ``CONNECT host:port``, then bytes both ways."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _ConnectHandler)
        self.connects: list[str] = []


class _ConnectHandler(socketserver.StreamRequestHandler):
    server: _ConnectProxy

    def handle(self) -> None:
        request_line = self.rfile.readline().decode()
        while self.rfile.readline() not in (b"\r\n", b"\n", b""):
            pass
        method, target, _ = request_line.split(" ", 2)
        self.server.connects.append(f"{method} {target}")
        host, port = target.rsplit(":", 1)
        with socket.create_connection((host, int(port)), timeout=10) as upstream:
            self.wfile.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
            self.wfile.flush()
            ends = [self.connection, upstream]
            while True:
                readable, _, _ = select.select(ends, [], [], 10)
                if not readable:
                    return
                for end in readable:
                    data = end.recv(256 * 1024)
                    if not data:
                        return
                    (upstream if end is self.connection else self.connection).sendall(data)


@pytest.fixture
def connect_proxy() -> Iterator[_ConnectProxy]:
    proxy = _ConnectProxy()
    with serving(proxy):
        yield proxy


@pytest.mark.parametrize("bypass", [False, True])
def test_https_goes_through_the_environments_proxy_unless_bypassed(
    host: SimHost,
    https_server: ImageServer,
    new_image: Image,
    connect_proxy: _ConnectProxy,
    monkeypatch: pytest.MonkeyPatch,
    bypass: bool,
) -> None:
    for name in ("no_proxy", "NO_PROXY", "HTTPS_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("https_proxy", f"http://127.0.0.1:{connect_proxy.server_address[1]}")
    if bypass:
        monkeypatch.setenv("no_proxy", "localhost,127.0.0.1")
    out = host.agent.stage(disk_source(https_server.url(new_image.name), new_image))
    assert out.checksum == new_image.sha256
    assert connect_proxy.connects == ([] if bypass else [f"CONNECT 127.0.0.1:{https_server.port}"])


def test_resume_that_splices_two_versions_fails_verification(
    host: SimHost, https_server: ImageServer, new_image: Image, image_root: Path
) -> None:
    """A server that changes the file but not its validator gets a range request answered from the new bytes:
    the whole image is hashed (prefix from the first response included), so the splice is caught."""
    name = "spliced.img"
    path = image_root / name
    shutil.copy(new_image.path, path)
    https_server.faults[name] = Fault(cut_after=[2 * MIB])
    calls = {"n": 0}

    def same_etag_new_bytes(served: Path) -> str:
        calls["n"] += 1
        if calls["n"] == 2:  # the resumed request: the file changes behind a validator that stays
            with served.open("r+b") as f:
                f.seek(8 * MIB)
                f.write(b"\xa5")
        return '"v1"'

    https_server.etag = same_etag_new_bytes  # type: ignore[method-assign,assignment]
    try:
        with pytest.raises(HostError) as err:
            host.agent.stage(disk_source(https_server.url(name), new_image))
    finally:
        path.unlink()
    assert err.value.kind == HostErrorType.CHECKSUM_MISMATCH
    assert [g.headers.get("range") for g in https_server.gets(name)] == [None, f"bytes={2 * MIB}-"]
    with pytest.raises(OsReleaseUnreadable):
        read_slot_os_release(host.agent.slot("B"))
    assert _writer_threads() == []


def test_a_failing_disk_write_is_not_taken_for_a_network_problem(
    host: SimHost, https_server: ImageServer, new_image: Image, monkeypatch: pytest.MonkeyPatch
) -> None:
    """EIO from pwrite on the writing thread reaches the caller as it is: no retried request, no thread left."""
    fail_pwrite(monkeypatch, on_call=3)
    with pytest.raises(OSError) as err:
        host.agent.stage(disk_source(https_server.url(new_image.name), new_image))
    assert err.value.errno == errno.EIO
    assert len(https_server.gets(new_image.name)) == 1
    assert host.agent.stamps.load(host.agent.slot("B")) is None
    assert _writer_threads() == []


def test_no_thread_is_left_after_success_or_failure(
    host: SimHost, https_server: ImageServer, new_image: Image, big_image: Image, monkeypatch: pytest.MonkeyPatch
) -> None:
    from node_worker import http_source

    monkeypatch.setattr(http_source, "RETRY_BASE_DELAY", 0.01)
    before = threading.active_count()
    host.agent.stage(disk_source(https_server.url(new_image.name), new_image))
    assert _writer_threads() == []
    https_server.faults[big_image.name] = Fault(chunked=True)  # the writing thread hits the slot's end
    https_server.faults[new_image.name] = Fault(cut_after=[3 * MIB] + [0] * 8)  # gives up, retryable
    for image, kind in ((big_image, HostErrorType.IMAGE_TOO_LARGE), (new_image, HostErrorType.DOWNLOAD_RETRY)):
        with pytest.raises(HostError) as err:
            host.agent.stage(disk_source(https_server.url(image.name), image))
        assert err.value.kind == kind
        assert _writer_threads() == []
    # The image server's request threads end once our connections are closed; wait (bounded) for them.
    for _ in range(100):
        if threading.active_count() <= before:
            break
        time.sleep(0.05)
    assert threading.active_count() <= before, threading.enumerate()
