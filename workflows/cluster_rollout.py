"""``ClusterRollout``: one OS resource generation, rolled out over the cluster ``maxunavailable`` nodes at a time.

A sliding window, not batches: the next node starts as soon as any running one finishes, so one slow node does
not hold up the others. Each node runs as a ``NodeUpgrade`` child, which keeps its retries and heartbeats out
of this history and shows every node in the Web UI.

Steering: the ``pause`` / ``resume`` / ``rollback`` signals, the ``set_max_unavailable`` update and the ``status``
query. Past the failure budget the rollout pauses (``failurepolicy: pause``) or rolls back the nodes it already
upgraded (``failurepolicy: rollback``). It continues as new when Temporal suggests it, so a rollout over 10,000
nodes keeps every history small; the children running at that moment carry on (``ParentClosePolicy.ABANDON``) and
the next run follows them (``await_node_upgrade``), so the window stays full across runs instead of emptying
before each. Cancelling the rollout asks every running node to put its host back.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable
from datetime import timedelta
from typing import Any

from temporalio import workflow
from temporalio.common import RetryPolicy, SearchAttributeKey
from temporalio.exceptions import ActivityError, ApplicationError, ChildWorkflowError
from temporalio.workflow import ParentClosePolicy

with workflow.unsafe.imports_passed_through():
    from models.cluster import ListNodesInput, ListNodesResult
    from models.os_resource import SpecInvalid, parse_os_spec
    from models.rollout import (
        NODE_WORKFLOW,
        ROLLOUT_WORKFLOW,
        SA_PHASE,
        SA_TARGET_VERSION,
        TERMINAL_PHASES,
        AwaitNodeUpgradeInput,
        CarriedNode,
        NodeEntry,
        NodeMode,
        NodeState,
        NodeUpgradeInput,
        NodeUpgradeResult,
        Phase,
        RolloutSettings,
        RolloutState,
        RolloutStatus,
        SetMaxUnavailableInput,
        status_from_state,
    )
    from workflows.planning import check_only, label_selector, plan_nodes, seconds_until_open
    from workflows.progress import progress_markdown

#: Temporal allows 2,000 pending children per workflow; keep clear of it.
MAX_WINDOW = 1000
#: Continue as new well before Temporal's 10,240-event warning even if the server never suggests it.
HISTORY_EVENTS_LIMIT = 8000
_PLAN_RETRY = RetryPolicy(initial_interval=timedelta(seconds=2), maximum_interval=timedelta(seconds=30))
#: A node workflow takes at most its stage (3 h), drain and two boot timeouts; following one may take as long.
_FOLLOW_TIMEOUT = timedelta(hours=12)
#: ``workflow.patched`` id. Runs begun before it waited for their children before continuing as new (and their
#: children were cancelled with them by ParentClosePolicy.REQUEST_CANCEL); they replay that way.
PATCH_CARRY_CHILDREN = "carry-children-across-continue-as-new"


@workflow.defn(name=ROLLOUT_WORKFLOW)
class ClusterRollout:
    @workflow.init
    def __init__(self, resource: dict[str, Any], state: RolloutState | None = None) -> None:
        # The state exists before the first signal or query can be handled, so a rollout can be paused the moment
        # it starts. An invalid resource leaves it empty and fails the run.
        self._invalid: SpecInvalid | None = None
        if state is None:
            try:
                spec = parse_os_spec(resource)
            except SpecInvalid as exc:
                self._invalid = exc
            else:
                state = RolloutState(workflow_id=workflow.info().workflow_id, spec=spec, max_unavailable=spec.window)
        self._state = state
        self._running: dict[str, asyncio.Task[None]] = {}
        #: The NodeUpgrade workflow id of each running node (started by this run or carried from the last one).
        self._child_ids: dict[str, tuple[str, bool]] = {}
        #: Whether children outlive this run (see PATCH_CARRY_CHILDREN); set when the run starts.
        self._carry = False
        #: Bumped whenever something the main loop waits on changes (a child ended, a signal arrived).
        self._changes = 0
        #: ``_changes`` when the current details were last set (-1: never).
        self._published = -1

    # ---------------------------------------------------------------------------------------- messages

    @property
    def state(self) -> RolloutState:
        if self._state is None:  # only when the resource is invalid, and the run fails at once
            raise ApplicationError("the rollout has no valid OS resource", type="InvalidSpec")
        return self._state

    @workflow.query
    def status(self) -> RolloutStatus:
        return status_from_state(self.state, list(self._running))

    @workflow.signal
    def pause(self, reason: str = "") -> None:
        """Start no new node; the running ones finish."""
        self.state.paused = True
        self.state.pause_reason = reason or "paused by request"
        self._changed()

    @workflow.signal
    def resume(self) -> None:
        """Go on; failures so far count as acknowledged, so the failure budget starts afresh."""
        state = self.state
        state.paused = False
        state.pause_reason = ""
        state.acknowledged_failures = self._count(NodeState.FAILED)
        self._changed()

    @workflow.signal
    def rollback(self, reason: str = "") -> None:
        """Stop upgrading and return every node this rollout changed to its previous version."""
        state = self.state
        if not state.rollback_requested:
            state.rollback_requested = True
            state.rollback_reason = reason or "rollback requested"
            state.paused = False
        self._changed()

    @workflow.signal
    def supersede(self, by: str = "") -> None:
        """A newer generation of the OS resource replaces this rollout: start no new node, let the running ones
        finish (so two rollouts never work on one node), then end."""
        state = self.state
        state.superseded_by = by or "a newer rollout"
        state.paused = False
        self._changed()

    @workflow.update
    def set_max_unavailable(self, request: SetMaxUnavailableInput) -> int:
        """Change how many nodes may be out of service at once; takes effect for the next node to start."""
        self.state.max_unavailable = request.value
        self._changed()
        return request.value

    @set_max_unavailable.validator
    def _check_max_unavailable(self, request: SetMaxUnavailableInput) -> None:
        if request.value < 1:
            raise ValueError(f"maxunavailable must be at least 1, got {request.value}")
        if request.value > MAX_WINDOW:
            raise ValueError(f"maxunavailable must be at most {MAX_WINDOW}, got {request.value}")
        if self._state is None or self._state.phase in (Phase.ROLLING_BACK,) or self._finished:
            raise ValueError("the rollout is not upgrading nodes any more")

    # ---------------------------------------------------------------------------------------- the run

    @workflow.run
    async def run(self, resource: dict[str, Any], state: RolloutState | None = None) -> RolloutStatus:
        if self._invalid is not None:
            errors = self._invalid.errors
            raise ApplicationError(str(self._invalid), [str(e) for e in errors], type="InvalidSpec", non_retryable=True)
        state = self.state
        self._carry = workflow.patched(PATCH_CARRY_CHILDREN)
        try:
            if not state.planned:
                await self._plan()
            self._follow_carried()
            if state.rollback_requested:
                await self._roll_back()
            else:
                await self._roll_out()
                if state.rollback_requested:
                    await self._roll_back()
        except asyncio.CancelledError:
            if self._carry:
                await self._cancel_running()
            raise
        self._finish()
        await workflow.wait_condition(workflow.all_handlers_finished)
        self._publish_details()
        return self.status()

    async def _plan(self) -> None:
        state = self.state
        settings = await workflow.execute_activity(
            "rollout_settings",
            result_type=RolloutSettings,
            start_to_close_timeout=timedelta(seconds=30),
            retry_policy=_PLAN_RETRY,
            summary="read the worker's settings",
        )
        state.search_attributes = settings.search_attributes
        listed = await workflow.execute_activity(
            "list_nodes",
            ListNodesInput(
                label_selector=label_selector(state.spec), include_control_plane=state.spec.includecontrolplane
            ),
            result_type=ListNodesResult,
            start_to_close_timeout=timedelta(minutes=2),
            retry_policy=_PLAN_RETRY,
            summary="list the nodes",
        )
        state.nodes = plan_nodes(state.spec, listed.nodes)
        state.planned = True
        self._set_phase(Phase.RUNNING)

    async def _roll_out(self) -> None:
        state = self.state
        # Nodes carried from the last run are running already: the pending ones are the work left.
        queue = [e for e in state.nodes if e.state == NodeState.PENDING]
        next_index = 0
        last_start: float | None = None
        while True:
            if state.rollback_requested or state.superseded_by:
                break
            if next_index >= len(queue):
                break
            if self._should_continue_as_new():
                await self._continue_as_new()
            if state.paused:
                self._set_phase(Phase.PAUSED)
                await self._wait_change()
                continue
            if len(self._running) >= max(1, state.max_unavailable):
                await self._wait_change()
                continue
            wait = seconds_until_open(state.spec.timewindow, workflow.now())
            if wait is None:
                for entry in queue[next_index:]:
                    entry.state, entry.message = NodeState.NOT_STARTED, "the time window has closed"
                break
            if wait > 0:
                self._set_phase(Phase.WAITING_FOR_WINDOW)
                await self._wait_change(timeout=wait)
                continue
            entry = queue[next_index]
            paced = not check_only(state.spec, entry)
            interval = state.spec.timeinterval
            if interval and last_start is not None and paced:
                remaining = last_start + interval - workflow.time()
                if remaining > 0:
                    await self._wait_change(timeout=remaining)
                    continue
            self._set_phase(Phase.RUNNING)
            next_index += 1
            if paced:
                last_start = workflow.time()
            self._start_node(entry, NodeMode.UPGRADE if state.spec.opstype == "upgrade" else NodeMode.SWITCH)
        await self._wait_running()
        if state.superseded_by and not state.rollback_requested:
            for entry in queue[next_index:]:
                entry.state, entry.message = NodeState.NOT_STARTED, f"superseded by {state.superseded_by}"

    async def _roll_back(self) -> None:
        """Return every node this rollout moved to its previous version, ``maxunavailable`` at a time."""
        state = self.state
        self._set_phase(Phase.ROLLING_BACK)
        await self._wait_running()
        for entry in state.nodes:
            if entry.state == NodeState.PENDING:
                entry.state, entry.message = NodeState.NOT_STARTED, "the rollout was rolled back first"
        todo = [e for e in state.nodes if e.state in (NodeState.SUCCEEDED, NodeState.ROLLING_BACK) and e.from_version]
        for entry in todo:
            if self._should_continue_as_new():
                await self._continue_as_new()
            while len(self._running) >= max(1, state.max_unavailable):
                await self._wait_change()
            self._start_node(entry, NodeMode.SWITCH, revert=True)
        await self._wait_running()

    # ---------------------------------------------------------------------------------------- children

    def _start_node(self, entry: NodeEntry, mode: NodeMode, *, revert: bool = False) -> None:
        state = self.state
        target = entry.from_version if revert else state.spec.osversion
        entry.state = NodeState.ROLLING_BACK if revert else NodeState.RUNNING
        entry.message = f"to {target}"
        self._running[entry.name] = asyncio.create_task(self._run_node(entry, mode, target, revert))
        self._changed()

    async def _run_node(self, entry: NodeEntry, mode: NodeMode, target: str, revert: bool) -> None:
        state = self.state
        child_id = f"{state.workflow_id}/{entry.name}" + ("/revert" if revert else "")
        self._child_ids[entry.name] = (child_id, revert)
        verb = "revert" if revert else ("upgrade" if mode == NodeMode.UPGRADE else "switch")
        child = workflow.execute_child_workflow(
            NODE_WORKFLOW,
            NodeUpgradeInput(node=entry.name, mode=mode, spec=state.spec, target_version=target),
            id=child_id,
            result_type=NodeUpgradeResult,
            # Children outlive a continue-as-new; cancelling the rollout cancels them (_cancel_running) so
            # that each puts its host back rather than being killed.
            parent_close_policy=ParentClosePolicy.ABANDON if self._carry else ParentClosePolicy.REQUEST_CANCEL,
            static_summary=f"{verb} {entry.name} to {target}",
            static_details=f"Part of rollout `{state.workflow_id}` ({state.spec.summary()}).",
        )
        await self._node_result(entry, revert, child, "node workflow ended")

    def _follow_carried(self) -> None:
        """Follow the nodes the last run left running, as if this run had started them."""
        state = self.state
        entries = {e.name: e for e in state.nodes}
        for carried in state.carried:
            self._child_ids[carried.name] = (carried.child_id, carried.revert)
            self._running[carried.name] = asyncio.create_task(self._follow(entries[carried.name], carried))
        state.carried = []
        if self._running:
            self._changed()

    async def _follow(self, entry: NodeEntry, carried: CarriedNode) -> None:
        """Await a carried node's result through the cluster worker. When this run continues as new in turn, the
        activity ends at its next heartbeat (the next run follows the node afresh); a node that finishes before
        that heartbeat makes the worker log "Activity not found on completion", which is harmless."""
        follow = workflow.execute_activity(
            "await_node_upgrade",
            AwaitNodeUpgradeInput(node=entry.name, workflow_id=carried.child_id),
            result_type=NodeUpgradeResult,
            start_to_close_timeout=_FOLLOW_TIMEOUT,
            heartbeat_timeout=timedelta(minutes=1),
            retry_policy=_PLAN_RETRY,
            summary=f"follow {entry.name} (started by run {self.state.runs - 1})",
        )
        await self._node_result(entry, carried.revert, follow, "could not follow the node workflow")

    async def _node_result(
        self, entry: NodeEntry, revert: bool, result: Awaitable[NodeUpgradeResult], unreachable: str
    ) -> None:
        """Await a running node's result (its child workflow, or the activity following it) and record it; a
        node whose workflow ended without a result is a failed node, ``unreachable`` and the cause its reason."""
        try:
            done = await result
            outcome, message, ran = done.outcome, done.message, done.from_version
        except (ChildWorkflowError, ActivityError) as exc:
            outcome, message, ran = "failed", f"{unreachable}: {exc.cause or exc}", ""
        finally:
            self._running.pop(entry.name, None)
        self._node_done(entry, outcome, message, ran, revert)

    def _node_done(self, entry: NodeEntry, outcome: str, message: str, ran: str, revert: bool) -> None:
        if outcome == "failed":
            entry.state = NodeState.FAILED
            entry.message = f"rollback failed: {message}" if revert else message
            self._apply_failure_budget()
        elif revert:
            entry.state, entry.message = NodeState.ROLLED_BACK, message
        elif outcome == "up_to_date":
            entry.state, entry.message = NodeState.UP_TO_DATE, message
        else:
            entry.state, entry.message = NodeState.SUCCEEDED, message
        if outcome != "failed" and not revert and ran:
            # What the node ran from its committed slot, which a rollback returns it to; the osImage seen at plan
            # time may have been an uncommitted trial's.
            entry.from_version = ran
        self._changed()

    async def _cancel_running(self) -> None:
        """Ask every running node workflow to put its host back (they are not cancelled with this run: they
        would outlive a continue-as-new)."""

        async def cancel(node: str, child_id: str) -> None:
            try:
                await workflow.get_external_workflow_handle(child_id).cancel()
            except Exception as exc:  # it ended meanwhile: nothing to put back
                workflow.logger.info("node workflow of %s not cancelled: %s", node, exc)

        await asyncio.gather(*(cancel(node, self._child_ids[node][0]) for node in list(self._running)))

    def _apply_failure_budget(self) -> None:
        state = self.state
        if state.rollback_requested:
            return
        counted = self._count(NodeState.FAILED) - state.acknowledged_failures
        if counted <= state.spec.failurebudget:
            return
        reason = f"{counted} node(s) failed, more than the failure budget of {state.spec.failurebudget}"
        if state.spec.failurepolicy == "rollback":
            self.rollback(f"automatic rollback: {reason}")
        else:
            state.paused = True
            state.pause_reason = f"{reason}; resume to go on, or roll back"

    async def _wait_running(self) -> None:
        while self._running:
            await self._wait_change()

    async def _wait_change(self, timeout: float | None = None) -> None:
        self._publish_details()
        seen = self._changes
        with contextlib.suppress(TimeoutError):
            await workflow.wait_condition(lambda: self._changes != seen, timeout=timeout)

    def _changed(self) -> None:
        self._changes += 1

    def _publish_details(self) -> None:
        """The Web UI's "current details": the progress table, rebuilt once per wait rather than per change.

        It costs a pass over every node, and one workflow task can carry hundreds of changes (a window of 1,000
        nodes starting, a burst of children ending): every wait comes after the changes it waits past, so the
        table is current whenever the workflow is idle, which is when anyone can read it."""
        if self._state is not None and self._changes != self._published:
            self._published = self._changes
            workflow.set_current_details(progress_markdown(self.status()))

    # ---------------------------------------------------------------------------------------- bookkeeping

    def _count(self, node_state: NodeState) -> int:
        return sum(1 for e in self.state.nodes if e.state == node_state)

    @property
    def _finished(self) -> bool:
        return self._state is not None and self._state.phase in TERMINAL_PHASES

    def _finish(self) -> None:
        state = self.state
        # A budget that trips on the last node pauses nothing any more: the rollout is over.
        state.paused, state.pause_reason = False, ""
        if state.rollback_requested:
            self._set_phase(Phase.ROLLED_BACK)
        elif state.superseded_by:
            self._set_phase(Phase.SUPERSEDED)
        elif self._count(NodeState.FAILED):
            self._set_phase(Phase.COMPLETED_WITH_FAILURES)
        else:
            self._set_phase(Phase.SUCCEEDED)

    def _set_phase(self, phase: Phase) -> None:
        state = self.state
        if state.phase == phase:
            return
        state.phase = phase
        if state.search_attributes:
            workflow.upsert_search_attributes(
                [
                    SearchAttributeKey.for_keyword(SA_PHASE).value_set(phase.value),
                    SearchAttributeKey.for_keyword(SA_TARGET_VERSION).value_set(state.spec.osversion),
                ]
            )
        self._changed()

    def _should_continue_as_new(self) -> bool:
        info = workflow.info()
        return info.is_continue_as_new_suggested() or info.get_current_history_length() > HISTORY_EVENTS_LIMIT

    async def _continue_as_new(self) -> None:
        """Start a fresh run carrying the state and the running nodes, which it follows (never returns)."""
        if not self._carry:
            await self._wait_running()
        await workflow.wait_condition(workflow.all_handlers_finished)
        state = self.state
        state.carried = [
            CarriedNode(name=node, child_id=child_id, revert=revert)
            for node, (child_id, revert) in self._child_ids.items()
            if node in self._running
        ]
        state.runs += 1
        workflow.continue_as_new(args=[{}, state])
