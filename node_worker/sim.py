"""A simulated host in one directory: a GPT disk image with ROOT-A/ROOT-B, a real grubenv, certificates, and a
host configuration that points the node worker at them.

Layout of ``DIR``::

    disk.img        GPT disk image (sfdisk): partitions ROOT-A and ROOT-B, ext4 each
    grubenv         GRUB environment block (grub-editenv), saved_entry=A
    certs/          the host's certificates directory
    registry-auth.json  registry credentials (docker-style config.json) of container-image upgrades, if any
    staging/        the node worker's staging directory (stamps, lock)
    host.yaml       the host configuration (printed by ``host sim``)
    cmdline         the kernel command line of the current boot (root=PARTLABEL=ROOT-X: see ``kernel_root_arg``)
    boot_id         the current boot's id
    node.log        the node log
    machine.json    the machine's state (see ``models.host.SimMachineState``), kept by ``host sim-run``
    machine.pid     the pid of the running ``host sim-run``
    reboot-request  written by the reboot command (``host sim-reboot DIR``); the supervisor then reboots
    hang-on-reboot  fault knob: when present, the next reboot never comes back

A freshly installed KubeOS boots slot A holding the installed version; slot B holds an empty filesystem (the
installer formats both), so a rollback is refused until an upgrade has run. A second fault knob travels with an
image: one holding ``/etc/kubeos-sim/panic-on-boot`` never comes up (see ``node_worker.machine``).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

from models.host import SLOT_NAMES, HostConfig, SimMachineState, SlotConfig, SlotName
from node_worker.config import write_host_config
from node_worker.images import make_rootfs
from node_worker.osrelease import read_slot_fs_identity
from node_worker.slots import resolve_slot

MIB = 1024 * 1024
DEFAULT_SLOT_SIZE = 64 * MIB
_SECTOR = 512
_LINUX_FS_TYPE = "0FC63DAF-8483-4772-8E79-3D69D8477DE4"


class SimError(Exception):
    pass


@dataclass(frozen=True)
class SimPaths:
    dir: Path

    @property
    def disk(self) -> Path:
        return self.dir / "disk.img"

    @property
    def grubenv(self) -> Path:
        return self.dir / "grubenv"

    @property
    def certs(self) -> Path:
        return self.dir / "certs"

    @property
    def staging(self) -> Path:
        return self.dir / "staging"

    @property
    def registry_auth(self) -> Path:
        return self.dir / "registry-auth.json"

    @property
    def config(self) -> Path:
        return self.dir / "host.yaml"

    @property
    def cmdline(self) -> Path:
        return self.dir / "cmdline"

    @property
    def boot_id(self) -> Path:
        return self.dir / "boot_id"

    @property
    def node_log(self) -> Path:
        return self.dir / "node.log"

    @property
    def machine(self) -> Path:
        return self.dir / "machine.json"

    @property
    def pid(self) -> Path:
        return self.dir / "machine.pid"

    @property
    def reboot_request(self) -> Path:
        return self.dir / "reboot-request"

    @property
    def hang_on_reboot(self) -> Path:
        return self.dir / "hang-on-reboot"


def _partition_disk(disk: Path, slot_size: int) -> dict[SlotName, dict[str, str | int]]:
    """Write a GPT with ROOT-A and ROOT-B into ``disk``; returns each partition's offset, size and PARTUUID."""
    sectors = slot_size // _SECTOR
    script = (
        "label: gpt\n"
        f'start=2048, size={sectors}, type={_LINUX_FS_TYPE}, name="ROOT-A"\n'
        f'size={sectors}, type={_LINUX_FS_TYPE}, name="ROOT-B"\n'
    )
    proc = subprocess.run(["sfdisk", "--quiet", str(disk)], input=script, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SimError(f"sfdisk failed: {proc.stderr.strip()}")
    table = json.loads(
        subprocess.run(["sfdisk", "--json", str(disk)], capture_output=True, text=True, check=True).stdout
    )["partitiontable"]
    sector = int(table.get("sectorsize", _SECTOR))
    found: dict[SlotName, dict[str, str | int]] = {}
    for part in table["partitions"]:
        for name in SLOT_NAMES:
            if part.get("name") == f"ROOT-{name}":
                found[name] = {
                    "offset": int(part["start"]) * sector,
                    "size": int(part["size"]) * sector,
                    "partuuid": str(part["uuid"]).lower(),
                }
    if set(found) != set(SLOT_NAMES):
        raise SimError(f"sfdisk did not create ROOT-A and ROOT-B in {disk}")
    return found


def sim_config(paths: SimPaths, parts: dict[SlotName, dict[str, str | int]]) -> HostConfig:
    slots = {
        name: SlotConfig(
            device=str(paths.disk),
            offset=int(parts[name]["offset"]),
            size=int(parts[name]["size"]),
            partuuid=str(parts[name]["partuuid"]),
            partlabel=f"ROOT-{name}",
        )
        for name in SLOT_NAMES
    }
    return HostConfig(
        slots=slots,
        grubenv=str(paths.grubenv),
        certs_dir=str(paths.certs),
        registry_auth_config=str(paths.registry_auth),  # never the real host's credentials
        staging_dir=str(paths.staging),
        # The machine "reboots" when its supervisor sees the request: the same interpreter and package.
        reboot_command=[sys.executable, "-m", "node_worker.cli", "host", "sim-reboot", str(paths.dir)],
        kernel_cmdline=str(paths.cmdline),
        boot_id_file=str(paths.boot_id),
        mounted_root=None,  # nothing is mounted: the booted slot's os-release is read from its bytes too
        node_log=str(paths.node_log),
        syslog=False,  # a simulated host must not write into the real host's syslog
    )


def kernel_root_arg(sc: SlotConfig) -> str:
    """``root=`` of a slot's GRUB menu entry: its first configured identity, partition ones first (staging never
    changes those; a filesystem's LABEL and UUID are whatever the image written into the slot carries)."""
    for kind, value in (
        ("PARTLABEL", sc.partlabel),
        ("PARTUUID", sc.partuuid),
        ("LABEL", sc.fslabel),
        ("UUID", sc.fsuuid),
    ):
        if value:
            return f"{kind}={value}"
    raise SimError(f"slot on {sc.device} has no partlabel, partuuid, fslabel or fsuuid: its GRUB entry needs root=")


def root_problem(config: HostConfig, slot: SlotName) -> str:
    """Why a kernel booted from ``slot``'s GRUB entry would not mount that slot's filesystem ("" if it would).

    ``root=LABEL=``/``UUID=`` is looked up among the filesystems, as the kernel (initramfs) does: when the slot's
    filesystem does not carry it, the root is not found (panic); when the other slot's does, the host would run
    from the wrong slot. Partition identities live in the partition table, which staging never writes.
    """
    root = kernel_root_arg(config.slots[slot])
    kind, _, wanted = root.partition("=")
    if kind not in ("LABEL", "UUID"):
        return ""
    holders = []
    for name in SLOT_NAMES:
        found = read_slot_fs_identity(resolve_slot(config, name))
        have = "" if found is None else found.label if kind == "LABEL" else found.uuid
        if have and (have == wanted if kind == "LABEL" else have.lower() == wanted.lower()):
            holders.append(name)
    if holders == [slot]:
        return ""
    return f"root={root}: " + (f"found on slot {' and '.join(holders)}" if holders else "no filesystem carries it")


def write_boot_files(paths: SimPaths, config: HostConfig, slot: SlotName) -> str:
    """What a boot of ``slot`` leaves behind: the kernel command line and a new boot id (returned)."""
    root = kernel_root_arg(config.slots[slot])
    _write_atomic(paths.cmdline, f"BOOT_IMAGE=/boot/vmlinuz root={root} ro panic=10\n")
    new_id = str(uuid.uuid4())
    _write_atomic(paths.boot_id, new_id + "\n")
    return new_id


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def write_machine_state(paths: SimPaths, state: SimMachineState) -> None:
    _write_atomic(paths.machine, json.dumps(state.model_dump(mode="json")) + "\n")


def read_machine_state(paths: SimPaths) -> SimMachineState | None:
    try:
        return SimMachineState.model_validate_json(paths.machine.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def create_sim_host(
    directory: Path,
    version: str = "KubeOS 1.0.0",
    slot_size: int = DEFAULT_SLOT_SIZE,
    b_version: str | None = None,
    certs: list[Path] | None = None,
) -> Path:
    """Create a simulated, freshly installed host in ``directory``; returns its host configuration file."""
    from node_worker.grubenv import GrubEnv

    if slot_size % MIB or slot_size < 8 * MIB:
        raise SimError(f"--slot-size must be a whole number of MiB, at least 8 MiB; got {slot_size} bytes")
    paths = SimPaths(directory.resolve())
    if paths.disk.exists():
        raise SimError(f"{paths.disk} exists already: choose an empty directory")
    paths.dir.mkdir(parents=True, exist_ok=True)
    for sub in (paths.certs, paths.staging):
        sub.mkdir(exist_ok=True)
    with paths.disk.open("wb") as f:
        f.truncate(2 * MIB + 2 * slot_size)  # 1 MiB before the first partition, room for the backup GPT after
    parts = _partition_disk(paths.disk, slot_size)
    contents: tuple[tuple[SlotName, str | None], ...] = (("A", version), ("B", b_version))
    for name, pretty in contents:
        make_rootfs(
            paths.disk, int(parts[name]["size"]), pretty, offset=int(parts[name]["offset"]), label=f"ROOT-{name}"
        )
    for cert in certs or []:
        shutil.copy(cert, paths.certs / cert.name)
    config = sim_config(paths, parts)
    write_host_config(config, paths.config)
    grub = GrubEnv(paths.grubenv, config.grub_editenv)
    grub.create()
    grub.set(saved_entry=config.entry("A"))
    # The installer's first boot: the machine is installed and powered off, but has a boot record, so the
    # host commands work before ``host sim-run`` starts it.
    boot_id = write_boot_files(paths, config, "A")
    write_machine_state(
        paths,
        SimMachineState(running=False, booted_slot="A", pretty_name=version, boot_id=boot_id, boots=0),
    )
    return paths.config


def request_reboot(directory: Path) -> None:
    """What the simulated host's reboot command does: ask the supervisor to take the machine down and boot it."""
    paths = SimPaths(directory)
    if not paths.dir.is_dir():
        raise SimError(f"{paths.dir} is not a simulated host directory")
    _write_atomic(paths.reboot_request, f"{os.getpid()}\n")
