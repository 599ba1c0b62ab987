"""End to end on a simulated host: a container image from a real registry staged into the inactive slot.

The success path goes through the command line a user would run (``kubeos-rollout host sim``, ``host stage -f
os.yaml``, ``host status --json``; run as ``python -m node_worker.cli``, the host-only entry of the same
commands); the failure paths call the host agent directly and check that nothing the boot depends
on changed: the GRUB environment and the inactive slot's bytes.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml

from devstack.net import free_port
from devstack.registry import RegistryServer
from models.host import HostErrorType, ImageSource
from node_worker.errors import HostError
from node_worker.oci_rootfs import WORKDIR_NAME
from tests.node_worker.conftest import HOST_CLI, SimHost, make_sim_host
from tests.node_worker.registry_env import plain_registry

__all__ = ["plain_registry"]  # fixture used below

NEW = "KubeOS 1.0.1"


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*HOST_CLI, *args], capture_output=True, text=True, timeout=300, check=False)


def os_resource(reference: str, checksum: str) -> dict[str, object]:
    return {
        "apiVersion": "upgrade.openeuler.org/v1alpha1",
        "kind": "OS",
        "metadata": {"name": "os-docker", "namespace": "default"},
        "spec": {
            "imagetype": "docker",
            "opstype": "upgrade",
            "osversion": NEW,
            "maxunavailable": 1,
            "dockerimage": reference,
            "imageurl": "",
            "checksum": checksum,
            "flagSafe": False,
            "mtls": False,
        },
    }


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["os.tar", "rootfs"])
def test_docker_image_is_staged_on_a_simulated_host(
    plain_registry: RegistryServer, tmp_path: Path, layout: str
) -> None:
    pushed = plain_registry.push_kubeos(NEW, layout=layout)  # type: ignore[arg-type]
    host_dir = tmp_path / "host"
    created = cli("host", "sim", str(host_dir), "--slot-size", "32M")
    assert created.returncode == 0, created.stderr
    config = host_dir / "host.yaml"
    grubenv_before = (host_dir / "grubenv").read_bytes()
    spec = tmp_path / "os.yaml"
    spec.write_text(yaml.safe_dump(os_resource(pushed.reference, pushed.digest.split(":", 1)[1])))

    staged = cli("host", "stage", "--config", str(config), "-f", str(spec))
    assert staged.returncode == 0, staged.stdout + staged.stderr
    assert "staged slot B" in staged.stdout and NEW in staged.stdout

    status = json.loads(cli("host", "status", "--config", str(config), "--json").stdout)
    assert status["booted_slot"] == "A" and status["saved_slot"] == "A" and status["next_slot"] is None
    assert status["slots"]["B"]["os_release"]["pretty_name"] == NEW
    assert status["slots"]["A"]["os_release"]["pretty_name"] == "KubeOS 1.0.0"
    assert (host_dir / "grubenv").read_bytes() == grubenv_before  # staging never touches the boot entries
    assert not (host_dir / "staging" / WORKDIR_NAME).exists()  # layers, tree and built image removed


def _failing_stage(host: SimHost, source: ImageSource) -> HostError:
    slot_b = host.slot_digest("B")
    grubenv = host.grubenv()
    with pytest.raises(HostError) as info:
        host.agent.stage(source)
    assert host.grubenv() == grubenv
    assert host.slot_digest("B") == slot_b  # refused before the slot was written
    assert not (host.paths.staging / WORKDIR_NAME).exists()
    return info.value


@pytest.mark.slow
def test_failures_leave_the_slot_and_boot_entries_alone(plain_registry: RegistryServer, tmp_path: Path) -> None:
    pushed = plain_registry.push_kubeos(NEW)
    host = make_sim_host(tmp_path / "host")
    base = ImageSource(imagetype="docker", dockerimage=pushed.reference, osversion=NEW)

    mismatch = _failing_stage(host, base.model_copy(update={"checksum": "0" * 64}))
    assert mismatch.kind == HostErrorType.CHECKSUM_MISMATCH and pushed.digest in str(mismatch)

    missing = _failing_stage(host, base.model_copy(update={"dockerimage": f"{plain_registry.host}/kubeos/os:9.9.9"}))
    assert missing.kind == HostErrorType.CONTAINER_IMAGE and "manifest unknown" in str(missing)

    closed = f"127.0.0.1:{free_port()}/kubeos/os:1.0.1"
    unreachable = _failing_stage(host, base.model_copy(update={"dockerimage": closed}))
    assert unreachable.retryable and unreachable.kind == HostErrorType.DOWNLOAD_RETRY
