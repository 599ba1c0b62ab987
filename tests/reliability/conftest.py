"""The fault suite runs on the end-to-end tests' shared stack (``tests/e2e/conftest.py``; one instance for this
package, stopped after its last test), with the boot audit watching every host from the start."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator

import pytest

from tests.e2e.cluster import E2ECluster
from tests.e2e.conftest import e2e, e2e_cluster, e2e_stack
from tests.reliability.harness import Chaos
from tests.reliability.results import record_run

__all__ = ["e2e", "e2e_cluster", "e2e_stack"]  # fixtures reused from the end-to-end tests


@pytest.fixture(scope="package")
async def suite(e2e_cluster: E2ECluster) -> AsyncIterator[Chaos]:
    chaos = Chaos(e2e_cluster)
    chaos.audit.start()
    try:
        yield chaos
    finally:
        chaos.audit.stop()


@pytest.fixture
def chaos(suite: Chaos, e2e: E2ECluster) -> Chaos:
    """The suite's stack, checked whole before and after each test (``e2e``)."""
    return suite


@pytest.fixture(scope="package", autouse=True)
def suite_clock(request: pytest.FixtureRequest) -> Iterator[None]:
    """The suite's wall time, for the report (recorded only when results are collected)."""
    started = time.monotonic()
    yield
    args = " ".join(request.config.invocation_params.args) or "tests/reliability"
    record_run(time.monotonic() - started, f"pytest {args}")
