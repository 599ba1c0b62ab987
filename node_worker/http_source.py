"""Disk images over HTTP(S): the URL policy, and a resumable download streamed into the verified writer.

An interrupted transfer continues with an HTTP ``Range`` request when the server allows it (``If-Range`` with the
first response's validator makes a changed file start over instead of splicing two versions); the whole image is
hashed either way, so a resume can never pass off a mixed image.
"""

from __future__ import annotations

import re
import ssl
import time
from urllib.parse import urlsplit

import httpx

from models.host import HostErrorType, ImageSource
from node_worker.errors import HostError
from node_worker.nodelog import NodeLog
from node_worker.slots import CHUNK, ByteProgress
from node_worker.tls import ssl_error_in
from node_worker.writer import SlotWriter

# Consecutive failed requests (no byte gained) before the attempt gives up; the activity's retry then resumes.
MAX_FAILURES_WITHOUT_PROGRESS = 4
# Backoff between requests of one attempt: RETRY_BASE_DELAY * 2**failures seconds, at most 5 s.
RETRY_BASE_DELAY = 0.25
_CONTENT_RANGE_RE = re.compile(r"^bytes (?P<first>\d+)-(?P<last>\d+)/(?P<total>\d+|\*)$")
_TIMEOUT = httpx.Timeout(connect=30.0, read=60.0, write=60.0, pool=30.0)


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


class _Response:
    """What one response tells about the image: total size, where it starts, whether ranges work."""

    def __init__(self, resp: httpx.Response, requested_from: int) -> None:
        self.status = resp.status_code
        self.start = 0
        self.total: int | None = None
        encoded = resp.headers.get("content-encoding", "identity").lower() not in ("", "identity")
        if self.status == 206:
            m = _CONTENT_RANGE_RE.match(resp.headers.get("content-range", ""))
            if m is None:
                raise HostError(HostErrorType.DOWNLOAD_RETRY, f"{resp.url}: 206 without a usable Content-Range header")
            self.start = int(m["first"])
            self.total = None if m["total"] == "*" else int(m["total"])
        elif not encoded and "content-length" in resp.headers:
            self.total = int(resp.headers["content-length"])
        self.ranges = not encoded and (self.status == 206 or resp.headers.get("accept-ranges", "") == "bytes")
        etag = resp.headers.get("etag", "")
        # Only a strong validator may guard a range request (RFC 9110 13.1.5).
        self.validator = etag if etag and not etag.startswith("W/") else resp.headers.get("last-modified", "")
        self.requested_from = requested_from


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
    CertificateError (the server's certificate did not verify).
    """
    url = source.imageurl
    https = urlsplit(url).scheme.lower() == "https"
    if not https:
        log.warning(f"downloading over plain http because flagSafe is true: {url}")
    failures = 0
    validator = ""
    ranges = writer.position > 0  # a resumed attempt tries a range; the answer tells whether it works
    total: int | None = None
    with httpx.Client(verify=ctx if ctx is not None else True, timeout=_TIMEOUT, follow_redirects=True) as client:
        while True:
            start = writer.position if ranges else 0
            headers = {"Accept-Encoding": "identity"}
            if start:
                headers["Range"] = f"bytes={start}-"
                if validator:
                    headers["If-Range"] = validator
            gained_from = writer.position
            try:
                with client.stream("GET", url, headers=headers) as resp:
                    if https and resp.url.scheme != "https":
                        raise HostError(HostErrorType.UNSAFE_ADDRESS, f"{url} redirected to {resp.url}, not https")
                    if resp.status_code == 416 and start:
                        log.warning(f"{url}: range from {start} not satisfiable; starting over")
                        writer.restart()
                        ranges = False
                        continue
                    if resp.status_code not in (200, 206):
                        raise _status_error(url, resp.status_code)
                    info = _Response(resp, start)
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
                    for data in resp.iter_bytes(CHUNK):
                        writer.write(data)
                        if progress is not None:
                            progress(writer.position, total)
                if total is None or writer.position >= total:
                    return total if total is not None else writer.position
                problem = f"connection closed at byte {writer.position} of {total}"
            except httpx.TransportError as exc:
                if ssl_error_in(exc, ssl.SSLCertVerificationError) is not None:
                    raise HostError(
                        HostErrorType.CERTIFICATE, f"TLS verification of {url} failed with cacert: {exc}"
                    ) from exc
                problem = f"{type(exc).__name__}: {exc}"
            failures = 1 if writer.position > gained_from else failures + 1
            if failures > MAX_FAILURES_WITHOUT_PROGRESS:
                raise HostError(
                    HostErrorType.DOWNLOAD_RETRY,
                    f"download of {url} interrupted at byte {writer.position}: {problem}",
                )
            how = f"resuming at byte {writer.position}" if ranges else "starting over (no range support)"
            log.warning(f"download of {url} interrupted ({problem}); {how}")
            time.sleep(min(RETRY_BASE_DELAY * 2**failures, 5.0))
