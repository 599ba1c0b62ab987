"""Reading resources from YAML files, with errors a user can act on."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml


class DocumentError(Exception):
    """A file that cannot be read or is not YAML; the message names the file and, where known, the line."""


@dataclass(frozen=True)
class Document:
    path: str
    index: int  # 1-based position of the document in its file
    body: Any


def load_documents(path: str | Path) -> list[Document]:
    """All non-empty YAML documents in a file (``-`` reads standard input)."""
    import sys

    name = str(path)
    try:
        text = sys.stdin.read() if name == "-" else Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DocumentError(f"{name}: cannot read: {exc}") from exc
    try:
        bodies = list(yaml.safe_load_all(text))
    except yaml.YAMLError as exc:
        where = ""
        mark = getattr(exc, "problem_mark", None)
        if mark is not None:
            where = f" (line {mark.line + 1}, column {mark.column + 1})"
        problem = getattr(exc, "problem", None) or str(exc)
        raise DocumentError(f"{name}: not valid YAML{where}: {problem}") from exc
    return [Document(name, i, body) for i, body in enumerate(bodies, start=1) if body is not None]
