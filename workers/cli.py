"""The ``kubeos-rollout`` command line.

Each area of the project registers its own subcommands (``register(subparsers)``), so this module only
wires them together; the code behind a command lives beside the thing it drives.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

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


if __name__ == "__main__":
    sys.exit(main())
