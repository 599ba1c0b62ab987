"""Property tests: whatever a document holds, the checker answers with a verdict, never an exception.

Accepted documents round-trip through the model; refused ones carry field errors named the way the user wrote
the resource (``spec.…``, ``apiVersion``, ``kind``, ``metadata…``).
"""

from __future__ import annotations

from typing import Any

import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from models.os_resource import OSSpec, SpecInvalid, check_os_document, parse_os_spec
from models.yaml_docs import DocumentError, parse_documents
from tests.models.samples import SPECS, resource

FAST = settings(max_examples=250, deadline=None)

SPEC_KEYS = sorted(OSSpec.model_fields)
ENVELOPE_KEYS = ["apiVersion", "kind", "metadata", "spec", "status"]
PREFIXES = ("spec", "apiVersion", "kind", "metadata")

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**40), max_value=2**40)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=30)
    | st.sampled_from(
        ["", "disk", "docker", "upgrade", "rollback", "KubeOS 1.0.0", "22:00:00", "https://h/x", "a" * 64]
    )
)
keys = st.text(max_size=12) | st.sampled_from(SPEC_KEYS + ENVELOPE_KEYS + ["starttime", "endtime", "name"])
json_like = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(keys, children, max_size=5),
    max_leaves=25,
)


@st.composite
def mutated_resources(draw: st.DrawFn) -> dict[str, Any]:
    """A valid resource with a few keys (of the spec, or of the envelope) dropped or set to random values."""
    doc = resource(draw(st.sampled_from(sorted(SPECS))))
    for _ in range(draw(st.integers(min_value=1, max_value=3))):
        spec = doc.get("spec")
        target = spec if isinstance(spec, dict) and draw(st.booleans()) else doc
        key = draw(st.sampled_from([*SPEC_KEYS, "timewindow"]) | keys)
        if draw(st.booleans()) and key in target:
            del target[key]
        else:
            target[key] = draw(json_like)
    return doc


def assert_verdict(doc: Any) -> None:
    report = check_os_document(doc, bare_spec=False)
    if report.valid:
        assert report.spec is not None
        assert OSSpec.model_validate(report.spec.model_dump()) == report.spec
        assert parse_os_spec(doc) == report.spec
    else:
        assert report.spec is None
        for error in report.errors:
            assert error.reason
            if isinstance(doc, dict):
                assert error.field.startswith(PREFIXES), error
            else:
                assert error.field == "(document)"
    for warning in report.warnings:
        assert warning.field.startswith("spec."), warning


@FAST
@given(json_like)
def test_arbitrary_documents_get_a_verdict(doc: Any) -> None:
    assert_verdict(doc)


@FAST
@given(st.dictionaries(st.sampled_from(ENVELOPE_KEYS), json_like, max_size=5))
def test_arbitrary_envelopes_get_a_verdict(doc: dict[str, Any]) -> None:
    assert_verdict(doc)


@FAST
@given(st.dictionaries(keys, json_like, max_size=8))
def test_arbitrary_specs_get_a_verdict(raw_spec: dict[str, Any]) -> None:
    assert_verdict({**resource(), "spec": raw_spec})
    try:
        parsed = parse_os_spec(raw_spec)  # the bare-spec entry point the workflow and bridge use
    except SpecInvalid as exc:
        assert exc.errors and all(e.field.startswith(PREFIXES) for e in exc.errors)
    else:
        assert OSSpec.model_validate(parsed.model_dump()) == parsed


@FAST
@given(mutated_resources())
def test_mutated_resources_get_a_verdict(doc: dict[str, Any]) -> None:
    assert_verdict(doc)


@FAST
@given(mutated_resources())
def test_the_verdict_survives_a_trip_through_yaml(doc: dict[str, Any]) -> None:
    text = yaml.safe_dump(doc, allow_unicode=True)
    [loaded] = parse_documents(text, "doc.yaml")
    assert_verdict(loaded.body)


@FAST
@given(st.text(max_size=200))
def test_arbitrary_text_is_yaml_or_a_document_error(text: str) -> None:
    try:
        docs = parse_documents(text, "t.yaml")
    except DocumentError as exc:
        assert str(exc).startswith("t.yaml: ")
    else:
        for doc in docs:
            assert_verdict(doc.body)
