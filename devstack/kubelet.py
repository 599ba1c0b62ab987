"""A kubelet stand-in for simulated hosts: it keeps one Node object in step with a simulated machine.

The simulated machine (``host sim-run``, ``node_worker.machine``) keeps ``DIR/machine.json`` (the model is
``models.host.SimMachineState``; ``node_worker.sim`` reads and writes it)::

    {"running": true, "booted_slot": "A", "pretty_name": "KubeOS 1.0.0", "boot_id": "...", "boots": 3,
     "last_boot_failed_slot": null}

and this stand-in reports it the way a kubelet would: it registers the Node (hostname label, extra labels,
the control-plane role when asked), and while the machine runs the Node is Ready with
``status.nodeInfo.osImage`` = the booted OS's PRETTY_NAME and ``bootID`` = the machine's boot id. While the
machine is down (rebooting) nobody posts status, so Ready turns ``Unknown`` and osImage keeps its last value,
as the node lifecycle controller shows a silent kubelet. The file is polled (~0.5 s); the Node is written only
when something changed.

Runs as an asyncio task (``await Kubelet(...).run(stop)``) or as a process::

    python -m devstack.kubelet --kubeconfig F --node NAME --machine DIR [--label k=v ...] [--control-plane]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from activities.kube import new_api_client
from models.cluster import CONTROL_PLANE_LABEL, HOSTNAME_LABEL
from models.host import SimMachineState
from node_worker.sim import SimPaths, read_machine_state

log = logging.getLogger("devstack.kubelet")

KUBELET_VERSION = "v1.30.0-kubeos-sim"


@dataclass(frozen=True)
class Reported:
    """What the Node currently says; a write happens only when this changes."""

    ready: str  # "True" or "Unknown"
    os_image: str
    boot_id: str


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class Kubelet:
    def __init__(
        self,
        api: client.ApiClient,
        node: str,
        machine_dir: str | Path,
        labels: Mapping[str, str] | None = None,
        control_plane: bool = False,
        poll_seconds: float = 0.5,
    ) -> None:
        self.core = client.CoreV1Api(api)
        self.node = node
        self.machine = SimPaths(Path(machine_dir))
        self.labels = {HOSTNAME_LABEL: node, "kubernetes.io/os": "linux", **(labels or {})}
        if control_plane:
            self.labels[CONTROL_PLANE_LABEL] = ""
        self.poll_seconds = poll_seconds
        self.reported: Reported | None = None
        self._registered = False

    def _desired(self, state: SimMachineState | None) -> Reported:
        last = self.reported
        if state is None or not state.running:
            # Nobody posts status for a machine that is down: the last osImage and boot id stay.
            return Reported("Unknown", last.os_image if last else "", last.boot_id if last else "")
        return Reported("True", state.pretty_name, state.boot_id)

    def _status(self, wanted: Reported) -> dict[str, Any]:
        now = _now()
        if wanted.ready == "True":
            reason, message = "KubeletReady", "kubelet is posting ready status"
        else:
            reason, message = "NodeStatusUnknown", "Kubelet stopped posting node status."
        ready = {
            "type": "Ready",
            "status": wanted.ready,
            "reason": reason,
            "message": message,
            "lastHeartbeatTime": now,
        }
        if self.reported is None or self.reported.ready != wanted.ready:
            ready["lastTransitionTime"] = now
        return {
            "conditions": [ready],
            # Every NodeSystemInfo field: the official client's models require them all.
            "nodeInfo": {
                "architecture": "amd64",
                "bootID": wanted.boot_id,
                "containerRuntimeVersion": "",
                "kernelVersion": "",
                "kubeProxyVersion": "",
                "kubeletVersion": KUBELET_VERSION,
                "machineID": self.node,
                "operatingSystem": "linux",
                "osImage": wanted.os_image,
                "systemUUID": self.node,
            },
            "addresses": [{"type": "Hostname", "address": self.node}],
        }

    def _register(self, wanted: Reported) -> None:
        body = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": self.node, "labels": self.labels},
            "spec": {},
            "status": self._status(wanted),
        }
        try:
            self.core.create_node(client.V1Node.model_validate(body))
            log.info("registered node %s", self.node)
        except ApiException as e:
            if e.status != 409:
                raise
            # A restarted kubelet finds its Node: make sure of the labels, then report status as usual.
            self.core.patch_node(self.node, {"metadata": {"labels": self.labels}})
            self.core.patch_node_status(self.node, {"status": self._status(wanted)})
        self._registered = True

    def sync_once(self) -> bool:
        """Bring the Node in line with the machine; True when something was written."""
        # None while the file is missing or half-written: the machine is not reporting.
        wanted = self._desired(read_machine_state(self.machine))
        if self._registered and wanted == self.reported:
            return False
        if not self._registered:
            self._register(wanted)
        else:
            try:
                self.core.patch_node_status(self.node, {"status": self._status(wanted)})
            except ApiException as e:
                if e.status != 404:
                    raise
                self._registered = False  # deleted behind our back: register again, as a kubelet does
                self._register(wanted)
        log.info("node %s: Ready=%s osImage=%r", self.node, wanted.ready, wanted.os_image)
        self.reported = wanted
        return True

    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Poll until ``stop`` is set (or the task is cancelled); API failures are retried at the next poll."""
        stop = stop or asyncio.Event()
        while not stop.is_set():
            try:
                await asyncio.to_thread(self.sync_once)
            except Exception as e:  # the API server may be restarting: keep trying, like a kubelet
                log.warning("node %s: status update failed: %s", self.node, e)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.poll_seconds)


def _label(pair: str) -> tuple[str, str]:
    key, sep, value = pair.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"a label is KEY=VALUE, got {pair!r}")
    return key, value


async def _serve(args: argparse.Namespace) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    kubelet = Kubelet(
        new_api_client(args.kubeconfig),
        args.node,
        args.machine,
        labels=dict(args.label),
        control_plane=args.control_plane,
        poll_seconds=args.poll,
    )
    await kubelet.run(stop)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devstack.kubelet", description=__doc__.splitlines()[0])
    parser.add_argument("--kubeconfig", required=True)
    parser.add_argument("--node", required=True, help="the Node's name (also its hostname label)")
    parser.add_argument("--machine", required=True, type=Path, help="the simulated host directory holding machine.json")
    parser.add_argument(
        "--label", action="append", default=[], type=_label, metavar="KEY=VALUE", help="an extra Node label"
    )
    parser.add_argument("--control-plane", action="store_true", help=f"label the node {CONTROL_PLANE_LABEL}")
    parser.add_argument("--poll", type=float, default=0.5, help="seconds between reads of machine.json")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    asyncio.run(_serve(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
