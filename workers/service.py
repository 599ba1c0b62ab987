"""What the cluster-side services (cluster worker, bridge) share: their command-line options, connections and
shutdown on SIGTERM/SIGINT."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
from collections.abc import Awaitable, Callable
from typing import Any

from temporalio.client import Client

from activities.kube import use_kubeconfig
from workers.temporal_client import connect

Service = Callable[[Client, str, asyncio.Event], Awaitable[None]]


def add_service_parser(sub: Any, name: str, help_text: str, service: Service) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = sub.add_parser(name, help=help_text)
    parser.add_argument("--address", help="Temporal frontend host:port (default: TEMPORAL_ADDRESS or profile)")
    parser.add_argument("--namespace", help="Temporal namespace (default: TEMPORAL_NAMESPACE or profile)")
    parser.add_argument("--kubeconfig", help="kubeconfig file (default: KUBECONFIG, in-cluster, ~/.kube/config)")
    parser.add_argument("--web-ui", default="", help="Temporal Web UI base URL, for links in rollout status")
    parser.set_defaults(handler=lambda args: _run(service, args))
    return parser


def _run(service: Service, args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    asyncio.run(serve(service, args.address, args.namespace, args.web_ui, args.kubeconfig))
    return 0


async def serve(
    service: Service, address: str | None, namespace: str | None, web_ui: str, kubeconfig: str | None
) -> None:
    """Connect to Kubernetes and Temporal, then run ``service`` until SIGTERM or SIGINT sets its stop event."""
    if kubeconfig:
        use_kubeconfig(kubeconfig)
    client = await connect(address, namespace)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await service(client, web_ui, stop)
