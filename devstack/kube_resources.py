"""Which resource kinds the emulated API server serves, as discovery and OpenAPI documents describe them.

Built-in kinds come from kmock's bundled discovery data (taken from a real cluster), trimmed to the groups a
node rollout touches so that kubectl's short names stay unambiguous (the bundle also has ``metrics.k8s.io``
nodes, which kubectl would otherwise pick for ``kubectl get nodes``). Custom kinds come from
CustomResourceDefinition documents: the project's CRD file, or any CRD created through the API.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import kmock
import yaml

from devstack.kube_semantics import JSON

# The groups served besides custom ones: core, workloads (DaemonSet owners), PDBs, events, CRDs, leases.
SERVED_GROUPS = {"", "apps", "policy", "events.k8s.io", "apiextensions.k8s.io", "coordination.k8s.io"}

REPO_ROOT = Path(__file__).resolve().parents[1]
OS_CRD_FILE = REPO_ROOT / "deploy" / "crd" / "upgrade.openeuler.org_os.yaml"


@dataclass(frozen=True)
class PrinterColumn:
    name: str
    json_path: str
    type: str = "string"
    priority: int = 0  # 1: shown by kubectl only with -o wide


@dataclass(frozen=True)
class Kind:
    """One served resource (group/version/plural) and the behaviour the store gives it."""

    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool
    singular: str = ""
    short_names: frozenset[str] = frozenset()
    verbs: frozenset[str] = frozenset({"create", "delete", "get", "list", "patch", "update", "watch"})
    categories: frozenset[str] = frozenset()
    subresources: frozenset[str] = frozenset()
    custom: bool = False
    printer_columns: tuple[PrinterColumn, ...] = field(default=())
    # The CRD version's openAPIV3Schema: custom objects are pruned, defaulted and validated against it.
    schema: Mapping[str, Any] | None = field(default=None, compare=False, hash=False)

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def resource(self) -> kmock.resource:
        return kmock.resource(self.group, self.version, self.plural)

    @property
    def status_subresource(self) -> bool:
        """Status is written only through ``/status``, and ``/status`` writes only status."""
        return "status" in self.subresources

    def info(self) -> kmock.ResourceInfo:
        """The discovery record kmock serves under /api and /apis."""
        return kmock.ResourceInfo(
            namespaced=self.namespaced,
            kind=self.kind,
            singular=self.singular or self.kind.lower(),
            verbs=set(self.verbs),
            shortnames=set(self.short_names),
            categories=set(self.categories),
            subresources=set(self.subresources),
        )


# The subresources the store implements; others in the bundled discovery data are not advertised.
SERVED_SUBRESOURCES = frozenset({"status", "eviction"})


def discovery_entries(kind: Kind) -> list[JSON]:
    """The APIResourceList entries of a kind: itself and the subresources the store serves."""
    entries: list[JSON] = [
        {
            "name": kind.plural,
            "singularName": kind.singular or kind.kind.lower(),
            "namespaced": kind.namespaced,
            "kind": kind.kind,
            "verbs": sorted(kind.verbs),
            **({"shortNames": sorted(kind.short_names)} if kind.short_names else {}),
            **({"categories": sorted(kind.categories)} if kind.categories else {}),
        }
    ]
    for sub in sorted(kind.subresources & SERVED_SUBRESOURCES):
        entry: JSON = {"name": f"{kind.plural}/{sub}", "singularName": "", "namespaced": kind.namespaced}
        if sub == "eviction":
            entry.update(group="policy", version="v1", kind="Eviction", verbs=["create"])
        else:
            entry.update(kind=kind.kind, verbs=["get", "patch", "update"])
        entries.append(entry)
    return entries


def _gv_path(group: str, version: str) -> str:
    return f"apis/{group}/{version}" if group else f"api/{version}"


def openapi_v3_root(kinds: Iterable[Kind]) -> JSON:
    """``/openapi/v3``: where each group/version's document is.

    kubectl's ``apply``/``create`` validate by asking the server to (``fieldValidation``) when the group
    version's document says its PATCH operations take that parameter; without any OpenAPI it refuses to send.
    """
    gvs = sorted({(k.group, k.version) for k in kinds})
    return {"paths": {_gv_path(g, v): {"serverRelativeURL": f"/openapi/v3/{_gv_path(g, v)}"} for g, v in gvs}}


def openapi_v3_group(kinds: Iterable[Kind], group: str, version: str) -> JSON | None:
    """A minimal OpenAPI 3 document for one group/version: the PATCH operation of every kind."""
    paths: JSON = {}
    for kind in kinds:
        if (kind.group, kind.version) != (group, version):
            continue
        scope = "/namespaces/{namespace}" if kind.namespaced else ""
        paths[f"/{_gv_path(group, version)}{scope}/{kind.plural}/{{name}}"] = {
            "patch": {
                "x-kubernetes-group-version-kind": {"group": group, "version": version, "kind": kind.kind},
                "parameters": [{"name": "fieldValidation", "in": "query", "schema": {"type": "string"}}],
                "responses": {"200": {"description": "OK"}},
            }
        }
    if not paths:
        return None
    return {
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": "unversioned"},
        "paths": paths,
        "components": {"schemas": {}},
    }


def builtin_kinds() -> list[Kind]:
    bundled = kmock.ResourcesArray()
    with warnings.catch_warnings():  # kmock reads its bundle with a deprecated importlib call
        warnings.simplefilter("ignore", DeprecationWarning)
        bundled.load_bundled()
    kinds = []
    for res in bundled:
        if res.group not in SERVED_GROUPS or res.version is None or res.plural is None:
            continue
        info = bundled[res]
        kinds.append(
            Kind(
                group=res.group,
                version=res.version,
                plural=res.plural,
                kind=info.kind or res.plural.capitalize(),
                namespaced=bool(info.namespaced),
                singular=info.singular or "",
                short_names=frozenset(info.shortnames),
                verbs=frozenset(info.verbs),
                categories=frozenset(info.categories),
                subresources=frozenset(info.subresources),
            )
        )
    return kinds


def kinds_from_crd(crd: Mapping[str, Any]) -> list[Kind]:
    """The kinds one CustomResourceDefinition serves (one per served version)."""
    spec = crd.get("spec") or {}
    names = spec.get("names") or {}
    group, plural, kind = spec.get("group"), names.get("plural"), names.get("kind")
    if not (group and plural and kind):
        raise ValueError("a CustomResourceDefinition needs spec.group, spec.names.plural and spec.names.kind")
    kinds = []
    for version in spec.get("versions") or []:
        if not version.get("served", True):
            continue
        columns = tuple(
            PrinterColumn(c["name"], c["jsonPath"], c.get("type", "string"), int(c.get("priority", 0)))
            for c in version.get("additionalPrinterColumns") or []
        )
        kinds.append(
            Kind(
                group=group,
                version=version["name"],
                plural=plural,
                kind=kind,
                namespaced=spec.get("scope", "Namespaced") == "Namespaced",
                singular=names.get("singular") or kind.lower(),
                short_names=frozenset(names.get("shortNames") or []),
                categories=frozenset(names.get("categories") or []),
                subresources=frozenset((version.get("subresources") or {}).keys()),
                custom=True,
                printer_columns=columns,
                schema=(version.get("schema") or {}).get("openAPIV3Schema"),
            )
        )
    return kinds


def load_crd_documents(path: Path) -> list[JSON]:
    """The CustomResourceDefinition documents of a YAML file (other documents are ignored)."""
    with path.open(encoding="utf-8") as f:
        docs = [d for d in yaml.safe_load_all(f) if isinstance(d, dict)]
    return [d for d in docs if d.get("kind") == "CustomResourceDefinition"]


def default_crds() -> list[JSON]:
    """The project's OS CRD: the generated file when present, else generated from the model on the spot."""
    if OS_CRD_FILE.is_file():
        return load_crd_documents(OS_CRD_FILE)
    from models.crd import os_crd  # the generator of that file: one home for the CRD

    return [os_crd()]
