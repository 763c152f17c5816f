"""Benchmark the weights-free geometric position prior: seconds per 4-view set and accuracy.

Accuracy on foreground pixels (true alpha > 0.5) against the rendered depth: median and 90th-percentile
position error in mm, and IoU of (conf > 0.5) with the true foreground; inputs are 4 views chosen like
training (k-farthest viewpoints, no back-only cameras). Runs on SynthHeads persons when that generator is
available, else on the built-in ray-cast test head. Prints a markdown table; ``--append`` adds it to
docs/benchmarks.md under "## Priors".

    python bench/priors.py --res 96 --persons 3 --threads 2 --append
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import torch


def synthheads_views(person: int, res: int, seed: int = 0):
    """4 SynthHeads views (k-farthest from the rig, neutral expression): rgb, alpha, depth, cameras."""
    from avat3r.cameras import k_farthest_viewpoints
    from avat3r.data import synthheads as sh

    identity = sh.make_identity(seed, person)
    g = sh.head_gaussians(identity, sh.neutral_code())
    _, rig = sh.make_rig(seed, 32, res)
    pick = k_farthest_viewpoints(rig, 4, generator=torch.Generator().manual_seed(person))
    cams = rig[pick]
    rgb, mask, depth = sh.render_views(g, cams)
    return rgb, mask, depth, cams


def accuracy(pos, conf, alpha, depth, cams):
    from avat3r.cameras import unproject

    fg = alpha > 0.5
    err = (pos - unproject(cams, depth)).norm(dim=-1)[fg] * 1000
    pred = conf > 0.5
    return float(err.median()), float(err.quantile(0.9)), float((pred & fg).sum() / (pred | fg).sum())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--res", type=int, default=96)
    ap.add_argument("--persons", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--scene", choices=("auto", "synthheads", "raycast"), default="auto")
    ap.add_argument("--append", action="store_true", help="append the table to docs/benchmarks.md")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from avat3r.priors import get_position_prior
    from avat3r.priors.synthetic import scene_views

    scene = args.scene
    if scene == "auto":
        try:
            from avat3r.data import synthheads
            scene = "synthheads" if hasattr(synthheads, "render_views") else "raycast"
        except ImportError:
            scene = "raycast"
    rows = []
    for p in range(args.persons):
        views = synthheads_views(p, args.res) if scene == "synthheads" else scene_views(4, args.res, seed=p)
        rgb, alpha, depth, cams = views
        for name, masks in (("geometric (masks from background)", None), ("geometric (given masks)", alpha),
                            ("none (ellipsoid)", None)):
            prior = get_position_prior(name.split()[0])
            t = time.perf_counter()
            pos, conf = prior(rgb, cams, masks)
            dt = time.perf_counter() - t
            rows.append((p, name, dt, *accuracy(pos, conf, alpha, depth, cams)))
    import os

    head = (f"Scene: {scene}, 4 views at {args.res}², {args.threads} CPU threads ({platform.processor() or 'cpu'}), "
            f"torch {torch.__version__}, load average at the end {os.getloadavg()[0]:.1f}.\n\n| person | prior | s / 4-view set | median mm | p90 mm | IoU conf>0.5 |\n"
            "|---|---|---|---|---|---|\n")
    table = head + "".join(f"| {p} | {n} | {dt:.2f} | {med:.2f} | {p90:.2f} | {iou:.3f} |\n"
                           for p, n, dt, med, p90, iou in rows)
    print(table)
    if args.append:
        path = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"
        text = path.read_text() if path.exists() else "# Benchmarks\n"
        section = "\n## Priors\n\n`python bench/priors.py " + f"--res {args.res} --persons {args.persons} " \
                  f"--threads {args.threads}`\n\n" + table
        path.write_text(text.rstrip("\n") + "\n" + section)


if __name__ == "__main__":
    main()
