"""Smoke test of bench.staging with tiny images: it runs all three methods and prints its figures (not timed)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from bench import staging
from bench.report import MIB
from tests.bench.output import tables, targets


def test_staging_prints_every_method_ratio_rss_and_target(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert staging.main(["--size-mib", "8", "--runs", "2", "--rss-size-mib", "12", "--workdir", str(tmp_path)]) == 0
    text = capsys.readouterr().out
    out = tables(text)
    methods = {row[0]: row for row in out["Staging 8 MiB (medians)"]}
    assert set(methods) == {"ours", "limit", "original", "transfer"}
    assert "curl | tee" in methods["limit"][1]
    for row in methods.values():
        assert float(row[2]) > 0 and len(row[6].split()) == 2  # the median and both runs
    ratios = dict(out["Ratios (medians)"])
    assert set(ratios) == {"ours / limit", "ours / original", "transfer / original (no single pass goes below)"}
    assert all(float(v) > 0 for v in ratios.values())
    rss = {row[0]: float(row[1]) for row in out["Peak RSS of our stage path (VmHWM of its process)"]}
    assert set(rss) == {"8", "12"} and all(10 < v < 1024 for v in rss.values())
    verdicts = targets(text)
    assert set(verdicts) == {"ours / limit", "ours / original", "peak RSS, 8 MiB image", "peak RSS, 12 MiB image"}
    assert set(verdicts.values()) <= {"PASS", "MISS"}
    assert list(tmp_path.iterdir()) == []  # the working directory was removed


def test_image_is_neither_sparse_nor_repeated(tmp_path: Path) -> None:
    image = tmp_path / "img"
    digest = staging.make_image(image, 3 * MIB + 4096)
    data = image.read_bytes()
    assert len(data) == 3 * MIB + 4096 and data.count(0) < len(data) // 100
    assert len({data[i : i + MIB] for i in range(0, 3 * MIB, MIB)}) == 3
    assert digest == hashlib.sha256(data).hexdigest()
