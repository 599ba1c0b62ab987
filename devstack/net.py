"""Loopback networking helpers shared by the dev stack's servers and the tests."""

from __future__ import annotations

import socket


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now, for a server that must be told its port up front
    (the registry, Temporal, nginx); servers we bind ourselves use port 0 instead."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port
