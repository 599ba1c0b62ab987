"""Certificates named by an ``OS`` spec: plain file names inside the host's certificates directory.

The host re-checks what the cluster sent (it is the host's disk that gets written): names cannot leave the
directory, certificates must parse and be valid now, and the client key must belong to the client certificate.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from models.host import HostErrorType, ImageSource
from node_worker.errors import HostError

_SslErrorT = TypeVar("_SslErrorT", bound=ssl.SSLError)


@dataclass(frozen=True)
class TlsFiles:
    """Paths of the files an https download uses (client files only with mTLS)."""

    cafile: Path
    certfile: Path | None = None
    keyfile: Path | None = None


def _cert_error(message: str) -> HostError:
    return HostError(HostErrorType.CERTIFICATE, message)


def cert_path(certs_dir: str | Path, field: str, name: str) -> Path:
    """The file ``name`` in ``certs_dir``; refuses empty names and anything that is not a plain file name."""
    if not name:
        raise _cert_error(f"{field}: Please provide the certificate (a file name in {certs_dir})")
    if name in (".", "..") or "/" in name or "\\" in name or "\x00" in name:
        raise _cert_error(f"{field}: {name!r} is not a plain file name inside {certs_dir}")
    path = Path(certs_dir) / name
    if not path.is_file():
        raise _cert_error(f"{field}: Certificate does not exist: {name} (in {certs_dir})")
    return path


def _check_validity(field: str, cert: x509.Certificate, now: datetime) -> None:
    subject = cert.subject.rfc4514_string() or "(no subject)"
    if cert.not_valid_after_utc <= now:
        raise _cert_error(f"{field}: certificate {subject} expired on {cert.not_valid_after_utc:%Y-%m-%d %H:%M:%S}Z")
    if cert.not_valid_before_utc > now:
        raise _cert_error(
            f"{field}: certificate {subject} is not valid before {cert.not_valid_before_utc:%Y-%m-%d %H:%M:%S}Z"
        )


def load_certificates(field: str, path: Path, now: datetime) -> list[x509.Certificate]:
    try:
        certs = x509.load_pem_x509_certificates(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise _cert_error(f"{field}: {path.name} is not a PEM certificate: {exc}") from exc
    for cert in certs:
        _check_validity(field, cert, now)
    return certs


def _check_key_matches(cert: x509.Certificate, keyfile: Path) -> None:
    try:
        key = serialization.load_pem_private_key(keyfile.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise _cert_error(f"clientkey: {keyfile.name} is not an unencrypted PEM private key: {exc}") from exc
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    pem = serialization.Encoding.PEM
    if key.public_key().public_bytes(pem, spki) != cert.public_key().public_bytes(pem, spki):
        raise _cert_error(f"clientkey: {keyfile.name} does not match the client certificate")


def check_tls_files(source: ImageSource, certs_dir: str | Path, now: datetime | None = None) -> TlsFiles:
    """The CA (and with mtls the client certificate and key) of ``source``, all present and usable now."""
    now = now or datetime.now(UTC)
    cafile = cert_path(certs_dir, "cacert", source.cacert)
    load_certificates("cacert", cafile, now)
    if not source.mtls:
        return TlsFiles(cafile)
    certfile = cert_path(certs_dir, "clientcert", source.clientcert)
    keyfile = cert_path(certs_dir, "clientkey", source.clientkey)
    client = load_certificates("clientcert", certfile, now)
    _check_key_matches(client[0], keyfile)
    return TlsFiles(cafile, certfile, keyfile)


def ssl_context(files: TlsFiles) -> ssl.SSLContext:
    """A verifying client context; httpx 0.28 drops ``cert=`` next to ``verify=path``, so mTLS goes in here."""
    try:
        ctx = ssl.create_default_context(cafile=str(files.cafile))
        if files.certfile is not None and files.keyfile is not None:
            ctx.load_cert_chain(str(files.certfile), str(files.keyfile))
    except (ssl.SSLError, OSError) as exc:
        raise _cert_error(f"cannot use the certificates for TLS: {exc}") from exc
    return ctx


def ssl_error_in(exc: BaseException, kind: type[_SslErrorT]) -> _SslErrorT | None:
    """The first ``kind`` in ``exc``'s chain of causes: httpx wraps TLS failures in its own transport errors,
    and only the underlying ``ssl`` error tells a trust problem (not retryable) from a network one."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, kind):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None
