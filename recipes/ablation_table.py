"""The ablation table of docs/results.md from `avat3r eval` output folders.

Every evaluation of one input mode draws the same examples (same manifest, split, seed and sampler options),
so models are compared per example: the table gives each model's mean and its paired difference to a reference
row (mean ± standard error of the per-example differences, over the examples where both have the score; n
says how many: region scores are missing where the truth does not change). Folders written before a score
existed simply lack its columns.

    python recipes/ablation_table.py --ref eval/trained-mixed eval/trained-mixed eval/no-expression ...

``--by-expression SCORE`` (animation mode) prints one column per target expression instead: each model's mean
of SCORE (e.g. ``expr_gain``) and its paired difference to the reference, per expression.
"""

from __future__ import annotations

import argparse
import math

import numpy as np
import pyarrow.parquet as pq

# column, header, scale of the printed values (SSIM in hundredths)
SCORES = (("psnr", "PSNR", 1.0), ("psnr_fg", "PSNR fg", 1.0), ("psnr_region", "PSNR region", 1.0),
          ("expr_gain", "gain (dB)", 1.0), ("response_ratio", "ratio", 1.0), ("aligned_ratio", "aligned ratio", 1.0),
          ("leak_ratio", "leak ratio", 1.0),
          ("ssim", "SSIM ×100", 100.0), ("jod", "JOD", 1.0))


def load(folder: str) -> dict[str, np.ndarray]:
    """Score columns (and the target expression, where written) sorted by example, nulls as NaN."""
    t = pq.read_table(f"{folder}/metrics.parquet")
    wanted = ["example"] + [name for name, _, _ in SCORES]
    cols = {name: np.asarray(t.column(name).to_numpy(zero_copy_only=False), dtype=np.float64)
            for name in wanted if name in t.column_names}
    if "expression" in t.column_names:
        cols["expression"] = np.asarray(t.column("expression").to_pylist(), dtype=object)
    order = np.argsort(cols["example"])
    return {k: v[order] for k, v in cols.items()}


def mean_cell(a: np.ndarray) -> str:
    a = a[np.isfinite(a)]
    return f"{a.mean():.2f}" if len(a) else "n/a"


def paired(a: np.ndarray, b: np.ndarray) -> str:
    """Mean ± standard error of a − b over the examples where both exist, and their count."""
    d = (a - b)[np.isfinite(a) & np.isfinite(b)]
    if len(d) == 0:
        return "n/a (0)"
    se = f"{d.std(ddof=1) / math.sqrt(len(d)):.2f}" if len(d) > 1 else "n/a"
    return f"{d.mean():+.2f} ± {se} ({len(d)})"


def by_expression(score: str, labels: list[str], tables: list[dict], ref: dict) -> None:
    """Per target expression: each model's mean of ``score`` and its paired difference to the reference."""
    if score not in ref or "expression" not in ref or any(score not in m for m in tables):
        raise SystemExit(f"every folder needs a {score!r} column and the reference its target expressions "
                         "(animation-mode evaluations)")
    names = sorted({e for e in ref["expression"] if e})
    print("| model | " + " | ".join(f"{e} | Δ {e} (paired, n)" for e in names) + " |")
    print("|---|" + "---|---|" * len(names))
    masks = [ref["expression"] == e for e in names]
    for label, m in zip(labels, tables):
        cells = [f"{mean_cell(m[score][k])} | {paired(m[score][k], ref[score][k])}" for k in masks]
        print(f"| {label} | " + " | ".join(cells) + " |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folders", nargs="+", help="eval output folders (rows, in order)")
    ap.add_argument("--ref", required=True, help="eval folder the paired differences are taken against")
    ap.add_argument("--labels", default="", help="comma-separated row labels (default: folder names)")
    ap.add_argument("--by-expression", metavar="SCORE", default="",
                    help="one column per target expression for this score column (e.g. expr_gain)")
    args = ap.parse_args()
    labels = args.labels.split(",") if args.labels else [f.rstrip("/").split("/")[-1] for f in args.folders]
    ref = load(args.ref)
    tables = [load(f) for f in args.folders]
    for folder, m in zip(args.folders, tables):
        if not np.array_equal(m["example"], ref["example"]):
            raise SystemExit(f"{folder}: its examples differ from {args.ref}'s; compare runs of one input mode")
    if args.by_expression:
        by_expression(args.by_expression, labels, tables, ref)
        return
    scores = [s for s in SCORES if s[0] in ref and all(s[0] in m for m in tables)]
    header = [f"{title} | Δ {title} (paired, n)" for _, title, _ in scores]
    print("| model | " + " | ".join(header) + " |")
    print("|---|" + "---|---|" * len(scores))
    for label, m in zip(labels, tables):
        cells = [f"{mean_cell(k * m[name])} | {paired(k * m[name], k * ref[name])}" for name, _, k in scores]
        print(f"| {label} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
