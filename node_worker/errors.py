"""The one exception the host library raises: a kind (the activity error type) and a message a user can act on."""

from __future__ import annotations

from models.host import RETRYABLE_ERROR_TYPES, HostErrorType


class HostError(Exception):
    """A host operation failed; ``kind`` says how (and whether a retry can help)."""

    def __init__(self, kind: HostErrorType, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message

    @property
    def retryable(self) -> bool:
        return self.kind in RETRYABLE_ERROR_TYPES

    def __str__(self) -> str:
        return self.message
