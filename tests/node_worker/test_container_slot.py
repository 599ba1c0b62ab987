"""Container-image staging on a simulated host, the parts the slot and the next boot depend on: the filesystem
carries the slot's identity (a host may find its root by LABEL or UUID), the image must be osversion, a repeated
stage of the same image digest keeps the slot, and registry credentials come from the host configuration."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Literal

import pytest

from devstack.registry import PushedImage, RegistryServer, write_auth_config
from models.host import HostConfig, HostErrorType, ImageSource, StageProgress
from node_worker.agent import HostAgent
from node_worker.config import write_host_config
from node_worker.errors import HostError
from node_worker.images import make_rootfs
from node_worker.machine import boot
from node_worker.nodelog import NodeLog
from node_worker.osrelease import read_slot_fs_identity
from node_worker.sim import write_boot_files
from tests.node_worker.conftest import NEW, OLD, SimHost, make_sim_host
from tests.node_worker.registry_env import USERS, plain_registry, token_registry

__all__ = ["plain_registry", "token_registry"]  # fixtures used below


@pytest.fixture(scope="module")
def pushed(plain_registry: RegistryServer) -> PushedImage:
    return plain_registry.push_kubeos(NEW)


def docker_source(image: PushedImage, **overrides: object) -> ImageSource:
    fields: dict[str, object] = {"imagetype": "docker", "dockerimage": image.reference, "osversion": NEW}
    return ImageSource.model_validate(fields | overrides)


def found_by_filesystem(host: SimHost, kind: Literal["fslabel", "fsuuid"]) -> SimHost:
    """The same disk with its slots named on the kernel command line by filesystem LABEL or UUID only.

    Slot A keeps what its filesystem carries; slot B is given an identity its filesystem does not carry yet, so
    it boots only once something is written into it that carries the configured identity.
    """
    current = read_slot_fs_identity(host.agent.slot("A"))
    assert current is not None
    a = current.label if kind == "fslabel" else current.uuid
    b = "kubeos-root-b" if kind == "fslabel" else str(uuid.uuid4())
    data = host.config.model_dump()
    for name, value in (("A", a), ("B", b)):
        data["slots"][name].update(partlabel="", partuuid="", **{kind: value})
    config = HostConfig.model_validate(data)
    write_host_config(config, host.paths.config)
    write_boot_files(host.paths, config, "A")
    return SimHost(host.paths, config, HostAgent(config, node="test-node"))


def reboot(host: SimHost) -> tuple[str, str | None]:
    """Boot the simulated machine as its GRUB and kernel would: (booted slot, slot that failed to boot)."""
    state = boot(host.paths, host.config, None, NodeLog(host.paths.node_log, "test-node"))
    return state.booted_slot, state.last_boot_failed_slot


@pytest.mark.parametrize("kind", ["fslabel", "fsuuid"])
def test_container_staged_slot_boots_when_root_names_its_filesystem(
    pushed: PushedImage, tmp_path: Path, kind: Literal["fslabel", "fsuuid"]
) -> None:
    host = found_by_filesystem(make_sim_host(tmp_path / "host"), kind)
    root = "LABEL" if kind == "fslabel" else "UUID"
    assert f"root={root}=" in host.paths.cmdline.read_text()
    assert host.agent.booted_slot() == "A"

    # The control: the right version in slot B, but a filesystem labelled ROOT with a new UUID (what a build
    # without the slot's identity makes) is not found by the kernel; GRUB falls back to A.
    b = host.agent.slot("B")
    make_rootfs(b.path, b.size, NEW, offset=b.offset, label="ROOT")
    host.agent.trial_boot("B", NEW)
    assert reboot(host) == ("A", "B")
    assert host.agent.booted_slot() == "A"

    staged = host.agent.stage(docker_source(pushed))
    assert staged.slot == "B" and not staged.reused
    identity = read_slot_fs_identity(b)
    assert identity is not None
    configured = host.config.slots["B"]
    assert (identity.label if kind == "fslabel" else identity.uuid) == getattr(configured, kind)

    host.agent.trial_boot("B", NEW, checksum=staged.checksum)
    assert reboot(host) == ("B", None)
    status = HostAgent(host.config).status()  # a new boot: a new agent, as the restarted node worker
    assert status.booted_slot == "B" and status.trial
    assert status.slots["B"].os_release is not None and status.slots["B"].os_release.pretty_name == NEW


def test_a_slot_without_configured_identity_keeps_its_filesystem_label_and_uuid(
    pushed: PushedImage, tmp_path: Path
) -> None:
    """The simulated host's default: slots found by PARTLABEL; the built filesystem keeps B's label and UUID
    (a GRUB entry with root=UUID=… of the installed system goes on working)."""
    host = make_sim_host(tmp_path / "host")
    before = read_slot_fs_identity(host.agent.slot("B"))
    assert before is not None and before.label == "ROOT-B"
    host.agent.stage(docker_source(pushed))
    assert read_slot_fs_identity(host.agent.slot("B")) == before
    host.agent.trial_boot("B", NEW)
    assert reboot(host) == ("B", None)


def test_image_that_is_not_osversion_is_refused_before_the_slot_is_written(pushed: PushedImage, tmp_path: Path) -> None:
    host = make_sim_host(tmp_path / "host")
    slot_b = host.slot_digest("B")
    with pytest.raises(HostError) as err:
        host.agent.stage(docker_source(pushed, osversion="KubeOS 9.9.9"))
    assert err.value.kind == HostErrorType.INVALID_INPUT and not err.value.retryable
    assert NEW in str(err.value) and "KubeOS 9.9.9" in str(err.value)
    assert host.slot_digest("B") == slot_b
    assert host.agent.status().slots["B"].staged_checksum == ""


def test_repeated_stage_of_the_same_image_digest_keeps_the_slot(pushed: PushedImage, tmp_path: Path) -> None:
    host = make_sim_host(tmp_path / "host")
    source = docker_source(pushed)
    with_digest = source.model_copy(update={"checksum": pushed.digest})
    assert not host.agent.preflight(with_digest).already_staged

    first = host.agent.stage(source)
    written = host.slot_digest("B")
    assert not first.reused and first.checksum == host.agent.status().slots["B"].staged_checksum
    assert host.agent.preflight(with_digest).already_staged  # the stamp names the image digest
    assert not host.agent.preflight(source).already_staged  # no digest in the spec: only the stage can tell

    phases: list[str] = []

    def record(progress: StageProgress) -> None:
        phases.append(progress.phase)

    again = host.agent.stage(with_digest, record)
    assert again.reused and (again.checksum, again.size) == (first.checksum, first.size)
    assert host.slot_digest("B") == written  # not rebuilt: a new ext4 build would differ byte for byte
    assert "verify-existing" in phases and not {"download", "extract", "mkfs", "write"} & set(phases)

    # The same image under another osversion is refused, even though it is in the slot already.
    with pytest.raises(HostError) as err:
        host.agent.stage(source.model_copy(update={"osversion": OLD}))
    assert err.value.kind == HostErrorType.INVALID_INPUT and OLD in str(err.value)

    # A slot whose bytes changed behind the stamp's back is built again.
    b = host.agent.slot("B")
    with b.path.open("r+b") as disk:
        disk.seek(b.offset + b.size - 4096)
        disk.write(b"x" * 4096)
    rebuilt = host.agent.stage(source)
    assert not rebuilt.reused and rebuilt.checksum != first.checksum


def test_registry_credentials_come_from_the_host_configuration(token_registry: RegistryServer, tmp_path: Path) -> None:
    image = token_registry.push_kubeos(NEW)
    host = make_sim_host(tmp_path / "host")
    assert host.config.registry_auth_config == str(host.paths.registry_auth)
    with pytest.raises(HostError) as err:
        host.agent.stage(docker_source(image))
    assert err.value.kind == HostErrorType.CONTAINER_IMAGE and "credentials" in str(err.value)

    user, password = next(iter(USERS.items()))
    write_auth_config(host.paths.registry_auth, token_registry.host, user, password)
    assert host.agent.stage(docker_source(image)).slot == "B"
