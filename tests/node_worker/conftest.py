"""Fixtures of the host tests: simulated hosts, OS images, a CA, and HTTPS image servers on 127.0.0.1."""

from __future__ import annotations

import errno
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from devstack.image_server import ImageServer
from devstack.pki import CertFiles, CertificateAuthority
from models.host import HostConfig, ImageSource, SimMachineState, SlotName
from node_worker.agent import HostAgent
from node_worker.config import load_host_config
from node_worker.images import build_os_image
from node_worker.sim import SimPaths, create_sim_host, read_machine_state, write_boot_files

MIB = 1024 * 1024
SLOT_SIZE = 24 * MIB
IMAGE_SIZE = 16 * MIB
OLD = "KubeOS 1.0.0"
NEW = "KubeOS 1.0.1"
CA_NAME = "image-ca.crt"
CLIENT_CERT = "client.crt"
CLIENT_KEY = "client.key"
# The host commands alone, as the simulated machine runs them.
HOST_CLI = [sys.executable, "-m", "node_worker.cli"]


@dataclass
class SimHost:
    paths: SimPaths
    config: HostConfig
    agent: HostAgent

    def grubenv(self) -> dict[str, str]:
        return self.agent.grub.read()

    def boot_into(self, slot: SlotName) -> str:
        """Pretend the machine booted ``slot`` (kernel command line and a new boot id); returns the boot id."""
        return write_boot_files(self.paths, self.config, slot)

    def node_log(self) -> str:
        return self.paths.node_log.read_text() if self.paths.node_log.exists() else ""

    def machine_state(self) -> SimMachineState | None:
        """What ``host sim-run`` says about the machine (None before it wrote, or mid-write)."""
        return read_machine_state(self.paths)

    def slot_digest(self, slot: SlotName) -> str:
        s = self.agent.slot(slot)
        return s.hash_region(s.size)


@dataclass(frozen=True)
class Pki:
    ca: CertificateAuthority
    server: CertFiles
    client: CertFiles


@dataclass(frozen=True)
class Image:
    path: Path
    sha256: str
    version: str

    @property
    def name(self) -> str:
        return self.path.name


def make_sim_host(directory: Path, pki: Pki | None = None, **kwargs: object) -> SimHost:
    config_path = create_sim_host(directory, OLD, SLOT_SIZE, **kwargs)  # type: ignore[arg-type]
    if pki is not None:
        certs = directory / "certs"
        shutil.copy(pki.ca.cert_path, certs / CA_NAME)
        shutil.copy(pki.client.cert, certs / CLIENT_CERT)
        shutil.copy(pki.client.key, certs / CLIENT_KEY)
    config = load_host_config(config_path)
    return SimHost(SimPaths(directory.resolve()), config, HostAgent(config, node="test-node"))


@contextmanager
def sim_run(host: SimHost, node: str, temporal: str, downtime: float, **popen: Any) -> Iterator[subprocess.Popen[str]]:
    """``host sim-run`` of ``host`` (the machine and its node worker) until the block ends: then SIGTERM, as
    systemd stops it, and a kill if it does not exit within 60 s."""
    cmd = [*HOST_CLI, "host", "sim-run", str(host.paths.dir), "--node", node, "--temporal", temporal]
    proc = subprocess.Popen([*cmd, "--downtime", str(downtime)], text=True, **popen)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    directory = tmp_path_factory.mktemp("pki")
    ca = CertificateAuthority(directory, "image-ca")
    return Pki(ca, ca.issue_server("image-server"), ca.issue_client("node-client"))


@pytest.fixture
def host(tmp_path: Path, pki: Pki) -> SimHost:
    """A freshly installed simulated host (A: 1.0.0 booted, B: empty), with the CA and client pair in its certs."""
    return make_sim_host(tmp_path / "host", pki)


@pytest.fixture(scope="session")
def image_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("images")


@pytest.fixture(scope="session")
def new_image(image_root: Path) -> Image:
    path = image_root / "update-1.0.1.img"
    return Image(path, build_os_image(path, NEW, IMAGE_SIZE), NEW)


@pytest.fixture(scope="session")
def big_image(image_root: Path) -> Image:
    """Larger than a slot."""
    path = image_root / "too-big.img"
    return Image(path, build_os_image(path, "KubeOS 1.0.2", SLOT_SIZE + 4 * MIB), "KubeOS 1.0.2")


@pytest.fixture
def https_server(image_root: Path, pki: Pki) -> Iterator[ImageServer]:
    with ImageServer(image_root, tls=(pki.server.cert, pki.server.key)) as server:
        yield server


@pytest.fixture
def http_server(image_root: Path) -> Iterator[ImageServer]:
    with ImageServer(image_root) as server:
        yield server


def disk_source(url: str, image: Image, **overrides: object) -> ImageSource:
    fields: dict[str, object] = {
        "imagetype": "disk",
        "imageurl": url,
        "checksum": image.sha256,
        "osversion": image.version,
        "cacert": CA_NAME if url.startswith("https") else "",
    }
    fields.update(overrides)
    return ImageSource.model_validate(fields)


def fail_pwrite(monkeypatch: pytest.MonkeyPatch, on_call: int) -> None:
    """The slot writer's ``on_call``-th ``os.pwrite`` fails with EIO, as a failing disk would; the others write."""
    from node_worker import writer

    calls = 0
    real_pwrite = os.pwrite

    def failing_pwrite(fd: int, data: memoryview | bytes, offset: int) -> int:
        nonlocal calls
        calls += 1
        if calls == on_call:
            raise OSError(errno.EIO, "Input/output error")
        return real_pwrite(fd, data, offset)

    monkeypatch.setattr(writer.os, "pwrite", failing_pwrite)
