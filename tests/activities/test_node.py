"""The node activities as Temporal runs them (ActivityEnvironment): error types, retry flags, heartbeats, resume."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities.node import NodeActivities
from devstack.image_server import Fault, ImageServer
from models.host import (
    HostAwaitRebootInput,
    HostCommitInput,
    HostPreflightInput,
    HostPrepareRollbackInput,
    HostRebootInput,
    HostReportInput,
    HostStageInput,
    HostSwitchBackInput,
    HostTrialBootInput,
    StageProgress,
)
from node_worker import http_source
from node_worker.agent import HostAgent
from tests.node_worker import conftest as host_fixtures
from tests.node_worker.conftest import NEW, OLD, Image, SimHost, disk_source

# The simulated host, image and HTTPS server fixtures of the host tests (tests/node_worker/conftest.py).
pki = host_fixtures.pki
host = host_fixtures.host
image_root = host_fixtures.image_root
new_image = host_fixtures.new_image
https_server = host_fixtures.https_server

MIB = 1024 * 1024


def _activities(host: SimHost, reboots: list[str] | None = None) -> NodeActivities:
    return NodeActivities(host.agent, request_reboot=lambda: (reboots if reboots is not None else []).append("reboot"))


def test_upgrade_path_through_the_activities(host: SimHost, https_server: ImageServer, new_image: Image) -> None:
    env = ActivityEnvironment()
    beats: list[Any] = []
    env.on_heartbeat = lambda *details: beats.append(details[0])
    reboots: list[str] = []
    acts = _activities(host, reboots)
    source = disk_source(https_server.url(new_image.name), new_image)

    pre = env.run(acts.host_preflight, HostPreflightInput(source=source))
    staged = env.run(acts.host_stage, HostStageInput(source=source))
    trial = env.run(
        acts.host_trial_boot, HostTrialBootInput(target_slot=pre.target_slot, osversion=NEW, checksum=staged.checksum)
    )
    reboot = env.run(acts.host_reboot, HostRebootInput(reason="test"))

    assert staged.checksum == new_image.sha256 and trial.grubenv["next_entry"] == "B"
    assert reboots == ["reboot"] and reboot.boot_id == pre.status.boot_id
    progress = [
        StageProgress.model_validate(b)
        for b in beats
        if isinstance(b, StageProgress | dict) and "slot" in (b if isinstance(b, dict) else b.model_dump())
    ]
    downloads = [p for p in progress if p.phase == "download"]
    assert downloads and downloads[-1].done == downloads[-1].total == new_image.path.stat().st_size

    with pytest.raises(ApplicationError) as err:
        env.run(acts.host_await_reboot, HostAwaitRebootInput(previous_boot_id=reboot.boot_id))
    assert err.value.type == "HostNotRebooted" and not err.value.non_retryable
    assert err.value.message.startswith("host has not rebooted yet")

    host.boot_into("B")
    back = env.run(acts.host_await_reboot, HostAwaitRebootInput(previous_boot_id=reboot.boot_id))
    assert back.status.booted_slot == "B" and back.status.trial
    committed = env.run(acts.host_commit, HostCommitInput(slot="B", osversion=NEW))
    assert committed.saved_slot == "B"
    report = env.run(acts.host_report, HostReportInput())
    assert not report.status.trial and report.status.slots["A"].os_release is not None
    assert report.status.slots["A"].os_release.pretty_name == OLD


def test_errors_carry_their_type_and_retry_flag(host: SimHost, https_server: ImageServer, new_image: Image) -> None:
    env = ActivityEnvironment()
    acts = _activities(host)
    wrong = disk_source(https_server.url(new_image.name), new_image, checksum="1" * 64)
    with pytest.raises(ApplicationError) as mismatch:
        env.run(acts.host_stage, HostStageInput(source=wrong))
    assert mismatch.value.type == "ChecksumMismatch" and mismatch.value.non_retryable
    assert mismatch.value.message == f"Checksum {new_image.sha256} mismatch to {'1' * 64}"

    with pytest.raises(ApplicationError) as rollback:
        env.run(acts.host_prepare_rollback, HostPrepareRollbackInput(osversion="KubeOS 0.1.0"))
    assert rollback.value.type == "RollbackTargetMismatch" and rollback.value.non_retryable

    with pytest.raises(ApplicationError) as switch:
        env.run(acts.host_switch_back, HostSwitchBackInput(slot="B"))
    assert switch.value.type == "SlotNotVerified" and switch.value.non_retryable

    with host.agent.exclusive("test"), pytest.raises(ApplicationError) as busy:
        env.run(acts.host_commit, HostCommitInput(slot="A"))
    assert busy.value.type == "HostBusy" and not busy.value.non_retryable


def test_stage_resumes_from_the_heartbeat_of_the_previous_attempt(
    host: SimHost, https_server: ImageServer, new_image: Image, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(http_source, "RETRY_BASE_DELAY", 0.01)
    https_server.faults[new_image.name] = Fault(cut_after=[6 * MIB] + [0] * http_source.MAX_FAILURES_WITHOUT_PROGRESS)
    env = ActivityEnvironment()
    beats: list[Any] = []
    env.on_heartbeat = lambda *details: beats.append(details[0])
    acts = _activities(host)
    inp = HostStageInput(source=disk_source(https_server.url(new_image.name), new_image))

    with pytest.raises(ApplicationError) as first:
        env.run(acts.host_stage, inp)
    assert first.value.type == "DownloadInterrupted" and not first.value.non_retryable

    # the next attempt sees the last heartbeat as Temporal delivers it: converted to plain JSON data
    last = beats[-1].model_dump(mode="json")
    env.info = dataclasses.replace(env.info, attempt=2, heartbeat_details=[last])
    https_server.faults.clear()
    out = env.run(acts.host_stage, inp)
    assert out.resumed_at == 6 * MIB and out.checksum == new_image.sha256


def test_a_trial_boot_past_its_deadline_cannot_be_committed(
    host: SimHost, https_server: ImageServer, new_image: Image
) -> None:
    """The deadline the workflow passes reaches the host; a late commit fails for good (no retry can win)."""
    env = ActivityEnvironment()
    now = [1_800_000_000.0]
    acts = NodeActivities(HostAgent(host.config, clock=lambda: now[0]), request_reboot=lambda: None)
    staged = env.run(acts.host_stage, HostStageInput(source=disk_source(https_server.url(new_image.name), new_image)))
    env.run(
        acts.host_trial_boot,
        HostTrialBootInput(target_slot="B", osversion=NEW, checksum=staged.checksum, deadline_seconds=120),
    )
    assert env.run(acts.host_report, HostReportInput()).status.trial_deadline == now[0] + 120
    host.boot_into("B")
    now[0] += 121

    with pytest.raises(ApplicationError) as late:
        env.run(acts.host_commit, HostCommitInput(slot="B", osversion=NEW))
    assert late.value.type == "TrialExpired" and late.value.non_retryable
    assert "not committed by its deadline" in late.value.message and "returns to slot A" in late.value.message
    assert host.grubenv()["saved_entry"] == "A"
