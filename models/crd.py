"""The ``OS`` CustomResourceDefinition, derived from the models so the schema cannot drift from the rules.

The OpenAPI schema gives kubectl and the API server a first line of defence (types, enums, required fields);
the full rules (``models.os_resource``) still run in the bridge and the workflow.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from models.os_resource import GROUP, KIND, PLURAL, VERSION, OSSpec, OSStatus

#: Keys every OS resource must carry; the rest depend on opstype/imagetype and are checked by the rules.
REQUIRED_SPEC_FIELDS = ("opstype", "osversion", "maxunavailable")


def _structural(schema: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    """Turn pydantic's JSON schema into a Kubernetes structural schema: refs inlined, one type per node."""
    if "$ref" in schema:
        return _structural(defs[schema["$ref"].split("/")[-1]], defs)
    if "anyOf" in schema:
        options = [s for s in schema["anyOf"] if s.get("type") != "null"]
        merged: dict[str, Any] = (
            _structural(options[0], defs) if len(options) == 1 else {"x-kubernetes-preserve-unknown-fields": True}
        )
        if len(options) != len(schema["anyOf"]):
            merged["nullable"] = True
        return merged
    out: dict[str, Any] = {}
    kind = schema.get("type")
    if kind == "object" or "properties" in schema:
        out["type"] = "object"
        props = schema.get("properties", {})
        out["properties"] = {name: _structural(sub, defs) for name, sub in props.items()}
    elif kind == "array":
        out["type"] = "array"
        out["items"] = _structural(schema.get("items", {}), defs)
    elif "enum" in schema or "const" in schema:
        values = schema.get("enum", [schema.get("const")])
        out["type"] = "string"
        out["enum"] = list(values)
    elif kind in ("string", "integer", "boolean", "number"):
        out["type"] = kind
    else:
        out["x-kubernetes-preserve-unknown-fields"] = True
    for key, value in schema.items():
        if key in ("minimum", "maximum", "maxLength", "format"):
            out[key] = value
    if "description" in schema:
        out["description"] = schema["description"]
    return out


def _schema_of(model: type[BaseModel]) -> dict[str, Any]:
    raw = model.model_json_schema()
    return _structural(raw, raw.get("$defs", {}))


def os_crd() -> dict[str, Any]:
    spec_schema = _schema_of(OSSpec)
    spec_schema["required"] = list(REQUIRED_SPEC_FIELDS)
    spec_schema["properties"]["maxunavailable"]["minimum"] = 1
    for name in ("timeinterval", "failurebudget"):
        spec_schema["properties"][name]["minimum"] = 0
    for name in ("draintimeout", "boottimeout"):
        spec_schema["properties"][name]["minimum"] = 1
    status_schema = _schema_of(OSStatus)
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{PLURAL}.{GROUP}"},
        "spec": {
            "group": GROUP,
            "names": {"kind": KIND, "listKind": f"{KIND}List", "plural": PLURAL, "singular": PLURAL},
            "scope": "Namespaced",
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": [
                        {"name": "OSVersion", "type": "string", "jsonPath": ".spec.osversion"},
                        {"name": "OpsType", "type": "string", "jsonPath": ".spec.opstype"},
                        {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
                        {"name": "Progress", "type": "string", "jsonPath": ".status.progress"},
                        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
                    ],
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "description": "An OS upgrade or rollback of the cluster's nodes (openEuler KubeOS).",
                            "properties": {
                                "apiVersion": {"type": "string"},
                                "kind": {"type": "string"},
                                "metadata": {"type": "object"},
                                "spec": spec_schema,
                                "status": status_schema,
                            },
                            "required": ["spec"],
                        }
                    },
                }
            ],
        },
    }
