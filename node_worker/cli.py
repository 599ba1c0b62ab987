"""Commands of the host side: ``node-worker`` and ``host`` (status, stage, sim, sim-run, sim-reboot, build-image).

``host status`` and ``host stage`` are the operator's tools on one host, like ``rauc status`` / ``rauc install``:
``host stage`` runs the preflight and the stage of an ``OS`` resource, and never changes a boot entry.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from models.host import HostStatus, ImageSource, StageProgress

if TYPE_CHECKING:
    from node_worker.agent import HostAgent

_SIZE_RE = re.compile(r"^(?P<n>\d+)\s*(?P<unit>[kmgt]?)(?:i?b)?$", re.IGNORECASE)
_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}


def parse_size(text: str) -> int:
    """``64M``, ``64MiB``, ``1G`` or plain bytes (binary units)."""
    m = _SIZE_RE.match(text.strip())
    if m is None:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 64M, 1G, 67108864)")
    return int(m["n"]) * _UNITS[m["unit"].lower()]


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    nw = subparsers.add_parser("node-worker", help="serve one host's node activities (queue kubeos-node-NAME)")
    nw.add_argument("--node", required=True, help="the Kubernetes node name of this host")
    nw.add_argument("--config", required=True, type=Path, help="the host configuration file (YAML or TOML)")
    nw.add_argument("--temporal", help="Temporal address host:port (default: TEMPORAL_ADDRESS or the CLI profile)")
    nw.add_argument("--namespace", help="Temporal namespace")
    nw.set_defaults(handler=_node_worker)

    host = subparsers.add_parser("host", help="inspect and stage this host; simulated hosts")
    sub = host.add_subparsers(dest="host_command", required=True, metavar="SUBCOMMAND")

    st = sub.add_parser("status", help="booted slot, both slots' versions, GRUB environment")
    st.add_argument("--config", required=True, type=Path)
    st.add_argument("--json", action="store_true", help="machine-readable output")
    st.set_defaults(handler=_status)

    sg = sub.add_parser("stage", help="preflight and stage an OS resource's image into the inactive slot")
    sg.add_argument("--config", required=True, type=Path)
    sg.add_argument(
        "-f", "--file", required=True, help="YAML file with the OS resource (or its bare spec); - reads stdin"
    )
    sg.add_argument("--name", help="the OS resource to use when the file holds several")
    sg.set_defaults(handler=_stage)

    sim = sub.add_parser("sim", help="create a simulated host (disk image with ROOT-A/ROOT-B, grubenv, config)")
    sim.add_argument("dir", type=Path)
    sim.add_argument("--version", default="KubeOS 1.0.0", help="PRETTY_NAME installed in slot A")
    sim.add_argument("--b-version", help="also install this version in slot B (default: B is empty)")
    sim.add_argument("--slot-size", type=parse_size, default="64M", help="size of each slot (default 64M)")
    sim.add_argument("--cert", action="append", type=Path, default=[], help="copy a file into the certs dir")
    sim.set_defaults(handler=_sim)

    run = sub.add_parser("sim-run", help="boot a simulated host and run its node worker (the machine)")
    run.add_argument("dir", type=Path)
    run.add_argument("--node", required=True)
    run.add_argument("--temporal", help="Temporal address host:port")
    run.add_argument("--namespace")
    run.add_argument("--downtime", type=float, default=1.0, help="seconds the machine stays down on a reboot")
    run.set_defaults(handler=_sim_run)

    rb = sub.add_parser("sim-reboot", help="the reboot command of a simulated host")
    rb.add_argument("dir", type=Path)
    rb.set_defaults(handler=_sim_reboot)

    bi = sub.add_parser("build-image", help="build a raw root filesystem image (update.img); prints its sha256")
    bi.add_argument("out", type=Path)
    bi.add_argument("--version", required=True, help="PRETTY_NAME, e.g. 'KubeOS 1.0.1'")
    bi.add_argument("--size", type=parse_size, default="64M", help="image size (default 64M)")
    bi.set_defaults(handler=_build_image)


def _fail(command: str, message: object, code: int = 1) -> int:
    print(f"{command}: {message}", file=sys.stderr)
    return code


def _agent(config_path: Path) -> HostAgent:
    """The agent of the configured host; raises ConfigError."""
    from node_worker.agent import HostAgent
    from node_worker.config import load_host_config

    return HostAgent(load_host_config(config_path))


def _node_worker(args: argparse.Namespace) -> int:
    from node_worker.config import ConfigError
    from node_worker.worker import serve

    try:
        return asyncio.run(serve(args.node, args.config, args.temporal, args.namespace))
    except ConfigError as exc:
        return _fail("node-worker", exc, 2)


def format_status(status: HostStatus) -> str:
    env = " ".join(f"{k}={v}" for k, v in sorted(status.grubenv.items())) or "(empty)"
    lines = [
        f"booted slot: {status.booted_slot}{' (trial boot: not the saved entry)' if status.trial else ''}",
        f"boot id:     {status.boot_id}",
        f"grubenv:     {env}",
    ]
    if status.trial_deadline is not None:
        deadline = datetime.fromtimestamp(status.trial_deadline, UTC).isoformat(timespec="seconds")
        lines.append(f"trial boot:  to be committed by {deadline}, else the host returns to its saved slot")
    for name, slot in status.slots.items():
        marks = [m for m, on in (("booted", slot.booted), ("saved", status.saved_slot == name)) if on]
        if status.next_slot == name:
            marks.append("next boot")
        what = (
            f"{slot.os_release.pretty_name} (VERSION_ID {slot.os_release.version_id or '?'})"
            if slot.os_release
            else f"no bootable root: {slot.error}"
        )
        lines.append(f"slot {name} [{slot.grub_entry}] {','.join(marks) or '-'}: {what}")
        if slot.staged_checksum:
            lines.append(f"       staged sha256 {slot.staged_checksum}")
    return "\n".join(lines)


def _status(args: argparse.Namespace) -> int:
    from node_worker.config import ConfigError
    from node_worker.errors import HostError

    try:
        agent = _agent(args.config)
    except ConfigError as exc:
        return _fail("host status", exc, 2)
    try:
        status = agent.status()
    except HostError as exc:
        return _fail("host status", exc)
    print(status.model_dump_json(indent=2) if args.json else format_status(status))
    return 0


def _load_source(path: str, name: str | None) -> tuple[ImageSource, str]:
    """The image source and opstype of the one OS resource in ``path`` (``--name`` picks among several)."""
    from models.os_resource import check_os_document
    from models.yaml_docs import load_documents

    reports = [(doc, check_os_document(doc.body)) for doc in load_documents(path)]
    if name:
        reports = [(d, r) for d, r in reports if r.name == name]
    if len(reports) != 1:
        found = "no OS resource" if not reports else f"{len(reports)} OS resources"
        raise ValueError(f"{path}: {found}{f' named {name!r}' if name else ''}; use --name to pick one")
    doc, report = reports[0]
    if report.spec is None:
        raise ValueError(f"{doc.path} (document {doc.index}):\n" + "\n".join(f"  - {e}" for e in report.errors))
    return ImageSource.from_spec(report.spec), report.spec.opstype


class _ProgressPrinter:
    """Progress on stderr, at most twice a second."""

    def __init__(self) -> None:
        self._last = 0.0

    def __call__(self, p: StageProgress) -> None:
        now = time.monotonic()
        if now - self._last < 0.5 and not (p.total and p.done == p.total):
            return
        self._last = now
        of = f" of {p.total}" if p.total else ""
        print(f"  {p.phase}: {p.done}{of} bytes", file=sys.stderr)


def _stage(args: argparse.Namespace) -> int:
    from models.yaml_docs import DocumentError
    from node_worker.config import ConfigError
    from node_worker.errors import HostError
    from node_worker.nodelog import setup_process_logging

    try:
        agent = _agent(args.config)
        source, opstype = _load_source(args.file, args.name)
    except (ConfigError, DocumentError, ValueError) as exc:
        return _fail("host stage", exc, 2)
    setup_process_logging(agent.config)
    if opstype != "upgrade":
        return _fail("host stage", f"opstype is {opstype}: a rollback has nothing to stage", 2)
    try:
        pre = agent.preflight(source, "upgrade")
        print(
            f"preflight ok: booted slot {pre.status.booted_slot}, staging into slot {pre.target_slot}", file=sys.stderr
        )
        out = agent.stage(source, _ProgressPrinter())
    except HostError as exc:
        return _fail("host stage", f"{exc.kind}: {exc}")
    release = out.os_release.pretty_name if out.os_release else "no readable os-release"
    how = "already staged, not downloaded" if out.reused else f"{out.size} bytes written"
    print(f"staged slot {out.slot}: sha256 {out.checksum} ({how}); it holds {release}")
    return 0


def _sim(args: argparse.Namespace) -> int:
    from node_worker.images import ImageBuildError
    from node_worker.sim import SimError, create_sim_host

    try:
        config = create_sim_host(args.dir, args.version, args.slot_size, args.b_version, args.cert)
    except (SimError, ImageBuildError, OSError) as exc:
        return _fail("host sim", exc)
    print(
        f"simulated host in {args.dir.resolve()}: slot A holds {args.version}, slot B "
        f"{'holds ' + args.b_version if args.b_version else 'is empty'}; run it with "
        f"'kubeos-rollout host sim-run {args.dir} --node NAME'"
    )
    print(config)
    return 0


def _sim_run(args: argparse.Namespace) -> int:
    from node_worker.config import ConfigError
    from node_worker.machine import run_machine
    from node_worker.nodelog import setup_process_logging

    setup_process_logging(None)
    try:
        return run_machine(args.dir, args.node, args.temporal, args.namespace, args.downtime)
    except ConfigError as exc:
        return _fail("host sim-run", exc, 2)


def _sim_reboot(args: argparse.Namespace) -> int:
    from node_worker.sim import SimError, request_reboot

    try:
        request_reboot(args.dir)
    except (SimError, OSError) as exc:
        return _fail("host sim-reboot", exc)
    return 0


def _build_image(args: argparse.Namespace) -> int:
    from node_worker.images import ImageBuildError, build_os_image

    try:
        digest = build_os_image(args.out, args.version, args.size)
    except (ImageBuildError, OSError) as exc:
        return _fail("host build-image", exc)
    print(digest)
    return 0


def run(parser: argparse.ArgumentParser, argv: Sequence[str] | None = None) -> int:
    """Parse and run the chosen command's handler; Ctrl-C ends with the shell's usual 130."""
    args = parser.parse_args(argv)
    try:
        code: int = args.handler(args)
    except KeyboardInterrupt:
        return 130
    return code


def main(argv: Sequence[str] | None = None) -> int:
    """The host commands alone (``python -m node_worker.cli``): what the simulated machine runs, so a host's
    processes import only the host side."""
    parser = argparse.ArgumentParser(prog="kubeos-rollout")
    register(parser.add_subparsers(dest="command", required=True, metavar="COMMAND"))
    return run(parser, argv)


if __name__ == "__main__":
    sys.exit(main())
