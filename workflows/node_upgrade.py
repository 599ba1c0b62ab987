"""``NodeUpgrade``: one node, from preflight to a committed slot, or back to where it was.

The order is chosen so that nothing irreversible happens before it has to:

1. preflight, then stage the image into the inactive slot while the workloads still run (a bad image, URL or
   certificate fails here, with the node untouched and schedulable);
2. cordon and drain (a drain that cannot finish uncordons the node, which is never rebooted);
3. trial boot: GRUB boots the new slot once, ``saved_entry`` still names the running one, so any failure to
   come up (the host hangs, panics, is power-cycled) ends on the old slot;
4. health gate: the host's worker reports the booted slot with a new boot id, and the Node is Ready with the
   target ``osImage``;
5. commit (``saved_entry`` = new slot) and uncordon.

Failure after the reboot restores the old slot as the saved entry, reboots into it when the host runs the new one,
uncordons and reports the node failed. ``NodeMode.SWITCH`` (opstype rollback, or reverting a rolled-back
rollout) skips staging and boots the other slot, which must already hold the target version.

A node is up to date only when it runs the target version from its committed slot: the rollout plans nodes that
already report the target ``osImage`` like any other, and their preflight tells. A host found in an uncommitted
trial boot is first returned to its committed slot (``_undo_trial``). The trial boot carries a deadline
(``_trial_deadline_seconds``) after which the host undoes it by itself and refuses the commit.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any, TypeVar

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, CancelledError

with workflow.unsafe.imports_passed_through():
    from pydantic import BaseModel

    from models.cluster import DrainInput, DrainResult, NodeInfo, NodeRef, WaitNodeInput
    from models.host import (
        MAX_TRIAL_DEADLINE_SECONDS,
        RETRYABLE_ERROR_TYPES,
        HostAwaitRebootInput,
        HostAwaitRebootOutput,
        HostCommitInput,
        HostCommitOutput,
        HostErrorType,
        HostPreflightInput,
        HostPreflightOutput,
        HostPrepareRollbackInput,
        HostPrepareRollbackOutput,
        HostRebootInput,
        HostRebootOutput,
        HostStageInput,
        HostStageOutput,
        HostStatus,
        HostSwitchBackInput,
        HostSwitchBackOutput,
        HostTrialBootInput,
        HostTrialBootOutput,
        ImageSource,
        SlotName,
        node_task_queue,
    )
    from models.rollout import NODE_WORKFLOW, NodeMode, NodeUpgradeInput, NodeUpgradeResult

T = TypeVar("T", bound=BaseModel)

_HOST_NON_RETRYABLE = [t.value for t in HostErrorType if t not in RETRYABLE_ERROR_TYPES]
_HOST_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=2),
    maximum_interval=timedelta(seconds=30),
    maximum_attempts=5,
    non_retryable_error_types=_HOST_NON_RETRYABLE,
)
_CLUSTER_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    maximum_interval=timedelta(seconds=20),
    maximum_attempts=10,
)
#: A reboot is asked for once: a second attempt could reboot a host that already came back.
_ONCE = RetryPolicy(maximum_attempts=1)
_STAGE_TIMEOUT = timedelta(hours=3)
#: Time a trial boot is given beyond what this workflow itself may wait for it (see _trial_deadline_seconds).
TRIAL_COMMIT_MARGIN = timedelta(minutes=5)


#: ``workflow.patched`` ids: each guards a change of the commands this workflow issues, so that runs begun
#: before the change replay as they ran (tests/workflows/histories keeps a history from before each).
PATCH_LOCAL_CORDON = "cordon-as-local-activity"


class NodeFailed(Exception):
    """Ends the node's run as failed; the message is the reason the rollout reports."""


def _reason(exc: BaseException) -> str:
    """The innermost message of an activity failure: the host's or the API's own words, or the timeout."""
    while isinstance(exc, ActivityError) and exc.cause is not None:
        exc = exc.cause
    return str(exc) or type(exc).__name__


async def _cancellable(activity: str, arg: BaseModel, *, local: bool = False, **options: Any) -> Any:
    """Run an activity (``local``: in this worker, as a local activity); if it ends because this workflow is
    being cancelled, raise ``asyncio.CancelledError`` (not the ``ActivityError`` Temporal reports) so cancellation
    is told apart from a failing step."""
    try:
        if local:
            return await workflow.execute_local_activity(activity, arg, **options)
        return await workflow.execute_activity(activity, arg, **options)
    except ActivityError as exc:
        if isinstance(exc.cause, CancelledError):
            raise asyncio.CancelledError() from exc
        raise


@workflow.defn(name=NODE_WORKFLOW)
class NodeUpgrade:
    def __init__(self) -> None:
        self._step = "starting"
        self._input: NodeUpgradeInput | None = None
        #: The GRUB environment may differ from what the host ran before (trial boot asked for) ...
        self._boot_touched = False
        #: ... until the new slot is the saved entry.
        self._committed = False
        #: What was done before the upgrade proper (an uncommitted trial boot undone), for the result's message.
        self._note = ""

    @workflow.query
    def step(self) -> str:
        return self._step

    # ---------------------------------------------------------------------------------------- plumbing

    @property
    def _inp(self) -> NodeUpgradeInput:
        assert self._input is not None
        return self._input

    @property
    def _boot_timeout(self) -> timedelta:
        return timedelta(seconds=self._inp.spec.boottimeout)

    @property
    def _trial_deadline_seconds(self) -> int:
        """How long the host keeps a trial boot before undoing it itself: what this workflow may spend between
        the trial boot and the commit (the boot timeout to come back, the boot timeout again to be Ready), plus a
        margin for a slow or restarted cluster worker. A commit that arrives later still is refused by the host;
        the node is then returned to its old slot and reported failed, so host and workflow never disagree."""
        wanted = 2 * self._inp.spec.boottimeout + int(TRIAL_COMMIT_MARGIN.total_seconds())
        return min(wanted, MAX_TRIAL_DEADLINE_SECONDS)

    async def _host(
        self,
        activity: str,
        arg: BaseModel,
        result_type: type[T],
        *,
        summary: str,
        start_to_close: timedelta = timedelta(minutes=2),
        heartbeat: timedelta | None = None,
        retry: RetryPolicy = _HOST_RETRY,
        schedule_to_start: timedelta | None = None,
        schedule_to_close: timedelta | None = None,
    ) -> T:
        """Run a host activity on the node's own queue. The wait for the node's worker to pick it up is bounded:
        a host that is down (or never came back from a reboot) surfaces as a schedule-to-start timeout."""
        self._step = summary
        result: T = await _cancellable(
            activity,
            arg,
            result_type=result_type,
            task_queue=node_task_queue(self._inp.node),
            start_to_close_timeout=start_to_close,
            schedule_to_start_timeout=schedule_to_start or self._boot_timeout,
            schedule_to_close_timeout=schedule_to_close,
            heartbeat_timeout=heartbeat,
            retry_policy=retry,
            summary=f"{self._inp.node}: {summary}",
        )
        return result

    async def _cluster(
        self,
        activity: str,
        arg: BaseModel,
        result_type: type[T],
        *,
        summary: str,
        start_to_close: timedelta = timedelta(minutes=1),
        heartbeat: timedelta | None = None,
    ) -> T:
        """Run a Kubernetes activity on the cluster worker (the workflow's own queue)."""
        self._step = summary
        result: T = await _cancellable(
            activity,
            arg,
            result_type=result_type,
            start_to_close_timeout=start_to_close,
            heartbeat_timeout=heartbeat,
            retry_policy=_CLUSTER_RETRY,
            summary=f"{self._inp.node}: {summary}",
        )
        return result

    async def _reboot(self, reason: str, summary: str) -> HostRebootOutput:
        """Ask the host to reboot, once: a second attempt could reboot a host that already came back."""
        return await self._host(
            "host_reboot", HostRebootInput(reason=reason), HostRebootOutput, summary=summary, retry=_ONCE
        )

    async def _set_cordon(self, cordoned: bool) -> None:
        """Cordon or uncordon the node: one short Kubernetes call, run as a local activity on this (the cluster)
        worker, which has the Kubernetes activities. It needs no task of its own on the queue and no workflow task
        of its own: its result is recorded with the workflow task that asked for it, a third fewer round trips
        per node than as a regular activity (docs/benchmarks.md). Retries back off as a regular activity's do."""
        name, summary = ("cordon_node", "cordon") if cordoned else ("uncordon_node", "uncordon")
        self._step = summary
        await _cancellable(
            name,
            NodeRef(node=self._inp.node),
            # Runs begun before this change cordoned with regular activities; they replay that way.
            local=workflow.patched(PATCH_LOCAL_CORDON),
            result_type=NodeInfo,
            start_to_close_timeout=timedelta(seconds=30),
            retry_policy=_CLUSTER_RETRY,
            summary=f"{self._inp.node}: {summary}",
        )

    # ---------------------------------------------------------------------------------------- the run

    @workflow.run
    async def run(self, inp: NodeUpgradeInput) -> NodeUpgradeResult:
        self._input = inp
        try:
            return await self._upgrade()
        except NodeFailed as failed:
            self._step = f"failed: {failed}"
            return NodeUpgradeResult(node=inp.node, outcome="failed", message=str(failed))

    async def _upgrade(self) -> NodeUpgradeResult:
        inp = self._inp
        source = ImageSource.from_spec(inp.spec)
        status = await self._preflight(source)
        if status.trial:
            await self._undo_trial(status)
            status = await self._preflight(source)
            if status.trial:
                raise NodeFailed(f"the host still runs slot {status.booted_slot} uncommitted after returning it")
        old_slot: SlotName = status.booted_slot
        booted = status.slots[old_slot].os_release
        from_version = booted.pretty_name if booted else ""
        if from_version == inp.target_version:
            return NodeUpgradeResult(
                node=inp.node,
                outcome="up_to_date",
                message=self._with_note(f"already runs {from_version}"),
                from_version=from_version,
                version=from_version,
                booted_slot=old_slot,
            )

        target_slot, checksum = await self._prepare_slot(source)
        await self._set_cordon(True)
        try:
            return await self._switch(old_slot, target_slot, checksum, from_version)
        except asyncio.CancelledError:
            # The rollout was cancelled mid-node: leave the host on the slot it ran before, then re-raise so the
            # run ends as cancelled. Activities started here are not cancelled themselves.
            if self._boot_touched and not self._committed:
                await self._restore(old_slot, reboot_if_needed=True)
            raise
        finally:
            # Whatever happened after the cordon, the node goes back into service: either on the new slot, or on
            # the old one it never left (or was returned to).
            await self._set_cordon(False)

    async def _preflight(self, source: ImageSource) -> HostStatus:
        try:
            pre = await self._host(
                "host_preflight",
                HostPreflightInput(source=source, opstype=self._inp.spec.opstype),
                HostPreflightOutput,
                summary="preflight",
            )
        except ActivityError as exc:
            raise NodeFailed(f"preflight: {_reason(exc)}") from exc
        return pre.status

    async def _undo_trial(self, status: HostStatus) -> None:
        """Return a host that runs an uncommitted trial boot to its committed slot, before anything else.

        Such a trial was abandoned: a rollout runs one NodeUpgrade per node and rollouts over the same nodes take
        turns, so the one that asked for it has given up (typically the host came back only after the boot
        timeout). Its next reboot returns the node to the committed slot, and staging now would overwrite that
        slot, the only committed one. So the trial is ended as the host ends it at its deadline, only now and with
        the node drained first: the committed slot becomes the only boot choice and the host reboots into it.
        The node is then upgraded from there like any other; when the trial held this same image, the stage finds
        it verified in place and downloads nothing.

        Committing the trial instead, when it runs the target version, would save two reboots but needs a second
        path (its own health gate, a race with the host's deadline), and a trial of another version would still
        need this one. One path is simpler, and this fault is rare.
        """
        committed = status.inactive_slot  # two slots: GRUB's default is the one not running
        release = status.slots[status.booted_slot].os_release
        trial = f"{release.pretty_name if release else 'an unreadable root'} in slot {status.booted_slot}"
        await self._set_cordon(True)
        try:
            await self._drain()
            try:
                await self._return_to(committed, reboot_if_needed=True)
            except ActivityError as exc:
                raise NodeFailed(
                    f"the host runs an uncommitted trial boot of {trial}; returning it to slot {committed} "
                    f"failed: {_reason(exc)}"
                ) from exc
        finally:
            await self._set_cordon(False)
        self._note = f"first returned from an uncommitted trial boot of {trial} to slot {committed}"

    def _with_note(self, message: str) -> str:
        return f"{message}; {self._note}" if self._note else message

    async def _prepare_slot(self, source: ImageSource) -> tuple[SlotName, str]:
        """Put the target version into the inactive slot (stage) or check that it is there (switch)."""
        inp = self._inp
        if inp.mode == NodeMode.SWITCH:
            try:
                prep = await self._host(
                    "host_prepare_rollback",
                    HostPrepareRollbackInput(osversion=inp.target_version),
                    HostPrepareRollbackOutput,
                    summary=f"check the other slot holds {inp.target_version}",
                )
            except ActivityError as exc:
                raise NodeFailed(f"rollback: {_reason(exc)}") from exc
            return prep.target_slot, ""
        try:
            staged = await self._host(
                "host_stage",
                HostStageInput(source=source),
                HostStageOutput,
                summary=f"stage {inp.target_version}",
                start_to_close=_STAGE_TIMEOUT,
                heartbeat=timedelta(seconds=60),
            )
        except ActivityError as exc:
            raise NodeFailed(f"stage: {_reason(exc)}") from exc
        release = staged.os_release
        if release is not None and release.pretty_name != inp.target_version:
            # The node would boot and report another osImage forever (the original's reboot loop): stop here.
            raise NodeFailed(
                f"stage: the image holds {release.pretty_name or 'no PRETTY_NAME'!r}, "
                f"not {inp.target_version!r}; the node was not rebooted"
            )
        return staged.slot, staged.checksum

    async def _switch(
        self, old_slot: SlotName, target_slot: SlotName, checksum: str, from_version: str
    ) -> NodeUpgradeResult:
        inp = self._inp
        await self._drain()

        self._boot_touched = True
        try:
            await self._host(
                "host_trial_boot",
                HostTrialBootInput(
                    target_slot=target_slot,
                    osversion=inp.target_version,
                    checksum=checksum,
                    deadline_seconds=self._trial_deadline_seconds,
                ),
                HostTrialBootOutput,
                summary=f"trial boot slot {target_slot}",
            )
            reboot = await self._reboot(f"trial boot of {inp.target_version} in slot {target_slot}", "reboot")
        except ActivityError as exc:
            await self._restore(old_slot, reboot_if_needed=False)
            raise NodeFailed(f"boot switch: {_reason(exc)}; the node stays on slot {old_slot}") from exc

        # Health gate, part 1: the host's worker is back, in a new boot.
        try:
            back = await self._host(
                "host_await_reboot",
                HostAwaitRebootInput(previous_boot_id=reboot.boot_id),
                HostAwaitRebootOutput,
                summary="wait for the host to come back",
                retry=RetryPolicy(
                    initial_interval=timedelta(seconds=1),
                    maximum_interval=timedelta(seconds=5),
                    non_retryable_error_types=_HOST_NON_RETRYABLE,
                ),
                schedule_to_close=self._boot_timeout,
            )
        except ActivityError as exc:
            raise NodeFailed(
                f"the host did not come back within {inp.spec.boottimeout}s after the reboot ({_reason(exc)}); "
                f"slot {old_slot} is still its saved boot entry"
            ) from exc
        if back.status.booted_slot != target_slot:
            await self._restore(old_slot, reboot_if_needed=False)
            raise NodeFailed(
                f"slot {target_slot} ({inp.target_version}) failed to boot; the host fell back to slot "
                f"{back.status.booted_slot} ({from_version})"
            )

        # Health gate, part 2: Kubernetes sees a Ready node on the target version.
        try:
            await self._cluster(
                "wait_node_ready",
                WaitNodeInput(node=inp.node, os_image=inp.target_version, timeout_seconds=inp.spec.boottimeout),
                NodeInfo,
                summary=f"wait for Ready with {inp.target_version}",
                start_to_close=self._boot_timeout + timedelta(seconds=60),
                heartbeat=timedelta(seconds=30),
            )
        except ActivityError as exc:
            await self._restore(old_slot, reboot_if_needed=True)
            raise NodeFailed(
                f"health gate: {_reason(exc)}; the node was returned to slot {old_slot} ({from_version})"
            ) from exc

        try:
            commit = await self._host(
                "host_commit",
                HostCommitInput(slot=target_slot, osversion=inp.target_version),
                HostCommitOutput,
                summary=f"commit slot {target_slot}",
            )
        except ActivityError as exc:
            # E.g. TrialExpired: the host has undone the trial by itself. Make sure it is back before uncordoning.
            await self._restore(old_slot, reboot_if_needed=True)
            raise NodeFailed(
                f"commit: {_reason(exc)}; the node was returned to slot {old_slot} ({from_version})"
            ) from exc
        self._committed = True
        self._step = "done"
        return NodeUpgradeResult(
            node=inp.node,
            outcome="succeeded",
            message=self._with_note(f"{from_version} -> {inp.target_version} (slot {old_slot} -> {commit.saved_slot})"),
            from_version=from_version,
            version=inp.target_version,
            booted_slot=target_slot,
        )

    async def _drain(self) -> None:
        inp = self._inp
        drain_timeout = inp.spec.draintimeout
        try:
            await self._cluster(
                "drain_node",
                DrainInput(node=inp.node, timeout_seconds=drain_timeout, force=inp.spec.evictpodforce),
                DrainResult,
                summary="drain",
                start_to_close=timedelta(seconds=drain_timeout + 60),
                heartbeat=timedelta(seconds=30),
            )
        except ActivityError as exc:
            raise NodeFailed(f"drain: {_reason(exc)}; the node was not rebooted") from exc

    async def _restore(self, old_slot: SlotName, *, reboot_if_needed: bool) -> None:
        """Make ``old_slot`` the only boot choice again, rebooting into it when the host runs another slot.

        Best effort by design: the trial boot never changed ``saved_entry``, so a host we cannot reach still
        comes back on ``old_slot`` the next time it starts (and undoes the trial itself at its deadline).
        """
        try:
            await self._return_to(old_slot, reboot_if_needed=reboot_if_needed)
        except ActivityError as exc:
            workflow.logger.warning("could not return %s to slot %s: %s", self._inp.node, old_slot, _reason(exc))

    async def _return_to(self, slot: SlotName, *, reboot_if_needed: bool) -> None:
        """``slot`` becomes the saved entry with no one-time boot pending; with ``reboot_if_needed``, a host that
        runs the other slot is rebooted into it and awaited. Raises ``ActivityError`` when a step fails."""
        back = await self._host(
            "host_switch_back",
            HostSwitchBackInput(slot=slot),
            HostSwitchBackOutput,
            summary=f"switch back to slot {slot}",
        )
        if back.reboot_needed and reboot_if_needed:
            reboot = await self._reboot(f"return to slot {slot}", "reboot into the old slot")
            await self._host(
                "host_await_reboot",
                HostAwaitRebootInput(previous_boot_id=reboot.boot_id),
                HostAwaitRebootOutput,
                summary="wait for the host to come back",
                retry=RetryPolicy(initial_interval=timedelta(seconds=1), maximum_interval=timedelta(seconds=5)),
                schedule_to_close=self._boot_timeout,
            )
