"""Stage one disk image into a host's inactive slot with the host library, as the node worker's ``host_stage``
does, and print what happened as one JSON line.

``bench.staging`` runs this in a child process, so that the peak RSS is that of the stage path alone. It is the
kernel's high-water mark of this process's memory (``VmHWM``), read at the end: ``ru_maxrss`` would not do, as
Linux carries the parent's high-water mark over ``vfork``/``exec`` into it. The timed part is the
``HostAgent.stage`` call: a node worker is a long-running process, so the interpreter's start is not part of a
node's staging time (``bench.staging`` reports the process's wall time beside it).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from models.host import ImageSource, StageProgress
from node_worker.agent import HostAgent
from node_worker.config import load_host_config


def _heartbeat(progress: StageProgress) -> None:
    """The activity heartbeats each StageProgress; building it per MiB is part of the path, sending is not."""


def peak_rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise RuntimeError("no VmHWM in /proc/self/status")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.stage_once", description=__doc__)
    parser.add_argument("--config", required=True, help="the host configuration file")
    parser.add_argument("--url", required=True, help="the https URL of the image")
    parser.add_argument("--checksum", required=True, help="the image's sha256")
    parser.add_argument("--cacert", required=True, help="the CA file's name in the host's certificates directory")
    args = parser.parse_args(argv)
    agent = HostAgent(load_host_config(args.config), node="bench")
    source = ImageSource(
        imagetype="disk", imageurl=args.url, checksum=args.checksum, cacert=args.cacert, osversion="bench"
    )
    start, cpu = time.perf_counter(), time.process_time()
    result = agent.stage(source, _heartbeat)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    report = {"seconds": seconds, "cpu": cpu, "peak_rss_kib": peak_rss_kib()}
    print(json.dumps(report | result.model_dump(mode="json", include={"slot", "checksum", "size", "reused"})))
    return 0


if __name__ == "__main__":
    sys.exit(main())
