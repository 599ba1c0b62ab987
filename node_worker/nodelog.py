"""The node log: what the host did, for the operator reading ``/var/log/messages`` or the configured file.

Every event goes to the ``kubeos.node`` logger (stderr and syslog, set up by :func:`setup_process_logging`) and is
appended to the configured node log file, so the file is complete even when the library runs without the worker's
logging (tests, ``host stage``).
"""

from __future__ import annotations

import logging
import logging.handlers
import os
import sys
import threading
import time
from pathlib import Path

from models.host import HostConfig

LOGGER_NAME = "kubeos.node"
_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class NodeLog:
    """Appends timestamped lines to the node log file and mirrors them to the ``kubeos.node`` logger."""

    def __init__(self, path: str | Path, node: str = "") -> None:
        self.path = Path(path)
        self.node = node
        self._logger = logging.getLogger(LOGGER_NAME)
        self._lock = threading.Lock()

    def info(self, message: str) -> None:
        self._emit(logging.INFO, message)

    def warning(self, message: str) -> None:
        self._emit(logging.WARNING, message)

    def error(self, message: str) -> None:
        self._emit(logging.ERROR, message)

    def _emit(self, level: int, message: str) -> None:
        self._logger.log(level, message)
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        who = f" {self.node}" if self.node else ""
        line = f"{stamp}{who} kubeos-rollout[{os.getpid()}]: {logging.getLevelName(level)} {message}\n"
        with self._lock:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                with self.path.open("a", encoding="utf-8") as f:
                    f.write(line)
            except OSError as exc:  # a full or read-only log disk must not stop an upgrade
                self._logger.warning("cannot write the node log %s: %s", self.path, exc)


def setup_process_logging(config: HostConfig | None, *, verbose: bool = False) -> None:
    """Log to stderr, and to syslog when the host has it (``/dev/log``), as the seed asks of node logs."""
    root = logging.getLogger()
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    if not any(getattr(h, "_kubeos", False) for h in root.handlers):
        stderr = logging.StreamHandler(sys.stderr)
        stderr.setFormatter(logging.Formatter(_FORMAT))
        stderr._kubeos = True  # type: ignore[attr-defined]
        root.addHandler(stderr)
    if config is not None and config.syslog and Path(config.syslog_address).exists():
        try:
            syslog = logging.handlers.SysLogHandler(
                address=config.syslog_address, facility=logging.handlers.SysLogHandler.LOG_DAEMON
            )
        except OSError as exc:
            logging.getLogger(LOGGER_NAME).warning("syslog %s unavailable: %s", config.syslog_address, exc)
            return
        syslog.setFormatter(logging.Formatter("kubeos-rollout[%(process)d]: %(levelname)s %(message)s"))
        logging.getLogger("kubeos").addHandler(syslog)
