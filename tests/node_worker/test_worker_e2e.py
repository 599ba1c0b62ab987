"""End to end: the simulated machine (``host sim-run``) runs the real node worker against a real Temporal dev server,
and a tiny workflow drives an upgrade through the node activities, reboot included."""

from __future__ import annotations

import subprocess
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

import pytest
from pydantic import BaseModel
from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import UnsandboxedWorkflowRunner, Worker

from devstack.image_server import ImageServer
from models.host import (
    HostAwaitRebootInput,
    HostAwaitRebootOutput,
    HostCommitInput,
    HostCommitOutput,
    HostPreflightInput,
    HostPreflightOutput,
    HostRebootInput,
    HostRebootOutput,
    HostReportInput,
    HostReportOutput,
    HostStageInput,
    HostStageOutput,
    HostTrialBootInput,
    HostTrialBootOutput,
    ImageSource,
    node_task_queue,
)
from tests.node_worker.conftest import NEW, Image, Pki, SimHost, disk_source, make_sim_host, sim_run

NODE = "e2e-node"
ResultT = TypeVar("ResultT", bound=BaseModel)
QUICK = timedelta(seconds=60)


class UpgradeInput(BaseModel):
    node: str
    source: ImageSource


class UpgradeResult(BaseModel):
    preflight: HostPreflightOutput
    stage: HostStageOutput
    trial: HostTrialBootOutput
    reboot: HostRebootOutput
    after: HostAwaitRebootOutput
    commit: HostCommitOutput
    report: HostReportOutput


@workflow.defn(sandboxed=False)
class TinyUpgrade:
    """The node steps of an upgrade, in order, on the node's own queue."""

    queue = ""

    async def _host(self, name: str, arg: BaseModel, result_type: type[ResultT], **options: Any) -> ResultT:
        """One node activity on the node's queue; one attempt and QUICK unless ``options`` say otherwise."""
        merged: dict[str, Any] = {"start_to_close_timeout": QUICK, "retry_policy": RetryPolicy(maximum_attempts=1)}
        result: ResultT = await workflow.execute_activity(
            name, arg, result_type=result_type, task_queue=self.queue, **(merged | options)
        )
        return result

    @workflow.run
    async def run(self, inp: UpgradeInput) -> UpgradeResult:
        self.queue = node_task_queue(inp.node)
        pre = await self._host("host_preflight", HostPreflightInput(source=inp.source), HostPreflightOutput)
        stage = await self._host(
            "host_stage", HostStageInput(source=inp.source), HostStageOutput, heartbeat_timeout=timedelta(seconds=20)
        )
        trial = await self._host(
            "host_trial_boot",
            HostTrialBootInput(target_slot=pre.target_slot, osversion=inp.source.osversion, checksum=stage.checksum),
            HostTrialBootOutput,
        )
        reboot = await self._host("host_reboot", HostRebootInput(reason="e2e"), HostRebootOutput)
        after = await self._host(
            "host_await_reboot",
            HostAwaitRebootInput(previous_boot_id=reboot.boot_id),
            HostAwaitRebootOutput,
            schedule_to_close_timeout=timedelta(seconds=120),
            retry_policy=RetryPolicy(
                initial_interval=timedelta(milliseconds=300),
                backoff_coefficient=1.5,
                maximum_interval=timedelta(seconds=2),
            ),
        )
        commit = await self._host(
            "host_commit",
            HostCommitInput(slot=after.status.booted_slot, osversion=inp.source.osversion),
            HostCommitOutput,
        )
        report = await self._host("host_report", HostReportInput(), HostReportOutput)
        return UpgradeResult(
            preflight=pre, stage=stage, trial=trial, reboot=reboot, after=after, commit=commit, report=report
        )


@pytest.fixture
def running_machine(tmp_path: Path, pki: Pki, temporal_env: WorkflowEnvironment) -> Iterator[SimHost]:
    host = make_sim_host(tmp_path / "machine", pki)
    target = temporal_env.client.service_client.config.target_host
    with sim_run(host, NODE, target, 0.3, stdin=subprocess.DEVNULL) as proc:
        deadline = time.monotonic() + 60
        while not ((s := host.machine_state()) and s.running and s.boots == 1):
            assert time.monotonic() < deadline, "the machine did not boot"
            assert proc.poll() is None, "sim-run exited"
            time.sleep(0.1)
        yield host
    assert proc.returncode == 0  # SIGTERM stops the machine cleanly


@pytest.mark.slow
async def test_upgrade_with_reboot_through_a_real_node_worker(
    temporal_env: WorkflowEnvironment, running_machine: SimHost, https_server: ImageServer, new_image: Image
) -> None:
    host = running_machine
    first = host.machine_state()
    assert first is not None
    source = disk_source(https_server.url(new_image.name), new_image)
    queue = f"e2e-{uuid.uuid4()}"
    async with Worker(
        temporal_env.client, task_queue=queue, workflows=[TinyUpgrade], workflow_runner=UnsandboxedWorkflowRunner()
    ):
        result = await temporal_env.client.execute_workflow(
            TinyUpgrade.run,
            UpgradeInput(node=NODE, source=source),
            id=f"e2e-{uuid.uuid4()}",
            task_queue=queue,
            execution_timeout=timedelta(minutes=5),
        )

    assert result.preflight.status.booted_slot == "A" and result.preflight.target_slot == "B"
    assert result.stage.checksum == new_image.sha256 and not result.stage.reused
    assert result.trial.grubenv == {"saved_entry": "A", "next_entry": "B"}
    assert result.reboot.boot_id == first.boot_id
    after = result.after.status
    assert after.boot_id != first.boot_id and after.booted_slot == "B" and after.trial
    assert after.slots["B"].os_release is not None and after.slots["B"].os_release.pretty_name == NEW
    assert result.commit.saved_slot == "B" and result.commit.grubenv == {"saved_entry": "B"}
    assert not result.report.status.trial and result.report.status.booted_slot == "B"
    state = host.machine_state()
    assert state is not None and state.running and state.boots == 2 and state.booted_slot == "B"
    assert state.pretty_name == NEW and state.boot_id == after.boot_id
    log = host.node_log()
    assert "rebooting (e2e)" in log and "committed slot B" in log
