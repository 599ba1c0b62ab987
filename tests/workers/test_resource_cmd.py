"""``kubeos-rollout validate`` and ``kubeos-rollout crd`` as a user runs them: exit status, summaries, errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.models.samples import FIXTURES, HEX, resource
from workers.cli import main
from workers.resource_cmd import render_crd

CLI = str(Path(sys.executable).parent / "kubeos-rollout")
ENVELOPE = "apiVersion: upgrade.openeuler.org/v1alpha1\nkind: OS\nmetadata:\n  name: os-sample\n"


def error_fields(stderr: str) -> list[str]:
    """The fields named by the error lines (``  spec.imageurl: reason``) of the validate command."""
    return [line.strip().split(":", 1)[0] for line in stderr.splitlines() if line.startswith("  ")]


def run_cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([CLI, *args], input=stdin, capture_output=True, text=True, timeout=60, check=False)


def validate(capsys: pytest.CaptureFixture[str], *paths: Path | str) -> tuple[int, str, str]:
    code = main(["validate", *map(str, paths)])
    out, err = capsys.readouterr()
    return code, out, err


# ----------------------------------------------------------------------------------------------- as a subprocess


def test_the_seed_samples_filled_in_are_valid() -> None:
    paths = [str(FIXTURES / f"seed_filled_{kind}.yaml") for kind in ("disk", "docker", "rollback")]
    done = run_cli("validate", *paths)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 3 and all(line.startswith("valid: ") and "OS/os-sample" in line for line in lines)
    assert "upgrade to 'KubeOS 1.0.1' from disk https://192.168.122.15/update.img, 2 at a time" in lines[0]
    assert "from docker 192.168.122.123:5000/kubeos-x86_64:2023-01" in lines[1]
    assert "rollback to 'KubeOS 1.0.0', 2 at a time" in lines[2]
    assert done.stderr.splitlines() == [
        f"warning: {paths[1]}: spec.mtls: only applies to disk images served over https"
    ]


SEED_LITERAL_ERRORS = {
    "disk": [
        "spec.osversion",
        "spec.maxunavailable",
        "spec.imageurl",
        "spec.checksum",
        "spec.flagSafe",
        "spec.mtls",
        "spec.cacert",
        "spec.clientcert",
        "spec.clientkey",
    ],
    "docker": ["spec.osversion", "spec.maxunavailable", "spec.dockerimage"],
    "rollback": ["spec.osversion"],
}


@pytest.mark.parametrize("kind", sorted(SEED_LITERAL_ERRORS))
def test_the_seed_samples_taken_literally_are_refused_field_by_field(kind: str) -> None:
    path = FIXTURES / f"seed_literal_{kind}.yaml"
    done = run_cli("validate", str(path))
    assert done.returncode == 2 and done.stdout == ""
    assert sorted(error_fields(done.stderr)) == sorted(SEED_LITERAL_ERRORS[kind])
    assert f"invalid: {path}: OS/os-sample: {len(SEED_LITERAL_ERRORS[kind])} error(s)" in done.stderr
    assert "Traceback" not in done.stderr


def test_garbage_and_standard_input_through_the_real_executable(tmp_path: Path) -> None:
    binary = tmp_path / "vmlinuz"
    binary.write_bytes(bytes(range(256)) * 64)
    done = run_cli("validate", str(binary))
    assert done.returncode == 2 and done.stderr.startswith(f"error: {binary}: cannot read")
    assert "Traceback" not in done.stderr
    seed = (FIXTURES / "seed_filled_rollback.yaml").read_text()
    done = run_cli("validate", "-", stdin=seed)
    assert done.returncode == 0 and done.stdout.startswith("valid: -: OS/os-sample: rollback")


def test_crd_command_prints_the_generated_crd(tmp_path: Path) -> None:
    done = run_cli("crd")
    assert done.returncode == 0 and done.stdout == render_crd()
    target = tmp_path / "out" / "crd.yaml"
    done = run_cli("crd", "-o", str(target))
    assert done.returncode == 0 and target.read_text() == render_crd()


# ----------------------------------------------------------------------------------------------- in process


def test_several_documents_one_summary_line_each(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = validate(capsys, FIXTURES / "multi_valid.yaml")
    assert code == 0 and err == ""
    assert [line.split(": ")[1:3] for line in out.splitlines()] == [
        [f"{FIXTURES / 'multi_valid.yaml'} (document 1)", "OS/pool-a"],
        [f"{FIXTURES / 'multi_valid.yaml'} (document 2)", "OS/pool-b"],
    ]


def test_one_invalid_document_fails_the_run(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = validate(capsys, FIXTURES / "multi_one_invalid.yaml", FIXTURES / "seed_filled_disk.yaml")
    assert code == 2
    assert len(out.splitlines()) == 2 and "OS/fine" in out and "seed_filled_disk.yaml" in out
    assert "(document 2): OS/broken: 1 error(s)" in err
    assert error_fields(err) == ["spec.maxunavailable"]


def test_quiet_prints_errors_only(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", "-q", str(FIXTURES / "seed_filled_disk.yaml")]) == 0
    assert capsys.readouterr().out == ""


def spec_yaml(body: str) -> str:
    return ENVELOPE + "spec:\n" + "".join(f"  {line}\n" for line in body.strip().splitlines())


HTTP = "imagetype: disk\nopstype: upgrade\nosversion: KubeOS 1.0.1\nmaxunavailable: 2\nimageurl: http://h/x.img\n"
HTTP += f"checksum: {HEX}\n"
ROLLBACK = "opstype: rollback\nosversion: KubeOS 1.0.0\n"

# YAML as a user writes it: what PyYAML and kubectl make of the scalars matters here.
TEXTS: list[Any] = [
    pytest.param(spec_yaml(HTTP + "flagSafe: yes"), [], id="yaml11-yes"),
    pytest.param(spec_yaml(HTTP + "flagSafe: True"), [], id="yaml-True"),
    pytest.param(spec_yaml(HTTP + 'flagSafe: "true"'), ["spec.flagSafe"], id="quoted-true"),
    pytest.param(spec_yaml(HTTP + "flagSafe: no"), ["spec.imageurl"], id="yaml11-no"),
    pytest.param(spec_yaml(HTTP.replace("http://", "HTTP://") + "flagSafe: true"), [], id="upper-scheme"),
    pytest.param(spec_yaml(ROLLBACK + "maxunavailable: 1"), [], id="rollback-minimal"),
    pytest.param(spec_yaml(ROLLBACK + "maxunavailable: 0"), ["spec.maxunavailable"], id="max-0"),
    pytest.param(spec_yaml(ROLLBACK + "maxunavailable: -1"), ["spec.maxunavailable"], id="max-neg"),
    pytest.param(spec_yaml(ROLLBACK + "maxunavailable: 1.5"), ["spec.maxunavailable"], id="max-float"),
    pytest.param(spec_yaml(ROLLBACK + 'maxunavailable: "2"'), ["spec.maxunavailable"], id="max-quoted"),
    pytest.param(spec_yaml(ROLLBACK + "maxunavailable: true"), ["spec.maxunavailable"], id="max-bool"),
    pytest.param(spec_yaml(ROLLBACK + "maxunavailable:"), ["spec.maxunavailable"], id="max-empty"),
    pytest.param(
        spec_yaml(ROLLBACK + "maxunavailable: 1\ntimewindow:\n  starttime: 22:00:00\n  endtime: 06:00:00"),
        [],
        id="window-unquoted-times",
    ),
    pytest.param(
        spec_yaml(
            ROLLBACK
            + "maxunavailable: 1\ntimewindow:\n  starttime: 2030-01-02 00:00:00\n  endtime: 2030-01-01 00:00:00"
        ),
        ["spec.timewindow.endtime"],
        id="window-unquoted-dates-reversed",
    ),
    pytest.param(
        spec_yaml(ROLLBACK.replace("osversion", "osVersion") + "maxunavailable: 1"),
        ["spec.osVersion", "spec.osversion"],
        id="typo",
    ),
    pytest.param(spec_yaml(HTTP + f"flagSafe: true\nchecksum: sha256:{HEX}"), ["spec.checksum"], id="checksum-prefix"),
    pytest.param(
        ENVELOPE.replace("kind: OS", "kind: os")
        + "spec:\n  "
        + "\n  ".join((ROLLBACK + "maxunavailable: 1").splitlines()),
        ["kind"],
        id="kind",
    ),
    pytest.param(ENVELOPE.replace("v1alpha1", "v1"), ["apiVersion", "spec"], id="apiversion-no-spec"),
    pytest.param(
        ENVELOPE.replace("  name: os-sample\n", "  namespace: default\n") + "spec: {}\n",
        ["metadata.name", "spec.opstype", "spec.osversion", "spec.maxunavailable"],
        id="no-name-empty-spec",
    ),
    pytest.param(ROLLBACK + "maxunavailable: 1\n", ["apiVersion", "kind", "metadata.name", "spec"], id="bare-spec"),
    pytest.param(
        yaml.safe_dump(resource("mtls", cacert="../ca.crt", clientkey="/etc/k")),
        ["spec.cacert", "spec.clientkey"],
        id="cert-paths",
    ),
]


@pytest.mark.parametrize(("text", "fields"), TEXTS)
def test_resources_as_written(text: str, fields: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "os.yaml"
    path.write_text(text)
    code, out, err = validate(capsys, path)
    assert sorted(error_fields(err)) == sorted(fields)
    assert code == (2 if fields else 0)
    assert (out.startswith(f"valid: {path}: ") and out.count("\n") == 1) if not fields else out == ""


def alias_bomb(levels: int) -> str:
    lines = ['l0: &l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 10)}]" for i in range(1, levels)]
    return ENVELOPE + "\n".join(lines) + f"\nspec:\n  opstype: *l{levels - 1}\n  maxunavailable: *l{levels - 1}\n"


GARBAGE: list[Any] = [
    pytest.param(b"", "no YAML document found", id="empty"),
    pytest.param(b"---\n---\n", "no YAML document found", id="empty-documents"),
    pytest.param(b"\xff\xfe\x00garbage\x80", "cannot read", id="not-utf8"),
    pytest.param(b"\x7fELF\x02\x01\x01" + bytes(100), "not valid YAML", id="nul-bytes"),
    pytest.param(b"apiVersion: [unclosed\n", "not valid YAML", id="not-yaml"),
    pytest.param(b"{{{{ }}", "not valid YAML", id="braces"),
    pytest.param(b"- a\n- b\n", "(document): must be a mapping", id="list"),
    pytest.param(b"42\n", "(document): must be a mapping", id="scalar"),
    pytest.param(b"just some words\n", "(document): must be a mapping", id="text"),
    pytest.param(b"[" * 20000 + b"]" * 20000, "nested too deeply", id="deep-lists"),
    pytest.param(b"a: " + b"{b: " * 3000 + b"1" + b"}" * 3000, "nested too deeply", id="deep-maps"),
    pytest.param(b"spec: " + b"[" * 50 + b"]" * 50, "spec: must be a mapping", id="nested-junk"),
    pytest.param(b"maxunavailable: " + b"9" * 10000, "not usable YAML", id="huge-number"),
    pytest.param(
        (ENVELOPE + "spec:\n  osversion: KubeOS " + "1" * 5_000_000 + "\n").encode(), "is too long", id="huge-string"
    ),
    pytest.param(alias_bomb(9).encode(), "spec.opstype: must be a string", id="alias-bomb"),
]


@pytest.mark.parametrize(("data", "message"), GARBAGE)
def test_garbage_is_refused_without_a_traceback(
    data: bytes, message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "junk.yaml"
    path.write_bytes(data)
    code, out, err = validate(capsys, path)
    assert code == 2 and out == ""
    assert message in err and "Traceback" not in err
    assert len(err) < 5000


def test_missing_files_and_directories(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = validate(capsys, tmp_path / "nope.yaml", tmp_path, FIXTURES / "seed_filled_rollback.yaml")
    assert code == 2
    assert f"error: {tmp_path / 'nope.yaml'}: cannot read" in err and f"error: {tmp_path}: cannot read" in err
    assert "OS/os-sample" in out  # the readable file is still judged


def test_byte_order_mark_and_crlf_line_ends(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = (FIXTURES / "seed_filled_disk.yaml").read_text().replace("\n", "\r\n")
    path = tmp_path / "windows.yaml"
    path.write_bytes(b"\xef\xbb\xbf" + text.encode())
    code, out, err = validate(capsys, path)
    assert code == 0 and err == "" and "OS/os-sample" in out
