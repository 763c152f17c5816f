"""recipes/ablation_table.py: paired differences per example, overall and per target expression."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]


def write_metrics(folder: Path, gains: list[float], expressions: list[str], examples: list[int]) -> None:
    folder.mkdir()
    pq.write_table(pa.table({"example": examples, "expression": expressions, "expr_gain": gains,
                             "psnr": [20.0 + g for g in gains]}), folder / "metrics.parquet")


def table(*args: str) -> str:
    return subprocess.run([sys.executable, str(ROOT / "recipes" / "ablation_table.py"), *args],
                          capture_output=True, text=True, check=True).stdout


def test_per_expression_paired_differences(tmp_path):
    # rows written in another order than the reference's: pairing goes by example id
    write_metrics(tmp_path / "ref", [1.0, 2.0, 3.0, 5.0], ["jawOpen", "jawOpen", "eyeBlink", "eyeBlink"], [0, 1, 2, 3])
    write_metrics(tmp_path / "new", [4.0, 6.0, 1.5, 3.0], ["eyeBlink", "eyeBlink", "jawOpen", "jawOpen"], [2, 3, 0, 1])
    out = table("--ref", str(tmp_path / "ref"), str(tmp_path / "new"), "--by-expression", "expr_gain", "--labels", "new")
    # eyeBlink: 5.00 mean, differences (+1, +1) → +1.00 ± 0.00; jawOpen: 2.25, differences (+0.5, +1) → +0.75 ± 0.25
    assert "| new | 5.00 | +1.00 ± 0.00 (2) | 2.25 | +0.75 ± 0.25 (2) |" in out
    overall = table("--ref", str(tmp_path / "ref"), str(tmp_path / "new"))
    assert "+0.88 ± 0.12 (4)" in overall  # the gain over all four examples
