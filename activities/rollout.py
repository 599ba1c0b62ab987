"""Activities of the rollout itself (not of a node or of Kubernetes): what the worker's environment offers."""

from __future__ import annotations

from temporalio import activity
from temporalio.api.operatorservice.v1 import ListSearchAttributesRequest
from temporalio.client import Client

from models.rollout import SEARCH_ATTRIBUTES, RolloutSettings


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
