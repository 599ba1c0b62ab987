"""Node activities: run by the node worker of one host, on its own task queue ``kubeos-node-<NODE>``
(``models.host.node_task_queue``). Thin wrappers over ``node_worker.agent.HostAgent``; the worker knows its host
configuration, so inputs carry only the spec's image fields and ids.

Contract (inputs and outputs in ``models.host``; error types are ``models.host.HostErrorType``; every failure is
an ``ApplicationError`` that is non-retryable unless marked *retryable*; HostBusy (another disk operation holds
the host lock) is retryable everywhere):

``host_preflight(HostPreflightInput{source: ImageSource, opstype}) -> HostPreflightOutput{status, target_slot,
already_staged}``
    Booted slot, both slots' versions, GRUB env writable, staging space; upgrade: URL policy (http only with
    flagSafe, "unsafe address" in the node log), checksum format, certificates (present, parse, not expired, key
    matches cert); rollback: the other slot holds osversion. Errors: InvalidInput, UnsafeAddress,
    CertificateError, NoSpace, HostMisconfigured, RollbackTargetMismatch. Quick: start_to_close ~2 min. A host
    that already runs osversion from its committed slot passes at once, with none of these checks (nothing will
    be written: the workflow reports it up to date).
``host_stage(HostStageInput{source}) -> HostStageOutput{slot, checksum, size, reused, resumed_at, os_release}``
    Streams the image into the inactive slot, hashing as it writes; never touches the boot entries. Heartbeats
    ``StageProgress`` (bytes done/total) per MiB: give it heartbeat_timeout ~30 s and a start_to_close that fits the
    image (e.g. 1 h). A retried attempt resumes from the last heartbeat (HTTP Range) within the same boot.
    Errors: as preflight, plus ChecksumMismatch ("Checksum <calc> mismatch to <given>"; the slot is invalidated),
    ImageTooLarge, DownloadFailed (4xx), ContainerImageError, ContainerImageUnavailable; *retryable*:
    DownloadInterrupted (5xx, connection lost).
``host_trial_boot(HostTrialBootInput{target_slot, osversion, checksum, deadline_seconds}) -> HostTrialBootOutput``
    Sets GRUB ``next_entry`` to the target slot (boots it once); ``saved_entry`` unchanged. Refuses a target that
    is the running slot (WrongSlot), does not hold the staged image ``checksum`` (its bytes are hashed again) or
    whose PRETTY_NAME is not osversion (SlotNotVerified). Heartbeats while hashing: heartbeat_timeout ~30 s.
    Records a deadline ``deadline_seconds`` from now (host wall clock): a trial not committed by then is undone by
    the host itself (the node worker drops ``next_entry``, or reboots into the saved slot; node_worker/trial.py).
``host_reboot(HostRebootInput{reason}) -> HostRebootOutput{boot_id, command}``
    Syncs and returns the current boot id; the worker stops polling, then runs the reboot command after this
    result has been reported. Use maximum_attempts=1, then ``host_await_reboot``.
``host_await_reboot(HostAwaitRebootInput{previous_boot_id}) -> HostAwaitRebootOutput{status}``
    *Retryable* HostNotRebooted ("host has not rebooted yet") while the boot id is unchanged. While the host is
    down, the task waits in the queue: bound it with schedule_to_start / schedule_to_close (the boot timeout).
``host_report(HostReportInput{}) -> HostReportOutput{status}``
    Booted slot, both slots' os-release (PRETTY_NAME, VERSION_ID), GRUB env, trial flag, boot id.
``host_commit(HostCommitInput{slot, osversion}) -> HostCommitOutput{saved_slot, grubenv}``
    ``saved_entry`` = slot, ``next_entry`` unset. Only the running slot can be committed (WrongSlot); with
    osversion set, the running slot must hold it (SlotNotVerified); a trial boot past its deadline is refused
    (TrialExpired: the host returns to its saved slot by itself).
``host_switch_back(HostSwitchBackInput{slot}) -> HostSwitchBackOutput{saved_slot, booted_slot, reboot_needed,
grubenv}``
    ``saved_entry`` = slot (the one that ran before), ``next_entry`` unset; refuses a slot holding no readable
    root (SlotNotVerified). ``reboot_needed`` when the host runs the other slot: then ``host_reboot``.
``host_prepare_rollback(HostPrepareRollbackInput{osversion}) -> HostPrepareRollbackOutput{target_slot,
booted_slot, os_release}``
    The other slot must hold osversion (PRETTY_NAME), else RollbackTargetMismatch. Then trial-boot target_slot
    (checksum empty) and continue as for an upgrade.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from pydantic import ValidationError
from temporalio import activity
from temporalio.exceptions import ApplicationError

from models.host import (
    HostAwaitRebootInput,
    HostAwaitRebootOutput,
    HostCommitInput,
    HostCommitOutput,
    HostPreflightInput,
    HostPreflightOutput,
    HostPrepareRollbackInput,
    HostPrepareRollbackOutput,
    HostRebootInput,
    HostRebootOutput,
    HostReportInput,
    HostReportOutput,
    HostStageInput,
    HostStageOutput,
    HostSwitchBackInput,
    HostSwitchBackOutput,
    HostTrialBootInput,
    HostTrialBootOutput,
    StageProgress,
)
from node_worker.agent import HostAgent
from node_worker.errors import HostError

T = TypeVar("T")
_log = logging.getLogger("kubeos.node.activities")
# Seconds between the reboot activity's return and the reboot command when no worker schedules it.
FALLBACK_REBOOT_DELAY = 1.5


def _call(fn: Callable[[], T]) -> T:
    """Run a host operation, turning HostError into the ApplicationError of the contract."""
    try:
        return fn()
    except HostError as exc:
        raise ApplicationError(exc.message, type=str(exc.kind), non_retryable=not exc.retryable) from exc


def _last_stage_progress() -> StageProgress | None:
    details = activity.info().heartbeat_details
    if not details:
        return None
    try:
        return StageProgress.model_validate(details[0])
    except ValidationError:
        return None


class NodeActivities:
    """The node activities of one host. ``request_reboot`` is called by ``host_reboot`` once the disks are synced;
    the node worker passes one that stops polling and reboots after the result was reported."""

    def __init__(self, agent: HostAgent, request_reboot: Callable[[], None] | None = None) -> None:
        self.agent = agent
        self._request_reboot = request_reboot or self._reboot_later

    def _reboot_later(self) -> None:
        threading.Timer(FALLBACK_REBOOT_DELAY, self.agent.run_reboot_command).start()

    def all(self) -> list[Callable[..., Any]]:
        return [
            self.host_preflight,
            self.host_stage,
            self.host_trial_boot,
            self.host_reboot,
            self.host_await_reboot,
            self.host_report,
            self.host_commit,
            self.host_switch_back,
            self.host_prepare_rollback,
        ]

    @activity.defn(name="host_preflight")
    def host_preflight(self, input: HostPreflightInput) -> HostPreflightOutput:
        return _call(lambda: self.agent.preflight(input.source, input.opstype))

    @activity.defn(name="host_stage")
    def host_stage(self, input: HostStageInput) -> HostStageOutput:
        resume = _last_stage_progress()
        return _call(lambda: self.agent.stage(input.source, activity.heartbeat, resume))

    @activity.defn(name="host_trial_boot")
    def host_trial_boot(self, input: HostTrialBootInput) -> HostTrialBootOutput:
        def beat(done: int, total: int | None) -> None:
            activity.heartbeat({"phase": "verify-slot", "done": done, "total": total})

        return _call(
            lambda: self.agent.trial_boot(
                input.target_slot, input.osversion, input.checksum, beat, deadline_seconds=input.deadline_seconds
            )
        )

    @activity.defn(name="host_reboot")
    def host_reboot(self, input: HostRebootInput) -> HostRebootOutput:
        result = _call(lambda: self.agent.prepare_reboot(input.reason))
        self._request_reboot()
        return result

    @activity.defn(name="host_await_reboot")
    def host_await_reboot(self, input: HostAwaitRebootInput) -> HostAwaitRebootOutput:
        return HostAwaitRebootOutput(status=_call(lambda: self.agent.await_reboot(input.previous_boot_id)))

    @activity.defn(name="host_report")
    def host_report(self, input: HostReportInput) -> HostReportOutput:
        return HostReportOutput(status=_call(self.agent.status))

    @activity.defn(name="host_commit")
    def host_commit(self, input: HostCommitInput) -> HostCommitOutput:
        return _call(lambda: self.agent.commit(input.slot, input.osversion))

    @activity.defn(name="host_switch_back")
    def host_switch_back(self, input: HostSwitchBackInput) -> HostSwitchBackOutput:
        return _call(lambda: self.agent.switch_back(input.slot))

    @activity.defn(name="host_prepare_rollback")
    def host_prepare_rollback(self, input: HostPrepareRollbackInput) -> HostPrepareRollbackOutput:
        return _call(lambda: self.agent.prepare_rollback(input.osversion))
