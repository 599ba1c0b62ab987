"""The emulated API server's state and its write rules, independent of HTTP.

Objects live in kmock's ``ObjectsArray`` (each with its version history, so tests can look back); this
module adds what a real API server does on top: metadata (uid, resourceVersion, creationTimestamp,
generation), namespaces from the URL, the status subresource kept apart from the rest of the object,
resourceVersion preconditions, finalizers, label/field selectors, PodDisruptionBudget-aware eviction, a
change log that watches resume from, and a record of node cordon transitions.

All methods are synchronous and called from one event loop, so each call is atomic.
"""

from __future__ import annotations

import collections
import copy
import math
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, NamedTuple

import kmock

from devstack.kube_resources import Kind, kinds_from_crd
from devstack.kube_schema import apply_schema
from devstack.kube_semantics import (
    JSON,
    PatchError,
    SelectorError,
    json_merge_patch,
    json_patch,
    labels_match,
    parse_field_selector,
    parse_label_selector,
    selector_from_struct,
    strategic_merge_patch,
)

DEFAULT_NAMESPACES = ("default", "kube-system", "kube-public", "kube-node-lease")

PATCH_TYPES: dict[str, Callable[[Any, Any], Any]] = {
    "application/json-patch+json": json_patch,
    "application/merge-patch+json": json_merge_patch,
    "application/strategic-merge-patch+json": strategic_merge_patch,
}


def api_error(
    code: int, reason: str, message: str, kind: Kind | None = None, name: str = "", causes: list[JSON] | None = None
) -> kmock.KubernetesError:
    """A ``Status`` failure as the API server words it (kmock renders it)."""
    details: JSON = {"name": name, "group": kind.group, "kind": kind.plural} if kind else {"name": name}
    if causes:
        details["causes"] = causes
    return kmock.KubernetesError(status=code, reason=reason, message=message, details=details)


def not_found(kind: Kind, name: str) -> kmock.KubernetesError:
    return api_error(404, "NotFound", f'{_qualified(kind)} "{name}" not found', kind, name)


def _qualified(kind: Kind) -> str:
    return f"{kind.plural}.{kind.group}" if kind.group else kind.plural


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class CordonTransition(NamedTuple):
    """A node became unschedulable (cordon) or schedulable again (uncordon), at ``time.monotonic()``.

    A tuple, so ``for node, cordoned, at in kube.cordon_log`` reads naturally in tests."""

    node: str
    unschedulable: bool
    at: float


@dataclass(frozen=True)
class Change:
    """One entry of the change log that watches read: the object before and after, at a revision."""

    revision: int
    kind: Kind
    type: str  # ADDED, MODIFIED, DELETED
    old: JSON | None
    new: JSON


def _meta(obj: Mapping[str, Any]) -> JSON:
    meta = obj.get("metadata")
    return meta if isinstance(meta, dict) else {}


def _unschedulable(obj: JSON | None) -> bool:
    return bool(((obj or {}).get("spec") or {}).get("unschedulable"))


def _without(obj: Mapping[str, Any], *keys: str) -> JSON:
    return {k: v for k, v in obj.items() if k not in keys}


class Store:
    def __init__(self, objects: Any, log_size: int = 20000) -> None:
        self.objects = objects  # kmock.ObjectsArray
        self.kinds: dict[tuple[str, str, str], Kind] = {}
        self.revision = 1
        self.changes: collections.deque[Change] = collections.deque(maxlen=log_size)
        self.cordons: list[CordonTransition] = []
        self.listeners: list[Callable[[], None]] = []

    # -------------------------------------------------------------------------------------------- kinds

    def register(self, kind: Kind) -> None:
        self.kinds[(kind.group, kind.version, kind.plural)] = kind

    def kind(self, group: str, version: str, plural: str) -> Kind:
        kind = self.kinds.get((group, version, plural))
        if kind is None:
            gv = f"{group}/{version}" if group else version
            raise api_error(404, "NotFound", f"the server could not find the requested resource ({gv} {plural})")
        return kind

    def kind_of(self, group: str, plural: str) -> Kind | None:
        return next((k for k in self.kinds.values() if k.group == group and k.plural == plural), None)

    def install_crd(self, crd: Mapping[str, Any]) -> list[Kind]:
        """Serve the kinds of a CustomResourceDefinition and keep the CRD itself as an object."""
        kinds = kinds_from_crd(crd)
        for kind in kinds:
            self.register(kind)
        crd_kind = self.kind_of("apiextensions.k8s.io", "customresourcedefinitions")
        name = _meta(crd).get("name", "")
        if crd_kind is not None and name and self._current(crd_kind, None, name) is None:
            self.create(crd_kind, None, copy.deepcopy(dict(crd)))
        return kinds

    # ------------------------------------------------------------------------------------------- reading

    def _key(self, kind: Kind, namespace: str | None, name: str) -> tuple[kmock.resource, str | None, str]:
        return (kind.resource, namespace if kind.namespaced else None, name)

    def _current(self, kind: Kind, namespace: str | None, name: str) -> JSON | None:
        key = self._key(kind, namespace, name)
        if key not in self.objects or self.objects[key].deleted:
            return None
        raw: JSON = self.objects[key].raw
        return raw

    def _iter(self, kind: Kind, namespace: str | None) -> Iterator[JSON]:
        for (resource, ns, _), obj in list(self.objects.items()):
            if resource == kind.resource and not obj.deleted and (namespace is None or ns == namespace):
                yield obj.raw

    def get(self, kind: Kind, namespace: str | None, name: str) -> JSON:
        obj = self._current(kind, namespace, name)
        if obj is None:
            raise not_found(kind, name)
        return copy.deepcopy(obj)

    def matcher(self, label_selector: str = "", field_selector: str = "") -> Callable[[Mapping[str, Any]], bool]:
        try:
            labels = parse_label_selector(label_selector)
            fields = parse_field_selector(field_selector)
        except SelectorError as e:
            raise api_error(400, "BadRequest", str(e)) from e
        return lambda obj: labels_match(labels, _meta(obj).get("labels")) and fields(obj)

    def list_objects(
        self, kind: Kind, namespace: str | None, label_selector: str = "", field_selector: str = ""
    ) -> list[JSON]:
        match = self.matcher(label_selector, field_selector)
        items = [copy.deepcopy(o) for o in self._iter(kind, namespace) if match(o)]
        return sorted(items, key=lambda o: (_meta(o).get("namespace", ""), _meta(o).get("name", "")))

    # ------------------------------------------------------------------------------------------- writing

    def _commit(self, kind: Kind, change: str, old: JSON | None, new: JSON) -> JSON:
        """Store a new version (or the deletion), log it for watches and tell the listeners."""
        self.revision += 1
        meta = new.setdefault("metadata", {})
        meta["resourceVersion"] = str(self.revision)
        key = self._key(kind, meta.get("namespace"), meta["name"])
        if change == "DELETED":
            self.objects[key].delete()
        elif key in self.objects:
            self.objects[key].history.append(copy.deepcopy(new))
        else:
            self.objects[key] = copy.deepcopy(new)
        if kind.group == "" and kind.plural == "nodes":
            before = _unschedulable(old)
            after = _unschedulable(new) if change != "DELETED" else False
            if before != after:
                self.cordons.append(CordonTransition(meta["name"], after, time.monotonic()))
        self.changes.append(Change(self.revision, kind, change, copy.deepcopy(old), copy.deepcopy(new)))
        for listener in self.listeners:
            listener()
        return copy.deepcopy(new)

    def _check_namespace(self, kind: Kind, namespace: str | None) -> None:
        if not kind.namespaced:
            return
        if not namespace:
            raise api_error(400, "BadRequest", f"{kind.plural} is namespaced: the request needs a namespace", kind)
        ns_kind = self.kind("", "v1", "namespaces")
        if self._current(ns_kind, None, namespace) is None:
            raise api_error(404, "NotFound", f'namespaces "{namespace}" not found', ns_kind, namespace)

    def _check_identity(self, kind: Kind, body: Any, namespace: str | None, name: str | None) -> JSON:
        if not isinstance(body, dict):
            raise api_error(400, "BadRequest", "the request body must be a JSON object", kind)
        api_version, object_kind = body.get("apiVersion"), body.get("kind")
        if (api_version and api_version != kind.api_version) or (object_kind and object_kind != kind.kind):
            raise api_error(
                400,
                "BadRequest",
                f"the body is a {api_version} {object_kind}, the URL is for {kind.api_version} {kind.kind}",
                kind,
            )
        meta = body.setdefault("metadata", {})
        if not isinstance(meta, dict):
            raise api_error(400, "BadRequest", "metadata must be an object", kind)
        if kind.namespaced:
            if meta.get("namespace") and meta["namespace"] != namespace:
                raise api_error(
                    400,
                    "BadRequest",
                    "the namespace of the provided object does not match the namespace sent on the request",
                    kind,
                )
            meta["namespace"] = namespace
        else:
            meta.pop("namespace", None)
        if name is not None and meta.get("name") and meta["name"] != name:
            raise api_error(400, "BadRequest", "the name of the object does not match the name on the URL", kind)
        return body

    def create(self, kind: Kind, namespace: str | None, body: Any, dry_run: bool = False) -> JSON:
        obj = self._check_identity(kind, body, namespace, None)
        self._check_namespace(kind, namespace)
        meta = obj["metadata"]
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = f"{meta['generateName']}{uuid.uuid4().hex[:5]}"
        if not meta.get("name"):
            raise api_error(422, "Invalid", f"{kind.kind} is invalid: metadata.name: Required value", kind)
        bad_name = _path_segment_problem(str(meta["name"]))
        if bad_name:
            message = f'{kind.kind} "{meta["name"]}" is invalid: metadata.name: Invalid value: {bad_name}'
            raise api_error(422, "Invalid", message, kind, str(meta["name"]))
        if self._current(kind, namespace, meta["name"]) is not None:
            message = f'{_qualified(kind)} "{meta["name"]}" already exists'
            raise api_error(409, "AlreadyExists", message, kind, meta["name"])
        obj["apiVersion"], obj["kind"] = kind.api_version, kind.kind
        for field in ("deletionTimestamp", "deletionGracePeriodSeconds", "resourceVersion"):
            meta.pop(field, None)
        meta.update(uid=str(uuid.uuid4()), creationTimestamp=_now(), generation=1)
        if kind.custom and kind.status_subresource:
            obj.pop("status", None)  # status is written through /status only
        obj = self._conform(kind, obj)
        self._defaults(kind, obj)
        if kind.plural == "customresourcedefinitions" and kind.group == "apiextensions.k8s.io":
            try:
                for served in kinds_from_crd(obj):
                    if not dry_run:
                        self.register(served)
            except (KeyError, ValueError) as e:
                raise api_error(422, "Invalid", f"CustomResourceDefinition is invalid: {e}", kind) from e
        if dry_run:
            return obj
        return self._commit(kind, "ADDED", None, obj)

    def _conform(self, kind: Kind, obj: JSON) -> JSON:
        """Prune, default and validate a custom object against its CRD schema (422 listing every error)."""
        if not kind.custom or not kind.schema:
            return obj
        conformed, errors = apply_schema(obj, kind.schema)
        if errors:
            name = _meta(obj).get("name", "")
            listing = errors[0].message if len(errors) == 1 else f"[{', '.join(e.message for e in errors)}]"
            causes = [{"reason": e.reason, "message": e.message, "field": e.field} for e in errors]
            raise api_error(
                422, "Invalid", f'{kind.kind}.{kind.group} "{name}" is invalid: {listing}', kind, name, causes
            )
        return conformed

    def _defaults(self, kind: Kind, obj: JSON) -> None:
        """The few defaults of built-in kinds the project's code reads back."""
        if kind.group != "":
            return
        _normalise_node(kind, obj)
        initial_phase = {"namespaces": "Active", "pods": "Pending"}.get(kind.plural)
        if initial_phase is not None:
            # A pod's phase is kept if given: the emulator has no kubelet for pods, so tests create them Running.
            status = obj.get("status")
            obj["status"] = status if isinstance(status, dict) else {}
            obj["status"].setdefault("phase", initial_phase)

    def _finish_update(self, kind: Kind, old: JSON, new: JSON, subresource: str | None, dry_run: bool) -> JSON:
        """The rules of an update, shared by PUT and PATCH: identity, status split, generation, finalizers."""
        old_meta, meta = _meta(old), new.setdefault("metadata", {})
        if not isinstance(meta, dict):
            raise api_error(422, "Invalid", "metadata must be an object", kind)
        wanted_version = meta.get("resourceVersion")
        if wanted_version and wanted_version != old_meta.get("resourceVersion"):
            raise api_error(
                409,
                "Conflict",
                f'Operation cannot be fulfilled on {_qualified(kind)} "{old_meta["name"]}": the object has been '
                "modified; please apply your changes to the latest version and try again",
                kind,
                old_meta["name"],
            )
        if subresource == "status" and kind.status_subresource:
            # Only status changes through /status; everything else stays as stored.
            new = {**_without(old, "status"), **({"status": new["status"]} if "status" in new else {})}
            meta = new["metadata"] = copy.deepcopy(old_meta)
        elif subresource:
            raise api_error(404, "NotFound", f"{kind.plural}/{subresource} cannot be updated here", kind)
        elif kind.status_subresource:
            new = _without(new, "status")
            if "status" in old:
                new["status"] = copy.deepcopy(old["status"])
        for field in ("name", "namespace", "uid", "creationTimestamp", "deletionTimestamp", "generation"):
            if field in old_meta:
                meta[field] = old_meta[field]
            else:
                meta.pop(field, None)
        new["apiVersion"], new["kind"] = kind.api_version, kind.kind
        meta["resourceVersion"] = old_meta.get("resourceVersion")
        _normalise_node(kind, new)
        new = self._conform(kind, new)
        meta = new["metadata"]
        if new == old:
            return copy.deepcopy(old)  # a no-op write changes nothing, not even the resourceVersion
        if _without(new, "metadata", "status") != _without(old, "metadata", "status"):
            meta["generation"] = int(old_meta.get("generation", 1)) + 1
        if dry_run:
            return new
        if meta.get("deletionTimestamp") and not meta.get("finalizers"):
            self._commit(kind, "MODIFIED", old, new)
            return self._commit(kind, "DELETED", new, copy.deepcopy(new))
        return self._commit(kind, "MODIFIED", old, new)

    def replace(
        self, kind: Kind, namespace: str | None, name: str, body: Any, subresource: str | None, dry_run: bool = False
    ) -> JSON:
        old = self._current(kind, namespace, name)
        if old is None:
            raise not_found(kind, name)
        new = self._check_identity(kind, copy.deepcopy(body), namespace, name)
        new["metadata"]["name"] = name
        return self._finish_update(kind, copy.deepcopy(old), new, subresource, dry_run)

    def patch(
        self,
        kind: Kind,
        namespace: str | None,
        name: str,
        patch: Any,
        content_type: str,
        subresource: str | None,
        dry_run: bool = False,
    ) -> JSON:
        media_type = content_type.split(";")[0].strip()
        apply = PATCH_TYPES.get(media_type)
        # Custom resources have no Go types to draw merge keys from, so API servers refuse strategic merge.
        if apply is None or (kind.custom and media_type == "application/strategic-merge-patch+json"):
            accepted = [t for t in PATCH_TYPES if not (kind.custom and "strategic" in t)]
            raise api_error(
                415,
                "UnsupportedMediaType",
                f"the body of the request was in an unknown format - accepted media types include: "
                f"{', '.join(accepted)}",
                kind,
            )
        old = self._current(kind, namespace, name)
        if old is None:
            raise not_found(kind, name)
        try:
            new = apply(copy.deepcopy(old), patch)
        except PatchError as e:
            raise api_error(422, "Invalid", str(e), kind, name) from e
        if not isinstance(new, dict):
            raise api_error(422, "Invalid", "the patched object is not a JSON object", kind, name)
        patched_version = _meta(new).get("resourceVersion")
        if patched_version == _meta(old).get("resourceVersion"):
            _meta(new).pop("resourceVersion", None)  # unchanged by the patch: not a precondition
        return self._finish_update(kind, copy.deepcopy(old), new, subresource, dry_run)

    def delete(self, kind: Kind, namespace: str | None, name: str, options: Any = None) -> JSON:
        old = self._current(kind, namespace, name)
        if old is None:
            raise not_found(kind, name)
        preconditions = (options or {}).get("preconditions") or {} if isinstance(options, dict) else {}
        for field in ("uid", "resourceVersion"):
            if preconditions.get(field) and preconditions[field] != _meta(old).get(field):
                raise api_error(
                    409, "Conflict", f"Precondition failed: {field} in precondition does not match", kind, name
                )
        if isinstance(options, dict) and options.get("dryRun"):
            return copy.deepcopy(old)
        if _meta(old).get("finalizers"):
            if _meta(old).get("deletionTimestamp"):
                return copy.deepcopy(old)
            new = copy.deepcopy(old)
            new["metadata"]["deletionTimestamp"] = _now()
            return self._commit(kind, "MODIFIED", old, new)
        if kind.group == "" and kind.plural == "namespaces":
            self._delete_contents(name)
        return self._commit(kind, "DELETED", old, copy.deepcopy(old))

    def _delete_contents(self, namespace: str) -> None:
        for kind in list(self.kinds.values()):
            if kind.namespaced:
                for obj in list(self._iter(kind, namespace)):
                    self._commit(kind, "DELETED", obj, copy.deepcopy(obj))

    # ------------------------------------------------------------------------------------------ eviction

    def _expected_pods(self, namespace: str, covered: list[JSON]) -> int:
        """How many pods the budget expects, as the disruption controller counts them: the replicas of each
        controller that still exists (evicted pods are coming back), plus the pods without one."""
        replicas: dict[tuple[str, str], int] = {}
        bare = 0
        for pod in covered:
            ref = _controller_ref(pod)
            owner = self._owner(namespace, ref) if ref else None
            scale = ((owner or {}).get("spec") or {}).get("replicas")
            if ref is not None and isinstance(scale, int):
                replicas[(ref.get("kind", ""), ref.get("name", ""))] = scale
            else:
                bare += 1
        return bare + sum(replicas.values())

    def _owner(self, namespace: str, ref: JSON) -> JSON | None:
        group = str(ref.get("apiVersion", "")).rpartition("/")[0]
        kind = next((k for k in self.kinds.values() if k.group == group and k.kind == ref.get("kind")), None)
        return self._current(kind, namespace, str(ref.get("name", ""))) if kind else None

    def evict(self, namespace: str, name: str, body: Any, dry_run: bool = False) -> JSON:
        """The ``pods/eviction`` subresource: delete the pod unless a PodDisruptionBudget forbids it (429)."""
        pods = self.kind("", "v1", "pods")
        pod = self._current(pods, namespace, name)
        if pod is None:
            raise not_found(pods, name)
        body = body if isinstance(body, dict) else {}
        body_meta = _meta(body)
        if body_meta.get("name", name) != name or body_meta.get("namespace", namespace) != namespace:
            raise api_error(400, "BadRequest", "name and namespace of the Eviction must match the pod's", pods, name)
        options = body.get("deleteOptions") or {}
        dry_run = dry_run or bool(options.get("dryRun"))
        phase = (pod.get("status") or {}).get("phase")
        if phase not in ("Succeeded", "Failed") and not _meta(pod).get("deletionTimestamp"):
            self._check_budget(pod, namespace, name)
        if not dry_run:
            self.delete(pods, namespace, name, options)
        return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201}

    def _check_budget(self, pod: JSON, namespace: str, name: str) -> None:
        pdb_kind = self.kind("policy", "v1", "poddisruptionbudgets")
        labels = _meta(pod).get("labels") or {}
        budgets = [
            b
            for b in self._iter(pdb_kind, namespace)
            if labels_match(selector_from_struct((b.get("spec") or {}).get("selector")), labels)
        ]
        if not budgets:
            return
        pods = self.kind("", "v1", "pods")
        if len(budgets) > 1:
            raise api_error(
                500,
                "InternalError",
                "This pod has more than one PodDisruptionBudget, which the eviction subresource does not support.",
                pods,
                name,
            )
        budget = budgets[0]
        spec = budget.get("spec") or {}
        selector = selector_from_struct(spec.get("selector"))
        covered = [
            p
            for p in self._iter(pods, namespace)
            if labels_match(selector, _meta(p).get("labels")) and not _meta(p).get("deletionTimestamp")
        ]
        expected = self._expected_pods(namespace, covered)
        healthy = sum(1 for p in covered if _pod_healthy(p))
        desired = _desired_healthy(spec, expected)
        # As the default unhealthyPodEvictionPolicy (IfHealthyBudget): a healthy pod needs a spare disruption;
        # an unhealthy one may go while the budget is met.
        allowed = healthy - desired > 0 if _pod_healthy(pod) else healthy >= desired
        if not allowed:
            budget_name = _meta(budget).get("name", "")
            raise api_error(
                429,
                "TooManyRequests",
                "Cannot evict pod as it would violate the pod's disruption budget.",
                pods,
                name,
                causes=[
                    {
                        "reason": "DisruptionBudget",
                        "message": f"The disruption budget {budget_name} needs {desired} healthy pods "
                        f"and has {healthy} currently",
                    }
                ],
            )


# A real API server serialises Go structs, so every field of NodeSystemInfo is present, "" when unknown; the
# official client's models require them.
_NODE_INFO_FIELDS = (
    "architecture",
    "bootID",
    "containerRuntimeVersion",
    "kernelVersion",
    "kubeProxyVersion",
    "kubeletVersion",
    "machineID",
    "operatingSystem",
    "osImage",
    "systemUUID",
)


def _normalise_node(kind: Kind, obj: JSON) -> None:
    if kind.group == "" and kind.plural == "nodes" and isinstance(obj.get("status"), dict):
        info = obj["status"].get("nodeInfo")
        obj["status"]["nodeInfo"] = {f: "" for f in _NODE_INFO_FIELDS} | (info if isinstance(info, dict) else {})


def _controller_ref(pod: JSON) -> JSON | None:
    return next((r for r in _meta(pod).get("ownerReferences") or [] if r.get("controller")), None)


def _pod_healthy(pod: JSON) -> bool:
    status = pod.get("status") or {}
    if status.get("phase") != "Running":
        return False
    ready = [c for c in status.get("conditions") or [] if c.get("type") == "Ready"]
    return not ready or ready[0].get("status") == "True"


def _scaled(value: Any, expected: int) -> int:
    """An int-or-percent budget field; percentages round up, as the disruption controller does."""
    if isinstance(value, str) and value.endswith("%"):
        return math.ceil(expected * int(value[:-1]) / 100)
    return int(value)


def _desired_healthy(spec: Mapping[str, Any], expected: int) -> int:
    if spec.get("minAvailable") is not None:
        return _scaled(spec["minAvailable"], expected)
    if spec.get("maxUnavailable") is not None:
        return max(0, expected - _scaled(spec["maxUnavailable"], expected))
    return 1


def _path_segment_problem(name: str) -> str:
    """Why ``name`` cannot be one segment of a URL path (the rule every API server applies to object names);
    empty when it can. ``..`` would otherwise name an object nobody can address again."""
    if name in (".", ".."):
        return f"may not be '{name}'"
    for bad in ("/", "%"):
        if bad in name:
            return f"may not contain '{bad}'"
    return ""
