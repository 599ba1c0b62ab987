"""The floor of the rollout-overhead benchmark: as many no-op activities as a rollout executes, run bare.

``BenchFloor`` runs ``chains`` sequences of no-op activities side by side, one activity after the other in each
sequence, as a rollout runs ``maxunavailable`` nodes side by side and each node's steps one after the other. It
has none of the rollout's own work: no child workflows, no plan, no state, no status, payloads of one integer.
The activities go to their own task queue, as host activities go to a node's queue (an activity on the
workflow's own queue could be handed over eagerly, which no host activity can be).
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

from pydantic import BaseModel
from temporalio import activity, workflow

FLOOR_WORKFLOW = "BenchFloor"
FLOOR_TASK_QUEUE = "bench-floor"
FLOOR_ACTIVITY_QUEUE = "bench-floor-activities"
#: Activities per floor workflow: a few events each keeps every floor history under Temporal's 10,240 warning.
MAX_ACTIVITIES_PER_WORKFLOW = 1500


class FloorInput(BaseModel):
    chains: int
    activities: int


@activity.defn(name="bench_noop")
async def noop(step: int) -> int:
    return step


def split(total: int, parts: int) -> list[int]:
    """``total`` as ``parts`` near-equal non-negative shares."""
    base, extra = divmod(total, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


def plan(activities: int, chains: int) -> list[FloorInput]:
    """The floor workflows for ``activities`` activities in ``chains`` side-by-side sequences (at least one chain
    per workflow)."""
    workflows = max(1, -(-activities // MAX_ACTIVITIES_PER_WORKFLOW))
    per_workflow = split(activities, workflows)
    chains_each = split(max(chains, workflows), workflows)
    return [FloorInput(chains=c, activities=a) for c, a in zip(chains_each, per_workflow, strict=True)]


@workflow.defn(name=FLOOR_WORKFLOW)
class BenchFloor:
    @workflow.run
    async def run(self, inp: FloorInput) -> int:
        async def chain(length: int) -> None:
            for step in range(length):
                await workflow.execute_activity(
                    noop, step, task_queue=FLOOR_ACTIVITY_QUEUE, start_to_close_timeout=timedelta(minutes=1)
                )

        await asyncio.gather(*(chain(length) for length in split(inp.activities, inp.chains)))
        return inp.activities
