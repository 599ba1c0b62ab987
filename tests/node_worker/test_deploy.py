"""The files in deploy/node: GRUB script syntax, the example host configuration, the systemd unit's command."""

from __future__ import annotations

import argparse
import configparser
import re
import shlex
import subprocess
from pathlib import Path

from node_worker.cli import register
from node_worker.config import load_host_config

DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "node"


def test_grub_cfg_is_valid_grub_script() -> None:
    proc = subprocess.run(["grub-script-check", str(DEPLOY / "grub.cfg")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_grub_cfg_has_entries_a_and_b_and_boots_next_entry_once() -> None:
    text = (DEPLOY / "grub.cfg").read_text()
    assert re.findall(r'^menuentry "([^"]+)"', text, re.MULTILINE) == ["A", "B"]
    once = text.index('set default="${next_entry}"')
    assert text.index("set next_entry=", once) < text.index("save_env next_entry", once)
    assert 'set default="${saved_entry}"' in text
    assert "set fallback=" in text


def test_example_host_config_loads() -> None:
    config = load_host_config(DEPLOY / "host.example.yaml")
    assert config.entry("A") == "A" and config.entry("B") == "B"
    assert config.certs_dir == "/etc/KubeOS/certs"
    assert config.kernel_cmdline == "/proc/cmdline"


def test_systemd_unit_runs_the_node_worker() -> None:
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    unit.read(DEPLOY / "kubeos-node-worker.service")
    argv = shlex.split(unit["Service"]["ExecStart"].replace("${NODE_NAME}", "node-1"))
    assert Path(argv[0]).name == "kubeos-rollout"
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv[1:])
    assert (args.command, args.node, str(args.config)) == ("node-worker", "node-1", "/etc/kubeos-rollout/host.yaml")
    assert unit["Service"]["Restart"] == "always"
