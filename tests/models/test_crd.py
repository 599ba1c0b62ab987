"""The published CRD: generated from the model, up to date, and a valid structural schema."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from models.crd import os_crd
from workers.resource_cmd import render_crd

CRD_FILE = Path(__file__).resolve().parents[2] / "deploy" / "crd" / "upgrade.openeuler.org_os.yaml"


def version() -> dict[str, Any]:
    [only] = os_crd()["spec"]["versions"]
    return only


def spec_schema() -> dict[str, Any]:
    return version()["schema"]["openAPIV3Schema"]["properties"]["spec"]


def test_the_committed_crd_is_the_generated_one() -> None:
    assert CRD_FILE.read_text(encoding="utf-8") == render_crd(), (
        "deploy/crd is stale: run `kubeos-rollout crd -o deploy/crd/upgrade.openeuler.org_os.yaml`"
    )
    assert yaml.safe_load(render_crd()) == os_crd()


def test_names_scope_and_status_subresource() -> None:
    crd = os_crd()
    assert crd["metadata"]["name"] == "os.upgrade.openeuler.org"
    assert crd["spec"]["group"] == "upgrade.openeuler.org" and crd["spec"]["scope"] == "Namespaced"
    assert crd["spec"]["names"]["kind"] == "OS" and crd["spec"]["names"]["plural"] == "os"
    assert version()["name"] == "v1alpha1" and version()["served"] and version()["storage"]
    assert version()["subresources"] == {"status": {}}


def test_printer_columns() -> None:
    columns = {c["name"]: c["jsonPath"] for c in version()["additionalPrinterColumns"]}
    assert columns["OSVersion"] == ".spec.osversion"
    assert columns["OpsType"] == ".spec.opstype"
    assert columns["Phase"] == ".status.phase"
    assert columns["Progress"] == ".status.progress"


def test_enums_required_fields_and_bounds() -> None:
    props = spec_schema()["properties"]
    assert set(spec_schema()["required"]) == {"opstype", "osversion", "maxunavailable"}
    assert props["opstype"]["enum"] == ["upgrade", "rollback"]
    assert set(props["imagetype"]["enum"]) == {"docker", "disk", "containerd", ""}
    assert props["executionmode"]["enum"] == ["serial", "parallel"]
    assert props["failurepolicy"]["enum"] == ["pause", "rollback"]
    assert props["maxunavailable"] == {"type": "integer", "minimum": 1}
    assert props["timeinterval"]["minimum"] == 0 and props["failurebudget"]["minimum"] == 0
    assert props["draintimeout"]["minimum"] == 1 and props["boottimeout"]["minimum"] == 1
    for name in ("flagSafe", "mtls", "evictpodforce", "includecontrolplane"):
        assert props[name]["type"] == "boolean", name
    for name in ("osversion", "dockerimage", "imageurl", "checksum", "cacert", "clientcert", "clientkey"):
        assert props[name]["type"] == "string", name
    assert props["timewindow"]["type"] == "object"
    assert set(props["timewindow"]["properties"]) == {"starttime", "endtime"}


def structural_violations(node: Any, path: str) -> list[str]:
    """Where a schema breaks Kubernetes' structural rules (a type on every node, no unions, no refs)."""
    found: list[str] = []
    if not isinstance(node, dict):
        return [f"{path}: not a mapping"]
    if "type" not in node and not node.get("x-kubernetes-preserve-unknown-fields"):
        found.append(f"{path}: no type")
    found += [
        f"{path}: {key}" for key in ("$ref", "anyOf", "oneOf", "allOf", "$defs", "additionalProperties") if key in node
    ]
    if node.get("type") == "array" and "items" not in node:
        found.append(f"{path}: array without items")
    for name, sub in node.get("properties", {}).items():
        found += structural_violations(sub, f"{path}.{name}")
    if "items" in node:
        found += structural_violations(node["items"], f"{path}[]")
    return found


def test_the_schema_is_structural() -> None:
    root = version()["schema"]["openAPIV3Schema"]
    assert structural_violations(root, "") == []
    assert {"spec", "status", "metadata"} <= set(root["properties"])
    status = root["properties"]["status"]["properties"]
    assert status["nodes"]["type"] == "array" and status["nodes"]["items"]["type"] == "object"


def test_the_structural_check_catches_a_bad_schema() -> None:
    bad = {"type": "object", "properties": {"a": {"anyOf": [{"type": "string"}]}, "b": {"type": "array"}}}
    assert structural_violations(bad, "") == [".a: no type", ".a: anyOf", ".b: array without items"]
