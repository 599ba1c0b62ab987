"""Structural-schema handling of custom resources, as the API server applies a CRD's ``openAPIV3Schema``.

On every write of a custom resource a real API server prunes fields the schema does not declare (and
``null`` where the schema is not ``nullable``), fills ``default`` values, then validates. Doing the same here
means an invalid OS resource (say ``maxunavailable: 0``, or a seed placeholder in an integer field) is
refused by the emulator exactly where a cluster would refuse it, and a status field the CRD does not declare
vanishes in both.

Covered keywords: type, properties, items, additionalProperties, required, enum, minimum/maximum (and
exclusive), minLength/maxLength, pattern, minItems/maxItems, nullable, default,
x-kubernetes-preserve-unknown-fields, x-kubernetes-int-or-string.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

JSON = dict[str, Any]
_ROOT_META = ("apiVersion", "kind", "metadata")


@dataclass(frozen=True)
class FieldError:
    field: str
    reason: str  # FieldValueInvalid, FieldValueRequired, FieldValueNotSupported
    message: str


def _show(value: Any) -> str:
    return f'"{value}"' if isinstance(value, str) else str(value).lower() if isinstance(value, bool) else str(value)


def _type_ok(value: Any, schema: Mapping[str, Any]) -> bool:
    if schema.get("x-kubernetes-int-or-string"):
        return isinstance(value, (int, str)) and not isinstance(value, bool)
    match schema.get("type"):
        case "string":
            return isinstance(value, str)
        case "integer":
            return isinstance(value, int) and not isinstance(value, bool)
        case "number":
            return isinstance(value, (int, float)) and not isinstance(value, bool)
        case "boolean":
            return isinstance(value, bool)
        case "object":
            return isinstance(value, dict)
        case "array":
            return isinstance(value, list)
    return True  # no type: anything (only with x-kubernetes-preserve-unknown-fields in structural schemas)


def prune_and_default(value: Any, schema: Mapping[str, Any]) -> Any:
    """Drop undeclared fields and non-nullable nulls, fill defaults (returns a new value)."""
    if (
        isinstance(value, dict)
        and schema.get("type", "object") == "object"
        and not schema.get("x-kubernetes-int-or-string")
    ):
        properties = schema.get("properties")
        extra = schema.get("additionalProperties")
        keep_unknown = schema.get("x-kubernetes-preserve-unknown-fields") or extra is True
        result: JSON = {}
        for key, item in value.items():
            sub = (properties or {}).get(key)
            if sub is None and isinstance(extra, Mapping):
                sub = extra
            if sub is None:
                if keep_unknown:
                    result[key] = copy.deepcopy(item)
                continue
            if item is None and not sub.get("nullable"):
                continue
            result[key] = prune_and_default(item, sub)
        for key, sub in (properties or {}).items():
            if key not in result and "default" in sub:
                result[key] = copy.deepcopy(sub["default"])
        return result
    if isinstance(value, list) and isinstance(schema.get("items"), Mapping):
        return [prune_and_default(item, schema["items"]) for item in value]
    return copy.deepcopy(value)


def _number_errors(value: float, schema: Mapping[str, Any]) -> list[str]:
    problems = []
    if "minimum" in schema:
        low = schema["minimum"]
        if value < low or (schema.get("exclusiveMinimum") and value == low):
            problems.append(f"should be greater than or equal to {low}")
    if "maximum" in schema:
        high = schema["maximum"]
        if value > high or (schema.get("exclusiveMaximum") and value == high):
            problems.append(f"should be less than or equal to {high}")
    return problems


def _scalar_errors(value: Any, schema: Mapping[str, Any]) -> list[str]:
    """The bounds a value breaks, each worded as "<field> in body ..." finishes it."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return _number_errors(value, schema)
    problems = []
    if isinstance(value, str):
        if len(value) < schema.get("minLength", 0):
            problems.append(f"should be at least {schema['minLength']} chars long")
        if "maxLength" in schema and len(value) > schema["maxLength"]:
            problems.append(f"may not be longer than {schema['maxLength']}")
        if "pattern" in schema and re.search(schema["pattern"], value) is None:
            problems.append(f"should match '{schema['pattern']}'")
    if isinstance(value, list):
        if len(value) < schema.get("minItems", 0):
            problems.append(f"should have at least {schema['minItems']} items")
        if "maxItems" in schema and len(value) > schema["maxItems"]:
            problems.append(f"should have at most {schema['maxItems']} items")
    return problems


def validate(value: Any, schema: Mapping[str, Any], path: str = "") -> list[FieldError]:
    """Every violation, with the field path as the API server writes it (``spec.maxunavailable``)."""
    where = path or "<root>"

    def invalid(problem: str) -> FieldError:
        return FieldError(where, "FieldValueInvalid", f"{where}: Invalid value: {_show(value)}: {where} {problem}")

    if value is None:
        return [] if schema.get("nullable") else [invalid("in body must not be null")]
    if not _type_ok(value, schema):
        return [invalid(f'in body must be of type {schema.get("type")}: "{type(value).__name__}"')]
    errors = [invalid(f"in body {problem}") for problem in _scalar_errors(value, schema)]
    if "enum" in schema and value not in schema["enum"]:
        supported = ", ".join(_show(v) for v in schema["enum"])
        message = f"{where}: Unsupported value: {_show(value)}: supported values: {supported}"
        errors.append(FieldError(where, "FieldValueNotSupported", message))
    if isinstance(value, list) and isinstance(schema.get("items"), Mapping):
        for index, item in enumerate(value):
            errors += validate(item, schema["items"], f"{path}[{index}]")
    if isinstance(value, dict):
        for key in schema.get("required") or []:
            if key not in value:
                field = f"{path}.{key}" if path else key
                errors.append(FieldError(field, "FieldValueRequired", f"{field}: Required value"))
        properties = schema.get("properties") or {}
        extra = schema.get("additionalProperties")
        for key, item in value.items():
            if not path and key in _ROOT_META:
                continue  # metadata is the API server's, not the schema's
            sub = properties.get(key) or (extra if isinstance(extra, Mapping) else None)
            if sub is not None:
                errors += validate(item, sub, f"{path}.{key}" if path else key)
    return errors


def apply_schema(obj: JSON, schema: Mapping[str, Any]) -> tuple[JSON, list[FieldError]]:
    """What the API server stores for ``obj`` under ``schema`` (pruned, defaulted) and what is wrong with it."""
    kept = {key: copy.deepcopy(obj[key]) for key in _ROOT_META if key in obj}
    body = prune_and_default({k: v for k, v in obj.items() if k not in _ROOT_META}, schema)
    result = {**kept, **body}
    return result, validate(result, schema)
