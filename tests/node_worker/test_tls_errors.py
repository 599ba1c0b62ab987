"""``ssl_error_in``: the one place that finds the TLS failure behind a transport error (disk and registry pulls)."""

from __future__ import annotations

import ssl

import httpx

from node_worker.tls import ssl_error_in


def _wrapped(inner: BaseException) -> httpx.ConnectError:
    try:
        try:
            raise inner
        except BaseException as exc:
            raise httpx.ConnectError("TLS handshake failed") from exc
    except httpx.ConnectError as outer:
        return outer


def test_finds_the_ssl_error_of_the_requested_kind_behind_a_transport_error() -> None:
    verification = ssl.SSLCertVerificationError(1, "certificate verify failed: unable to get local issuer")
    outer = _wrapped(verification)
    assert ssl_error_in(outer, ssl.SSLCertVerificationError) is verification
    assert ssl_error_in(outer, ssl.SSLError) is verification


def test_another_ssl_error_is_not_a_verification_failure() -> None:
    eof = ssl.SSLEOFError(8, "EOF occurred in violation of protocol")
    outer = _wrapped(eof)
    assert ssl_error_in(outer, ssl.SSLCertVerificationError) is None
    assert ssl_error_in(outer, ssl.SSLError) is eof


def test_plain_network_errors_and_cyclic_chains_give_none() -> None:
    assert ssl_error_in(_wrapped(ConnectionRefusedError(111, "refused")), ssl.SSLError) is None
    first, second = ValueError("a"), ValueError("b")
    first.__context__, second.__context__ = second, first
    assert ssl_error_in(first, ssl.SSLError) is None
