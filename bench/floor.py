"""The floors of the rollout-overhead benchmark: as many no-op activities as a rollout executes, run bare.

``BenchFloor`` (the flat floor) runs ``chains`` sequences of no-op activities side by side, one activity after the
other in each sequence, as a rollout runs ``maxunavailable`` nodes side by side and each node's steps one after
the other. It has none of the rollout's own work: no child workflows, no plan, no state, no status, payloads of one
integer; and one workflow task can answer many sequences at once.

``BenchFleetFloor`` (the per-node floor) keeps the rollout's shape and nothing else: a parent that runs one child
workflow per node, ``window`` at a time, each child running its no-op activities one after the other. The
difference between the two floors is what one workflow per node costs; the difference between the per-node floor
and the rollout is what our own code costs.

The activities go to their own task queue, as host activities go to a node's queue (an activity on the
workflow's own queue could be handed over eagerly, which no host activity can be).
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

from pydantic import BaseModel
from temporalio import activity, workflow

FLOOR_WORKFLOW = "BenchFloor"
FLEET_FLOOR_WORKFLOW = "BenchFleetFloor"
NODE_FLOOR_WORKFLOW = "BenchNodeFloor"
FLOOR_TASK_QUEUE = "bench-floor"
FLOOR_ACTIVITY_QUEUE = "bench-floor-activities"
#: Activities per flat floor workflow: a few events each keeps every floor history under Temporal's 10,240 warning.
MAX_ACTIVITIES_PER_WORKFLOW = 1500
#: Nodes one per-node no-op parent can run without continuing as new (about six events each).
MAX_FLEET_FLOOR_NODES = 1500
_TIMEOUT = timedelta(minutes=1)


class FloorInput(BaseModel):
    chains: int
    activities: int
    #: how many of ``activities`` run as local activities (as many as the rollout ran locally)
    local: int = 0


class FleetFloorInput(BaseModel):
    nodes: int
    steps: int
    window: int
    local_steps: int = 0


class NodeFloorInput(BaseModel):
    steps: int
    local_steps: int = 0


@activity.defn(name="bench_noop")
async def noop(step: int) -> int:
    return step


def split(total: int, parts: int) -> list[int]:
    """``total`` as ``parts`` near-equal non-negative shares."""
    base, extra = divmod(total, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


def plan(activities: int, chains: int, local: int = 0) -> list[FloorInput]:
    """The flat floor workflows for ``activities`` activities (``local`` of them local) in ``chains`` side-by-side
    sequences (at least one chain per workflow)."""
    workflows = max(1, -(-activities // MAX_ACTIVITIES_PER_WORKFLOW))
    per_workflow = split(activities, workflows)
    local_each = split(local, workflows)
    chains_each = split(max(chains, workflows), workflows)
    return [
        FloorInput(chains=c, activities=a, local=min(lo, a))
        for c, a, lo in zip(chains_each, per_workflow, local_each, strict=True)
    ]


def local_steps(length: int, local: int) -> list[bool]:
    """Which of ``length`` steps are local activities: ``local`` of them, spread evenly, each after a regular one
    where it can be (as a rollout's cordon follows its stage), so that it rides on that one's workflow task."""
    local = min(local, length)
    return [(i + 1) * local // length > i * local // length for i in range(length)]


async def _sequence(length: int, local: int = 0) -> None:
    for step, is_local in enumerate(local_steps(length, local)):
        if is_local:
            await workflow.execute_local_activity(noop, step, start_to_close_timeout=_TIMEOUT)
        else:
            await workflow.execute_activity(
                noop, step, task_queue=FLOOR_ACTIVITY_QUEUE, start_to_close_timeout=_TIMEOUT
            )


@workflow.defn(name=FLOOR_WORKFLOW)
class BenchFloor:
    @workflow.run
    async def run(self, inp: FloorInput) -> int:
        lengths = split(inp.activities, inp.chains)
        locals_ = split(inp.local, inp.chains)
        await asyncio.gather(*(_sequence(length, lo) for length, lo in zip(lengths, locals_, strict=True)))
        return inp.activities


@workflow.defn(name=NODE_FLOOR_WORKFLOW)
class BenchNodeFloor:
    @workflow.run
    async def run(self, inp: NodeFloorInput) -> int:
        await _sequence(inp.steps, inp.local_steps)
        return inp.steps


@workflow.defn(name=FLEET_FLOOR_WORKFLOW)
class BenchFleetFloor:
    @workflow.run
    async def run(self, inp: FleetFloorInput) -> int:
        slots = asyncio.Semaphore(inp.window)
        parent = workflow.info().workflow_id

        async def node(index: int) -> int:
            async with slots:
                done: int = await workflow.execute_child_workflow(
                    NODE_FLOOR_WORKFLOW,
                    NodeFloorInput(steps=inp.steps, local_steps=inp.local_steps),
                    id=f"{parent}/{index}",
                    result_type=int,
                )
                return done

        return sum(await asyncio.gather(*(node(i) for i in range(inp.nodes))))
