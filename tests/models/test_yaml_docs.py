"""YAML is read the way kubectl reads it, and unreadable input becomes a DocumentError, never a traceback."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from models.yaml_docs import DocumentError, load_documents, parse_documents

SCALARS: list[Any] = [
    pytest.param("yes", True, id="yaml11-yes"),
    pytest.param("no", False, id="yaml11-no"),
    pytest.param("on", True, id="yaml11-on"),
    pytest.param("'true'", "true", id="quoted-true"),
    pytest.param("22:00:00", "22:00:00", id="not-sexagesimal-int"),
    pytest.param("1:30.5", "1:30.5", id="not-sexagesimal-float"),
    pytest.param("2030-01-01 22:00:00", "2030-01-01 22:00:00", id="timestamp-as-text"),
    pytest.param("2030-01-01", "2030-01-01", id="date-as-text"),
    pytest.param("2", 2, id="int"),
    pytest.param("1.5", 1.5, id="float"),
    pytest.param("~", None, id="null"),
]


@pytest.mark.parametrize(("text", "value"), SCALARS)
def test_scalars_as_kubectl_reads_them(text: str, value: Any) -> None:
    [doc] = parse_documents(f"v: {text}\n", "t.yaml")
    assert doc.body == {"v": value} and type(doc.body["v"]) is type(value)


def test_documents_are_numbered_and_empty_ones_skipped() -> None:
    docs = parse_documents("a: 1\n---\n---\nb: 2\n", "f.yaml")
    assert [(d.index, d.body) for d in docs] == [(1, {"a": 1}), (3, {"b": 2})]
    assert parse_documents("", "f.yaml") == [] and parse_documents("# only a comment\n", "f.yaml") == []


BROKEN: list[Any] = [
    pytest.param("a: b: c", "line 1, column 5", id="syntax"),
    pytest.param("a: [1, 2\n", "not valid YAML", id="unclosed"),
    pytest.param("!!python/object:os.system x", "not valid YAML", id="python-tag"),
    pytest.param("? [a, b]\n: c\n", "not valid YAML", id="unhashable-key"),
    pytest.param("[" * 5000 + "]" * 5000, "nested too deeply", id="deep-lists"),
    pytest.param(
        "".join("  " * i + "k:\n" for i in range(3000)) + "  " * 3000 + "v\n", "nested too deeply", id="deep-maps"
    ),
    pytest.param("v: " + "1" * 5000, "not usable YAML", id="huge-int"),
    pytest.param("a: *missing", "not valid YAML", id="unknown-alias"),
    pytest.param("\x00\x01", "not valid YAML", id="control-chars"),
]


@pytest.mark.parametrize(("text", "message"), BROKEN)
def test_broken_yaml_is_a_document_error_naming_the_file(text: str, message: str) -> None:
    with pytest.raises(DocumentError) as caught:
        parse_documents(text, "bad.yaml")
    assert str(caught.value).startswith("bad.yaml: ") and message in str(caught.value)


def test_unreadable_files(tmp_path: Path) -> None:
    binary = tmp_path / "image.bin"
    binary.write_bytes(bytes(range(256)) * 8)
    for path in (binary, tmp_path / "missing.yaml", tmp_path):
        with pytest.raises(DocumentError, match="cannot read"):
            load_documents(path)
