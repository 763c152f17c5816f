"""Benchmark the weights-free geometric position prior: seconds per 4-view set and accuracy.

Accuracy on foreground pixels (true alpha > 0.5) against the rendered depth: median and 90th-percentile
position error in mm, and IoU of (conf > 0.5) with the true foreground; inputs are 4 views chosen like
training (k-farthest viewpoints, no back-only cameras). Runs on SynthHeads persons when that generator is
available, else on the built-in ray-cast test head. Prints a markdown table; ``--append`` adds it to
docs/benchmarks.md under "## Priors".

    python bench/priors.py --res 96 --persons 3 --threads 2 --append

``--compare REV`` times the geometric prior of git revision REV against the current one instead: both run in
one process, in turn, for ``--rounds`` rounds (alternating which goes first, since the machine may be shared),
with given masks and masks from the background; prints medians and both accuracies as before → after:

    python bench/priors.py --compare 31fb47d --res 64 96 --persons 3 --threads 1 --rounds 3
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
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


def geometric_at(rev: str):
    """The ``GeometricPrior`` class of ``avat3r/priors/geometric.py`` at git revision ``rev``, imported from a
    temporary copy (its relative imports made absolute)."""
    root = Path(__file__).resolve().parents[1]
    src = subprocess.run(["git", "show", f"{rev}:avat3r/priors/geometric.py"], cwd=root, check=True,
                         capture_output=True, text=True).stdout
    src = re.sub(r"^from \.\.", "from avat3r.", src, flags=re.M)
    src = re.sub(r"^from \.(?=\w)", "from avat3r.priors.", src, flags=re.M)
    name = "geometric_" + re.sub(r"\W", "_", rev)
    path = Path(tempfile.mkdtemp()) / f"{name}.py"
    path.write_text(src)
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module.GeometricPrior


def compare(rev: str, resolutions, persons: int, rounds: int, threads: int) -> str:
    """Markdown table: the geometric prior at ``rev`` (before) against the current one (after)."""
    from avat3r.priors.geometric import GeometricPrior

    priors = {"before": geometric_at(rev)(), "after": GeometricPrior()}
    cases = []
    for res in resolutions:
        for p in range(persons):
            rgb, alpha, depth, cams = synthheads_views(p, res)
            for label, masks in (("given masks", alpha), ("masks from background", None)):
                cases.append(((res, p, label), (rgb, cams, masks), (alpha, depth, cams)))
    torch.set_num_threads(threads)  # rendering the views may have changed the OpenMP thread count (numba)
    times = {(c[0], k): [] for c in cases for k in priors}
    acc = {}
    for r in range(rounds):
        for key, inputs, truth in cases:
            for k in (("before", "after") if r % 2 == 0 else ("after", "before")):
                t = time.perf_counter()
                pos, conf = priors[k](*inputs)
                times[(key, k)].append(time.perf_counter() - t)
                acc.setdefault((key, k), accuracy(pos, conf, *truth))
    lines = ["| res | person | masks | s / 4-view set before → after | speed-up | median mm before → after | "
             "p90 mm before → after | IoU conf>0.5 before → after |", "|---|---|---|---|---|---|---|---|"]
    for key, _, _ in cases:
        b, a = (statistics.median(times[(key, k)]) for k in ("before", "after"))
        (mb, pb, ib), (ma, pa, ia) = acc[(key, "before")], acc[(key, "after")]
        lines.append(f"| {key[0]}² | {key[1]} | {key[2]} | {b:.2f} → {a:.2f} | **{b / a:.1f}×** "
                     f"| {mb:.2f} → {ma:.2f} | {pb:.2f} → {pa:.2f} | {ib:.3f} → {ia:.3f} |")
    for res in resolutions:
        ups = [statistics.median(times[(c[0], "before")]) / statistics.median(times[(c[0], "after")])
               for c in cases if c[0][0] == res]
        lines.append(f"\n{res}²: speed-up {min(ups):.1f}–{max(ups):.1f}×, median {statistics.median(ups):.1f}×")
    head = (f"{rounds} rounds, torch {torch.__version__}, {torch.get_num_threads()} thread(s), "
            f"{platform.machine()}, load average at the end {os.getloadavg()[0]:.1f}\n\n")
    return head + "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--res", type=int, nargs="+", default=[96])
    ap.add_argument("--persons", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--scene", choices=("auto", "synthheads", "raycast"), default="auto")
    ap.add_argument("--append", action="store_true", help="append the table to docs/benchmarks.md")
    ap.add_argument("--compare", metavar="REV", help="time the geometric prior of this git revision against "
                    "the current one (SynthHeads views)")
    ap.add_argument("--rounds", type=int, default=3, help="rounds of --compare")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.compare:
        print(compare(args.compare, args.res, args.persons, args.rounds, args.threads))
        return
    for res in args.res:
        prior_table(args, res)


def prior_table(args, res: int) -> None:
    """Time and accuracy of the geometric and `none` priors at one resolution; printed, or appended."""
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
        views = synthheads_views(p, res) if scene == "synthheads" else scene_views(4, res, seed=p)
        rgb, alpha, depth, cams = views
        torch.set_num_threads(args.threads)  # rendering the views may have changed it (numba's OpenMP)
        for name, masks in (("geometric (masks from background)", None), ("geometric (given masks)", alpha),
                            ("none (ellipsoid)", None)):
            prior = get_position_prior(name.split()[0])
            t = time.perf_counter()
            pos, conf = prior(rgb, cams, masks)
            dt = time.perf_counter() - t
            rows.append((p, name, dt, *accuracy(pos, conf, alpha, depth, cams)))
    head = (f"Scene: {scene}, 4 views at {res}², {args.threads} CPU threads ({platform.processor() or 'cpu'}), "
            f"torch {torch.__version__}, load average at the end {os.getloadavg()[0]:.1f}.\n\n| person | prior | s / 4-view set | median mm | p90 mm | IoU conf>0.5 |\n"
            "|---|---|---|---|---|---|\n")
    table = head + "".join(f"| {p} | {n} | {dt:.2f} | {med:.2f} | {p90:.2f} | {iou:.3f} |\n"
                           for p, n, dt, med, p90, iou in rows)
    print(table)
    if args.append:
        path = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"
        text = path.read_text() if path.exists() else "# Benchmarks\n"
        section = "\n## Priors\n\n`python bench/priors.py " + f"--res {res} --persons {args.persons} " \
                  f"--threads {args.threads}`\n\n" + table
        path.write_text(text.rstrip("\n") + "\n" + section)


if __name__ == "__main__":
    main()
