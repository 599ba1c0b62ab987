"""deploy/ builds with kustomize and every object is valid against the Kubernetes schemas (strict)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
KUBERNETES_VERSION = "1.30.0"


def built() -> list[dict[str, Any]]:
    kubectl = shutil.which("kubectl")
    assert kubectl, "kubectl is missing: make deps installs it"
    out = subprocess.run([kubectl, "kustomize", str(DEPLOY)], check=True, capture_output=True, text=True).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def test_kustomize_builds_the_expected_objects() -> None:
    kinds = sorted((d["kind"], d["metadata"]["name"]) for d in built())
    assert ("CustomResourceDefinition", "os.upgrade.openeuler.org") in kinds
    assert ("Deployment", "kubeos-cluster-worker") in kinds
    assert ("Deployment", "kubeos-bridge") in kinds
    assert ("ClusterRole", "kubeos-cluster-worker") in kinds
    assert ("ClusterRole", "kubeos-bridge") in kinds


@pytest.mark.parametrize("doc", built(), ids=lambda d: f"{d['kind']}/{d['metadata']['name']}")
def test_every_object_is_valid_against_the_kubernetes_schema(doc: dict[str, Any]) -> None:
    kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_cluster_worker_has_two_replicas_and_runs_as_non_root() -> None:
    worker = next(d for d in built() if d["kind"] == "Deployment" and d["metadata"]["name"] == "kubeos-cluster-worker")
    assert worker["spec"]["replicas"] == 2
    pod = worker["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["containers"][0]["securityContext"]["allowPrivilegeEscalation"] is False


def _rules(name: str) -> set[tuple[str, str, str]]:
    role = next(d for d in built() if d["kind"] == "ClusterRole" and d["metadata"]["name"] == name)
    return {
        (group, resource, verb)
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }


def test_rbac_grants_what_the_code_uses_and_nothing_broad() -> None:
    worker = _rules("kubeos-cluster-worker")
    assert {("", "nodes", "patch"), ("", "pods/eviction", "create"), ("", "pods", "delete")} <= worker
    bridge = _rules("kubeos-bridge")
    assert {("upgrade.openeuler.org", "os", "watch"), ("upgrade.openeuler.org", "os/status", "patch")} <= bridge
    for rules in (worker, bridge):
        assert not any("*" in part for rule in rules for part in rule)
        assert not any(resource == "secrets" for _, resource, _ in rules)
    # The bridge never touches nodes or pods; the worker never writes OS resources.
    assert not any(resource in ("nodes", "pods") for _, resource, _ in bridge)
    assert not any(group == "upgrade.openeuler.org" for group, _, _ in worker)


def test_temporal_values_use_postgresql() -> None:
    values = yaml.safe_load((DEPLOY / "temporal" / "values.yaml").read_text())
    assert values["server"]["config"]["persistence"]["default"]["sql"]["driver"] == "postgres12"
    assert values["cassandra"]["enabled"] is False


def test_temporal_values_give_the_rollouts_namespace_one_partition_per_task_queue() -> None:
    """Node queues have one poller each; 4 partitions (the server's default) per queue only load matching."""
    values = yaml.safe_load((DEPLOY / "temporal" / "values.yaml").read_text())
    config = yaml.safe_load((DEPLOY / "cluster" / "config.yaml").read_text())
    namespace = config["data"]["TEMPORAL_NAMESPACE"]
    for key in ("matching.numTaskqueueReadPartitions", "matching.numTaskqueueWritePartitions"):
        assert {"value": 1, "constraints": {"namespace": namespace}} in values["server"]["dynamicConfig"][key]
