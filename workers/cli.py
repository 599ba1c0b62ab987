"""The ``kubeos-rollout`` command line.

Each area of the project registers its own subcommands (``register(subparsers)``), so this module only
wires them together; the code behind a command lives beside the thing it drives.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import logging
import os
import sys
from collections.abc import Sequence
from typing import NoReturn

# Modules that contribute subcommands, in the order they appear in ``--help``.
_COMMAND_MODULES = (
    "workers.resource_cmd",
    "workers.rollout_cmd",
    "workers.cluster_worker",
    "workers.bridge",
    "workers.codec_server",
    "node_worker.cli",
    "devstack.cli",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kubeos-rollout",
        description="A/B-partition OS upgrades and rollbacks for Kubernetes nodes, run as Temporal workflows.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in _COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from node_worker.cli import run

    return run(build_parser(), argv)


def exit_process(code: int) -> NoReturn:
    """End the process with ``code`` once a command has done its work, skipping the interpreter's teardown.

    The Temporal SDK's Rust threads can call into Python while the interpreter finalises, which aborts the process
    ("PyGILState_Release: thread state ... must be current", temporalio/sdk-python#300): a command that printed
    its result would still exit with status 134 now and then. Logs and standard streams are flushed first."""
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)


def exit_code(exc: SystemExit) -> int:
    """The status ``sys.exit(x)`` asks for, as the interpreter computes it (a message goes to stderr, status 1)."""
    if exc.code is None or isinstance(exc.code, int):
        return exc.code or 0
    print(exc.code, file=sys.stderr)
    return 1


def entry() -> NoReturn:
    """The ``kubeos-rollout`` console script: :func:`main`, then :func:`exit_process`."""
    try:
        code = main()
    except SystemExit as exc:  # argparse errors and --help
        code = exit_code(exc)
    except KeyboardInterrupt:
        code = 130
    exit_process(code)


if __name__ == "__main__":
    entry()
