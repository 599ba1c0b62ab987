"""Disk images over HTTP(S): the URL policy, and a resumable download streamed into the verified writer.

An interrupted transfer continues with an HTTP ``Range`` request when the server allows it (``If-Range`` with the
first response's validator makes a changed file start over instead of splicing two versions); the whole image is
hashed either way, so a resume can never pass off a mixed image.

The body is read with the standard library's ``http.client`` straight into a few reusable 1 MiB buffers
(``readinto``), which a :class:`~node_worker.writer.WritePipeline` hashes and writes on a second thread: receiving
over TLS overlaps with sha256 and ``pwrite``, and no byte string is built per TLS record (httpx's ``iter_bytes``
cost more CPU than the hash). Proxies from the environment (``https_proxy``, ``http_proxy``, ``no_proxy``) are
used as curl uses them.
"""

from __future__ import annotations

import base64
import http.client
import re
import ssl
import time
import urllib.request
from collections.abc import Iterator
from contextlib import closing, contextmanager
from urllib.parse import SplitResult, unquote, urljoin, urlsplit

from models.host import HostErrorType, ImageSource
from node_worker.errors import HostError
from node_worker.nodelog import NodeLog
from node_worker.slots import ByteProgress
from node_worker.tls import ssl_error_in
from node_worker.writer import SlotWriter, WritePipeline

# Consecutive failed requests (no byte gained) before the attempt gives up; the activity's retry then resumes.
MAX_FAILURES_WITHOUT_PROGRESS = 4
# Backoff between requests of one attempt: RETRY_BASE_DELAY * 2**failures seconds, at most 5 s.
RETRY_BASE_DELAY = 0.25
MAX_REDIRECTS = 5
_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
_CONTENT_RANGE_RE = re.compile(r"^bytes (?P<first>\d+)-(?P<last>\d+)/(?P<total>\d+|\*)$")
_CONNECT_TIMEOUT = 30.0  # TCP connect and TLS handshake
_READ_TIMEOUT = 60.0  # each read (and write) once connected


def check_url_policy(source: ImageSource, log: NodeLog) -> str:
    """The scheme of ``imageurl`` if the seed's policy allows it: https, or http only with flagSafe."""
    url = source.imageurl
    if not url:
        raise HostError(HostErrorType.INVALID_INPUT, "imageurl: is required for a disk image")
    try:
        parts = urlsplit(url)
    except ValueError as exc:
        raise HostError(HostErrorType.INVALID_INPUT, f"imageurl: not a valid address ({exc}): {url!r}") from exc
    scheme = parts.scheme.lower()
    if scheme == "https" and parts.hostname:
        return scheme
    if scheme == "http" and parts.hostname:
        if source.flagSafe:
            return scheme
        log.error(f"unsafe address, not downloading: {url} (http needs flagSafe: true)")
        raise HostError(
            HostErrorType.UNSAFE_ADDRESS,
            f"imageurl: unsafe address {url}: http is used only with flagSafe: true",
        )
    log.error(f"unsafe address, not downloading: {url} (only http and https are allowed)")
    raise HostError(HostErrorType.UNSAFE_ADDRESS, f"imageurl: unsafe address {url}: only http and https are allowed")


def _status_error(url: str, status: int) -> HostError:
    kind = HostErrorType.DOWNLOAD_FAILED if 400 <= status < 500 else HostErrorType.DOWNLOAD_RETRY
    return HostError(kind, f"Failed to download upgrade image from {url}, status: {status}")


class _Interrupted(Exception):
    """The transfer broke (network, TLS record, HTTP framing): a further request may continue it."""


@contextmanager
def _transport(url: str) -> Iterator[None]:
    """Network failures inside the block become :class:`_Interrupted`, except a server certificate that does not
    verify (retrying cannot help). Only network calls go in here: an ``OSError`` of the disk is not a transfer
    problem."""
    try:
        yield
    except (OSError, http.client.HTTPException) as exc:
        if ssl_error_in(exc, ssl.SSLCertVerificationError) is not None:
            raise HostError(HostErrorType.CERTIFICATE, f"TLS verification of {url} failed with cacert: {exc}") from exc
        raise _Interrupted(f"{type(exc).__name__}: {exc}") from exc


def _host_and_port(parts: SplitResult) -> str:
    return parts.netloc.rpartition("@")[2]


def _hop_headers(parts: SplitResult, headers: dict[str, str]) -> dict[str, str]:
    """``headers`` plus Host, and Basic credentials if this URL carries them (as httpx and curl send them)."""
    hop = {**headers, "Host": _host_and_port(parts)}
    if parts.username is not None or parts.password is not None:
        pair = f"{unquote(parts.username or '')}:{unquote(parts.password or '')}"
        hop["Authorization"] = "Basic " + base64.b64encode(pair.encode()).decode("ascii")
    return hop


def _proxy_for(parts: SplitResult) -> SplitResult | None:
    """The environment's proxy for ``parts`` (None: connect directly), as curl reads it."""
    proxies = urllib.request.getproxies_environment()
    proxy = proxies.get(parts.scheme)
    if not proxy or urllib.request.proxy_bypass(_host_and_port(parts)):
        return None
    found = urlsplit(proxy if "://" in proxy else f"http://{proxy}")
    if found.scheme != "http" or not found.hostname:
        raise HostError(
            HostErrorType.HOST_MISCONFIGURED, f"{parts.scheme}_proxy: only http:// proxies are supported, got {proxy}"
        )
    return found


def _connect(parts: SplitResult, ctx: ssl.SSLContext | None) -> tuple[http.client.HTTPConnection, str]:
    """An open connection for the URL ``parts`` (through a proxy if the environment names one) and the request
    target to send on it. Call inside :func:`_transport`."""
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    proxy = _proxy_for(parts)
    where = (proxy.hostname or "", proxy.port or 80) if proxy is not None else (host, port)
    conn: http.client.HTTPConnection
    if parts.scheme == "https":
        context = ctx if ctx is not None else ssl.create_default_context()
        conn = http.client.HTTPSConnection(*where, context=context, timeout=_CONNECT_TIMEOUT)
        if proxy is not None:
            conn.set_tunnel(host, port)
    else:
        conn = http.client.HTTPConnection(*where, timeout=_CONNECT_TIMEOUT)
        if proxy is not None:
            target = parts._replace(netloc=_host_and_port(parts), fragment="").geturl()  # absolute form
    try:
        conn.connect()
        assert conn.sock is not None
        conn.sock.settimeout(_READ_TIMEOUT)
    except BaseException:
        conn.close()
        raise
    return conn, target


def _get(
    url: str, headers: dict[str, str], ctx: ssl.SSLContext | None
) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse, str]:
    """GET ``url`` following at most MAX_REDIRECTS redirects (relative ones too); never from https to anything
    else. Returns the connection (the caller closes it), the response and the URL that answered."""
    https = urlsplit(url).scheme.lower() == "https"
    current = url
    for _ in range(MAX_REDIRECTS + 1):
        parts = urlsplit(current)
        with _transport(url):
            conn, target = _connect(parts, ctx)
            try:
                conn.request("GET", target, headers=_hop_headers(parts, headers))
                resp = conn.getresponse()
            except BaseException:
                conn.close()
                raise
        location = resp.getheader("location")
        if resp.status not in _REDIRECT_STATUSES or not location:
            return conn, resp, current
        conn.close()
        current = urljoin(current, location.strip())
        scheme = urlsplit(current).scheme.lower()
        if https and scheme != "https":
            raise HostError(HostErrorType.UNSAFE_ADDRESS, f"{url} redirected to {current}, not https")
        if scheme not in ("http", "https"):
            raise HostError(HostErrorType.UNSAFE_ADDRESS, f"{url} redirected to {current}: only http and https")
    raise HostError(HostErrorType.DOWNLOAD_FAILED, f"{url}: more than {MAX_REDIRECTS} redirects")


class _Response:
    """What one response tells about the image: total size, where it starts, whether ranges work."""

    def __init__(self, resp: http.client.HTTPResponse, url: str, requested_from: int) -> None:
        self.status = resp.status
        self.start = 0
        self.total: int | None = None
        encoding = resp.getheader("content-encoding", "identity").strip().lower()
        if encoding not in ("", "identity"):
            # We asked for identity; an encoded body is not the image whose checksum we have.
            raise HostError(HostErrorType.DOWNLOAD_FAILED, f"{url}: the server sent Content-Encoding {encoding!r}")
        if self.status == 206:
            m = _CONTENT_RANGE_RE.match(resp.getheader("content-range", ""))
            if m is None:
                raise HostError(HostErrorType.DOWNLOAD_RETRY, f"{url}: 206 without a usable Content-Range header")
            self.start = int(m["first"])
            self.total = None if m["total"] == "*" else int(m["total"])
        elif resp.length is not None:  # Content-Length, unless the body is chunked
            self.total = resp.length
        self.ranges = self.status == 206 or resp.getheader("accept-ranges", "") == "bytes"
        etag = resp.getheader("etag", "")
        # Only a strong validator may guard a range request (RFC 9110 13.1.5).
        self.validator = etag if etag and not etag.startswith("W/") else resp.getheader("last-modified", "")
        self.requested_from = requested_from


def _receive(
    url: str,
    resp: http.client.HTTPResponse,
    pipeline: WritePipeline,
    report: ByteProgress,
    total: int | None,
) -> None:
    """Read the body into the pipeline's buffers until its end. A buffer the connection broke in is dropped (its
    bytes come again with the next request, so a resume starts at a whole buffer) and :class:`_Interrupted`
    raised."""
    reported = pipeline.writer.position
    while True:
        buf = pipeline.take()
        view = memoryview(buf)
        filled = 0
        try:
            with _transport(url):
                while filled < len(buf) and (got := resp.readinto(view[filled:])):
                    filled += got
            if filled < len(buf) and resp.length:  # readinto reports a body cut short as its end
                raise _Interrupted(f"connection closed with {resp.length} bytes of the response missing")
        except BaseException:
            view.release()
            pipeline.release(buf)
            raise
        view.release()
        if not filled:
            pipeline.release(buf)
            return
        pipeline.submit(buf, filled)
        # Only progress the disk has seen: the writer runs up to a few buffers behind, and the first heartbeat
        # (the one Temporal keeps at once; later ones are throttled) must carry where a retry can resume.
        if pipeline.writer.position > reported:
            reported = pipeline.writer.position
            report(reported, total)
        if filled < len(buf):
            return


def download_into(
    source: ImageSource,
    writer: SlotWriter,
    ctx: ssl.SSLContext | None,
    log: NodeLog,
    progress: ByteProgress | None = None,
) -> int | None:
    """Stream ``source.imageurl`` into ``writer`` from ``writer.position`` on; returns the image's total size.

    Raises :class:`HostError`: DownloadFailed (4xx, not retryable), DownloadInterrupted (retryable: the writer's
    position is where a retry resumes), ImageTooLarge (refused before writing when the size is announced),
    CertificateError (the server's certificate did not verify), UnsafeAddress (https redirected elsewhere).
    """
    url = source.imageurl
    if urlsplit(url).scheme.lower() != "https":
        log.warning(f"downloading over plain http because flagSafe is true: {url}")
    report: ByteProgress = progress if progress is not None else (lambda done, total: None)
    failures = 0
    validator = ""
    ranges = writer.position > 0  # a resumed attempt tries a range; the answer tells whether it works
    total: int | None = None
    with WritePipeline(writer) as pipeline:
        while True:
            pipeline.drain()  # writer.position is final: where this request starts
            start = writer.position if ranges else 0
            headers = {"Accept-Encoding": "identity"}
            if start:
                headers["Range"] = f"bytes={start}-"
                if validator:
                    headers["If-Range"] = validator
            gained_from = writer.position
            try:
                conn, resp, answered = _get(url, headers, ctx)
                with closing(conn):
                    if resp.status == 416 and start:
                        log.warning(f"{url}: range from {start} not satisfiable; starting over")
                        writer.restart()
                        ranges = False
                        continue
                    if resp.status not in (200, 206):
                        raise _status_error(url, resp.status)
                    info = _Response(resp, answered, start)
                    if info.status == 200 or info.start != start:
                        if start:
                            log.warning(f"{url}: the server sent the whole image again; starting over")
                        writer.restart()
                    if info.total is not None:
                        total = info.total
                        if total > writer.slot.size:
                            raise HostError(
                                HostErrorType.IMAGE_TOO_LARGE,
                                f"the image ({total} bytes) is larger than {writer.slot.describe()}",
                            )
                    ranges = info.ranges
                    validator = validator or info.validator
                    if start and writer.position == start:
                        log.info(f"{url}: resuming at byte {start}")
                    _receive(url, resp, pipeline, report, total)
                    pipeline.drain()
                report(writer.position, total)
                if total is None or writer.position >= total:
                    return total if total is not None else writer.position
                problem = f"connection closed at byte {writer.position} of {total}"
            except _Interrupted as exc:
                pipeline.drain()
                report(writer.position, total)
                problem = str(exc)
            failures = 1 if writer.position > gained_from else failures + 1
            if failures > MAX_FAILURES_WITHOUT_PROGRESS:
                raise HostError(
                    HostErrorType.DOWNLOAD_RETRY,
                    f"download of {url} interrupted at byte {writer.position}: {problem}",
                )
            how = f"resuming at byte {writer.position}" if ranges else "starting over (no range support)"
            log.warning(f"download of {url} interrupted ({problem}); {how}")
            time.sleep(min(RETRY_BASE_DELAY * 2**failures, 5.0))
