"""Loopback networking helpers shared by the dev stack's servers and the tests."""

from __future__ import annotations

import socket
import socketserver
import threading
from collections.abc import Iterator
from contextlib import contextmanager


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now, for a server that must be told its port up front
    (the registry, Temporal, nginx); servers we bind ourselves use port 0 instead."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class ServerThread:
    """A ``socketserver`` server answering on a daemon thread between :meth:`start` and :meth:`stop`."""

    def __init__(self, server: socketserver.BaseServer) -> None:
        self.server = server
        self._thread = threading.Thread(target=server.serve_forever, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Stop answering, close the listening socket and wait (bounded) for the serving thread to end."""
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(timeout=10)


@contextmanager
def serving(server: socketserver.BaseServer) -> Iterator[None]:
    """``server`` answers on a daemon thread for the ``with`` block, and is stopped and closed after it."""
    thread = ServerThread(server)
    thread.start()
    try:
        yield
    finally:
        thread.stop()
