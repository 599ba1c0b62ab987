"""A throw-away certificate authority for the dev stack and tests (registry TLS, token signing, image server).

Everything is generated with ``cryptography``: no openssl binary, no network. Keys are written unencrypted with
mode 0600; certificates live a day by default, which is plenty for a test or a demo run.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


@dataclass(frozen=True)
class CertFiles:
    cert: Path
    key: Path


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def write_key(key: PrivateKey, path: Path) -> None:
    data = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)


def write_cert(cert: x509.Certificate, path: Path) -> None:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def _san(hosts: tuple[str, ...]) -> x509.SubjectAlternativeName:
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return x509.SubjectAlternativeName(names)


def _validity(
    days: int, not_before: datetime.datetime | None, not_after: datetime.datetime | None
) -> tuple[datetime.datetime, datetime.datetime]:
    """The window a certificate is valid in: by default from five minutes ago (clock skew) for ``days`` days;
    tests pass their own window for expired and not-yet-valid certificates."""
    now = datetime.datetime.now(datetime.UTC)
    return not_before or now - datetime.timedelta(minutes=5), not_after or now + datetime.timedelta(days=days)


def _builder(
    subject: x509.Name,
    issuer: x509.Name,
    key: PrivateKey,
    window: tuple[datetime.datetime, datetime.datetime],
) -> x509.CertificateBuilder:
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(window[0])
        .not_valid_after(window[1])
    )


def _write_pair(directory: Path, name: str, cert: x509.Certificate, key: PrivateKey) -> CertFiles:
    files = CertFiles(directory / f"{name}.crt", directory / f"{name}.key")
    write_cert(cert, files.cert)
    write_key(key, files.key)
    return files


class CertificateAuthority:
    """A CA in ``directory`` (``<name>.crt``/``<name>.key``) that issues server and client certificates.

    ``not_before``/``not_after`` (here and in :meth:`issue`) replace the default validity window, e.g. for an
    expired or not-yet-valid certificate that a host must refuse.
    """

    def __init__(
        self,
        directory: Path,
        name: str = "ca",
        *,
        days: int = 1,
        not_before: datetime.datetime | None = None,
        not_after: datetime.datetime | None = None,
    ) -> None:
        self.directory = directory
        self.days = days
        directory.mkdir(parents=True, exist_ok=True)
        self.key = ec.generate_private_key(ec.SECP256R1())
        subject = _name(f"kubeos-rollout {name}")
        self.certificate = (
            _builder(subject, subject, self.key, _validity(days, not_before, not_after))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(self.key.public_key()), critical=False)
            .sign(self.key, hashes.SHA256())
        )
        self.files = _write_pair(directory, name, self.certificate, self.key)

    @property
    def cert_path(self) -> Path:
        return self.files.cert

    def issue(
        self,
        name: str,
        *,
        hosts: tuple[str, ...] = (),
        client: bool = False,
        not_before: datetime.datetime | None = None,
        not_after: datetime.datetime | None = None,
    ) -> CertFiles:
        """A leaf certificate for ``hosts`` (server) or a client certificate, written as ``<name>.crt/.key``."""
        key = ec.generate_private_key(ec.SECP256R1())
        usage = ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH
        builder = (
            _builder(_name(name), self.certificate.subject, key, _validity(self.days, not_before, not_after))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), critical=False)
        )
        if hosts:
            builder = builder.add_extension(_san(hosts), critical=False)
        return _write_pair(self.directory, name, builder.sign(self.key, hashes.SHA256()), key)

    def issue_server(self, name: str, hosts: tuple[str, ...] = ("127.0.0.1", "localhost")) -> CertFiles:
        return self.issue(name, hosts=hosts)

    def issue_client(
        self, name: str, *, not_before: datetime.datetime | None = None, not_after: datetime.datetime | None = None
    ) -> CertFiles:
        return self.issue(name, client=True, not_before=not_before, not_after=not_after)


def self_signed_rsa(directory: Path, name: str, *, days: int = 1) -> tuple[rsa.RSAPrivateKey, CertFiles]:
    """An RSA key and a self-signed certificate for it (e.g. a token issuer's signing key)."""
    directory.mkdir(parents=True, exist_ok=True)
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    cert = _builder(_name(name), _name(name), key, _validity(days, None, None)).sign(key, hashes.SHA256())
    return key, _write_pair(directory, name, cert, key)
