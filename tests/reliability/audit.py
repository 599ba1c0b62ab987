"""Every boot of every simulated host, checked as it happens: did the machine boot a verified image?

A thread watches each host's ``machine.json``. When the boot counter moves, it hashes the slot that booted (and
the slot a failed trial tried first) and compares the bytes with what was verified: the slot's staging stamp must
match its content and name an image the suite published for that version, or the slot must still hold the image
the host was installed with. The booted slot cannot change under the hash: hosts only ever write the other one.
A boot the thread did not see (the counter jumped by two) counts as a problem too.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from models.host import HostConfig, SlotName
from node_worker.config import load_host_config
from node_worker.sim import SimPaths, read_machine_state
from node_worker.slots import resolve_slot
from node_worker.writer import StampStore

_POLL_SECONDS = 0.05
_INSTALL_SLOT: SlotName = "A"


@dataclass(frozen=True)
class Boot:
    node: str
    number: int
    slot: str
    version: str
    verified: bool
    detail: str
    attempt: bool = False  # the slot a trial boot tried first and could not boot


class BootAudit:
    """``audit.start()``; ``audit.problems(node)``; ``audit.stop()``. ``published(version)`` names the digests
    of the images published for ``version`` (for any version when None)."""

    def __init__(self, hosts: dict[str, Path], published: Callable[[str | None], set[str]]) -> None:
        self._dirs = hosts
        self._published = published
        self._configs: dict[str, HostConfig] = {n: load_host_config(SimPaths(d).config) for n, d in hosts.items()}
        self._installed = {n: self._hash_whole(c, _INSTALL_SLOT) for n, c in self._configs.items()}
        self._seen: dict[str, int] = {}
        self._lock = threading.Lock()
        self.boots: list[Boot] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="boot-audit", daemon=True)

    def start(self) -> None:
        for node in self._dirs:
            self._look(node)  # the first boot, before any rollout
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def of(self, node: str) -> list[Boot]:
        with self._lock:
            return [b for b in self.boots if b.node == node]

    def problems(self, *nodes: str) -> list[Boot]:
        with self._lock:
            return [b for b in self.boots if b.node in nodes and not b.verified]

    # ------------------------------------------------------------------------------------------ watching

    def _run(self) -> None:
        while not self._stop.wait(_POLL_SECONDS):
            for node in self._dirs:
                try:
                    self._look(node)
                except Exception as exc:  # a failed check is recorded, never lost with the thread
                    self._add(Boot(node, -1, "?", "?", False, f"audit error: {type(exc).__name__}: {exc}"))

    def _look(self, node: str) -> None:
        state = read_machine_state(SimPaths(self._dirs[node]))
        if state is None or state.boots == self._seen.get(node, 0):
            return
        previous = self._seen.get(node)
        self._seen[node] = state.boots
        if previous is not None and state.boots > previous + 1:
            missed = f"boots {previous + 1}..{state.boots - 1} happened unseen"
            self._add(Boot(node, previous + 1, "?", "?", False, missed))
        verified, detail = self._verify(node, state.booted_slot, state.pretty_name)
        self._add(Boot(node, state.boots, state.booted_slot, state.pretty_name, verified, detail))
        if state.last_boot_failed_slot is not None:
            verified, detail = self._verify(node, state.last_boot_failed_slot, "")
            self._add(Boot(node, state.boots, state.last_boot_failed_slot, "", verified, detail, attempt=True))

    def _add(self, boot: Boot) -> None:
        with self._lock:
            self.boots.append(boot)

    # ------------------------------------------------------------------------------------------ checking

    @staticmethod
    def _hash_whole(config: HostConfig, name: SlotName) -> str:
        slot = resolve_slot(config, name)
        return slot.hash_region(slot.size)

    def _verify(self, node: str, name: SlotName, version: str) -> tuple[bool, str]:
        config = self._configs[node]
        slot = resolve_slot(config, name)
        stamp = StampStore(config.staging_dir).load(slot)
        if stamp is None:
            if name == _INSTALL_SLOT and self._hash_whole(config, name) == self._installed[node]:
                return True, "the installed image"
            return False, f"slot {name} holds neither a verified image (no stamp) nor the installed one"
        content = slot.hash_region(stamp.size)
        if content != stamp.checksum:
            return False, f"slot {name} content {content[:12]} differs from its stamp {stamp.checksum[:12]}"
        if stamp.checksum not in self._published(version or None):
            return False, f"slot {name} holds {stamp.checksum[:12]}, not an image published for {version or 'any'}"
        return True, f"verified image {stamp.checksum[:12]}"
