"""The pure API rules of the emulator: selectors, patch formats and CRD schemas, on plain dicts."""

from __future__ import annotations

import pytest

from devstack.kube_schema import apply_schema
from devstack.kube_semantics import (
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

LABELS = {"pool": "edge", "zone": "a", "gpu": ""}


@pytest.mark.parametrize(
    ("selector", "expected"),
    [
        ("", True),
        ("pool=edge", True),
        ("pool==edge", True),
        ("pool=core", False),
        ("pool!=core", True),
        ("missing!=x", True),
        ("zone in (a, b)", True),
        ("zone in (b,c)", False),
        ("zone notin (b,c),pool=edge", True),
        ("gpu", True),
        ("!gpu", False),
        ("!missing", True),
        ("pool=edge,zone=b", False),
    ],
)
def test_label_selectors(selector: str, expected: bool) -> None:
    assert labels_match(parse_label_selector(selector), LABELS) is expected


def test_bad_label_selector_names_the_requirement() -> None:
    with pytest.raises(SelectorError, match="'a b c'"):
        parse_label_selector("pool=edge,a b c")


def test_label_selector_struct() -> None:
    selector = selector_from_struct(
        {"matchLabels": {"pool": "edge"}, "matchExpressions": [{"key": "zone", "operator": "In", "values": ["a"]}]}
    )
    assert labels_match(selector, LABELS)
    assert not labels_match(selector, {"pool": "edge", "zone": "b"})
    assert not labels_match(selector_from_struct(None), LABELS)  # a nil selector selects nothing
    assert labels_match(selector_from_struct({}), LABELS)  # an empty one selects everything


def test_field_selectors() -> None:
    pod = {"metadata": {"name": "p1"}, "spec": {"nodeName": "n1", "unschedulable": True}}
    assert parse_field_selector("spec.nodeName=n1")(pod)
    assert parse_field_selector("spec.nodeName=n1,metadata.name!=p2")(pod)
    assert not parse_field_selector("spec.nodeName==n2")(pod)
    assert parse_field_selector("spec.unschedulable=true")(pod)
    assert parse_field_selector("status.phase=")(pod)  # missing fields compare as ""
    with pytest.raises(SelectorError):
        parse_field_selector("spec.nodeName")


def test_merge_patch_deletes_with_null_and_replaces_lists() -> None:
    node = {"spec": {"unschedulable": True, "taints": [{"key": "a"}]}, "metadata": {"name": "n"}}
    patched = json_merge_patch(node, {"spec": {"unschedulable": None, "taints": [{"key": "b"}]}})
    assert patched == {"spec": {"taints": [{"key": "b"}]}, "metadata": {"name": "n"}}
    assert node["spec"]["unschedulable"] is True  # the input is not modified


def test_strategic_merge_merges_conditions_by_type() -> None:
    status = {
        "conditions": [{"type": "Ready", "status": "True"}, {"type": "DiskPressure", "status": "False"}],
        "addresses": [{"type": "Hostname", "address": "n1"}],
    }
    patched = strategic_merge_patch(
        status,
        {
            "conditions": [{"type": "Ready", "status": "False", "reason": "Rebooting"}],
            "$setElementOrder/conditions": [{"type": "Ready"}, {"type": "DiskPressure"}],
        },
    )
    assert patched["conditions"] == [
        {"type": "Ready", "status": "False", "reason": "Rebooting"},
        {"type": "DiskPressure", "status": "False"},
    ]
    assert patched["addresses"] == status["addresses"]
    assert "$setElementOrder/conditions" not in patched


def test_strategic_merge_directives() -> None:
    obj = {
        "metadata": {"finalizers": ["a"]},
        "spec": {"containers": [{"name": "x", "image": "1"}, {"name": "y", "image": "1"}], "keep": {"a": 1, "b": 2}},
    }
    patched = strategic_merge_patch(
        obj,
        {
            "metadata": {"finalizers": ["b"]},
            "spec": {
                "containers": [{"name": "y", "$patch": "delete"}, {"name": "z", "image": "2"}],
                "keep": {"$patch": "replace", "c": 3},
            },
        },
    )
    assert patched["metadata"]["finalizers"] == ["a", "b"]
    assert patched["spec"]["containers"] == [{"name": "x", "image": "1"}, {"name": "z", "image": "2"}]
    assert patched["spec"]["keep"] == {"c": 3}
    removed = strategic_merge_patch(patched, {"metadata": {"$deleteFromPrimitiveList/finalizers": ["a"]}})
    assert removed["metadata"]["finalizers"] == ["b"]
    with pytest.raises(PatchError, match="merge key 'name'"):
        strategic_merge_patch(obj, {"spec": {"containers": [{"image": "no name"}]}})


def test_json_patch_operations() -> None:
    doc = {"metadata": {"labels": {"a": "1"}}, "list": [1, 2]}
    patched = json_patch(
        doc,
        [
            {"op": "add", "path": "/metadata/labels/b~1c", "value": "2"},
            {"op": "replace", "path": "/metadata/labels/a", "value": "9"},
            {"op": "add", "path": "/list/-", "value": 3},
            {"op": "remove", "path": "/list/0"},
            {"op": "copy", "from": "/list", "path": "/copy"},
            {"op": "move", "from": "/copy", "path": "/moved"},
            {"op": "test", "path": "/moved", "value": [2, 3]},
        ],
    )
    assert patched == {"metadata": {"labels": {"a": "9", "b/c": "2"}}, "list": [2, 3], "moved": [2, 3]}
    with pytest.raises(PatchError, match="test failed"):
        json_patch(doc, [{"op": "test", "path": "/list", "value": []}])
    with pytest.raises(PatchError, match="does not exist"):
        json_patch(doc, [{"op": "remove", "path": "/nope"}])
    with pytest.raises(PatchError, match="list of operations"):
        json_patch(doc, {"op": "add"})


SCHEMA = {
    "type": "object",
    "properties": {
        "spec": {
            "type": "object",
            "required": ["count"],
            "properties": {
                "count": {"type": "integer", "minimum": 1},
                "mode": {"type": "string", "enum": ["a", "b"], "default": "a"},
                "name": {"type": "string", "pattern": "^[a-z]+$", "maxLength": 5},
                "window": {"type": "object", "nullable": True, "properties": {"start": {"type": "string"}}},
                "tags": {"type": "array", "items": {"type": "string"}},
                "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
            },
        },
        "status": {"type": "object", "properties": {"phase": {"type": "string"}}},
    },
}


def test_schema_prunes_defaults_and_keeps_metadata() -> None:
    obj = {
        "apiVersion": "g/v1",
        "kind": "K",
        "metadata": {"name": "x", "labels": {"a": "b"}},
        "spec": {"count": 2, "unknown": 1, "window": None, "free": {"any": {"thing": 1}}, "tags": ["t"]},
        "status": {"phase": "Running", "undeclared": True},
        "extra": "dropped",
    }
    stored, errors = apply_schema(obj, SCHEMA)
    assert errors == []
    assert stored == {
        "apiVersion": "g/v1",
        "kind": "K",
        "metadata": {"name": "x", "labels": {"a": "b"}},
        "spec": {"count": 2, "window": None, "free": {"any": {"thing": 1}}, "tags": ["t"], "mode": "a"},
        "status": {"phase": "Running"},
    }


def test_schema_lists_every_violation_by_field() -> None:
    obj = {"spec": {"count": "two", "mode": "c", "name": "ABCDEFG", "tags": ["ok", 3]}}
    _, errors = apply_schema(obj, SCHEMA)
    assert [(e.field, e.reason) for e in errors] == [
        ("spec.count", "FieldValueInvalid"),
        ("spec.mode", "FieldValueNotSupported"),
        ("spec.name", "FieldValueInvalid"),
        ("spec.name", "FieldValueInvalid"),
        ("spec.tags[1]", "FieldValueInvalid"),
    ]
    assert 'spec.count in body must be of type integer: "str"' in errors[0].message
    assert 'supported values: "a", "b"' in errors[1].message
    _, errors = apply_schema({"spec": {"count": 0}}, SCHEMA)
    assert [e.message for e in errors] == [
        "spec.count: Invalid value: 0: spec.count in body should be greater than or equal to 1"
    ]
    _, errors = apply_schema({"spec": {}}, SCHEMA)
    assert [e.message for e in errors] == ["spec.count: Required value"]
