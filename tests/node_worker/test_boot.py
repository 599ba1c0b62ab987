"""Boot entries and boots: trial boot, automatic fallback, commit, switch back, rollback, booted-slot detection.

Boots are done by the simulated machine's boot function (``node_worker.machine.boot``), which picks the slot as
deploy/node/grub.cfg does; the GRUB environment is a real grubenv edited with grub-editenv.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

import pytest

from devstack.image_server import ImageServer
from models.host import HostConfig, HostErrorType, SlotConfig
from node_worker import boot as bootmod
from node_worker.agent import HostAgent
from node_worker.errors import HostError
from node_worker.machine import BootFailed, boot
from node_worker.nodelog import NodeLog
from tests.node_worker.conftest import NEW, OLD, Image, SimHost, disk_source, make_sim_host


def _staged(host: SimHost, server: ImageServer, image: Image) -> str:
    return host.agent.stage(disk_source(server.url(image.name), image)).checksum


def _reboot(host: SimHost) -> str:
    state = boot(host.paths, host.config, None, NodeLog(host.paths.node_log))
    return state.booted_slot


def test_trial_boot_sets_next_entry_once_and_keeps_saved_entry(
    host: SimHost, https_server: ImageServer, new_image: Image
) -> None:
    checksum = _staged(host, https_server, new_image)

    out = host.agent.trial_boot("B", NEW, checksum)

    assert out.grubenv["next_entry"] == "B" and out.grubenv["saved_entry"] == "A"
    assert host.grubenv() == {"saved_entry": "A", "next_entry": "B"}
    # first boot: B once; this boot is a trial (booted slot is not the saved entry)
    assert _reboot(host) == "B"
    status = host.agent.status()
    assert status.booted_slot == "B" and status.trial and status.next_slot is None
    assert status.slots["B"].os_release is not None and status.slots["B"].os_release.pretty_name == NEW
    # next boot without a commit: back on A
    assert _reboot(host) == "A"
    assert not host.agent.status().trial


def test_failed_trial_boot_falls_back_to_the_old_slot(
    host: SimHost, https_server: ImageServer, new_image: Image
) -> None:
    """A new slot that cannot boot (its filesystem broke after staging) falls back to the old one."""
    checksum = _staged(host, https_server, new_image)
    host.agent.trial_boot("B", NEW, checksum)
    host.agent.slot("B").invalidate()

    state = boot(host.paths, host.config, None, NodeLog(host.paths.node_log))

    assert state.booted_slot == "A" and state.last_boot_failed_slot == "B" and state.pretty_name == OLD
    status = host.agent.status()
    assert status.booted_slot == "A" and not status.trial
    assert host.grubenv().get("next_entry", "") == ""  # consumed: the broken slot is not tried again
    # the workflow then switches back: nothing to reboot
    back = host.agent.switch_back("A")
    assert not back.reboot_needed and back.grubenv["saved_entry"] == "A" and "next_entry" not in back.grubenv


def test_commit_makes_the_new_slot_the_default(host: SimHost, https_server: ImageServer, new_image: Image) -> None:
    checksum = _staged(host, https_server, new_image)
    host.agent.trial_boot("B", NEW, checksum)
    assert _reboot(host) == "B"

    out = host.agent.commit("B", NEW)

    assert out.saved_slot == "B" and out.grubenv == {"saved_entry": "B"}
    assert not host.agent.status().trial
    assert _reboot(host) == "B" and _reboot(host) == "B"


class Clock:
    """A wall clock the test moves: trial deadlines are wall-clock times (node_worker/trial.py)."""

    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def _entries(host: SimHost) -> tuple[str, str]:
    """(saved_entry, next_entry); a boot leaves next_entry set to "" as grub.cfg does."""
    env = host.grubenv()
    return env.get("saved_entry", ""), env.get("next_entry", "")


def _clocked(host: SimHost) -> tuple[HostAgent, Clock]:
    clock = Clock()
    return HostAgent(host.config, node="test-node", clock=clock), clock


def test_a_trial_boot_committed_within_its_deadline(host: SimHost, https_server: ImageServer, new_image: Image) -> None:
    agent, clock = _clocked(host)
    agent.trial_boot("B", NEW, _staged(host, https_server, new_image), deadline_seconds=300)
    assert agent.status().trial_deadline == clock.now + 300
    assert _reboot(host) == "B"
    clock.now += 299
    assert agent.end_expired_trial() is False  # not yet: nothing changes
    assert _entries(host) == ("A", "") and agent.status().trial

    assert agent.commit("B", NEW).saved_slot == "B"
    assert agent.status().trial_deadline is None  # committed: no deadline any more
    clock.now += 3600
    assert agent.end_expired_trial() is False and _entries(host) == ("B", "")


def test_a_trial_boot_nobody_commits_is_undone_by_the_host(
    host: SimHost, https_server: ImageServer, new_image: Image
) -> None:
    agent, clock = _clocked(host)
    agent.trial_boot("B", NEW, _staged(host, https_server, new_image), deadline_seconds=300)
    assert _reboot(host) == "B"  # e.g. the host came back after its rollout had given up
    clock.now += 300

    assert agent.end_expired_trial() is True  # the caller (the node worker) reboots
    assert _entries(host) == ("A", "")  # the committed slot, and no one-time entry
    assert "was not committed by its deadline" in host.node_log() and "rebooting into the committed slot A" in (
        host.node_log()
    )
    # Until the reboot, the host and any late workflow agree: the trial lost.
    with pytest.raises(HostError, match="was not committed by its deadline") as err:
        agent.commit("B", NEW)
    assert err.value.kind == HostErrorType.TRIAL_EXPIRED and not err.value.retryable
    assert _entries(host) == ("A", "")

    assert _reboot(host) == "A"
    assert agent.end_expired_trial() is False  # back on the committed slot: the record is dropped
    status = agent.status()
    assert not status.trial and status.trial_deadline is None and status.booted_slot == "A"


def test_an_expired_trial_that_never_booted_loses_its_one_time_entry(
    host: SimHost, https_server: ImageServer, new_image: Image
) -> None:
    """The reboot never happened (the workflow died before asking for it): the next reboot stays on A."""
    agent, clock = _clocked(host)
    agent.trial_boot("B", NEW, _staged(host, https_server, new_image), deadline_seconds=60)
    clock.now += 61

    assert agent.end_expired_trial() is False  # running the committed slot: nothing to reboot
    assert _entries(host) == ("A", "") and agent.status().trial_deadline is None
    assert "never happened by its deadline" in host.node_log()
    assert _reboot(host) == "A"


def test_switch_back_drops_the_trial_deadline(host: SimHost, https_server: ImageServer, new_image: Image) -> None:
    agent, clock = _clocked(host)
    agent.trial_boot("B", NEW, _staged(host, https_server, new_image))
    assert agent.status().trial_deadline is not None
    agent.switch_back("A")
    clock.now += 7 * 24 * 3600
    assert agent.status().trial_deadline is None and agent.end_expired_trial() is False


def test_commit_refuses_a_slot_that_is_not_running(host: SimHost) -> None:
    with pytest.raises(HostError) as err:
        host.agent.commit("B")
    assert err.value.kind == HostErrorType.WRONG_SLOT and not err.value.retryable
    assert host.grubenv() == {"saved_entry": "A"}


def test_commit_refuses_when_the_running_slot_is_not_osversion(host: SimHost) -> None:
    with pytest.raises(HostError, match="not osversion") as err:
        host.agent.commit("A", NEW)
    assert err.value.kind == HostErrorType.SLOT_NOT_VERIFIED


def test_switch_back_after_a_healthy_but_rejected_trial(
    host: SimHost, https_server: ImageServer, new_image: Image
) -> None:
    """Health gate failed while running B: A becomes the default again and a reboot is needed."""
    host.agent.trial_boot("B", NEW, _staged(host, https_server, new_image))
    assert _reboot(host) == "B"

    out = host.agent.switch_back("A")

    assert out.reboot_needed and out.booted_slot == "B" and out.grubenv == {"saved_entry": "A"}
    assert _reboot(host) == "A"


def test_switch_back_refuses_a_slot_without_a_root(host: SimHost) -> None:
    with pytest.raises(HostError) as err:
        host.agent.switch_back("B")  # fresh host: B holds an empty filesystem
    assert err.value.kind == HostErrorType.SLOT_NOT_VERIFIED
    assert host.grubenv() == {"saved_entry": "A"}


def test_trial_boot_refuses_the_running_slot(host: SimHost) -> None:
    with pytest.raises(HostError) as err:
        host.agent.trial_boot("A", OLD)
    assert err.value.kind == HostErrorType.WRONG_SLOT


def test_trial_boot_refuses_a_slot_without_the_staged_image(
    host: SimHost, https_server: ImageServer, new_image: Image
) -> None:
    with pytest.raises(HostError, match="stage it first") as err:
        host.agent.trial_boot("B", NEW, new_image.sha256)
    assert err.value.kind == HostErrorType.SLOT_NOT_VERIFIED
    assert host.grubenv() == {"saved_entry": "A"}


def test_trial_boot_refuses_a_slot_changed_after_staging(
    host: SimHost, https_server: ImageServer, new_image: Image
) -> None:
    checksum = _staged(host, https_server, new_image)
    slot = host.agent.slot("B")
    with open(slot.path, "r+b") as f:
        f.seek(slot.offset + 5 * 1024 * 1024)
        f.write(b"tampered")
    with pytest.raises(HostError, match="stage it first"):
        host.agent.trial_boot("B", NEW, checksum)
    assert host.grubenv() == {"saved_entry": "A"}


def test_trial_boot_refuses_the_wrong_version(host: SimHost, https_server: ImageServer, new_image: Image) -> None:
    checksum = _staged(host, https_server, new_image)
    with pytest.raises(HostError, match=re.escape("not osversion 'KubeOS 9.9.9'")) as err:
        host.agent.trial_boot("B", "KubeOS 9.9.9", checksum)
    assert err.value.kind == HostErrorType.SLOT_NOT_VERIFIED
    assert host.grubenv() == {"saved_entry": "A"}


def test_rollback_needs_the_version_in_the_other_slot(
    host: SimHost, https_server: ImageServer, new_image: Image
) -> None:
    with pytest.raises(HostError) as err:  # fresh host: B is empty
        host.agent.prepare_rollback(OLD)
    assert err.value.kind == HostErrorType.ROLLBACK_TARGET_MISMATCH and not err.value.retryable

    host.agent.trial_boot("B", NEW, _staged(host, https_server, new_image))
    _reboot(host)
    host.agent.commit("B", NEW)

    with pytest.raises(HostError, match=re.escape("slot A holds 'KubeOS 1.0.0'")) as wrong:
        host.agent.prepare_rollback("KubeOS 0.9.0")
    assert wrong.value.kind == HostErrorType.ROLLBACK_TARGET_MISMATCH
    out = host.agent.prepare_rollback(OLD)
    assert out.target_slot == "A" and out.booted_slot == "B" and out.os_release.pretty_name == OLD
    pre = host.agent.preflight(disk_source("", new_image, imagetype="", osversion=OLD), "rollback")
    assert pre.target_slot == "A"
    # the rollback then goes the same way as an upgrade: trial boot (no checksum) and commit
    host.agent.trial_boot("A", OLD)
    assert _reboot(host) == "A"
    assert host.agent.commit("A", OLD).saved_slot == "A"


def test_preflight_of_a_host_on_the_target_from_its_committed_slot_checks_nothing_else(
    host: SimHost, new_image: Image
) -> None:
    """Such a node is reported up to date: a certificate or a rollback target it does not need cannot fail it."""
    missing_ca = {"imageurl": "https://images.example/update.img", "cacert": "missing.crt"}
    with pytest.raises(HostError) as err:  # the control: a node that needs the image needs the certificate
        host.agent.preflight(disk_source("", new_image, **missing_ca))
    assert err.value.kind == HostErrorType.CERTIFICATE

    on_target = disk_source("", new_image, osversion=OLD, **missing_ca)
    assert host.agent.preflight(on_target).status.booted_slot == "A"
    assert host.agent.preflight(on_target, "rollback").target_slot == "B"  # B is empty: no rollback target needed


def test_await_reboot_fails_retryably_until_the_boot_id_changes(host: SimHost) -> None:
    before = host.agent.prepare_reboot("test").boot_id
    with pytest.raises(HostError, match="host has not rebooted yet") as err:
        host.agent.await_reboot(before)
    assert err.value.kind == HostErrorType.NOT_REBOOTED and err.value.retryable
    after = host.boot_into("A")
    status = host.agent.await_reboot(before)
    assert status.boot_id == after != before


def test_no_bootable_slot_keeps_the_machine_down(host: SimHost) -> None:
    host.agent.slot("A").invalidate()  # B is empty: nothing boots
    with pytest.raises(BootFailed):
        boot(host.paths, host.config, None, NodeLog(host.paths.node_log))


def test_unknown_saved_entry_boots_the_first_entry_like_grub(host: SimHost) -> None:
    host.agent.grub.set(saved_entry="nonsense")
    assert _reboot(host) == "A"


def test_custom_grub_entry_names(tmp_path: Path) -> None:
    host = make_sim_host(tmp_path / "h")
    slots = {name: host.config.slots[name].model_copy(update={"grub_entry": f"KubeOS-{name}"}) for name in ("A", "B")}
    config = host.config.model_copy(update={"slots": slots})
    host.agent.grub.set(saved_entry="KubeOS-B")
    status = HostAgent(config).status()
    assert status.saved_slot == "B" and status.trial  # running A, saved entry names B


# ----------------------------------------------------------------------------------------- booted slot


def _config(tmp_path: Path, cmdline: str, a: Mapping[str, object], b: Mapping[str, object]) -> HostConfig:
    (tmp_path / "cmdline").write_text(cmdline)
    return HostConfig(
        slots={"A": SlotConfig.model_validate(a), "B": SlotConfig.model_validate(b)},
        grubenv=str(tmp_path / "grubenv"),
        kernel_cmdline=str(tmp_path / "cmdline"),
    )


@pytest.mark.parametrize(
    ("cmdline", "expected"),
    [
        ("BOOT_IMAGE=/vmlinuz root=PARTUUID=2B6E1C1A-0000-4000-8000-00000000000B ro", "B"),
        ("root=PARTLABEL=ROOT-A quiet", "A"),
        ("root=LABEL=rootfs-b", "B"),
        ("root=UUID=AAAAAAAA-1111-2222-3333-444444444444", "A"),
        ("root=/dev/sda2 root=PARTLABEL=ROOT-B", "B"),  # the kernel takes the last root=
    ],
)
def test_booted_slot_from_kernel_identities(tmp_path: Path, cmdline: str, expected: str) -> None:
    config = _config(
        tmp_path,
        cmdline,
        {"device": "/dev/sda2", "partlabel": "ROOT-A", "fsuuid": "aaaaaaaa-1111-2222-3333-444444444444"},
        {
            "device": "/dev/sda3",
            "partuuid": "2b6e1c1a-0000-4000-8000-00000000000b",
            "partlabel": "ROOT-B",
            "fslabel": "rootfs-b",
        },
    )
    assert bootmod.booted_slot(config) == expected


def test_booted_slot_by_device_path_is_not_fooled_by_digits(tmp_path: Path) -> None:
    """The original took "contains 2" for slot A: nvme2n1p3 would have been A."""
    dev = tmp_path / "dev"
    dev.mkdir()
    for name in ("nvme2n1p2", "nvme2n1p3"):
        (dev / name).write_bytes(b"")
    (dev / "by-partlabel").mkdir()
    (dev / "by-partlabel" / "ROOT-B").symlink_to(dev / "nvme2n1p3")
    a, b = {"device": str(dev / "nvme2n1p2")}, {"device": str(dev / "nvme2n1p3")}
    assert bootmod.booted_slot(_config(tmp_path, f"root={dev}/nvme2n1p3 ro", a, b)) == "B"
    assert bootmod.booted_slot(_config(tmp_path, f"root={dev}/by-partlabel/ROOT-B", a, b)) == "B"


@pytest.mark.parametrize("cmdline", ["ro quiet", "root=PARTLABEL=ROOT-C", "root=tmpfs"])
def test_unknown_root_is_an_error_not_a_guess(tmp_path: Path, cmdline: str) -> None:
    config = _config(
        tmp_path,
        cmdline,
        {"device": "/dev/sda2", "partlabel": "ROOT-A"},
        {"device": "/dev/sda3", "partlabel": "ROOT-B"},
    )
    with pytest.raises(HostError) as err:
        bootmod.booted_slot(config)
    assert err.value.kind == HostErrorType.HOST_MISCONFIGURED
