"""GPU checks in one run (CUDA needed): gsplat vs the torch rasterizer (images and gradients), renderer speed,
and paper-preset reconstruct latency, animation fps and training-step throughput / model-FLOP utilisation.

    TORCH_CUDA_ARCH_LIST=9.0 MAX_JOBS=16 python bench/gpu_check.py --out gpu.json

Every section is independent: a failure is recorded and the next section runs. Results go to stdout as they
come and to ``--out`` (JSON) at the end of every section.
"""

from __future__ import annotations

import argparse
import json
import math
import time
import traceback

import torch

from avat3r.cameras import Cameras, intrinsics_from_fov, look_at, orbit_path
from avat3r.gaussians import Gaussians
from avat3r.render import rasterize

RESULTS: dict = {}
BF16_PEAK_TFLOPS = 790.0  # dense bf16 matrix work measured on the lent H200 / H100 class machines


def log(msg: str) -> None:
    print(msg, flush=True)


def timed(fn, warmup: int = 2, iters: int = 10) -> float:
    """Median seconds per call, CUDA-synchronised."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        t = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    times.sort()
    return times[len(times) // 2]


def head_scene(n: int, seed: int = 0) -> Gaussians:
    """Gaussians on a head-sized ellipsoid shell, 1–3 mm splats, random rotations and colours."""
    g = torch.Generator().manual_seed(seed)
    d = torch.nn.functional.normalize(torch.randn(n, 3, generator=g), dim=-1)
    means = d * torch.tensor([0.08, 0.10, 0.09]) * (1 + 0.05 * torch.rand(n, 1, generator=g))
    scales = torch.exp(torch.empty(n, 3).uniform_(math.log(1e-3), math.log(3e-3), generator=g))
    quats = torch.nn.functional.normalize(torch.randn(n, 4, generator=g), dim=-1)
    return Gaussians(means, quats, scales, 0.3 + 0.65 * torch.rand(n, generator=g), torch.rand(n, 3, generator=g))


def cams(n: int, res: int) -> Cameras:
    return orbit_path(n, radius=1.0, elevation_degrees=10.0, sweep_degrees=120.0, width=res, height=res,
                      fov_y_degrees=14.0)


def record(section: str, value, out: str) -> None:
    RESULTS[section] = value
    log(f"[{section}] {json.dumps(value)}")
    with open(out, "w") as f:
        json.dump(RESULTS, f, indent=1)


# -- 1. gsplat vs torch ----------------------------------------------------------------------------
def compare_backends(out: str) -> None:
    dev = "cuda"
    rows = []
    t0 = time.perf_counter()
    rasterize(head_scene(100).to(dev), cams(1, 64).to(dev), backend="gsplat")  # JIT build on first use
    torch.cuda.synchronize()
    record("gsplat_first_call_s", round(time.perf_counter() - t0, 1), out)
    for n, res, seed in ((2_000, 128, 1), (20_000, 256, 2), (100_000, 256, 3)):
        scene = head_scene(n, seed).to(dev)
        cam = cams(4, res).to(dev)
        results = {}
        for backend in ("gsplat", "torch"):
            params = {k: getattr(scene, k).clone().requires_grad_(True)
                      for k in ("means", "quats", "scales", "opacities", "colors")}
            g = Gaussians(**params)
            rgb, alpha, depth = rasterize(g, cam, backend=backend)
            torch.manual_seed(0)  # the same loss weights for both backends
            w = torch.rand(rgb.shape, device=dev)
            (rgb * w).sum().add((alpha * w[..., 0]).sum()).backward()
            results[backend] = (rgb.detach(), alpha.detach(), depth.detach(), {k: v.grad for k, v in params.items()})
        a, b = results["gsplat"], results["torch"]
        mse = ((a[0] - b[0]) ** 2).mean().item()
        row = {"gaussians": n, "res": res, "cameras": 4, "psnr_rgb_db": round(-10 * math.log10(max(mse, 1e-20)), 2),
               "max_abs_rgb": float((a[0] - b[0]).abs().max()), "max_abs_alpha": float((a[1] - b[1]).abs().max())}
        fg = (a[1] > 0.5) & (b[1] > 0.5)
        row["median_abs_depth_mm"] = float((a[2] - b[2]).abs()[fg].median() * 1000) if fg.any() else None
        for k in a[3]:
            ga, gb = a[3][k].flatten().double(), b[3][k].flatten().double()
            row[f"grad_cos_{k}"] = round(float(torch.nn.functional.cosine_similarity(ga, gb, dim=0)), 5)
        rows.append(row)
        record("gsplat_vs_torch", rows, out)


# -- 2. renderer speed -----------------------------------------------------------------------------
def render_speed(out: str) -> None:
    rows = []
    for n, res in ((100_000, 256), (100_000, 512), (300_000, 512)):
        scene = head_scene(n, 7).to("cuda")
        cam = cams(1, res).to("cuda")
        for backend in ("gsplat", "torch"):
            fwd = timed(lambda: rasterize(scene, cam, backend=backend), iters=5)
            params = {k: getattr(scene, k).clone().requires_grad_(True)
                      for k in ("means", "quats", "scales", "opacities", "colors")}

            def step():
                rgb, alpha, _ = rasterize(Gaussians(**params), cam, backend=backend)
                rgb.sum().backward()

            fb = timed(step, iters=5)
            rows.append({"backend": backend, "gaussians": n, "res": res, "fwd_ms": round(fwd * 1e3, 2),
                         "fwd_bwd_ms": round(fb * 1e3, 2)})
            record("render_speed", rows, out)


# -- 3. paper preset -------------------------------------------------------------------------------
def paper_preset(out: str) -> None:
    from avat3r.model import Avat3r, Avat3rConfig

    dev = "cuda"
    torch.backends.cuda.matmul.allow_tf32 = True
    cfg = Avat3rConfig.preset("paper")
    model = Avat3r(cfg).to(dev)
    R, V = cfg.input_res, 4
    res = {"parameters": sum(p.numel() for p in model.parameters()), "input_res": R}
    eye = torch.tensor([[0.0, 0.0, 1.0], [0.6, 0.1, 0.8], [-0.6, 0.1, 0.8], [0.0, 0.5, 0.85]])
    eye = torch.nn.functional.normalize(eye, dim=-1)
    cam = Cameras(intrinsics_from_fov(14.0, R, R).expand(V, 3, 3).clone(), look_at(eye), R, R).to(dev)
    images = torch.rand(1, V, R, R, 3, device=dev)
    pos = torch.randn(1, V, R, R, 3, device=dev) * 0.05
    conf = torch.rand(1, V, R, R, device=dev)
    feats = torch.randn(1, V, cfg.feature_dim, 64, 48, device=dev) if cfg.use_features else None
    codes = torch.zeros(8, cfg.expression_dim, device=dev)
    model.eval()
    with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16):
        enc = timed(lambda: model.encode(images, cam, pos, conf, feats), iters=10)
        state = model.encode(images, cam, pos, conf, feats)
        dec8 = timed(lambda: model.decode(state, codes), iters=10)
        g = model.decode(state, codes[:1])[0].compact()
    render_cam = cams(1, 512).to(dev)
    rend = timed(lambda: rasterize(g.to(dev, torch.float32), render_cam, backend="gsplat"), iters=20)
    res.update({"encode_ms": round(enc * 1e3, 2), "decode_per_frame_ms_batch8": round(dec8 / 8 * 1e3, 2),
                "render_512_ms": round(rend * 1e3, 2), "gaussians_per_frame": len(g),
                "animation_fps": round(1.0 / (dec8 / 8 + rend), 1),
                "reconstruct_network_ms": round(enc * 1e3, 2)})
    record("paper_inference", res, out)

    # training step: 4 inputs at 512², 8 targets rendered at 512², bf16 autocast, Adam
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    targets = torch.rand(8, R, R, 3, device=dev)
    tcam = cams(8, R).to(dev)

    def train_step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            gs = model(images, cam, pos, conf, codes[:1], feats)
        rgb, _, _ = rasterize(gs[0], tcam, backend="gsplat")
        loss = (rgb - targets).abs().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()

    step = timed(train_step, warmup=3, iters=10)
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as fc:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            gs = model(images, cam, pos, conf, codes[:1], feats)
        gs.means.sum().backward()
    flops = fc.get_total_flops()
    record("paper_training", {"step_s": round(step, 4), "steps_per_s": round(1 / step, 2),
                              "network_flops_per_step_T": round(flops / 1e12, 3),
                              "mfu_percent": round(100 * flops / step / (BF16_PEAK_TFLOPS * 1e12), 1),
                              "peak_mem_GB": round(torch.cuda.max_memory_allocated() / 1e9, 1)}, out)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="gpu.json")
    ap.add_argument("--sections", default="compare,speed,paper")
    args = ap.parse_args()
    record("device", {"name": torch.cuda.get_device_name(0), "torch": torch.__version__}, args.out)
    sections = {"compare": compare_backends, "speed": render_speed, "paper": paper_preset}
    for name in args.sections.split(","):
        try:
            sections[name](args.out)
        except Exception:  # keep going: every section is independent
            record(f"{name}_error", traceback.format_exc().splitlines()[-3:], args.out)


if __name__ == "__main__":
    main()
