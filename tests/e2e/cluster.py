"""What the end-to-end tests read and drive on a running DevStack, through the same interfaces an operator has.

Hosts are read from their own files (``machine.json``, the grubenv with ``grub-editenv``, a slot's os-release
with ``debugfs``); nodes, pods and OS resources through the official Kubernetes client; rollouts through
Temporal. Each test gets its own image version and node label, so tests sharing one stack never see each
other's nodes or rollouts, whatever order they run in.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import uuid
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from kubernetes import client as k8s
from kubernetes import watch
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowHandle, WorkflowHistory

from activities.cluster import node_info
from activities.kube import new_api_client
from devstack.stack import CA_FILE_NAME, DevStack
from models.cluster import NodeInfo
from models.host import HostConfig, SimMachineState, SlotName, other_slot
from models.os_resource import API_VERSION, KIND, NODE_SELECTOR_LABEL
from models.rollout import RolloutStatus
from node_worker.config import load_host_config
from node_worker.errors import HostError
from node_worker.grubenv import GrubEnv, entry_slot
from node_worker.images import build_os_image
from node_worker.osrelease import read_slot_os_release
from node_worker.sim import SimPaths, read_machine_state
from node_worker.slots import resolve_slot
from workers.rollout_cmd import start_rollout

T = TypeVar("T")

#: Upgrade images are smaller than a slot: staging and the trial boot's re-hash stay quick on two cores.
IMAGE_SIZE = 16 * 1024 * 1024
#: Generous bounds for anything a test waits for: a node takes a few seconds, a loaded machine many more.
WAIT_LIMIT = 240.0
_POLL = 0.2
_versions = itertools.count(1)


@dataclass(frozen=True)
class Image:
    """An upgrade image on the stack's image server."""

    version: str
    file_name: str
    url: str
    checksum: str


@dataclass(frozen=True)
class NodeMark:
    """A point in the API server's history: its revision and which nodes were cordoned then."""

    revision: int
    cordoned: dict[str, bool]


@dataclass(frozen=True)
class CordonTransition:
    """A node's ``spec.unschedulable`` changed, at the API server's resourceVersion (its own total order)."""

    node: str
    cordoned: bool
    revision: int


def history_steps(history: WorkflowHistory) -> list[tuple[str, str]]:
    """The steps of a rollout's history the tests reason about, in order: ``("signal", name)``,
    ``("child started", workflow id)`` and ``("child completed", workflow id)``."""
    steps = []
    for event in history.events:
        if event.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED:
            steps.append(("signal", event.workflow_execution_signaled_event_attributes.signal_name))
        elif event.event_type == EventType.EVENT_TYPE_START_CHILD_WORKFLOW_EXECUTION_INITIATED:
            steps.append(("child started", event.start_child_workflow_execution_initiated_event_attributes.workflow_id))
        elif event.event_type == EventType.EVENT_TYPE_CHILD_WORKFLOW_EXECUTION_COMPLETED:
            done = event.child_workflow_execution_completed_event_attributes.workflow_execution
            steps.append(("child completed", done.workflow_id))
    return steps


def max_cordoned_at_once(transitions: list[CordonTransition]) -> int:
    cordoned: set[str] = set()
    peak = 0
    for t in sorted(transitions, key=lambda t: t.revision):
        (cordoned.add if t.cordoned else cordoned.discard)(t.node)
        peak = max(peak, len(cordoned))
    return peak


class Host:
    """One simulated host, read from its directory as its own tools would."""

    def __init__(self, name: str, directory: Path, supervisor_pid: int) -> None:
        self.name = name
        self.paths = SimPaths(directory)
        self.config: HostConfig = load_host_config(self.paths.config)
        self.supervisor_pid = supervisor_pid

    def machine(self) -> SimMachineState:
        state = read_machine_state(self.paths)
        assert state is not None, f"{self.paths.machine} is missing or unreadable"
        return state

    def grubenv(self) -> dict[str, str]:
        return GrubEnv(self.config.grubenv, self.config.grub_editenv).read()

    def grubenv_bytes(self) -> bytes:
        return Path(self.config.grubenv).read_bytes()

    def saved_slot(self) -> SlotName | None:
        return entry_slot(self.config, self.grubenv().get("saved_entry", ""))

    def next_slot(self) -> SlotName | None:
        value = self.grubenv().get("next_entry", "")
        return entry_slot(self.config, value) if value else None

    def trial_slot(self) -> SlotName | None:
        """``next_entry`` while the node worker may be writing the block: grub-editenv truncates and rewrites the
        file in place, so a read can land in between; such a read means "not set yet" to a poller."""
        try:
            return self.next_slot()
        except HostError:
            return None

    def slot_version(self, slot: SlotName) -> str:
        return read_slot_os_release(resolve_slot(self.config, slot)).pretty_name

    def inactive_slot(self) -> SlotName:
        return other_slot(self.machine().booted_slot)

    def damage_slot(self, slot: SlotName) -> None:
        """Zero the primary ext4 superblock of ``slot``: the filesystem no longer opens, so the slot cannot boot."""
        region = resolve_slot(self.config, slot)
        with region.path.open("r+b") as disk:
            disk.seek(region.offset + 1024)
            disk.write(bytes(1024))
            disk.flush()
            os.fsync(disk.fileno())

    @contextmanager
    def frozen(self) -> Iterator[None]:
        """Stop the machine's supervisor (not its node worker) so it cannot boot until the block ends.

        The node worker keeps serving activities; a reboot it asks for waits until the supervisor runs again.
        """
        os.kill(self.supervisor_pid, signal.SIGSTOP)
        try:
            yield
        finally:
            os.kill(self.supervisor_pid, signal.SIGCONT)


class E2ECluster:
    """The stack as the tests see it: Temporal, the Kubernetes API, the hosts and the image server."""

    def __init__(self, stack: DevStack, client: Client) -> None:
        self.stack = stack
        self.client = client
        api = new_api_client(stack.kubeconfig)
        self.core = k8s.CoreV1Api(api)
        self.policy = k8s.PolicyV1Api(api)
        self.custom = k8s.CustomObjectsApi(api)

    # ---------------------------------------------------------------------------------------- hosts

    def host(self, name: str) -> Host:
        node = next(n for n in self.stack.hosts if n.name == name)
        supervisor = next(p for p in self.stack.processes if p.name == f"machine-{name}")
        return Host(name, node.directory, supervisor.popen.pid)

    def check_alive(self) -> None:
        dead = self.stack.dead()
        assert not dead, f"stack processes exited: {', '.join(f'{p.name} ({p.log_path})' for p in dead)}"

    # ---------------------------------------------------------------------------------------- images

    async def new_image(self) -> Image:
        """A fresh upgrade image with a version no node has run yet, served by the stack's image server."""
        version = f"KubeOS 1.{next(_versions)}.0"
        server = self.stack.image_server
        assert server is not None
        file_name = f"e2e-{version.split()[1].replace('.', '_')}-{uuid.uuid4().hex[:6]}.img"
        checksum = await asyncio.to_thread(build_os_image, server.root / file_name, version, IMAGE_SIZE)
        return Image(version, file_name, server.url(file_name), checksum)

    def image_fetches(self, image: Image) -> int:
        """Downloads of the image so far (GETs; the node worker never asks for the same bytes twice)."""
        server = self.stack.image_server
        assert server is not None
        return len(server.gets(image.file_name))

    # ---------------------------------------------------------------------------------------- Kubernetes

    async def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """The official client is synchronous; the kubelet stand-ins share this event loop, so never block it."""
        return await asyncio.to_thread(fn, *args, **kwargs)

    async def nodes(self) -> dict[str, NodeInfo]:
        """Every Node as the rollout's own activities read it (name, osImage, Ready, unschedulable)."""
        listing = await self.call(self.core.list_node)
        return {info.name: info for info in map(node_info, listing.items)}

    async def select(self, names: list[str]) -> str:
        """Give ``names`` a node-selector label of their own; the returned value is the spec's nodeselector."""
        tag = f"e2e-{uuid.uuid4().hex[:8]}"
        for name in names:
            await self.call(self.core.patch_node, name, {"metadata": {"labels": {NODE_SELECTOR_LABEL: tag}}})
        return tag

    async def node_mark(self) -> NodeMark:
        """Where the Node history stands now: replay :meth:`cordon_transitions` from here after a rollout."""
        listing = await self.call(self.core.list_node)
        assert listing.metadata is not None and listing.metadata.resource_version is not None
        cordoned = {info.name: info.unschedulable for info in map(node_info, listing.items)}
        return NodeMark(int(listing.metadata.resource_version), cordoned)

    async def cordon_transitions(self, mark: NodeMark) -> list[CordonTransition]:
        """Every cordon and uncordon since ``mark``, replayed by a watch resumed at its revision.

        The emulator keeps its change log, so a watch from ``mark.revision`` sees every Node change in order, as
        a controller watching the API would have seen them live.
        """

        def replay() -> list[CordonTransition]:
            current = dict(mark.cordoned)
            transitions = []
            # timeout_seconds: the watch returns the logged changes at once and ends, instead of following.
            stream = watch.Watch().stream(self.core.list_node, resource_version=str(mark.revision), timeout_seconds=1)
            for event in stream:
                info = node_info(event["object"])
                cordoned = info.unschedulable and event["type"] != "DELETED"
                if cordoned != current.get(info.name, False):
                    revision = int(event["raw_object"]["metadata"]["resourceVersion"])
                    transitions.append(CordonTransition(info.name, cordoned, revision))
                current[info.name] = cordoned
            return transitions

        return await self.call(replay)

    # ---------------------------------------------------------------------------------------- rollouts

    def os_resource(self, name: str, image: Image, nodeselector: str, **spec: Any) -> dict[str, Any]:
        """An OS resource as a user writes it (field names of the seed), upgrading to ``image``."""
        fields: dict[str, Any] = {
            "imagetype": "disk",
            "opstype": "upgrade",
            "osversion": image.version,
            "maxunavailable": 1,
            "dockerimage": "",
            "imageurl": image.url,
            "checksum": image.checksum,
            "flagSafe": False,
            "mtls": False,
            "cacert": CA_FILE_NAME,
            "clientcert": "",
            "clientkey": "",
            "nodeselector": nodeselector,
            "boottimeout": 120,
        }
        fields.update(spec)
        metadata = {"name": name, "namespace": "default"}
        return {"apiVersion": API_VERSION, "kind": KIND, "metadata": metadata, "spec": fields}

    async def start(
        self, resource: dict[str, Any], prefix: str = "rollout", workflow_id: str = ""
    ) -> WorkflowHandle[Any, RolloutStatus]:
        """Start a rollout as ``kubeos-rollout start`` does (straight to Temporal), by default with an id of its own."""
        started = await start_rollout(self.client, resource, workflow_id or f"e2e-{prefix}-{uuid.uuid4().hex[:8]}")
        return self.client.get_workflow_handle(started.id, run_id=started.result_run_id, result_type=RolloutStatus)

    async def wait_status(
        self,
        handle: WorkflowHandle[Any, RolloutStatus],
        predicate: Callable[[RolloutStatus], bool],
        what: str,
        limit: float = WAIT_LIMIT,
    ) -> RolloutStatus:
        """Poll the ``status`` query until ``predicate`` holds; fail with the last status after ``limit`` s."""
        return await self.wait_for(
            lambda: handle.query("status", result_type=RolloutStatus), predicate, what, limit=limit
        )

    async def wait_for(
        self, probe: Callable[[], Awaitable[T]], predicate: Callable[[T], bool], what: str, limit: float = WAIT_LIMIT
    ) -> T:
        """Bounded polling of ``probe()`` until ``predicate`` holds; a dead stack process fails at once."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + limit
        while True:
            self.check_alive()
            value = await probe()
            if predicate(value):
                return value
            if loop.time() > deadline:
                raise AssertionError(f"{what}: not reached within {limit:.0f}s; last seen: {value!r}")
            await asyncio.sleep(_POLL)

    async def result(self, handle: WorkflowHandle[Any, RolloutStatus], limit: float = WAIT_LIMIT) -> RolloutStatus:
        return await asyncio.wait_for(handle.result(), timeout=limit)
