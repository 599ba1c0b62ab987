"""CPU time and children read from /proc, as the benchmarks charge them to servers."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from devstack.procstat import child_pids, process_cpu


def test_cpu_of_a_busy_child_is_read_and_the_child_is_found() -> None:
    busy = "import time\nend = time.process_time() + 0.3\nwhile time.process_time() < end: pass\ntime.sleep(30)"
    child = subprocess.Popen([sys.executable, "-c", busy])
    try:
        deadline = time.monotonic() + 20
        while process_cpu(child.pid) < 0.25 and time.monotonic() < deadline:  # bounded
            time.sleep(0.05)
        assert process_cpu(child.pid) >= 0.25
        assert child.pid in child_pids(os.getpid())
        assert child.pid not in child_pids(os.getpid(), "no-such-name")
    finally:
        child.kill()
        child.wait()
    assert process_cpu(child.pid) == 0.0  # gone: nothing to read
    assert process_cpu(None) == 0.0
