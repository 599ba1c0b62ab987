"""The node log reaches syslog (a real datagram socket standing in for /dev/log) and its file; TOML configs load;
the node worker stops cleanly on SIGTERM."""

from __future__ import annotations

import logging
import logging.handlers
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from temporalio.testing import WorkflowEnvironment

from node_worker.config import ConfigError, load_host_config
from node_worker.nodelog import NodeLog, setup_process_logging
from tests.node_worker.conftest import HOST_CLI, SimHost


@pytest.fixture
def syslog_socket(tmp_path: Path) -> Iterator[tuple[socket.socket, Path]]:
    path = tmp_path / "log"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(10)
    try:
        yield sock, path
    finally:
        sock.close()
        for handler in list(logging.getLogger("kubeos").handlers):
            if isinstance(handler, logging.handlers.SysLogHandler):
                logging.getLogger("kubeos").removeHandler(handler)
                handler.close()


def test_node_log_goes_to_syslog_and_the_file(host: SimHost, syslog_socket: tuple[socket.socket, Path]) -> None:
    sock, path = syslog_socket
    config = host.config.model_copy(update={"syslog": True, "syslog_address": str(path)})
    setup_process_logging(config)
    NodeLog(config.node_log, "n1").error("unsafe address, not downloading: http://example/update.img")

    datagram = sock.recv(4096).decode()
    assert "kubeos-rollout[" in datagram and "unsafe address" in datagram
    assert datagram.startswith("<27>")  # facility daemon (3) * 8 + severity error (3)
    assert "n1 kubeos-rollout[" in host.node_log() and "unsafe address" in host.node_log()


def test_toml_host_config(tmp_path: Path) -> None:
    path = tmp_path / "host.toml"
    path.write_text(
        'grubenv = "/boot/efi/EFI/openEuler/grubenv"\n'
        'reboot_command = ["systemctl", "reboot"]\n'
        '[slots.A]\ndevice = "/dev/vda2"\npartuuid = "1111"\n'
        '[slots.B]\ndevice = "/dev/vda3"\npartuuid = "2222"\ngrub_entry = "second"\n'
    )
    config = load_host_config(path)
    assert config.entry("A") == "A" and config.entry("B") == "second"
    assert config.certs_dir == "/etc/KubeOS/certs"


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("grubenv: /g\nslots: {A: {device: /d}, B: {device: /d}}\n", "same place"),
        ("grubenv: /g\nslots: {A: {device: /a}, B: {device: /b}}\nbogus: 1\n", "bogus"),
        ("grubenv: /g\nslots: {A: {device: /a, offset: -1}, B: {device: /b}}\n", "slots.A.offset"),
        ("- a list\n", "must be a mapping"),
    ],
)
def test_bad_host_config_names_the_problem(tmp_path: Path, text: str, problem: str) -> None:
    path = tmp_path / "host.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=problem):
        load_host_config(path)


@pytest.mark.slow
def test_node_worker_stops_on_sigterm(host: SimHost, temporal_env: WorkflowEnvironment) -> None:
    target = temporal_env.client.service_client.config.target_host
    proc = subprocess.Popen(
        [
            *HOST_CLI,
            "node-worker",
            "--node",
            "sigterm-node",
            "--config",
            str(host.paths.config),
            "--temporal",
            target,
        ],
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 60
    while "node worker for sigterm-node starting" not in host.node_log():
        assert time.monotonic() < deadline and proc.poll() is None, "the node worker did not start"
        time.sleep(0.1)
    time.sleep(1)  # let it reach the polling loop
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(60) == 0
    assert proc.stderr is not None and "stopped" in proc.stderr.read()
