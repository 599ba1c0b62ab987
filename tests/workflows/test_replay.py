"""Recorded histories of real runs replay with today's workflow code (no server needed).

A failure here means a change to ``workflows/`` is not compatible with rollouts already running: guard it with
``workflow.patched`` or re-record deliberately (``python -m tests.workflows.record_histories``).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from temporalio.api.enums.v1 import EventType
from temporalio.client import WorkflowHistory
from temporalio.workflow import NondeterminismError

from tests.workflows.record_histories import CLUSTER_ROLLOUT_FILE, NODE_UPGRADE_FILE
from tests.workflows.replay import HISTORIES, load, replay
from workflows.cluster_rollout import PATCH_CARRY_CHILDREN
from workflows.node_upgrade import PATCH_LOCAL_CORDON

RECORDED = sorted(HISTORIES.glob("*.json"))


def test_both_workflows_have_a_recorded_history() -> None:
    assert {CLUSTER_ROLLOUT_FILE, NODE_UPGRADE_FILE} <= {p.name for p in RECORDED}


@pytest.mark.parametrize("path", RECORDED, ids=lambda p: p.stem)
async def test_recorded_history_replays(path: Path) -> None:
    await replay(load(path))


async def test_a_history_the_code_would_not_have_written_fails_to_replay() -> None:
    """The control: replay really compares. Rename the rollout's first activity in its history, as if the
    workflow had called another one, and the replayer must refuse it."""
    history = load(HISTORIES / CLUSTER_ROLLOUT_FILE)
    events = list(history.events)
    first = next(e for e in events if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED)
    first.activity_task_scheduled_event_attributes.activity_type.name = "some_other_activity"
    with pytest.raises(NondeterminismError):
        await replay(WorkflowHistory(history.workflow_id, events))


def _patches(history: WorkflowHistory) -> set[str]:
    """The ``workflow.patched`` ids a history recorded (each a ``core_patch`` marker naming it)."""
    found = set()
    for event in history.events:
        if event.event_type == EventType.EVENT_TYPE_MARKER_RECORDED:
            attributes = event.marker_recorded_event_attributes
            if attributes.marker_name == "core_patch" and "patch-data" in attributes.details:
                found.add(json.loads(attributes.details["patch-data"].payloads[0].data)["id"])
    return found


@pytest.mark.parametrize(
    ("patch", "workflow"), [(PATCH_LOCAL_CORDON, "node"), (PATCH_CARRY_CHILDREN, "rollout")], ids=lambda v: str(v)
)
def test_each_patch_has_a_history_from_before_and_after(patch: str, workflow: str) -> None:
    """Both branches of every ``workflow.patched`` are replayed above: a run from before the change (no marker)
    and one from after (the marker). Node histories are the files named ``<rollout>__<node>``."""
    histories = [load(p) for p in RECORDED if ("__" in p.stem) == (workflow == "node")]
    assert any(patch not in _patches(h) for h in histories)
    assert any(patch in _patches(h) for h in histories)
