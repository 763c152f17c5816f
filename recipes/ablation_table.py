"""The ablation table of docs/results.md from `avat3r eval` output folders.

Every evaluation of one input mode draws the same examples (same manifest, split, seed and sampler options),
so models are compared per example: the table gives each model's mean ± std over examples and its paired
difference to a reference row (mean ± standard error of the per-example differences).

    python recipes/ablation_table.py --ref eval/trained-mixed eval/trained-mixed eval/no-expression ...
"""

from __future__ import annotations

import argparse
import math

import numpy as np
import pyarrow.parquet as pq


def load(folder: str) -> dict[str, np.ndarray]:
    t = pq.read_table(f"{folder}/metrics.parquet")
    cols = {name: np.asarray(t.column(name).to_numpy(zero_copy_only=False), dtype=np.float64)
            for name in ("example", "psnr", "ssim", "jod") if name in t.column_names}
    order = np.argsort(cols["example"])
    return {k: v[order] for k, v in cols.items()}


def paired(a: np.ndarray, b: np.ndarray) -> str:
    d = a - b
    se = d.std(ddof=1) / math.sqrt(len(d)) if len(d) > 1 else float("nan")
    return f"{d.mean():+.2f} ± {se:.2f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folders", nargs="+", help="eval output folders (rows, in order)")
    ap.add_argument("--ref", required=True, help="eval folder the paired differences are taken against")
    ap.add_argument("--labels", default="", help="comma-separated row labels (default: folder names)")
    args = ap.parse_args()
    labels = args.labels.split(",") if args.labels else [f.rstrip("/").split("/")[-1] for f in args.folders]
    ref = load(args.ref)
    print("| model | PSNR (dB) | SSIM | JOD | Δ PSNR vs ref (paired) | Δ SSIM ×100 (paired) |")
    print("|---|---|---|---|---|---|")
    for label, folder in zip(labels, args.folders):
        m = load(folder)
        if not np.array_equal(m["example"], ref["example"]):
            raise SystemExit(f"{folder}: its examples differ from {args.ref}'s; compare runs of one input mode")
        jod = f"{m['jod'].mean():.2f}" if "jod" in m and np.isfinite(m["jod"]).all() else "n/a"
        print(f"| {label} | {m['psnr'].mean():.2f} ± {m['psnr'].std():.2f} | {m['ssim'].mean():.3f} | {jod} | "
              f"{paired(m['psnr'], ref['psnr'])} | {paired(100 * m['ssim'], 100 * ref['ssim'])} |")


if __name__ == "__main__":
    main()
