"""Staging benchmark: a raw image over HTTPS on 127.0.0.1 into a slot with fsync, three ways, interleaved.

(a) ours: the host library's ``HostAgent.stage`` (stream, hash, write the inactive slot of a simulated host,
    fsync, verify the sha256), in a child process;
(b) the limit: one shell pipeline, ``curl | tee >(HASHER) | dd conv=fsync``;
(c) the original KubeOS way: ``curl -o FILE``, ``HASHER FILE``, ``dd if=FILE conv=fsync``, ``rm FILE``;
    and the same with coreutils ``sha256sum``, the tool the benchmark's specification names;
and, for reference only, the transfer alone (``curl -o /dev/null``): no single pass can beat it, so it shows how
low ours/original can go on this machine.

All fetch from the same server, nginx by default (``--server devstack``: the dev stack's Python image server, in
this process); (a) to (c) write the same bytes at the same offset of the same disk image file. HASHER is the
faster of coreutils ``sha256sum`` and ``openssl dgst`` on this machine, measured first: the reference methods get
the best tool available (Debian's coreutils hashes without the CPU's SHA instructions; the original KubeOS hashes
in Go, which uses them). One untimed round first allocates the slot's blocks and warms the page cache, then each
round runs every method in a rotated order, each after a ``sync``; the figures are medians. Peak RSS of our stage
path is its process's ``VmHWM``, for the main size and for a larger image (4 GiB by default; its single run also
allocates the slot, so its time is not comparable).

    python -m bench.staging [--size-mib 1024] [--runs 5] [--rss-size-mib 4096] [--server nginx|devstack]
                            [--workdir DIR] [--keep]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from bench.report import MIB, Target, print_machine, print_table, print_targets, tool_version
from devstack.image_server import ImageServer
from devstack.nginx import Nginx
from devstack.pki import CertificateAuthority
from node_worker.config import load_host_config
from node_worker.sim import create_sim_host
from node_worker.slots import Slot, resolve_slot
from node_worker.writer import StampStore

REPO = Path(__file__).resolve().parent.parent
CA_NAME = "bench-ca.crt"
IMAGE_NAME = "update.img"
# Room left in the slot after the image; the simulated host wants whole MiB of at least 8.
SLOT_SLACK_MIB = 16
_BLOCK = 64 * MIB

TARGET_LIMIT_RATIO = 1.15
TARGET_ORIGINAL_RATIO = 0.5
TARGET_RSS_MIB = 100.0


class BenchError(RuntimeError):
    """The benchmark cannot run or a method produced a wrong result; the message says which."""


@dataclass
class Measured:
    """One child process: wall time, CPU time of it and its waited-for descendants, output."""

    wall: float
    cpu: float
    returncode: int
    stdout: str
    stderr: str


def run_measured(cmd: Sequence[str], cwd: Path | None = None) -> Measured:
    """Run ``cmd`` and read its own CPU time with ``wait4`` (RUSAGE_CHILDREN would mix in every child)."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        proc = subprocess.Popen(list(cmd), stdout=out, stderr=err, cwd=cwd)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here: Popen must not wait again
        out.seek(0)
        err.seek(0)
        return Measured(
            wall=wall,
            cpu=usage.ru_utime + usage.ru_stime,
            returncode=proc.returncode,
            stdout=out.read().decode(errors="replace"),
            stderr=err.read().decode(errors="replace"),
        )


def make_image(path: Path, size: int) -> str:
    """``size`` bytes of incompressible data (a random 64 MiB block, each MiB stamped with its index so that no
    two blocks are equal); returns the sha256. Nothing here is sparse or all zeros."""
    block = bytearray(os.urandom(min(_BLOCK, size)))
    digest = hashlib.sha256()
    written = 0
    with path.open("wb") as f:
        while written < size:
            for mib in range(0, len(block), MIB):
                block[mib : mib + 8] = (written // MIB + mib // MIB).to_bytes(8, "little")
            data = memoryview(block)[: min(len(block), size - written)]
            f.write(data)
            digest.update(data)
            written += len(data)
    return digest.hexdigest()


def hasher_seconds(cmd: Sequence[str], image: Path) -> float:
    start = time.perf_counter()
    subprocess.run([*cmd, str(image)], check=True, capture_output=True)
    return time.perf_counter() - start


def choose_hasher(image: Path) -> tuple[str, list[str], list[tuple[str, str]]]:
    """The faster sha256 tool on this machine (coreutils' lacks SHA extensions on some builds): its name, its
    command, and the timings of all as table rows."""
    candidates = {"sha256sum": ["sha256sum"], "openssl dgst -sha256": ["openssl", "dgst", "-sha256", "-r"]}
    timings = {name: hasher_seconds(cmd, image) for name, cmd in candidates.items() if shutil.which(cmd[0]) is not None}
    if not timings:
        raise BenchError("neither sha256sum nor openssl is installed")
    best = min(timings, key=lambda name: timings[name])
    size_gib = image.stat().st_size / (1024 * MIB)
    rows = [(name, f"{seconds / size_gib:.2f} s/GiB") for name, seconds in timings.items()]
    return best, candidates[best], rows


@dataclass(frozen=True)
class Run:
    """One timed run of a method: its seconds, its CPU seconds, and (ours only) its peak RSS."""

    seconds: float
    cpu: float
    wall: float
    peak_rss_mib: float = 0.0


@dataclass(frozen=True)
class Served:
    """The image server under test, whichever it is: the directory it serves, its URLs, the CPU it has used."""

    root: Path
    url: Callable[[str], str]
    cpu_seconds: Callable[[], float]


def _self_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


@contextmanager
def serve(kind: str, root: Path, ca: CertificateAuthority) -> Iterator[Served]:
    """``root`` over HTTPS on 127.0.0.1 with a certificate of ``ca``: by nginx, or by the dev stack's server (in
    this process, so its CPU time is this process's)."""
    cert = ca.issue_server("image-server")
    if kind == "nginx":
        with Nginx(root.parent / f"{root.name}-nginx", root, cert.cert, cert.key) as nginx:
            yield Served(root, nginx.url, nginx.cpu_seconds)
    else:
        with ImageServer(root, tls=(cert.cert, cert.key)) as server:
            yield Served(root, server.url, _self_cpu)


@dataclass
class Bench:
    """One prepared set-up: the image, a simulated host whose slot B receives it, the server and the commands."""

    workdir: Path
    size: int
    hasher: list[str]
    image: Path = field(init=False)
    checksum: str = field(init=False)
    config_path: Path = field(init=False)
    slot: Slot = field(init=False)
    cacert: Path = field(init=False)
    server: Served = field(init=False)

    def prepare(self, ca: CertificateAuthority, server: Served) -> None:
        images = self.workdir / "images"
        images.mkdir(parents=True, exist_ok=True)
        self.image = images / IMAGE_NAME
        self.checksum = make_image(self.image, self.size)
        slot_size = (self.size + MIB - 1) // MIB * MIB + SLOT_SLACK_MIB * MIB
        self.config_path = create_sim_host(self.workdir / "host", slot_size=slot_size)
        self.cacert = ca.cert_path
        shutil.copy(ca.cert_path, self.workdir / "host" / "certs" / CA_NAME)
        config = load_host_config(self.config_path)
        self.slot = resolve_slot(config, "B")  # the sim host boots A: B is the inactive slot
        self.stamps = StampStore(config.staging_dir)
        self.server = server

    @property
    def url(self) -> str:
        return self.server.url(self.image.relative_to(self.server.root).as_posix())

    def _dd_to_slot(self) -> str:
        return (
            f"dd of={self.slot.path} bs=1M iflag=fullblock oflag=seek_bytes seek={self.slot.offset} "
            "conv=notrunc,fsync status=none"
        )

    def _curl(self) -> str:
        return f"curl -sS --fail --cacert {self.cacert} {self.url}"

    def ours(self) -> Run:
        # A new image would carry another checksum: forget the stamp so nothing is skipped as already staged.
        self.stamps.clear(self.slot)
        cmd = [
            sys.executable, "-m", "bench.stage_once", "--config", str(self.config_path), "--url", self.url,
            "--checksum", self.checksum, "--cacert", CA_NAME,
        ]  # fmt: skip
        measured = run_measured(cmd, cwd=REPO)
        if measured.returncode != 0:
            raise BenchError(f"ours failed ({measured.returncode}): {measured.stderr.strip()[-2000:]}")
        result = json.loads(measured.stdout.strip().splitlines()[-1])
        if result["reused"] or result["checksum"] != self.checksum or result["size"] != self.size:
            raise BenchError(f"ours staged something else: {result}")
        return Run(float(result["seconds"]), float(result["cpu"]), measured.wall, result["peak_rss_kib"] / 1024)

    def limit(self) -> Run:
        sums = self.workdir / "limit.sha256"
        hasher = " ".join(self.hasher)
        script = f"""set -o pipefail
{self._curl()} | tee >({hasher} > {sums}) | {self._dd_to_slot()}
wait $!
read -r sum _ < {sums}
[ "$sum" = {self.checksum} ] || {{ echo "checksum $sum" >&2; exit 3; }}
"""
        return self._shell("limit", script)

    def transfer(self) -> Run:
        return self._shell("transfer", f"set -e\n{self._curl()} -o /dev/null\n")

    def original(self, hasher_cmd: Sequence[str] | None = None) -> Run:
        download = self.workdir / "download.img"
        hasher = " ".join(hasher_cmd or self.hasher)
        script = f"""set -e -o pipefail
{self._curl()} -o {download}
read -r sum _ < <({hasher} {download})
[ "$sum" = {self.checksum} ] || {{ echo "checksum $sum" >&2; exit 3; }}
{self._dd_to_slot()} if={download}
rm -f {download}
"""
        return self._shell("original", script)

    def _shell(self, name: str, script: str) -> Run:
        measured = run_measured(["bash", "-c", script])
        if measured.returncode != 0:
            raise BenchError(f"{name} failed ({measured.returncode}): {measured.stderr.strip()[-2000:]}")
        return Run(measured.wall, measured.cpu, measured.wall)

    def check_slot(self) -> None:
        """The slot holds the image after all that writing: every method wrote the same bytes."""
        found = self.slot.hash_region(self.size)
        if found != self.checksum:
            raise BenchError(f"slot B holds sha256 {found}, not the image's {self.checksum}")


@dataclass
class Series:
    name: str
    what: str
    seconds: list[float] = field(default_factory=list)
    process_walls: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)
    server_cpu: list[float] = field(default_factory=list)
    rss_mib: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)


SHA256SUM = ["sha256sum"]


def measure(bench: Bench, hasher: str, runs: int) -> list[Series]:
    """ours, limit, original, transfer and (when HASHER is not sha256sum) original with sha256sum, in that order."""
    series = [
        Series("ours", "HostAgent.stage: stream, sha256, pwrite into slot B, fsync, verify"),
        Series("limit", f"curl | tee >({hasher}) | dd conv=fsync"),
        Series("original", f"curl -o FILE; {hasher} FILE; dd if=FILE conv=fsync; rm FILE"),
        Series("transfer", "curl -o /dev/null (reference: the download alone)"),
    ]
    methods: list[Callable[[], Run]] = [bench.ours, bench.limit, bench.original, bench.transfer]
    if bench.hasher != SHA256SUM:
        series.append(Series("original, sha256sum", "as original, hashing with coreutils sha256sum"))
        methods.append(lambda: bench.original(SHA256SUM))
    for method in methods:  # warm-up round, not counted: allocates the slot's blocks, warms the page cache
        os.sync()
        method()
    for run in range(runs):
        order = [(run + i) % len(methods) for i in range(len(methods))]
        for index in order:
            os.sync()  # the previous method's dirty pages are not this one's bill
            before = bench.server.cpu_seconds()
            result = methods[index]()
            s = series[index]
            s.seconds.append(result.seconds)
            s.process_walls.append(result.wall)
            s.cpu.append(result.cpu)
            s.server_cpu.append(bench.server.cpu_seconds() - before)
            s.rss_mib.append(result.peak_rss_mib)
        print(f"  round {run + 1}/{runs}: " + ", ".join(f"{s.name} {s.seconds[-1]:.2f}s" for s in series), flush=True)
    bench.check_slot()
    return series


def free_bytes(path: Path) -> int:
    return shutil.disk_usage(path).free


def require_space(path: Path, needed: int, what: str) -> None:
    free = free_bytes(path)
    if free < needed:
        raise BenchError(
            f"{what} needs {needed / (1024 * MIB):.1f} GiB free in {path}, only {free / (1024 * MIB):.1f} GiB: "
            "use --workdir on a larger disk or smaller --size-mib/--rss-size-mib"
        )


def rss_only(workdir: Path, size: int, ca: CertificateAuthority, server: Served) -> tuple[float, float]:
    """Peak RSS (MiB) and stage seconds of our path for one image of ``size`` bytes."""
    bench = Bench(workdir, size, hasher=[])
    bench.prepare(ca, server)
    result = bench.ours()
    return result.peak_rss_mib, result.seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.staging", description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mib", type=int, default=1024, help="image size for the timed runs (default 1024)")
    parser.add_argument("--runs", type=int, default=5, help="timed rounds of the three methods (default 5)")
    parser.add_argument(
        "--rss-size-mib", type=int, default=4096, help="a second, larger image for peak RSS only (0: skip)"
    )
    parser.add_argument(
        "--server",
        choices=("nginx", "devstack"),
        default="nginx",
        help="what serves the image: nginx (default), or the dev stack's Python image server",
    )
    parser.add_argument("--workdir", type=Path, help="where images and the simulated host go (default: a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the working directory")
    args = parser.parse_args(argv)
    if args.size_mib < 1 or args.runs < 1 or args.rss_size_mib < 0:
        parser.error("--size-mib and --runs must be at least 1, --rss-size-mib at least 0")
    for tool in (
        "curl",
        "dd",
        "tee",
        "bash",
        "mkfs.ext4",
        "sfdisk",
        "grub-editenv",
        *(["nginx"] * (args.server == "nginx")),
    ):
        if shutil.which(tool) is None:
            raise BenchError(f"{tool} is not installed (make deps installs the Debian packages)")

    size = args.size_mib * MIB
    workdir = Path(tempfile.mkdtemp(prefix="kubeos-bench-staging-", dir=args.workdir))
    try:
        print_machine(
            "Staging benchmark",
            [
                ("disk", f"{workdir} ({_filesystem(workdir)}), {free_bytes(workdir) / (1024 * MIB):.0f} GiB free"),
                ("curl", tool_version(["curl", "--version"])),
                ("image server", _server_version(args.server)),
                ("openssl", tool_version(["openssl", "version"])),
                ("coreutils", tool_version(["sha256sum", "--version"])),
            ],
        )
        require_space(workdir, 3 * size + 64 * MIB, f"a {args.size_mib} MiB image")
        ca = CertificateAuthority(workdir / "pki", "bench-ca")
        (workdir / "served").mkdir()
        with serve(args.server, workdir / "served", ca) as server:
            main_dir = workdir / "served" / "main"
            bench = Bench(main_dir, size, hasher=[])
            bench.prepare(ca, server)
            hasher, bench.hasher, hasher_rows = choose_hasher(bench.image)
            print_table("sha256 tools on this machine (file in page cache)", ("tool", "speed"), hasher_rows)
            print(
                f"\nImage {args.size_mib} MiB from {bench.url}; {args.runs} rounds after one warm-up round", flush=True
            )
            series = measure(bench, hasher, args.runs)
            shutil.rmtree(main_dir)
            rss = [(args.size_mib, max(series[0].rss_mib), series[0].median)]
            if args.rss_size_mib:
                require_space(workdir, 2 * args.rss_size_mib * MIB + 64 * MIB, f"a {args.rss_size_mib} MiB image")
                peak, seconds = rss_only(workdir / "served" / "rss", args.rss_size_mib * MIB, ca, server)
                rss.append((args.rss_size_mib, peak, seconds))
        report(series, rss, size)
    finally:
        if args.keep:
            print(f"\nkept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


def _server_version(kind: str) -> str:
    if kind == "nginx":
        # nginx prints its version on stderr
        out = subprocess.run(["nginx", "-v"], capture_output=True, text=True, check=False)
        return (out.stderr or out.stdout).strip() + ", 1 worker process, in its own processes"
    return f"the dev stack's image server (Python {sys.version.split()[0]}), in this process"


def _filesystem(path: Path) -> str:
    out = subprocess.run(["df", "-T", str(path)], capture_output=True, text=True, check=False).stdout.splitlines()
    return out[-1].split()[1] if len(out) > 1 else "unknown"


def report(series: list[Series], rss: list[tuple[int, float, float]], size: int) -> None:
    ours, limit, original, transfer = series[:4]
    rows = [
        (
            s.name,
            s.what,
            f"{s.median:.2f}",
            f"{size / MIB / s.median:.0f}",
            f"{statistics.median(s.cpu):.2f}",
            f"{statistics.median(s.server_cpu):.2f}",
            " ".join(f"{t:.2f}" for t in s.seconds),
        )
        for s in series
    ]
    headers = ("method", "what runs", "median s", "MiB/s", "cpu s", "server cpu s", "every run (s)")
    print_table(f"Staging {size // MIB} MiB (medians)", headers, rows)
    print(
        "\n`ours` is the stage call inside its process (median process wall time, interpreter start included: "
        f"{statistics.median(ours.process_walls):.2f} s); `cpu s` is the CPU time of the method's processes (ours: "
        "of the stage call), `server cpu s` the image server's."
    )
    ratios = [
        ("ours / limit", f"{ours.median / limit.median:.2f}"),
        ("ours / original", f"{ours.median / original.median:.2f}"),
        *((f"ours / {s.name}", f"{ours.median / s.median:.2f}") for s in series[4:]),
        ("transfer / original (no single pass goes below)", f"{transfer.median / original.median:.2f}"),
    ]
    print_table("Ratios (medians)", ("ratio", "value"), ratios)
    print_table(
        "Peak RSS of our stage path (VmHWM of its process)",
        ("image MiB", "peak RSS MiB", "stage s"),
        [(mib, f"{peak:.1f}", f"{seconds:.2f}") for mib, peak, seconds in rss],
    )
    targets = [
        Target("ours / limit", ours.median / limit.median, TARGET_LIMIT_RATIO),
        Target("ours / original", ours.median / original.median, TARGET_ORIGINAL_RATIO),
        *(Target(f"ours / {s.name}", ours.median / s.median, TARGET_ORIGINAL_RATIO) for s in series[4:]),
        *(Target(f"peak RSS, {mib} MiB image", peak, TARGET_RSS_MIB, " MiB") for mib, peak, _ in rss),
    ]
    print_targets(targets)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as exc:
        print(f"bench.staging: {exc}", file=sys.stderr)
        sys.exit(2)
