"""The simulated machine (``host sim-run DIR``): boots a simulated host as its GRUB would and runs its node worker.

A boot picks the slot exactly as ``deploy/node/grub.cfg`` does: ``next_entry`` once (cleared as it boots), else
``saved_entry``; a slot without a filesystem holding an os-release does not boot, nor does one whose image holds
:data:`PANIC_MARKER` (an image whose kernel panics) or whose ``root=`` names a filesystem LABEL/UUID that the
slot does not carry (``sim.root_problem``), and GRUB's fallback takes the other entry. The boot writes
the kernel command line and a new boot id, then the node worker starts as a child process; like systemd with
the node worker's unit (``Restart=always``, ``RestartSec=5``), the supervisor starts it again when it exits.
The reboot command of the simulated host leaves a request file; the supervisor then stops the worker (the
machine goes down), waits the downtime, and boots again. ``machine.json`` always says where the machine is.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

from models.host import HostConfig, SimMachineState, SlotName, other_slot
from node_worker.config import load_host_config
from node_worker.grubenv import GrubEnv, next_boot
from node_worker.nodelog import NodeLog
from node_worker.osrelease import OsReleaseUnreadable, read_slot_os_release, slot_has_file
from node_worker.sim import SimPaths, read_machine_state, root_problem, write_boot_files, write_machine_state
from node_worker.slots import resolve_slot

_log = logging.getLogger("kubeos.machine")
_POLL = 0.1
_STOP_GRACE = 15.0
#: As ``RestartSec=`` of deploy/node/kubeos-node-worker.service.
_RESTART_DELAY = 5.0
#: A file an image may carry to stand for a kernel that panics at boot: the slot never comes up.
PANIC_MARKER = "/etc/kubeos-sim/panic-on-boot"


class BootFailed(Exception):
    """Neither slot could boot: the machine stays down."""


def boot(paths: SimPaths, config: HostConfig, previous: SimMachineState | None, log: NodeLog) -> SimMachineState:
    """One boot: choose the slot like grub.cfg, fall back when it cannot boot, leave the boot's traces."""
    grub = GrubEnv(config.grubenv, config.grub_editenv)
    env = grub.read()
    first, once = next_boot(config, env)
    if once:
        grub.set(next_entry="")  # grub.cfg: set next_entry= ; save_env next_entry
    failed: SlotName | None = None
    chosen: SlotName | None = None
    pretty = ""
    for candidate in (first, other_slot(first)):
        slot = resolve_slot(config, candidate)
        try:
            pretty = read_slot_os_release(slot).pretty_name
            panics = slot_has_file(slot, PANIC_MARKER)
        except OsReleaseUnreadable as exc:
            log.error(f"boot: slot {candidate} does not boot ({exc}); falling back")
            failed = failed or candidate
            continue
        if panics:
            log.error(f"boot: slot {candidate} ({pretty}) panics at boot; falling back")
            failed = failed or candidate
            continue
        if problem := root_problem(config, candidate):
            log.error(f"boot: slot {candidate} ({pretty}) does not find its root ({problem}); falling back")
            failed = failed or candidate
            continue
        chosen = candidate
        break
    if chosen is None:
        raise BootFailed(f"no bootable slot: both {first} and {other_slot(first)} failed")
    boot_id = write_boot_files(paths, config, chosen)
    boots = (previous.boots if previous else 0) + 1
    log.info(f"boot {boots}: slot {chosen} ({pretty}){' once via next_entry' if once and chosen == first else ''}")
    return SimMachineState(
        running=False,
        booted_slot=chosen,
        pretty_name=pretty,
        boot_id=boot_id,
        boots=boots,
        last_boot_failed_slot=failed,
    )


class Machine:
    """The supervisor: boot, run the node worker, reboot on request, until SIGTERM/SIGINT."""

    def __init__(
        self,
        directory: Path,
        node: str,
        temporal: str | None = None,
        namespace: str | None = None,
        downtime: float = 1.0,
    ) -> None:
        self.paths = SimPaths(directory.resolve())
        self.node = node
        self.temporal = temporal
        self.namespace = namespace
        self.downtime = downtime
        self.config = load_host_config(self.paths.config)
        self.log = NodeLog(self.config.node_log, node)
        self.stop = threading.Event()
        self.state = read_machine_state(self.paths)

    def worker_command(self) -> list[str]:
        cmd = [sys.executable, "-m", "node_worker.cli", "node-worker", "--node", self.node]
        cmd += ["--config", str(self.paths.config)]
        if self.temporal:
            cmd += ["--temporal", self.temporal]
        if self.namespace:
            cmd += ["--namespace", self.namespace]
        return cmd

    def _save(self, **changes: object) -> None:
        if self.state is not None:
            self.state = self.state.model_copy(update=changes)
            write_machine_state(self.paths, self.state)

    def _start_worker(self) -> subprocess.Popen[bytes]:
        return subprocess.Popen(self.worker_command(), stdin=subprocess.DEVNULL)

    def _stop_worker(self, child: subprocess.Popen[bytes]) -> None:
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
            try:
                child.wait(_STOP_GRACE)
            except subprocess.TimeoutExpired:
                child.kill()  # a machine going down does not wait for anyone
                child.wait()

    def _run_until_reboot(self) -> bool:
        """Run the worker for this boot; True when a reboot was requested, False when the machine stops."""
        child = self._start_worker()
        self._save(running=True)
        try:
            while not self.stop.wait(_POLL):
                if self.paths.reboot_request.exists():
                    self.paths.reboot_request.unlink(missing_ok=True)
                    self.log.info("machine: reboot requested, going down")
                    return True
                code = child.poll()
                if code is not None:
                    self.log.warning(f"machine: node worker exited with {code}; restarting it")
                    if self.stop.wait(_RESTART_DELAY):
                        break
                    child = self._start_worker()
            return False
        finally:
            self._stop_worker(child)
            self._save(running=False)

    def _wait_for_stop(self) -> None:
        while not self.stop.wait(1.0):  # short waits: signal handlers run between them
            pass

    def run(self) -> int:
        self.paths.pid.write_text(f"{os.getpid()}\n", encoding="utf-8")
        self.paths.reboot_request.unlink(missing_ok=True)
        try:
            while not self.stop.is_set():
                try:
                    self.state = boot(self.paths, self.config, self.state, self.log)
                except BootFailed as exc:
                    self.log.error(f"machine: {exc}; it stays down")
                    self._wait_for_stop()
                    return 1
                write_machine_state(self.paths, self.state)
                if not self._run_until_reboot():
                    break
                if self.paths.hang_on_reboot.exists():
                    self.log.error("machine: hang-on-reboot is set: the machine does not come back")
                    self._wait_for_stop()
                    break
                self.stop.wait(self.downtime)
            return 0
        finally:
            self._save(running=False)
            self.paths.pid.unlink(missing_ok=True)


def run_machine(
    directory: Path, node: str, temporal: str | None = None, namespace: str | None = None, downtime: float = 1.0
) -> int:
    machine = Machine(directory, node, temporal, namespace, downtime)

    def on_signal(signum: int, _frame: object) -> None:
        machine.stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    return machine.run()
