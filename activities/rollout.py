"""Activities of the rollout itself (not of a node or of Kubernetes): what the worker's environment offers, and
following a node workflow that an earlier run of the rollout started."""

from __future__ import annotations

import asyncio
import contextlib

from temporalio import activity
from temporalio.api.operatorservice.v1 import ListSearchAttributesRequest
from temporalio.client import Client, WorkflowFailureError
from temporalio.exceptions import ApplicationError, ApplicationErrorCategory

from models.rollout import SEARCH_ATTRIBUTES, AwaitNodeUpgradeInput, NodeUpgradeResult, RolloutSettings

#: Seconds between heartbeats while a node workflow runs (the workflow gives a heartbeat timeout of a minute).
HEARTBEAT_EVERY = 15.0


class RolloutActivities:
    """Bound to the worker's client: the workflow cannot ask the server itself (that would be I/O)."""

    def __init__(self, client: Client, web_ui: str = "") -> None:
        self._client = client
        self._web_ui = web_ui

    @activity.defn
    async def rollout_settings(self) -> RolloutSettings:
        """Whether our search attributes are registered: upserting an unknown one would fail every workflow task,
        so a namespace without them still runs rollouts, just without the filters."""
        response = await self._client.operator_service.list_search_attributes(
            ListSearchAttributesRequest(namespace=self._client.namespace)
        )
        registered = set(response.custom_attributes)
        return RolloutSettings(
            search_attributes=all(name in registered for name in SEARCH_ATTRIBUTES), web_ui=self._web_ui
        )

    @activity.defn
    async def await_node_upgrade(self, params: AwaitNodeUpgradeInput) -> NodeUpgradeResult:
        """The result of a NodeUpgrade that a previous run of the rollout started and left running when it
        continued as new. A workflow can only await its own children; this one's parent run has closed. A node
        workflow that ended without a result (failed, terminated, timed out, cancelled) is a failed node."""
        handle = self._client.get_workflow_handle(params.workflow_id, result_type=NodeUpgradeResult)
        beating = asyncio.create_task(_heartbeat_forever())
        try:
            result: NodeUpgradeResult = await handle.result()
            return result
        except WorkflowFailureError as exc:
            return NodeUpgradeResult(node=params.node, outcome="failed", message=f"node workflow ended: {exc.cause}")
        except asyncio.CancelledError:
            details = activity.cancellation_details()
            if details is not None and details.not_found:
                # The run that asked has continued as new in turn (its successor follows the node now) or ended:
                # an expected end, not a failure worth a warning and a traceback in the worker's log.
                raise ApplicationError(
                    f"the rollout run following {params.node} has closed",
                    non_retryable=True,
                    category=ApplicationErrorCategory.BENIGN,
                ) from None
            raise
        finally:
            beating.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await beating


async def _heartbeat_forever() -> None:
    while True:
        activity.heartbeat()
        await asyncio.sleep(HEARTBEAT_EVERY)
