"""Replaying workflow histories with today's workflow code: a change that would break running rollouts fails here.

Histories come from real runs: ``tests/workflows/histories/*.json`` (recorded by ``record_histories.py``) and,
in the end-to-end tests, the runs those tests have just made.
"""

from __future__ import annotations

from pathlib import Path

from temporalio.client import Client, WorkflowHistory
from temporalio.worker import Replayer

from workers.cluster_worker import WORKFLOWS
from workers.temporal_client import data_converter

HISTORIES = Path(__file__).parent / "histories"


def replayer() -> Replayer:
    """The workflows exactly as the cluster worker registers them, with its data converter."""
    return Replayer(workflows=list(WORKFLOWS), data_converter=data_converter())


async def replay(history: WorkflowHistory) -> None:
    """Raises (e.g. ``temporalio.workflow.NondeterminismError``) when the code no longer matches the history."""
    await replayer().replay_workflow(history)


async def fetch(client: Client, workflow_id: str) -> WorkflowHistory:
    return await client.get_workflow_handle(workflow_id).fetch_history()


def file_name(workflow_id: str) -> str:
    """Where a workflow's history is kept: its id (which the code reads, e.g. for child ids) names the file."""
    return workflow_id.replace("/", "__") + ".json"


def load(path: Path) -> WorkflowHistory:
    """A history file as ``temporal workflow show -o json`` or ``WorkflowHistory.to_json()`` writes it, named by
    :func:`file_name`."""
    return WorkflowHistory.from_json(path.stem.replace("__", "/"), path.read_text(encoding="utf-8"))
