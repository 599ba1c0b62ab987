"""The console script's exit: statuses as ``sys.exit`` gives them, output flushed, no interpreter teardown."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from workers.cli import exit_code

CLI = str(Path(sys.executable).parent / "kubeos-rollout")


@pytest.mark.parametrize(("code", "status"), [(None, 0), (0, 0), (2, 2), ("a message", 1)])
def test_exit_code_is_the_status_sys_exit_gives(code: int | str | None, status: int) -> None:
    assert exit_code(SystemExit(code)) == status


def test_usage_errors_exit_2_and_help_0_with_the_output_flushed_through_a_pipe() -> None:
    bad = subprocess.run([CLI, "--no-such-flag"], capture_output=True, text=True, timeout=60, check=False)
    assert bad.returncode == 2 and "usage: kubeos-rollout" in bad.stderr
    good = subprocess.run([CLI, "--help"], capture_output=True, text=True, timeout=60, check=False)
    assert good.returncode == 0 and "validate" in good.stdout and good.stdout.endswith("\n")
