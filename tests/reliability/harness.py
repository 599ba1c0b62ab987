"""What the fault suite adds to the end-to-end tests' view of the stack (``tests/e2e/cluster.py``): processes to
kill and start again, images with faults built in, OS resources applied through the API (so the CR bridge runs
the rollout and writes its status), one view of a node, and the boot audit.

Each scenario rolls out to its own nodes only: they get a node-selector label of their own (``E2ECluster.select``)
and images of versions nobody used before, so scenarios need not run in a given order.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import shutil
import signal
import subprocess
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar, cast

from kubernetes.client.exceptions import ApiException
from temporalio.api.enums.v1 import EventType
from temporalio.client import WorkflowExecutionStatus

from devstack.pki import CertificateAuthority
from devstack.stack import Process, wait_for_port
from models.os_resource import GROUP, PLURAL, VERSION
from models.rollout import RolloutStatus
from node_worker.files import sha256_file
from node_worker.images import make_rootfs
from node_worker.sim import SimPaths
from tests.e2e.cluster import E2ECluster, Image
from tests.reliability.audit import BootAudit

T = TypeVar("T")

MIB = 1024 * 1024
#: Which hosts each kind of scenario uses.
GROUPS: dict[str, tuple[str, ...]] = {
    "fleet": ("node-1", "node-2"),  # process faults on a two-node rollout
    "stage": ("node-3",),  # faults during staging that end in a good upgrade
    "refuse": ("node-4",),  # faults that must leave the node as it was
    "hang": ("node-5",),  # the node that never comes back
}
#: The suite's own CA, trusted by every host under this name (beside the stack's CA_FILE_NAME).
SUITE_CA = "reliability-ca.crt"
TERMINAL = {"Succeeded", "CompletedWithFailures", "RolledBack", "Superseded", "Invalid", "Failed", "Terminated"}
NAMESPACE = "default"
#: Versions of the images built here: patch releases, which ``E2ECluster.new_image`` (x.y.0) never makes.
_patches = itertools.count(100)


@dataclass(frozen=True)
class NodeView:
    """One node as the cluster, its GRUB environment, its machine and its booted slot see it."""

    node: str
    os_image: str
    ready: bool
    unschedulable: bool
    saved_entry: str
    next_entry: str
    booted_slot: str
    boots: int
    running: bool
    slot_version: str  # PRETTY_NAME read from the booted slot's own bytes
    last_boot_failed_slot: str | None

    def assert_in_service(self, version: str) -> None:
        """Up, Ready, schedulable, committed (no pending one-time boot) and running ``version`` from its slot."""
        assert self.running and self.ready, f"{self.node} is not up: {self}"
        assert not self.unschedulable, f"{self.node} was left cordoned: {self}"
        assert self.os_image == self.slot_version == version, f"{self.node} does not run {version}: {self}"
        assert self.saved_entry == self.booted_slot and not self.next_entry, f"{self.node} is not committed: {self}"

    def same_host_state(self, other: NodeView) -> bool:
        """Nothing the boot depends on changed: version, slot, boot count and boot entries."""
        keys = ("os_image", "booted_slot", "boots", "saved_entry", "next_entry", "slot_version", "unschedulable")
        return all(getattr(self, k) == getattr(other, k) for k in keys)


class NodeLog:
    """A host's node log from a point on (what a scenario caused, not what came before)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = path.stat().st_size if path.exists() else 0

    def text(self) -> str:
        with self.path.open("rb") as f:
            f.seek(self.offset)
            return f.read().decode(errors="replace")


class Chaos:
    def __init__(self, e2e: E2ECluster) -> None:
        self.e2e = e2e
        self.stack = e2e.stack
        self.client = e2e.client
        missing = [n for names in GROUPS.values() for n in names if n not in {h.name for h in self.stack.hosts}]
        assert not missing, f"the shared stack has no {', '.join(missing)}: the suite needs {len(GROUPS)} groups"
        self.ca = CertificateAuthority(self.stack.state_dir / "suite-pki", "reliability-ca")
        for host in self.stack.hosts:
            shutil.copyfile(self.ca.cert_path, SimPaths(host.directory).certs / SUITE_CA)
        self._published: dict[str, set[str]] = {}
        for version, (_url, digest) in self.stack.images.items():
            self._published.setdefault(version, set()).add(digest)
        self.audit = BootAudit({h.name: h.directory for h in self.stack.hosts}, self.published)

    async def wait(self, probe: Callable[[], Awaitable[T | None]], what: str, limit: float = 240) -> T:
        """Poll until ``probe()`` answers something truthy (bounded; a dead stack process fails at once)."""
        value = await self.e2e.wait_for(probe, bool, what, limit)
        assert value is not None
        return value

    # ------------------------------------------------------------------------------------------ nodes

    def certs_dir(self, node: str) -> Path:
        return self.e2e.host(node).paths.certs

    def node_log(self, node: str) -> NodeLog:
        return NodeLog(self.e2e.host(node).paths.node_log)

    async def view(self, node: str) -> NodeView:
        info = (await self.e2e.nodes())[node]
        host = self.e2e.host(node)

        def read() -> NodeView:
            env = host.grubenv()
            state = host.machine()
            return NodeView(
                node=node,
                os_image=info.os_image,
                ready=info.ready,
                unschedulable=info.unschedulable,
                saved_entry=env.get("saved_entry", ""),
                next_entry=env.get("next_entry", ""),
                booted_slot=state.booted_slot,
                boots=state.boots,
                running=state.running,
                slot_version=host.slot_version(state.booted_slot),
                last_boot_failed_slot=state.last_boot_failed_slot,
            )

        return await asyncio.to_thread(read)

    async def views(self, nodes: tuple[str, ...]) -> dict[str, NodeView]:
        return {node: await self.view(node) for node in nodes}

    async def select(self, group: str) -> str:
        """Label the group's nodes for this scenario alone; the value is the spec's nodeselector."""
        return await self.e2e.select(list(GROUPS[group]))

    # ------------------------------------------------------------------------------------------ processes

    def process(self, name: str) -> Process:
        return next(p for p in self.stack.processes if p.name == name)

    def kill(self, name: str) -> list[str]:
        """kill -9 the process and everything it started; returns its command line for :meth:`spawn_again`."""
        process = self.process(name)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.popen.pid, signal.SIGKILL)
        process.popen.wait(timeout=30)
        self.stack.processes.remove(process)
        return [str(a) for a in cast(list[str], process.popen.args)]

    def spawn_again(self, name: str, args: list[str]) -> subprocess.Popen[bytes]:
        return self.stack._spawn(name, args)

    def restart(self, name: str, *, hard: bool = True) -> subprocess.Popen[bytes]:
        """Stop the process (kill -9, or SIGTERM and wait when not ``hard``) and start the same command."""
        if hard:
            return self.spawn_again(name, self.kill(name))
        process = self.process(name)
        os.killpg(process.popen.pid, signal.SIGTERM)
        process.popen.wait(timeout=60)
        self.stack.processes.remove(process)
        return self.spawn_again(name, [str(a) for a in cast(list[str], process.popen.args)])

    async def restart_temporal(self) -> None:
        """kill -9 the Temporal dev server and start it again: same port, same database file."""
        popen = self.restart("temporal")
        await asyncio.to_thread(wait_for_port, self.stack.temporal_port, "the Temporal dev server", 60, popen)
        await asyncio.to_thread(wait_for_port, self.stack.ui_port, "the Temporal Web UI", 60, popen)

    def node_worker_pid(self, node: str) -> int | None:
        """The node worker the host's machine runs now (its child process), if any."""
        machine = self.process(f"machine-{node}").popen.pid
        try:
            children = Path(f"/proc/{machine}/task/{machine}/children").read_text().split()
        except OSError:
            return None
        for child in children:
            try:
                cmdline = Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"node-worker" in cmdline:
                return int(child)
        return None

    # ------------------------------------------------------------------------------------------ images

    def published(self, version: str | None) -> set[str]:
        """Digests of the images served for ``version`` (for any version when None): what a slot may boot."""
        if version is None:
            return {d for digests in self._published.values() for d in digests}
        return set(self._published.get(version, set()))

    async def new_image(self) -> Image:
        image = await self.e2e.new_image()
        self._published.setdefault(image.version, set()).add(image.checksum)
        return image

    async def special_image(self, size: int, extra_files: Mapping[str, bytes] | None = None) -> Image:
        """An image of a fresh version, of ``size`` bytes, with extra files (e.g. one that makes it unbootable)."""
        server = self.stack.image_server
        assert server is not None
        version = f"KubeOS 1.0.{next(_patches)}"
        name = f"rel-{version.split()[1]}-{size // MIB}m.img"
        path = server.root / name
        await asyncio.to_thread(make_rootfs, path, size, version, extra_files=extra_files)
        digest = await asyncio.to_thread(sha256_file, path)
        self._published.setdefault(version, set()).add(digest)
        return Image(version, name, server.url(name), digest)

    # ------------------------------------------------------------------------------------------ OS resources

    def resource(self, name: str, image: Image, nodeselector: str, **spec: Any) -> dict[str, Any]:
        fields: dict[str, Any] = {"draintimeout": 30, "boottimeout": 90, **spec}
        return self.e2e.os_resource(name, image, nodeselector, **fields)

    async def apply(self, resource: dict[str, Any]) -> dict[str, Any]:
        created = await self.e2e.call(
            self.e2e.custom.create_namespaced_custom_object, GROUP, VERSION, NAMESPACE, PLURAL, resource
        )
        return cast(dict[str, Any], created)

    async def patch_spec(self, name: str, changes: dict[str, Any]) -> None:
        await self.e2e.call(
            self.e2e.custom.patch_namespaced_custom_object, GROUP, VERSION, NAMESPACE, PLURAL, name, {"spec": changes}
        )

    async def delete(self, name: str) -> None:
        await self.e2e.call(self.e2e.custom.delete_namespaced_custom_object, GROUP, VERSION, NAMESPACE, PLURAL, name)

    async def get(self, name: str) -> dict[str, Any] | None:
        try:
            obj = await self.e2e.call(
                self.e2e.custom.get_namespaced_custom_object, GROUP, VERSION, NAMESPACE, PLURAL, name
            )
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return cast(dict[str, Any], obj)

    async def status(self, name: str) -> dict[str, Any]:
        obj = await self.get(name)
        return dict((obj or {}).get("status") or {})

    async def wait_os(self, name: str, generation: int = 1, limit: float = 240) -> dict[str, Any]:
        """The resource's status once the bridge reports generation ``generation`` finished (or invalid)."""

        async def finished() -> dict[str, Any] | None:
            status = await self.status(name)
            done = status.get("observedGeneration") == generation and status.get("phase") in TERMINAL
            return status if done else None

        return await self.wait(finished, f"OS {name} generation {generation} to finish", limit)

    # ------------------------------------------------------------------------------------------ workflows

    async def rollout(self, workflow_id: str) -> tuple[WorkflowExecutionStatus | None, RolloutStatus | None]:
        handle = self.client.get_workflow_handle(workflow_id, result_type=RolloutStatus)
        description = await handle.describe()
        if description.status != WorkflowExecutionStatus.COMPLETED:
            return description.status, None
        return description.status, await handle.result()

    async def children(self, workflow_id: str) -> list[str]:
        """The NodeUpgrade children a rollout started (from its history)."""
        history = await self.client.get_workflow_handle(workflow_id).fetch_history()
        return [
            e.start_child_workflow_execution_initiated_event_attributes.workflow_id
            for e in history.events
            if e.event_type == EventType.EVENT_TYPE_START_CHILD_WORKFLOW_EXECUTION_INITIATED
        ]

    async def task_failures(self, *workflow_ids: str) -> list[str]:
        """Workflow task failures (a non-deterministic replay after a worker restart would show here)."""
        failures = []
        for workflow_id in workflow_ids:
            history = await self.client.get_workflow_handle(workflow_id).fetch_history()
            for event in history.events:
                if event.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_FAILED:
                    attributes = event.workflow_task_failed_event_attributes
                    failures.append(f"{workflow_id}: {attributes.cause} {attributes.failure.message}")
        return failures

    async def signalled(self, workflow_id: str, name: str) -> bool:
        history = await self.client.get_workflow_handle(workflow_id).fetch_history()
        return any(
            e.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED
            and e.workflow_execution_signaled_event_attributes.signal_name == name
            for e in history.events
        )

    async def rollout_ids(self, resource: str) -> list[str]:
        """Every ClusterRollout the bridge started for the OS resource ``resource``."""
        query = f'WorkflowType="ClusterRollout" AND WorkflowId STARTS_WITH "kubeos/{NAMESPACE}/{resource}/"'
        return sorted([w.id async for w in self.client.list_workflows(query)])


def node_message(status: Mapping[str, Any], node: str) -> str:
    """The node's line in an OS resource's status."""
    for entry in status.get("nodes") or []:
        if entry.get("name") == node:
            return f"{entry.get('state')}: {entry.get('message', '')}"
    return ""
