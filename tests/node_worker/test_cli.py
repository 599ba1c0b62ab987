"""The host commands as an operator runs them: real processes, real files."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml

from devstack.image_server import ImageServer
from devstack.net import free_port
from node_worker.agent import HostAgent
from node_worker.config import load_host_config
from node_worker.images import sha256_file
from node_worker.osrelease import read_slot_os_release
from node_worker.sim import SimPaths
from node_worker.slots import Slot
from tests.node_worker.conftest import (
    CA_NAME,
    HOST_CLI,
    NEW,
    Image,
    Pki,
    SimHost,
    disk_source,
    make_sim_host,
    sim_run,
)

KUBEOS_ROLLOUT = str(Path(sys.executable).parent / "kubeos-rollout")


def run(*args: str, cli: list[str] = HOST_CLI) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*cli, *args], capture_output=True, text=True, timeout=300)


def wait_for(condition: Callable[[], bool], what: str, limit: float = 60.0) -> None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.1)
    raise AssertionError(f"gave up waiting for {what}")


def test_host_sim_creates_a_freshly_installed_host(tmp_path: Path) -> None:
    proc = run(
        "host", "sim", str(tmp_path / "h"), "--slot-size", "16M", "--version", "KubeOS 2.0.0", cli=[KUBEOS_ROLLOUT]
    )

    assert proc.returncode == 0, proc.stderr
    config_path = Path(proc.stdout.strip().splitlines()[-1])
    assert config_path == (tmp_path / "h" / "host.yaml").resolve() and config_path.is_file()
    config = load_host_config(config_path)
    paths = SimPaths(config_path.parent)
    table = json.loads(subprocess.run(["sfdisk", "--json", str(paths.disk)], capture_output=True, check=True).stdout)
    names = [p["name"] for p in table["partitiontable"]["partitions"]]
    assert table["partitiontable"]["label"] == "gpt" and names == ["ROOT-A", "ROOT-B"]
    agent = HostAgent(config)
    slot_a = agent.slot("A")
    assert slot_a.size == 16 * 1024 * 1024
    release = read_slot_os_release(slot_a)
    assert (release.name, release.version_id, release.pretty_name) == ("KubeOS", "2.0.0", "KubeOS 2.0.0")
    assert agent.status().slots["B"].os_release is None  # a fresh install: B formatted, empty
    assert agent.grub.read() == {"saved_entry": "A"}
    assert paths.certs.is_dir()
    state = json.loads(paths.machine.read_text())
    assert set(state) == {"running", "booted_slot", "pretty_name", "boot_id", "boots", "last_boot_failed_slot"}
    assert state["booted_slot"] == "A" and state["running"] is False

    again = run("host", "sim", str(tmp_path / "h"))
    assert again.returncode != 0 and "exists already" in again.stderr


def test_host_sim_with_b_version(tmp_path: Path) -> None:
    proc = run("host", "sim", str(tmp_path / "h"), "--slot-size", "16M", "--b-version", "KubeOS 0.9.0")
    assert proc.returncode == 0, proc.stderr
    agent = HostAgent(load_host_config(proc.stdout.strip().splitlines()[-1]))
    assert agent.prepare_rollback("KubeOS 0.9.0").target_slot == "B"


def test_host_status_json_and_text(host: SimHost) -> None:
    proc = run("host", "status", "--config", str(host.paths.config), "--json")
    assert proc.returncode == 0, proc.stderr
    status = json.loads(proc.stdout)
    assert status["booted_slot"] == "A" and status["trial"] is False and status["saved_slot"] == "A"
    assert status["slots"]["A"]["os_release"] == {
        "name": "KubeOS",
        "version_id": "1.0.0",
        "pretty_name": "KubeOS 1.0.0",
    }
    assert status["slots"]["B"]["os_release"] is None and status["slots"]["B"]["error"]
    assert status["grubenv"] == {"saved_entry": "A"}
    assert status["boot_id"] == host.paths.boot_id.read_text().strip()

    text = run("host", "status", "--config", str(host.paths.config))
    assert text.returncode == 0 and "booted slot: A" in text.stdout and "KubeOS 1.0.0" in text.stdout


def test_host_status_with_a_bad_config_names_the_field(tmp_path: Path) -> None:
    bad = tmp_path / "host.yaml"
    bad.write_text("slots: {A: {device: /dev/sda2}}\ngrubenv: /boot/grubenv\n")
    proc = run("host", "status", "--config", str(bad))
    assert proc.returncode == 2 and "slot B missing" in proc.stderr


def _os_yaml(path: Path, url: str, checksum: str, **extra: object) -> Path:
    spec: dict[str, object] = {
        "imagetype": "disk",
        "opstype": "upgrade",
        "osversion": NEW,
        "maxunavailable": 1,
        "dockerimage": "",
        "imageurl": url,
        "checksum": checksum,
        "flagSafe": False,
        "mtls": False,
        "cacert": CA_NAME,
        "clientcert": "",
        "clientkey": "",
    }
    spec.update(extra)
    doc = {
        "apiVersion": "upgrade.openeuler.org/v1alpha1",
        "kind": "OS",
        "metadata": {"name": "os-sample"},
        "spec": spec,
    }
    path.write_text(yaml.safe_dump(doc))
    return path


def test_host_stage_stages_without_changing_boot_entries(
    host: SimHost, https_server: ImageServer, new_image: Image, tmp_path: Path
) -> None:
    grub_before = host.paths.grubenv.read_bytes()
    os_yaml = _os_yaml(tmp_path / "os.yaml", https_server.url(new_image.name), new_image.sha256)

    proc = run("host", "stage", "--config", str(host.paths.config), "-f", str(os_yaml))

    assert proc.returncode == 0, proc.stderr
    assert f"staged slot B: sha256 {new_image.sha256}" in proc.stdout and NEW in proc.stdout
    assert host.paths.grubenv.read_bytes() == grub_before
    assert read_slot_os_release(host.agent.slot("B")).pretty_name == NEW


def test_host_stage_reports_a_checksum_mismatch(
    host: SimHost, https_server: ImageServer, new_image: Image, tmp_path: Path
) -> None:
    os_yaml = _os_yaml(tmp_path / "os.yaml", https_server.url(new_image.name), "f" * 64)
    proc = run("host", "stage", "--config", str(host.paths.config), "-f", str(os_yaml))
    assert proc.returncode == 1
    assert f"Checksum {new_image.sha256} mismatch to {'f' * 64}" in proc.stderr


def test_host_stage_refuses_an_invalid_resource(host: SimHost, new_image: Image, tmp_path: Path) -> None:
    os_yaml = _os_yaml(tmp_path / "os.yaml", "http://127.0.0.1:1/update.img", new_image.sha256, cacert="")
    proc = run("host", "stage", "--config", str(host.paths.config), "-f", str(os_yaml))
    assert proc.returncode == 2 and "spec.imageurl" in proc.stderr and "flagSafe" in proc.stderr


def test_host_build_image_prints_its_sha256(tmp_path: Path) -> None:
    out = tmp_path / "update.img"
    proc = run("host", "build-image", str(out), "--version", "KubeOS 1.2.3", "--size", "8M", cli=[KUBEOS_ROLLOUT])
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == sha256_file(out) and out.stat().st_size == 8 * 1024 * 1024
    slot = Slot("A", out, 0, out.stat().st_size, config=None)  # type: ignore[arg-type]
    assert read_slot_os_release(slot).pretty_name == "KubeOS 1.2.3"


# ----------------------------------------------------------------------------------------- the machine


@pytest.fixture
def machine(tmp_path: Path, pki: Pki) -> Iterator[tuple[SimHost, subprocess.Popen[str]]]:
    """``host sim-run`` with a Temporal address nobody listens on: the node worker keeps trying to connect,
    which is enough to watch the machine boot and reboot."""
    host = make_sim_host(tmp_path / "m", pki)
    nobody = f"127.0.0.1:{free_port()}"
    with sim_run(host, "n1", nobody, 0.2, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) as proc:
        yield host, proc


def _reboot_cmd(host: SimHost) -> None:
    subprocess.run(host.config.reboot_command, check=True, timeout=60)


def test_sim_run_boots_reboots_into_the_trial_slot_and_can_hang(
    machine: tuple[SimHost, subprocess.Popen[str]], https_server: ImageServer, new_image: Image
) -> None:
    host, proc = machine
    wait_for(lambda: (s := host.machine_state()) is not None and s.running and s.boots == 1, "the first boot")
    first = host.machine_state()
    assert first is not None and first.booted_slot == "A" and first.pretty_name == "KubeOS 1.0.0"
    assert int(host.paths.pid.read_text()) == proc.pid

    checksum = host.agent.stage(disk_source(https_server.url(new_image.name), new_image)).checksum
    host.agent.trial_boot("B", NEW, checksum)
    _reboot_cmd(host)
    wait_for(lambda: (s := host.machine_state()) is not None and s.running and s.boots == 2, "the reboot")
    second = host.machine_state()
    assert second is not None and (second.booted_slot, second.pretty_name) == ("B", NEW)
    assert second.boot_id != first.boot_id and second.last_boot_failed_slot is None
    assert host.agent.status().booted_slot == "B" and host.agent.status().trial

    host.paths.hang_on_reboot.touch()
    _reboot_cmd(host)
    wait_for(
        lambda: not host.paths.reboot_request.exists() and not (host.machine_state() or first).running, "going down"
    )
    time.sleep(1.0)  # several downtimes: a machine that came back would be running again by now
    hung = host.machine_state()
    assert hung is not None and not hung.running and hung.boots == 2

    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0
    assert not host.paths.pid.exists()


def test_sim_run_falls_back_when_the_trial_slot_is_broken(
    machine: tuple[SimHost, subprocess.Popen[str]], https_server: ImageServer, new_image: Image
) -> None:
    host, _proc = machine
    wait_for(lambda: (s := host.machine_state()) is not None and s.running and s.boots == 1, "the first boot")
    checksum = host.agent.stage(disk_source(https_server.url(new_image.name), new_image)).checksum
    host.agent.trial_boot("B", NEW, checksum)
    host.agent.slot("B").invalidate()
    _reboot_cmd(host)
    wait_for(lambda: (s := host.machine_state()) is not None and s.running and s.boots == 2, "the reboot")
    state = host.machine_state()
    assert state is not None and state.booted_slot == "A" and state.last_boot_failed_slot == "B"
    assert os.path.exists(host.paths.node_log) and "does not boot" in host.node_log()


def test_the_node_worker_undoes_a_trial_boot_nobody_committed(
    machine: tuple[SimHost, subprocess.Popen[str]], https_server: ImageServer, new_image: Image
) -> None:
    """The host comes back into a trial boot after its deadline (its rollout gave up long ago): the node worker,
    even without Temporal, logs it and reboots into the committed slot."""
    host, _proc = machine
    wait_for(lambda: (s := host.machine_state()) is not None and s.running and s.boots == 1, "the first boot")
    checksum = host.agent.stage(disk_source(https_server.url(new_image.name), new_image)).checksum
    an_hour_ago = HostAgent(host.config, node="n1", clock=lambda: time.time() - 3600)
    an_hour_ago.trial_boot("B", NEW, checksum, deadline_seconds=60)
    _reboot_cmd(host)

    wait_for(lambda: (s := host.machine_state()) is not None and s.running and s.boots == 3, "the trial and the undo")
    state = host.machine_state()
    assert state is not None and state.booted_slot == "A" and state.last_boot_failed_slot is None
    log = host.node_log()
    assert "boot 2: slot B (KubeOS 1.0.1) once via next_entry" in log, log
    assert "trial boot of slot B (KubeOS 1.0.1) was not committed by its deadline" in log, log
    wait_for(lambda: host.agent.status().trial_deadline is None, "the worker to drop the expired trial record")
    status = host.agent.status()
    assert status.booted_slot == "A" and not status.trial and status.grubenv.get("next_entry", "") == ""
    again = host.machine_state()
    assert again is not None and again.boots == 3 and again.running  # one undo, not a reboot loop
