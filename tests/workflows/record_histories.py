"""Record the histories ``test_replay.py`` replays, from a real run on the embedded stack.

    .venv/bin/python -m tests.workflows.record_histories [--out DIR] [--rollout-id ID]

It starts the dev stack (2 simulated hosts) in a temporary directory and runs one rollout that exercises every
kind of message the rollout takes (``pause`` and ``resume`` signals, the ``set_max_unavailable`` update, ``status``
queries), then writes the history of that rollout (``recorded-rollout.json``) and of its first node's NodeUpgrade
(``recorded-rollout__node-1.json``) to ``tests/workflows/histories/``. About 40 s. A change guarded with
``workflow.patched`` keeps the old files and records new ones beside them under another ``--rollout-id``
(``recorded-rollout-<patch>``), so that both the old and the new path keep replaying.

Refresh them only deliberately: a workflow change that makes the committed histories fail to replay would also
break the rollouts running when it is deployed. Guard such a change with ``workflow.patched(...)`` (then keep
the old histories and add new ones), or drain running rollouts before deploying, and re-record.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
from pathlib import Path

from devstack.stack import DevStack
from models.rollout import NodeState, Phase, SetMaxUnavailableInput
from tests.e2e.cluster import E2ECluster
from tests.workflows.replay import HISTORIES, fetch, file_name, replay
from workers.temporal_client import connect

#: The rollout's workflow id: fixed, so that re-recording replaces the files instead of adding new ones.
ROLLOUT_ID = "recorded-rollout"
NODE = "node-1"
CLUSTER_ROLLOUT_FILE = file_name(ROLLOUT_ID)
NODE_UPGRADE_FILE = file_name(f"{ROLLOUT_ID}/{NODE}")


async def record(out: Path, rollout_id: str = ROLLOUT_ID) -> None:
    with tempfile.TemporaryDirectory(prefix="kubeos-histories-") as state:
        stack = DevStack(Path(state), nodes=2, slot_size=32 * 1024 * 1024, with_registry=False)
        await stack.start()
        try:
            e2e = E2ECluster(stack, await connect(stack.temporal_address))
            names = stack.node_names()
            assert NODE in names
            tag = await e2e.select(names)
            image = await e2e.new_image()
            resource = e2e.os_resource("os-sample", image, tag, maxunavailable=1)
            handle = await e2e.start(resource, workflow_id=rollout_id)
            await e2e.wait_status(handle, lambda s: bool(s.in_flight), "a node in flight")
            await handle.signal("pause", "recording")
            await e2e.wait_status(handle, lambda s: s.phase == Phase.PAUSED and not s.in_flight, "paused")
            await handle.execute_update("set_max_unavailable", SetMaxUnavailableInput(value=2), result_type=int)
            await handle.signal("resume")
            result = await e2e.result(handle)
            if result.counts != {NodeState.SUCCEEDED: len(names)}:
                raise SystemExit(f"the recorded rollout did not succeed: {result}")
            histories = [await fetch(e2e.client, handle.id), await fetch(e2e.client, f"{handle.id}/{NODE}")]
        finally:
            await stack.stop()
    out.mkdir(parents=True, exist_ok=True)
    for history in histories:
        await replay(history)  # never commit a history today's code cannot replay
        path = out / file_name(history.workflow_id)
        path.write_text(json.dumps(history.to_json_dict(), indent=1) + "\n", encoding="utf-8")
        print(f"wrote {path} ({len(history.events)} events)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=HISTORIES, help=f"where to write (default {HISTORIES})")
    parser.add_argument("--rollout-id", default=ROLLOUT_ID, help=f"the rollout's workflow id (default {ROLLOUT_ID})")
    args = parser.parse_args()
    # Plain payloads: the histories must replay without anyone's encryption key.
    os.environ.pop("KUBEOS_ROLLOUT_CODEC_KEY", None)
    asyncio.run(record(args.out, args.rollout_id))
    return 0


if __name__ == "__main__":
    sys.exit(main())
