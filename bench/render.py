"""Renderer benchmark: the CPU tiled backend on a head-like scene (DESIGN §7).

For each image size and Gaussian count it reports renders/s and peak memory of forward and forward+backward,
the yardstick (one elementwise ``exp`` pass over as many floats as there are Gaussian–pixel pairs inside the
projected 3σ boxes) and the ratios forward/yardstick (target ≤ 10) and forward+backward/yardstick (≤ 30).
Each configuration runs in a fresh process so that its peak resident memory (ru_maxrss) is its own.

    python bench/render.py            # 128² and 256² × 10k, 50k, 100k Gaussians
    python bench/render.py --quick    # 128² × 10k only
    python bench/render.py --path both     # the tensor-op compositor and the fused kernels in turn
"""

from __future__ import annotations

import argparse
import math
import multiprocessing as mp
import os
import platform
import resource
import sys

import torch
from common import timed


def head_scene(n: int, seed: int = 0):
    """Gaussians on an ellipsoid shell of ~0.1 m (a head's size), scales 1–3 mm, seen from 1 m with 12° fov."""
    from avat3r.cameras import intrinsics_from_fov, look_at

    g = torch.Generator().manual_seed(seed)
    d = torch.nn.functional.normalize(torch.randn(n, 3, generator=g), dim=-1)
    means = d * torch.tensor([0.08, 0.1, 0.09]) * (1 + 0.02 * torch.randn(n, 1, generator=g))
    scales = torch.exp(torch.empty(n, 3).uniform_(math.log(1e-3), math.log(3e-3), generator=g))
    quats = torch.nn.functional.normalize(torch.randn(n, 4, generator=g), dim=-1)
    opacities = torch.empty(n).uniform_(0.3, 0.95, generator=g)
    colors = torch.rand(n, 3, generator=g)
    return means, quats, scales, opacities, colors, look_at(torch.tensor([[0.0, 0.0, 1.0]])), intrinsics_from_fov


def box_pairs(means, quats, scales, opacities, K, w2c, size) -> int:
    """Gaussian–pixel pairs inside the projected (opacity-aware 3.33σ) boxes, clipped to the image."""
    from avat3r.render.projection import project

    p = project(means, quats, scales, opacities, K, w2c, size, size)
    r = p.radii.double()
    lo = (p.means2d.double() - r).clamp(0, size)
    hi = (p.means2d.double() + r).clamp(0, size)
    return int(((hi - lo).prod(-1) * (r > 0).all(-1)).sum())


def _run_config(size: int, n: int, mode: str, min_time: float, queue) -> None:
    """Child process: time one (size, n, mode) and report its own peak-RSS growth."""
    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "2")))
    from avat3r.render.tiled import rasterize_tiled

    means, quats, scales, opacities, colors, w2c, fov = head_scene(n)
    K = fov(12.0, size, size)[None]
    if mode == "exp":
        pairs = box_pairs(means, quats, scales, opacities, K, w2c, size)
        x, y = torch.rand(pairs), torch.empty(pairs)
        sec = timed(lambda: torch.exp(x, out=y), min_time, 5)
        queue.put((sec, pairs, 0.0))
        return
    params = [t.clone().requires_grad_(mode == "fwd+bwd") for t in (means, quats, scales, opacities, colors)]
    weights = torch.rand(1, size, size, 3)

    def step():
        rgb, alpha, depth = rasterize_tiled(*params, K, w2c, size, size)
        if mode == "fwd+bwd":
            (rgb * weights).sum().add(alpha.sum()).add(depth.sum()).backward()

    if os.environ.get("AVAT3R_RASTERIZER") == "fused":  # load numba and the compiled kernels before the baseline
        from avat3r.render import cpu_kernels  # noqa: F401
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if mode == "fwd":
        with torch.no_grad():
            sec = timed(step, min_time)
    else:
        sec = timed(step, min_time)
    peak_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024  # Linux: KiB
    queue.put((sec, 0, peak_mb))


def measure(size: int, n: int, mode: str, min_time: float):
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_run_config, args=(size, n, mode, min_time, q))
    p.start()
    result = q.get()
    p.join()
    return result


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="one small configuration (128², 10k Gaussians)")
    ap.add_argument("--min-time", type=float, default=2.0, help="seconds of timing per measurement")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads (DESIGN §7 uses 2)")
    ap.add_argument("--path", choices=["fused", "tensor", "both"], default="fused",
                    help="CPU compositor: the fused numba kernels (default), the tensor-op walk, or both in turn "
                         "(before/after in one run)")
    args = ap.parse_args(argv)
    os.environ["BENCH_THREADS"] = str(args.threads)
    paths = ["tensor", "fused"] if args.path == "both" else [args.path]
    sizes, counts = ([128], [10_000]) if args.quick else ([128, 256], [10_000, 50_000, 100_000])
    min_time = 0.5 if args.quick else args.min_time

    print(f"# torch {torch.__version__}, {os.cpu_count()} CPUs, {args.threads} threads, "
          f"{platform.processor() or platform.machine()}, python {sys.version.split()[0]}, "
          f"load average {os.getloadavg()[0]:.1f}")
    print("| size | Gaussians | box pairs | compositor | exp pass ms | fwd ms | fwd renders/s | fwd peak MB "
          "| fwd+bwd ms | fwd+bwd renders/s | fwd+bwd peak MB | fwd / exp | fwd+bwd / exp |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for size in sizes:
        for n in counts:
            for path in paths:  # the exp pass is timed again beside each, as the machine may drift
                os.environ["AVAT3R_RASTERIZER"] = path  # inherited by the spawned process
                t_exp, pairs, _ = measure(size, n, "exp", min_time)
                t_f, _, m_f = measure(size, n, "fwd", min_time)
                t_b, _, m_b = measure(size, n, "fwd+bwd", min_time)
                print(f"| {size}² | {n // 1000}k | {pairs / 1e6:.2f} M | {path} | {1e3 * t_exp:.1f} | "
                      f"{1e3 * t_f:.0f} | {1 / t_f:.1f} | {m_f:.0f} | {1e3 * t_b:.0f} | {1 / t_b:.2f} | {m_b:.0f} | "
                      f"{t_f / t_exp:.1f} | {t_b / t_exp:.1f} |", flush=True)


if __name__ == "__main__":
    main()
