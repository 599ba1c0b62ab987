"""Smoke test of bench.staging with tiny images: it runs all three methods and prints its figures (not timed)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from bench import staging
from bench.report import MIB
from tests.bench.output import tables, targets


@pytest.mark.parametrize("server", ["nginx", "devstack"])
def test_staging_prints_every_method_ratio_rss_and_target(
    server: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["--size-mib", "8", "--runs", "2", "--rss-size-mib", "12", "--server", server, "--workdir", str(tmp_path)]
    assert staging.main(args) == 0
    text = capsys.readouterr().out
    out = tables(text)
    methods = {row[0]: row for row in out["Staging 8 MiB (medians)"]}
    fastest = [row[0] for row in out["sha256 tools on this machine (file in page cache)"]]
    # With a faster hasher than coreutils', the original also runs as specified, with sha256sum.
    extra = {"original, sha256sum"} if methods["original"][1].split("; ")[1] != "sha256sum FILE" else set()
    assert set(methods) == {"ours", "limit", "original", "transfer"} | extra and fastest
    assert "curl | tee" in methods["limit"][1]
    for row in methods.values():
        assert float(row[2]) > 0 and len(row[6].split()) == 2  # the median and both runs
        assert float(row[5]) >= 0  # the server's CPU time (too small to show at 8 MiB)
    ratios = dict(out["Ratios (medians)"])
    assert set(ratios) == {
        "ours / limit",
        "ours / original",
        "transfer / original (no single pass goes below)",
        *(f"ours / {name}" for name in extra),
    }
    assert all(float(v) > 0 for v in ratios.values())
    rss = {row[0]: float(row[1]) for row in out["Peak RSS of our stage path (VmHWM of its process)"]}
    assert set(rss) == {"8", "12"} and all(10 < v < 1024 for v in rss.values())
    verdicts = targets(text)
    assert set(verdicts) == {
        "ours / limit",
        "ours / original",
        "peak RSS, 8 MiB image",
        "peak RSS, 12 MiB image",
        *(f"ours / {name}" for name in extra),
    }
    assert set(verdicts.values()) <= {"PASS", "MISS"}
    assert list(tmp_path.iterdir()) == []  # the working directory was removed


def test_image_is_neither_sparse_nor_repeated(tmp_path: Path) -> None:
    image = tmp_path / "img"
    digest = staging.make_image(image, 3 * MIB + 4096)
    data = image.read_bytes()
    assert len(data) == 3 * MIB + 4096 and data.count(0) < len(data) // 100
    assert len({data[i : i + MIB] for i in range(0, 3 * MIB, MIB)}) == 3
    assert digest == hashlib.sha256(data).hexdigest()
