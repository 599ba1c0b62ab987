"""The embedded default: the whole system on one machine, with the clients the seed uses.

``DevStack`` starts, in order: a certificate authority; the images for ``KubeOS 1.0.1`` and ``KubeOS 1.0.2``; the
Temporal dev server (Web UI on, our search attributes registered, state in a file); the Kubernetes API emulator
with the OS CRD; an HTTPS image server signed by the CA; a container registry holding ``KubeOS 1.0.2``; N simulated
hosts on ``KubeOS 1.0.0``, each a "machine" process running its node worker, with a kubelet stand-in reporting the
booted slot's version; the cluster worker; and the CR bridge. It writes ``kubeconfig``, ``env`` and two
ready-to-apply OS resources into the state directory, and stops everything it started, in reverse order.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from devstack.image_server import ImageServer
from devstack.kubelet import Kubelet
from devstack.net import free_port
from devstack.pki import CertificateAuthority
from devstack.registry import PushedImage, RegistryServer
from models.os_resource import API_VERSION, KIND
from models.rollout import SEARCH_ATTRIBUTES
from node_worker.images import build_os_image
from node_worker.sim import SimPaths, create_sim_host

log = logging.getLogger("kubeos_rollout.devstack")

BASE_VERSION = "KubeOS 1.0.0"
IMAGE_VERSIONS = ("KubeOS 1.0.1", "KubeOS 1.0.2")
DOCKER_VERSION = "KubeOS 1.0.2"
CA_FILE_NAME = "kubeos-dev-ca.crt"
#: Written once the stack is ready, ``env`` last: a process waiting for ``env`` finds everything in place.
ENV_FILE = "env"
RESOURCE_FILES = ("upgrade_v1alpha1_os.yaml", "rollback_v1alpha1_os.yaml", "docker_upgrade_v1alpha1_os.yaml")
BIN = Path(sys.executable).parent


class StackError(RuntimeError):
    """A part of the stack did not start; the message says which and where its log is."""


def version_key(version: str) -> str:
    """``KubeOS 1.0.1`` -> ``1_0_1``, for env variable and file names."""
    return version.split(" ", 1)[1].replace(".", "_").replace("-", "_")


def wait_for_port(port: int, what: str, timeout: float, process: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise StackError(f"{what} exited with status {process.returncode} before it listened on {port}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return
        time.sleep(0.1)
    raise StackError(f"{what} did not listen on 127.0.0.1:{port} within {timeout:.0f}s")


@dataclass
class Process:
    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path


@dataclass
class Node:
    name: str
    directory: Path
    config: Path


@dataclass
class DevStack:
    state_dir: Path
    nodes: int = 3
    slot_size: int = 64 * 1024 * 1024
    with_registry: bool = True
    processes: list[Process] = field(default_factory=list)
    hosts: list[Node] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    temporal_port: int = 0
    ui_port: int = 0
    image_server: ImageServer | None = None
    registry: RegistryServer | None = None
    docker_image: PushedImage | None = None
    images: dict[str, tuple[str, str]] = field(default_factory=dict)  # version -> (url, sha256)
    _kubelets: list[asyncio.Task[None]] = field(default_factory=list)
    _kubelet_stop: asyncio.Event | None = None

    # ---------------------------------------------------------------------------------------- paths

    @property
    def kubeconfig(self) -> Path:
        return self.state_dir / "kubeconfig"

    @property
    def logs(self) -> Path:
        return self.state_dir / "logs"

    @property
    def temporal_address(self) -> str:
        return f"127.0.0.1:{self.temporal_port}"

    @property
    def web_ui(self) -> str:
        return f"http://127.0.0.1:{self.ui_port}"

    def node_names(self) -> list[str]:
        return [f"node-{i + 1}" for i in range(self.nodes)]

    # ---------------------------------------------------------------------------------------- start

    async def start(self) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.logs.mkdir(exist_ok=True)
        for stale in (ENV_FILE, *RESOURCE_FILES):  # a reused state dir: never let anyone read the last run's
            (self.state_dir / stale).unlink(missing_ok=True)
        try:
            await asyncio.to_thread(self._start_servers)
            await self._start_kubelets()
            await asyncio.to_thread(self._start_workers)
            await self._wait_ready()
            self._write_files()
        except BaseException:
            await self.stop()
            raise

    def _start_servers(self) -> None:
        ca = CertificateAuthority(self.state_dir / "pki", "kubeos-dev-ca")
        self._build_images(ca)
        self._start_temporal()
        self._start_emulator()
        if self.with_registry:
            self._start_registry(ca)
        ca_copy = self._ca_copy(ca)
        for name in self.node_names():
            directory = self.state_dir / "hosts" / name
            paths = SimPaths(directory)
            if paths.config.exists():  # a host from an earlier run keeps its disk; the CA is new each run
                config = paths.config
                shutil.copyfile(ca_copy, paths.certs / CA_FILE_NAME)
            else:
                if directory.exists():
                    shutil.rmtree(directory)
                config = create_sim_host(directory, BASE_VERSION, self.slot_size, certs=[ca_copy])
            self.hosts.append(Node(name, directory, config))
            self._spawn(
                f"machine-{name}",
                [
                    str(BIN / "kubeos-rollout"),
                    "host",
                    "sim-run",
                    str(directory),
                    "--node",
                    name,
                    "--temporal",
                    self.temporal_address,
                ],
            )

    def _ca_copy(self, ca: CertificateAuthority) -> Path:
        """The CA under the name the OS resources use (cacert is a file name in each host's certs dir)."""
        target = self.state_dir / CA_FILE_NAME
        shutil.copyfile(ca.cert_path, target)
        return target

    def _build_images(self, ca: CertificateAuthority) -> None:
        images = self.state_dir / "images"
        images.mkdir(exist_ok=True)
        for version in IMAGE_VERSIONS:
            path = images / f"update-{version_key(version)}.img"
            digest_file = path.with_suffix(".sha256")
            if path.exists() and digest_file.exists():
                digest = digest_file.read_text().strip()
            else:
                digest = build_os_image(path, version, self.slot_size)
                digest_file.write_text(digest + "\n")
            self.images[version] = (path.name, digest)
        cert = ca.issue_server("image-server")
        self.image_server = ImageServer(images, tls=(cert.cert, cert.key))
        self.image_server.start()
        self.images = {v: (self.image_server.url(name), digest) for v, (name, digest) in self.images.items()}

    def _start_temporal(self) -> None:
        self.temporal_port, self.ui_port = free_port(), free_port()
        args = [
            str(BIN / "temporal"), "server", "start-dev",
            "--ip", "127.0.0.1", "--port", str(self.temporal_port), "--ui-port", str(self.ui_port),
            "--db-filename", str(self.state_dir / "temporal.db"), "--log-level", "warn",
        ]  # fmt: skip
        for name in SEARCH_ATTRIBUTES:
            args += ["--search-attribute", f"{name}=Keyword"]
        process = self._spawn("temporal", args)
        wait_for_port(self.temporal_port, "the Temporal dev server", 60, process)
        wait_for_port(self.ui_port, "the Temporal Web UI", 60, process)

    def _start_emulator(self) -> None:
        if self.kubeconfig.exists():
            self.kubeconfig.unlink()
        port = free_port()
        process = self._spawn(
            "kube-apiserver",
            [sys.executable, "-m", "devstack.kube_emulator", "--port", str(port), "--kubeconfig", str(self.kubeconfig)],
        )
        wait_for_port(port, "the Kubernetes API emulator", 30, process)
        deadline = time.monotonic() + 10
        while not self.kubeconfig.exists() and time.monotonic() < deadline:
            time.sleep(0.05)

    def _start_registry(self, ca: CertificateAuthority) -> None:
        self.registry = RegistryServer(self.state_dir / "registry", tls=True, ca=ca)
        self.registry.start()
        self.docker_image = self.registry.push_kubeos(DOCKER_VERSION)

    async def _start_kubelets(self) -> None:
        from activities.kube import new_api_client

        self._kubelet_stop = asyncio.Event()
        for node in self.hosts:
            kubelet = Kubelet(new_api_client(self.kubeconfig), node.name, node.directory)
            self._kubelets.append(asyncio.create_task(kubelet.run(self._kubelet_stop)))

    def _start_workers(self) -> None:
        common = ["--address", self.temporal_address, "--kubeconfig", str(self.kubeconfig), "--web-ui", self.web_ui]
        self._spawn("cluster-worker", [str(BIN / "kubeos-rollout"), "worker", *common])
        self._spawn("bridge", [str(BIN / "kubeos-rollout"), "bridge", *common])

    async def _wait_ready(self, timeout: float = 120) -> None:
        """Every node registered and Ready, and every node worker polling its queue."""
        from kubernetes import client as k8s

        from activities.kube import new_api_client
        from workers.temporal_client import connect

        core = k8s.CoreV1Api(new_api_client(self.kubeconfig))
        temporal = await connect(self.temporal_address)
        deadline = time.monotonic() + timeout
        waiting: list[str] = []
        while time.monotonic() < deadline:
            self._check_alive()
            nodes = await asyncio.to_thread(core.list_node)
            ready = {
                n.metadata.name
                for n in nodes.items
                if n.metadata is not None
                and n.status is not None
                and any(c.type == "Ready" and c.status == "True" for c in (n.status.conditions or []))
            }
            waiting = [n.name for n in self.hosts if n.name not in ready or not await self._polled(temporal, n.name)]
            if not waiting:
                return
            await asyncio.sleep(0.5)
        raise StackError(f"nodes not ready within {timeout:.0f}s: {', '.join(waiting)} (see {self.logs})")

    @staticmethod
    async def _polled(temporal: Any, node: str) -> bool:
        from temporalio.api.enums.v1 import TaskQueueType
        from temporalio.api.taskqueue.v1 import TaskQueue
        from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest

        from models.host import node_task_queue

        response = await temporal.workflow_service.describe_task_queue(
            DescribeTaskQueueRequest(
                namespace=temporal.namespace,
                task_queue=TaskQueue(name=node_task_queue(node)),
                task_queue_type=TaskQueueType.TASK_QUEUE_TYPE_ACTIVITY,
            )
        )
        return bool(response.pollers)

    # ---------------------------------------------------------------------------------------- files

    def _write_files(self) -> None:
        ca_name = CA_FILE_NAME
        env = {
            "TEMPORAL_ADDRESS": self.temporal_address,
            "TEMPORAL_NAMESPACE": "default",
            "TEMPORAL_UI_URL": self.web_ui,
            "KUBECONFIG": str(self.kubeconfig),
            "KUBEOS_CA_FILE": ca_name,
            "KUBEOS_CA_PATH": str(self.state_dir / ca_name),
            "KUBEOS_NODES": " ".join(self.node_names()),
            "KUBEOS_BASE_VERSION": BASE_VERSION,
        }
        for version, (url, digest) in self.images.items():
            key = version_key(version)
            env[f"IMAGE_URL_{key}"] = url
            env[f"IMAGE_SHA256_{key}"] = digest
            env[f"OSVERSION_{key}"] = version
        if self.docker_image is not None and self.registry is not None:
            key = version_key(DOCKER_VERSION)
            env["REGISTRY"] = self.registry.host
            env[f"DOCKER_IMAGE_{key}"] = self.docker_image.reference
            env[f"DOCKER_DIGEST_{key}"] = self.docker_image.digest
        self.env = env
        upgrade_url, upgrade_sum = self.images[IMAGE_VERSIONS[0]]
        self._write_resource(
            "upgrade_v1alpha1_os.yaml",
            {
                "imagetype": "disk",
                "opstype": "upgrade",
                "osversion": IMAGE_VERSIONS[0],
                "maxunavailable": 2,
                "dockerimage": "",
                "imageurl": upgrade_url,
                "checksum": upgrade_sum,
                "flagSafe": False,
                "mtls": False,
                "cacert": ca_name,
                "clientcert": "",
                "clientkey": "",
            },
        )
        self._write_resource(
            "rollback_v1alpha1_os.yaml",
            {
                "imagetype": "",
                "opstype": "rollback",
                "osversion": BASE_VERSION,
                "maxunavailable": 2,
                "dockerimage": "",
                "imageurl": "",
                "checksum": "",
                "flagSafe": False,
                "mtls": False,
            },
        )
        if self.docker_image is not None:
            self._write_resource(
                "docker_upgrade_v1alpha1_os.yaml",
                {
                    "imagetype": "docker",
                    "opstype": "upgrade",
                    "osversion": DOCKER_VERSION,
                    "maxunavailable": 2,
                    "dockerimage": self.docker_image.reference,
                    "imageurl": "",
                    "checksum": "",
                    "flagSafe": False,
                    "mtls": False,
                    "cacert": ca_name,
                },
            )
        lines = [f"{key}={shlex.quote(value)}" for key, value in env.items()]
        self._write_file(ENV_FILE, "\n".join(lines) + "\n")

    def _write_resource(self, file_name: str, spec: dict[str, Any]) -> None:
        resource = {"apiVersion": API_VERSION, "kind": KIND, "metadata": {"name": "os-sample"}, "spec": spec}
        self._write_file(file_name, yaml.safe_dump(resource, sort_keys=False))

    def _write_file(self, file_name: str, text: str) -> None:
        """Written aside and renamed: whoever waits for the file never reads half of it."""
        partial = self.state_dir / f".{file_name}.partial"
        partial.write_text(text, encoding="utf-8")
        partial.replace(self.state_dir / file_name)

    # ---------------------------------------------------------------------------------------- processes

    def _spawn(self, name: str, args: list[str]) -> subprocess.Popen[bytes]:
        log_path = self.logs / f"{name}.log"
        with log_path.open("ab") as out:
            popen = subprocess.Popen(
                args,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: stopped as a whole, spared our Ctrl-C
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        self.processes.append(Process(name, popen, log_path))
        return popen

    def _check_alive(self) -> None:
        for process in self.processes:
            if process.popen.poll() is not None:
                raise StackError(
                    f"{process.name} exited with status {process.popen.returncode}; see {process.log_path}"
                )

    def dead(self) -> list[Process]:
        return [p for p in self.processes if p.popen.poll() is not None]

    async def stop(self) -> None:
        if self._kubelet_stop is not None:
            self._kubelet_stop.set()
            for task in self._kubelets:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(task, timeout=5)
        await asyncio.to_thread(self._stop_processes)

    def _stop_processes(self) -> None:
        # All are asked at once (newest first) and then awaited, so stopping takes the slowest one's time,
        # not the sum of them all.
        for process in reversed(self.processes):
            _signal(process.popen, signal.SIGTERM)
        for process in reversed(self.processes):
            _terminate(process.popen)
        self.processes.clear()
        if self.registry is not None:
            self.registry.stop()
            self.registry = None
        if self.image_server is not None:
            self.image_server.stop()
            self.image_server = None


def _signal(popen: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    """Signal the process's whole group (each runs in its own session), so its children stop too."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(popen.pid, sig)


def _terminate(popen: subprocess.Popen[bytes], grace: float = 10.0) -> None:
    if popen.poll() is not None:
        return
    _signal(popen, signal.SIGTERM)
    try:
        popen.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        _signal(popen, signal.SIGKILL)
        popen.wait(timeout=5)
