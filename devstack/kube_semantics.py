"""The pure rules of the Kubernetes API that the emulator applies: selectors and the three patch formats.

Kept apart from the HTTP side so each rule can be tested on plain dicts. The rules follow the API
conventions (docs: "Labels and Selectors", "Field Selectors", "Update API Objects in Place Using kubectl
patch"); strategic merge patch knows the merge keys of the fields the project's objects use.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

JSON = dict[str, Any]


class SelectorError(ValueError):
    """An unparsable label or field selector (the API answers 400)."""


class PatchError(ValueError):
    """A patch that cannot be applied (the API answers 422, or 409 for a failed JSON Patch test)."""


# ---------------------------------------------------------------------------------------------- selectors


@dataclass(frozen=True)
class Requirement:
    key: str
    op: str  # "=", "!=", "in", "notin", "exists", "!"
    values: frozenset[str] = frozenset()

    def matches(self, labels: Mapping[str, str]) -> bool:
        present = self.key in labels
        value = labels.get(self.key)
        match self.op:
            case "=" | "in":
                return present and value in self.values
            case "!=" | "notin":
                return not present or value not in self.values
            case "exists":
                return present
            case "!":
                return not present
        raise AssertionError(self.op)  # pragma: no cover - ops are fixed by the parser


_KEY = r"[A-Za-z0-9][-A-Za-z0-9_./]*"
_VALUE = r"[-A-Za-z0-9_.]*"
_SET_RE = re.compile(rf"^\s*({_KEY})\s+(in|notin)\s+\(([^)]*)\)\s*$")
_EQ_RE = re.compile(rf"^\s*({_KEY})\s*(==|=|!=)\s*({_VALUE})\s*$")
_EXISTS_RE = re.compile(rf"^\s*(!?)\s*({_KEY})\s*$")


def _split_top_level(text: str) -> list[str]:
    """Split on commas that are not inside ``in (a,b)`` value lists."""
    parts: list[str] = []
    current: list[str] = []
    depth = 0
    for ch in text:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
    parts.append("".join(current))
    return [p for p in parts if p.strip()]


def parse_label_selector(text: str) -> list[Requirement]:
    """Parse the string form (``a=b,c!=d,e in (f,g),!h``); every requirement must hold."""
    requirements = []
    for part in _split_top_level(text or ""):
        if m := _SET_RE.match(part):
            values = frozenset(v.strip() for v in m.group(3).split(",") if v.strip())
            requirements.append(Requirement(m.group(1), m.group(2), values))
        elif m := _EQ_RE.match(part):
            op = "!=" if m.group(2) == "!=" else "="
            requirements.append(Requirement(m.group(1), op, frozenset({m.group(3)})))
        elif m := _EXISTS_RE.match(part):
            requirements.append(Requirement(m.group(2), "!" if m.group(1) else "exists"))
        else:
            raise SelectorError(f"unable to parse requirement {part.strip()!r} in label selector {text!r}")
    return requirements


def selector_from_struct(selector: Mapping[str, Any] | None) -> list[Requirement] | None:
    """A ``metav1.LabelSelector`` (matchLabels / matchExpressions); None matches nothing, {} everything."""
    if selector is None:
        return None
    requirements = [Requirement(k, "=", frozenset({str(v)})) for k, v in (selector.get("matchLabels") or {}).items()]
    ops = {"In": "in", "NotIn": "notin", "Exists": "exists", "DoesNotExist": "!"}
    for expr in selector.get("matchExpressions") or []:
        op = ops.get(expr.get("operator", ""))
        if op is None:
            raise SelectorError(f"unknown selector operator {expr.get('operator')!r}")
        requirements.append(Requirement(expr["key"], op, frozenset(expr.get("values") or [])))
    return requirements


def labels_match(requirements: list[Requirement] | None, labels: Mapping[str, str] | None) -> bool:
    if requirements is None:
        return False
    return all(r.matches(labels or {}) for r in requirements)


def field_value(obj: Mapping[str, Any], path: str) -> str:
    """The string form of a dotted field, as the API compares it; missing fields are ''."""
    current: Any = obj
    for part in path.split("."):
        if not isinstance(current, Mapping) or part not in current:
            return ""
        current = current[part]
    if isinstance(current, bool):
        return "true" if current else "false"
    return "" if current is None else str(current)


def parse_field_selector(text: str) -> Callable[[Mapping[str, Any]], bool]:
    """``spec.nodeName=n1,metadata.name!=x`` as a predicate over objects."""
    checks: list[tuple[str, bool, str]] = []
    for part in (text or "").split(","):
        if not part.strip():
            continue
        m = re.match(r"^\s*([A-Za-z0-9_.]+)\s*(==|=|!=)\s*(.*?)\s*$", part)
        if not m:
            raise SelectorError(f"invalid field selector requirement {part.strip()!r}")
        checks.append((m.group(1), m.group(2) != "!=", m.group(3)))

    def predicate(obj: Mapping[str, Any]) -> bool:
        return all((field_value(obj, path) == value) == equal for path, equal, value in checks)

    return predicate


# ------------------------------------------------------------------------------------------------ patches


def json_merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386: objects merge recursively, null deletes, anything else replaces."""
    if not isinstance(patch, Mapping):
        return copy.deepcopy(patch)
    result: JSON = dict(target) if isinstance(target, Mapping) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = json_merge_patch(result.get(key), value)
    return result


# Lists merged by key under strategic merge patch (Kubernetes' patchMergeKey struct tags), by field name.
# Fields not listed here are replaced as a whole, which is the rule for lists without a patch strategy.
STRATEGIC_MERGE_KEYS: dict[str, str] = {
    "conditions": "type",
    "addresses": "type",
    "containers": "name",
    "initContainers": "name",
    "ephemeralContainers": "name",
    "volumes": "name",
    "volumeMounts": "mountPath",
    "env": "name",
    "ports": "containerPort",
    "imagePullSecrets": "name",
    "ownerReferences": "uid",
    "hostAliases": "ip",
}
# Primitive lists whose strategy is "merge" (set union), e.g. metadata.finalizers.
STRATEGIC_MERGE_PRIMITIVE_LISTS = frozenset({"finalizers"})


def strategic_merge_patch(target: Any, patch: Any) -> Any:
    """Strategic merge patch: a JSON merge patch whose lists of objects merge by key, with ``$patch``,
    ``$retainKeys``, ``$deleteFromPrimitiveList/`` and ``$setElementOrder/`` directives (the last is only an
    ordering hint and is dropped)."""
    if not isinstance(patch, Mapping):
        return copy.deepcopy(patch)
    directive = patch.get("$patch")
    if directive == "delete":
        return None
    body = {k: v for k, v in patch.items() if k != "$patch"}
    if directive == "replace":
        return _strip_directives(body)
    result: JSON = dict(target) if isinstance(target, Mapping) else {}
    retain = body.pop("$retainKeys", None)
    for key, value in body.items():
        if key.startswith("$setElementOrder/"):
            continue
        if key.startswith("$deleteFromPrimitiveList/"):
            field = key.split("/", 1)[1]
            doomed = set(map(_hashable, value or []))
            result[field] = [v for v in result.get(field) or [] if _hashable(v) not in doomed]
            continue
        if value is None:
            result.pop(key, None)
        elif isinstance(value, list):
            result[key] = _merge_list(key, result.get(key), value)
        elif isinstance(value, Mapping):
            merged = strategic_merge_patch(result.get(key), value)
            if merged is None:
                result.pop(key, None)
            else:
                result[key] = merged
        else:
            result[key] = value
    if retain is not None:
        result = {k: v for k, v in result.items() if k in set(retain)}
    return result


def _hashable(value: Any) -> Any:
    return repr(value) if isinstance(value, (dict, list)) else value


def _strip_directives(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _strip_directives(v) for k, v in value.items() if not k.startswith("$")}
    if isinstance(value, list):
        return [_strip_directives(v) for v in value]
    return value


def _merge_list(field: str, current: Any, patch: list[Any]) -> list[Any]:
    if any(isinstance(item, Mapping) and item.get("$patch") == "replace" for item in patch):
        return [_strip_directives(i) for i in patch if not (isinstance(i, Mapping) and "$patch" in i)]
    if field in STRATEGIC_MERGE_PRIMITIVE_LISTS:
        merged = list(current or [])
        merged += [v for v in patch if v not in merged]
        return merged
    key = STRATEGIC_MERGE_KEYS.get(field)
    if key is None or not all(isinstance(item, Mapping) for item in patch):
        return list(_strip_directives(patch))
    merged = [copy.deepcopy(item) for item in current or [] if isinstance(item, Mapping)]
    for item in patch:
        if key not in item:
            raise PatchError(f"strategic merge patch: an element of {field!r} lacks its merge key {key!r}")
        index = next((i for i, old in enumerate(merged) if old.get(key) == item[key]), None)
        if item.get("$patch") == "delete":
            if index is not None:
                merged.pop(index)
        elif index is None:
            merged.append(_strip_directives(item))
        else:
            merged[index] = strategic_merge_patch(merged[index], item)
    return merged


def _pointer(path: str) -> list[str]:
    if path == "":
        return []
    if not path.startswith("/"):
        raise PatchError(f"JSON Patch path {path!r} does not start with '/'")
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def _walk(doc: Any, parts: list[str], path: str) -> Any:
    for part in parts:
        if isinstance(doc, list):
            try:
                doc = doc[int(part)]
            except (ValueError, IndexError) as e:
                raise PatchError(f"JSON Patch path {path!r}: no element {part!r}") from e
        elif isinstance(doc, dict) and part in doc:
            doc = doc[part]
        else:
            raise PatchError(f"JSON Patch path {path!r}: no member {part!r}")
    return doc


def _add(doc: Any, parts: list[str], value: Any, path: str) -> Any:
    if not parts:
        return value
    parent = _walk(doc, parts[:-1], path)
    last = parts[-1]
    if isinstance(parent, list):
        index = len(parent) if last == "-" else int(last)
        if not 0 <= index <= len(parent):
            raise PatchError(f"JSON Patch path {path!r}: index out of range")
        parent.insert(index, value)
    elif isinstance(parent, dict):
        parent[last] = value
    else:
        raise PatchError(f"JSON Patch path {path!r}: parent is not a container")
    return doc


def _remove(doc: Any, parts: list[str], path: str) -> Any:
    if not parts:
        raise PatchError("JSON Patch cannot remove the whole document")
    parent = _walk(doc, parts[:-1], path)
    last = parts[-1]
    try:
        removed = parent.pop(int(last)) if isinstance(parent, list) else parent.pop(last)
    except (KeyError, IndexError, ValueError) as e:
        raise PatchError(f"JSON Patch path {path!r} does not exist") from e
    return removed


def json_patch(target: Any, operations: Any) -> Any:
    """RFC 6902: add, remove, replace, move, copy, test."""
    if not isinstance(operations, list):
        raise PatchError("a JSON Patch must be a list of operations")
    doc = copy.deepcopy(target)
    for op in operations:
        if not isinstance(op, Mapping) or "op" not in op or "path" not in op:
            raise PatchError(f"invalid JSON Patch operation {op!r}")
        path = op["path"]
        parts = _pointer(path)
        match op["op"]:
            case "add":
                doc = _add(doc, parts, copy.deepcopy(op.get("value")), path)
            case "remove":
                _remove(doc, parts, path)
            case "replace":
                _walk(doc, parts, path)  # must exist
                if parts:
                    _remove(doc, parts, path)
                doc = _add(doc, parts, copy.deepcopy(op.get("value")), path)
            case "move" | "copy":
                source = _pointer(op.get("from", ""))
                value = copy.deepcopy(_walk(doc, source, op.get("from", "")))
                if op["op"] == "move":
                    _remove(doc, source, op.get("from", ""))
                doc = _add(doc, parts, value, path)
            case "test":
                if _walk(doc, parts, path) != op.get("value"):
                    raise PatchError(f"JSON Patch test failed at {path!r}")
            case other:
                raise PatchError(f"unknown JSON Patch operation {other!r}")
    return doc
