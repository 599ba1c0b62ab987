"""Certificates with chosen validity (expired, not yet valid) signed by a dev-stack CA, for refusal tests."""

from __future__ import annotations

import datetime
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from devstack.pki import CertFiles, CertificateAuthority, write_cert, write_key


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def issue_with_validity(
    ca: CertificateAuthority | None,
    directory: Path,
    name: str,
    not_before: datetime.datetime,
    not_after: datetime.datetime,
    *,
    is_ca: bool = False,
) -> CertFiles:
    """A certificate valid only in [not_before, not_after], signed by ``ca`` (self-signed when None)."""
    key = ec.generate_private_key(ec.SECP256R1())
    issuer = ca.certificate.subject if ca else _name(name)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(name))
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=is_ca, path_length=None), critical=True)
    )
    cert = builder.sign(ca.key if ca else key, hashes.SHA256())
    files = CertFiles(directory / f"{name}.crt", directory / f"{name}.key")
    write_cert(cert, files.cert)
    write_key(key, files.key)
    return files
