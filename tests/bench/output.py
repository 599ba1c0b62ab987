"""Reading the benchmarks' printed tables back in the smoke tests."""

from __future__ import annotations

import re

_SPLIT = re.compile(r"(?<!\\)\|")


def tables(out: str) -> dict[str, list[list[str]]]:
    """Every Markdown table in ``out`` by the title line above it: its body rows as lists of cells."""
    found: dict[str, list[list[str]]] = {}
    title = ""
    lines = out.splitlines()
    for i, line in enumerate(lines):
        if not line.startswith("|"):
            if line.strip():
                title = line.strip()
            continue
        if i + 1 < len(lines) and lines[i + 1].startswith("|-"):
            found[title] = []  # the header row
        elif not line.startswith("|-"):
            found.setdefault(title, []).append([c.strip().replace("\\|", "|") for c in _SPLIT.split(line)[1:-1]])
    return found


def targets(out: str) -> dict[str, str]:
    """Target name -> PASS or MISS."""
    return {row[0]: row[3] for row in tables(out)["Targets"]}
