"""An image server on 127.0.0.1 (a free port), HTTP or HTTPS, for the dev stack and the tests.

It speaks enough HTTP for the download path: ``Content-Length``, ``Accept-Ranges``, ``Range: bytes=N-``,
``If-Range`` with a strong ETag, and chunked transfer for files served without a length. Faults for the tests are
switched per file: cut the connection after N bytes, stall a transfer until released, ignore ranges, answer a
fixed status. Every request is recorded so a test can tell what the client asked for.
"""

from __future__ import annotations

import hashlib
import http.server
import re
import ssl
import threading
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from devstack.net import ServerThread

_RANGE_RE = re.compile(r"^bytes=(\d+)-$")
#: A stalled transfer goes on after this long even if nobody releases it (tests never hang on a forgotten hold).
_HOLD_LIMIT_SECONDS = 300.0


@dataclass
class Fault:
    """How to misbehave for one file."""

    cut_after: list[int] = field(default_factory=list)  # per request, in order: drop the connection after N bytes
    ignore_ranges: bool = False
    status: int | None = None  # answer this status instead of the file
    chunked: bool = False  # no Content-Length: transfer-encoding chunked
    # Stall the first transfer after N bytes until ``release`` is set (``held`` tells that it is stalled): a test
    # can then kill or restart something while a download is certainly in progress.
    hold_after: int | None = None
    held: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    headers: dict[str, str]


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: object) -> None:  # keep test output quiet
        pass

    def do_HEAD(self) -> None:
        self._serve(body=False)

    def do_GET(self) -> None:
        self._serve(body=True)

    def _serve(self, body: bool) -> None:
        owner = self.server.owner
        name = self.path.split("?", 1)[0].lstrip("/")
        owner.requests.append(Request(self.command, "/" + name, {k.lower(): v for k, v in self.headers.items()}))
        fault = owner.faults.get(name, Fault())
        path = owner.root / name
        if fault.status is not None or not name or not path.is_file():
            status = fault.status if fault.status is not None else 404
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        size = path.stat().st_size
        etag = owner.etag(path)
        start = 0
        m = _RANGE_RE.match(self.headers.get("Range", ""))
        if_range = self.headers.get("If-Range")
        if m and not fault.ignore_ranges and (if_range is None or if_range == etag):
            start = int(m.group(1))
            if start >= size:
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{size}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{size - 1}/{size}")
        else:
            self.send_response(200)
        if not fault.ignore_ranges:
            self.send_header("Accept-Ranges", "bytes")
        self.send_header("ETag", etag)
        if fault.chunked:
            self.send_header("Transfer-Encoding", "chunked")
        else:
            self.send_header("Content-Length", str(size - start))
        self.end_headers()
        if not body:
            return
        cut = fault.cut_after.pop(0) if fault.cut_after else None
        sent = 0
        with path.open("rb") as f:
            f.seek(start)
            while data := f.read(256 * 1024):
                if fault.hold_after is not None and not fault.held.is_set() and sent + len(data) > fault.hold_after:
                    head = data[: max(fault.hold_after - sent, 0)]
                    self._write(head, fault.chunked)
                    self.wfile.flush()
                    sent, data = sent + len(head), data[len(head) :]
                    fault.held.set()
                    fault.release.wait(_HOLD_LIMIT_SECONDS)
                if cut is not None and sent + len(data) > cut:
                    data = data[: cut - sent]
                    self._write(data, fault.chunked)
                    self.close_connection = True
                    self.connection.shutdown(2)  # drop mid-transfer
                    return
                self._write(data, fault.chunked)
                sent += len(data)
        if fault.chunked:
            self.wfile.write(b"0\r\n\r\n")

    def _write(self, data: bytes, chunked: bool) -> None:
        if not data:
            return
        if chunked:
            self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        else:
            self.wfile.write(data)


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    owner: ImageServer

    def handle_error(self, request: object, client_address: object) -> None:
        pass  # clients that hang up (on purpose, in fault tests) are not errors of the server


class ImageServer:
    """``with ImageServer(root, tls=(cert, key)) as server: server.url("update.img")``."""

    def __init__(self, root: Path, tls: tuple[Path, Path] | None = None, client_ca: Path | None = None) -> None:
        self.root = root
        self.faults: dict[str, Fault] = {}
        self.requests: list[Request] = []
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.owner = self
        self.scheme = "http"
        if tls is not None:
            ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            ctx.load_cert_chain(str(tls[0]), str(tls[1]))
            if client_ca is not None:
                ctx.verify_mode = ssl.CERT_REQUIRED
                ctx.load_verify_locations(str(client_ca))
            self._server.socket = ctx.wrap_socket(self._server.socket, server_side=True)
            self.scheme = "https"
        self._thread = ServerThread(self._server)

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def url(self, name: str) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}/{name}"

    def etag(self, path: Path) -> str:
        st = path.stat()
        return '"' + hashlib.sha256(f"{st.st_size}-{st.st_mtime_ns}-{st.st_ino}".encode()).hexdigest()[:16] + '"'

    def gets(self, name: str) -> list[Request]:
        return [r for r in self.requests if r.method == "GET" and r.path == "/" + name]

    def start(self) -> ImageServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._thread.stop()

    def __enter__(self) -> ImageServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
