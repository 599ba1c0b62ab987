"""``kubeos-rollout start | status | pause | resume | rollback | set-max-unavailable``: steer rollouts.

The same can be done with the ``temporal`` CLI (``temporal workflow start --type ClusterRollout ...``); these
commands add validation before anything starts, readable output and stable workflow ids.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import sys
from typing import Any

from temporalio.client import Client, WorkflowHandle, WorkflowUpdateFailedError
from temporalio.common import WorkflowIDConflictPolicy, WorkflowIDReusePolicy
from temporalio.service import RPCError

from models.os_resource import check_os_document
from models.rollout import (
    CLUSTER_TASK_QUEUE,
    ROLLOUT_WORKFLOW,
    RolloutStatus,
    SetMaxUnavailableInput,
    resource_identity,
)
from models.yaml_docs import DocumentError, load_documents
from workers.temporal_client import connect
from workflows.progress import progress_markdown


def rollout_workflow_id(resource: dict[str, Any], generation: int | None = None) -> str:
    """``kubeos/<namespace>/<name>/g<generation>`` for a stored resource, else a digest of the spec: the same
    resource started twice is one rollout, a changed one is a new rollout."""
    namespace, name = resource_identity(resource)
    if generation is not None:
        return f"kubeos/{namespace}/{name}/g{generation}"
    spec = resource.get("spec", resource)
    digest = hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()[:12]
    return f"kubeos/{namespace or 'default'}/{name or 'spec'}/{digest}"


async def start_rollout(client: Client, resource: dict[str, Any], workflow_id: str) -> WorkflowHandle[Any, Any]:
    """Start (or find, when already running with this id) the rollout of ``resource``."""
    report = check_os_document(resource)
    summary = report.spec.summary() if report.spec else "invalid OS resource"
    return await client.start_workflow(
        ROLLOUT_WORKFLOW,
        resource,
        id=workflow_id,
        task_queue=CLUSTER_TASK_QUEUE,
        id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE_FAILED_ONLY,
        id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
        static_summary=summary,
        static_details=f"OS resource `{workflow_id}`",
    )


def register(sub: Any) -> None:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--address", help="Temporal frontend host:port (default: TEMPORAL_ADDRESS or profile)")
    common.add_argument("--namespace", help="Temporal namespace")

    start = sub.add_parser("start", parents=[common], help="validate an OS resource file and start its rollout")
    start.add_argument("-f", "--file", required=True, help="YAML file with one OS resource (or - for stdin)")
    start.add_argument("--id", help="workflow id (default: derived from the resource)")
    start.add_argument("--wait", action="store_true", help="wait for the rollout to finish, showing progress")
    start.set_defaults(handler=lambda a: asyncio.run(_start(a)))

    for name, text in (
        ("status", "show a rollout's progress"),
        ("pause", "start no new node; running ones finish"),
        ("resume", "go on after a pause (failures so far are acknowledged)"),
        ("rollback", "stop and return the nodes this rollout changed to their previous version"),
    ):
        p = sub.add_parser(name, parents=[common], help=text)
        p.add_argument("workflow_id", metavar="WORKFLOW_ID")
        if name == "status":
            p.add_argument("--json", action="store_true", help="machine-readable output")
        if name in ("pause", "rollback"):
            p.add_argument("--reason", default="", help="recorded in the rollout's status")
        p.set_defaults(handler=lambda a: asyncio.run(_steer(a)))

    smu = sub.add_parser("set-max-unavailable", parents=[common], help="change a running rollout's window")
    smu.add_argument("workflow_id", metavar="WORKFLOW_ID")
    smu.add_argument("value", type=int)
    smu.set_defaults(handler=lambda a: asyncio.run(_steer(a)))


async def _start(args: argparse.Namespace) -> int:
    try:
        documents = load_documents(args.file)
    except DocumentError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if len(documents) != 1:
        print(f"error: {args.file}: expected one OS resource, found {len(documents)}", file=sys.stderr)
        return 2
    body = documents[0].body
    report = check_os_document(body)
    if not report.valid:
        for error in report.errors:
            print(f"error: {error}", file=sys.stderr)
        return 2
    client = await connect(args.address, args.namespace)
    workflow_id = args.id or rollout_workflow_id(body)
    handle = await start_rollout(client, body, workflow_id)
    print(f"started {ROLLOUT_WORKFLOW} {handle.id} (run {handle.result_run_id})")
    if not args.wait:
        return 0
    return await _follow(client.get_workflow_handle(handle.id, result_type=RolloutStatus))


async def _follow(handle: WorkflowHandle[Any, RolloutStatus]) -> int:
    result_task = asyncio.ensure_future(handle.result())
    last = ""
    while not result_task.done():
        try:
            status = await handle.query("status", result_type=RolloutStatus)
            line = f"{status.phase}: {status.progress} {dict(sorted(status.counts.items()))}"
            if line != last:
                print(line, flush=True)
                last = line
        except RPCError:
            pass
        await asyncio.wait({result_task}, timeout=1.0)
    final: RolloutStatus = result_task.result()
    print(progress_markdown(final))
    return 0 if final.phase == "Succeeded" else 1


async def _steer(args: argparse.Namespace) -> int:
    client = await connect(args.address, args.namespace)
    handle = client.get_workflow_handle(args.workflow_id)
    try:
        if args.command == "status":
            status = await handle.query("status", result_type=RolloutStatus)
            print(status.model_dump_json(indent=2) if args.json else progress_markdown(status))
        elif args.command in ("pause", "rollback"):
            await handle.signal(args.command, args.reason)
            print(f"{args.command} sent to {args.workflow_id}")
        elif args.command == "resume":
            await handle.signal("resume")
            print(f"resume sent to {args.workflow_id}")
        else:
            value = await handle.execute_update(
                "set_max_unavailable", SetMaxUnavailableInput(value=args.value), result_type=int
            )
            print(f"maxunavailable of {args.workflow_id} is now {value}")
    except RPCError as exc:
        print(f"error: {args.workflow_id}: {exc.message}", file=sys.stderr)
        return 1
    except WorkflowUpdateFailedError as exc:
        print(f"error: {args.workflow_id}: refused: {exc.cause}", file=sys.stderr)
        return 1
    return 0
