"""Optional payload encryption (AES-256-GCM) for everything our processes write to Temporal.

Enabled by ``KUBEOS_ROLLOUT_CODEC_KEY`` (64 hex digits = 32 bytes). The Web UI can show decrypted payloads
through the codec server in ``workers.codec_server``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from temporalio.api.common.v1 import Payload
from temporalio.converter import PayloadCodec

ENCODING = b"binary/encrypted-aesgcm"
KEY_ENV = "KUBEOS_ROLLOUT_CODEC_KEY"
_NONCE_BYTES = 12


class AESGCMCodec(PayloadCodec):
    """Encrypts each whole payload (metadata and data) so nothing of it is readable in history."""

    def __init__(self, key: bytes, key_id: str = "default") -> None:
        if len(key) != 32:
            raise ValueError(f"{KEY_ENV}: the key must be 32 bytes (64 hex digits), got {len(key)} bytes")
        self._aead = AESGCM(key)
        self._key_id = key_id.encode()

    async def encode(self, payloads: Sequence[Payload]) -> list[Payload]:
        out = []
        for p in payloads:
            nonce = os.urandom(_NONCE_BYTES)
            sealed = nonce + self._aead.encrypt(nonce, p.SerializeToString(), None)
            out.append(Payload(metadata={"encoding": ENCODING, "encryption-key-id": self._key_id}, data=sealed))
        return out

    async def decode(self, payloads: Sequence[Payload]) -> list[Payload]:
        out = []
        for p in payloads:
            if p.metadata.get("encoding") != ENCODING:
                out.append(p)
                continue
            nonce, sealed = p.data[:_NONCE_BYTES], p.data[_NONCE_BYTES:]
            inner = Payload()
            inner.ParseFromString(self._aead.decrypt(nonce, sealed, None))
            out.append(inner)
        return out


def codec_from_env() -> AESGCMCodec | None:
    raw = os.environ.get(KEY_ENV, "").strip()
    if not raw:
        return None
    try:
        key = bytes.fromhex(raw)
    except ValueError as exc:
        raise ValueError(f"{KEY_ENV}: not hex ({exc})") from exc
    return AESGCMCodec(key)
