"""Training throughput on one GPU: steps/s and model-FLOP utilisation (MFU) of the paper preset and of the small
preset the shipped model uses, before and after each throughput option, printed as one markdown table.

The options are switched on one after another, so each row shows what one more option adds:

1. baseline: batch 1, float32, Adam (foreach), every target view rendered by its own call;
2. + bf16 autocast of the network (the renderer and the loss stay float32);
3. + fused Adam (``torch.optim.Adam(fused=True)``: one kernel for all parameters);
4. + one render call for all targets of the batch (gsplat's batched rasterization: the examples' Gaussians
   padded to the largest per-example count with zero opacity, every example with its own cameras);
5. + batch > 1 per GPU (``--batch``);
6. + ``torch.compile`` of the transformer blocks (encoder and decoder).

A step is the training step of ``avat3r.train.loop`` reduced to its costs: forward (encode + decode), rendering
of the target views, an L1 loss, backward, gradient clipping, the optimizer step. Inputs are random tensors (the
data pipeline is not measured); weights are random. MFU counts the network's FLOPs (FlopCounterMode, forward +
backward, renderer excluded) against the bf16 dense peak, also for the float32 rows.

    python bench/gpu_throughput.py                    # CUDA: paper and tiny presets
    python bench/gpu_throughput.py --dry-run          # CPU: tiny sizes, 2 steps, CUDA-only options skipped

The dry run (what the test suite runs) shrinks both presets, uses the torch rasterizer and skips bf16 and
``torch.compile``, which need CUDA (or a C++ toolchain and minutes of compilation) to mean anything.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import statistics
import time

import torch

from avat3r.cameras import Cameras, intrinsics_from_fov, look_at, orbit_path
from avat3r.gaussians import Gaussians
from avat3r.model import Avat3r, Avat3rConfig
from avat3r.render import rasterize

BF16_PEAK_TFLOPS = 790.0  # dense bf16 matrix work, H100/H200 class (as in bench/gpu_check.py)
# the shipped model's preset; "paper" is the preset of the paper's hyper-parameters
PRESETS = ("paper", "tiny")
# dry run: both presets shrunk to seconds on a CPU (the paper preset keeps its feature input)
DRY_OVERRIDES = {"dim": 32, "heads": 2, "self_layers": 1, "cross_layers": 1, "input_res": 32, "patch": 8,
                 "expression_hidden": 32}


@dataclasses.dataclass(frozen=True)
class Variant:
    name: str
    batch: int = 1
    bf16: bool = False
    fused_adam: bool = False
    batched_render: bool = False
    compile: bool = False


def variants(batch: int, cuda: bool) -> list[Variant]:
    """The cumulative rows; on CPU the CUDA-only options stay off (their rows are skipped)."""
    v = [Variant("baseline (batch 1, fp32, Adam, one render call per target)")]
    steps = [("+ bf16 autocast", {"bf16": True}, cuda), ("+ fused Adam", {"fused_adam": True}, True),
             ("+ one render call for all targets", {"batched_render": True}, True),
             (f"+ batch {batch}", {"batch": batch}, batch > 1),
             ("+ torch.compile of the transformer blocks", {"compile": True}, cuda)]
    for name, change, ok in steps:
        if ok:
            v.append(dataclasses.replace(v[-1], name=name, **change))
    return v


def model_config(preset: str, dry: bool) -> Avat3rConfig:
    over = dict(DRY_OVERRIDES, feature_dim=8) if dry and preset == "paper" else (DRY_OVERRIDES if dry else {})
    return Avat3rConfig.preset(preset, **over)


def batch_inputs(cfg: Avat3rConfig, B: int, targets: int, target_res: int, dev: str, seed: int = 0):
    """Random inputs for B examples of 4 views, and ``targets`` target cameras and images per example."""
    g = torch.Generator().manual_seed(seed)
    R, V = cfg.input_res, 4
    eye = torch.nn.functional.normalize(torch.tensor([[0.0, 0.0, 1.0], [0.6, 0.1, 0.8], [-0.6, 0.1, 0.8],
                                                      [0.0, 0.5, 0.85]]), dim=-1)
    cams = Cameras(intrinsics_from_fov(14.0, R, R).expand(B * V, 3, 3).clone(), look_at(eye.repeat(B, 1)), R, R)
    tc = orbit_path(targets, radius=1.0, elevation_degrees=10.0, sweep_degrees=120.0, width=target_res,
                    height=target_res, fov_y_degrees=14.0)
    feats = None
    if cfg.use_features:
        h = max(4, R // 8)
        feats = torch.randn(B, V, cfg.feature_dim, h, h * 3 // 4, generator=g).to(dev)
    return {"images": torch.rand(B, V, R, R, 3, generator=g).to(dev), "cameras": cams.to(dev),
            "pos": (torch.randn(B, V, R, R, 3, generator=g) * 0.05).to(dev),
            "conf": torch.rand(B, V, R, R, generator=g).to(dev), "feats": feats,
            "codes": torch.zeros(B, cfg.expression_dim, device=dev),
            "target_cams": [tc.to(dev) for _ in range(B)],
            "targets": torch.rand(B, targets, target_res, target_res, 3, generator=g).to(dev)}


def padded(gs: Gaussians) -> Gaussians:
    """Batched Gaussians with per-example ``valid`` masks → the same batch cut to the largest valid count,
    valid ones first, the padding at opacity 0 (it never blends), so that one batched call renders them."""
    valid = gs.valid if gs.valid is not None else torch.ones_like(gs.opacities, dtype=torch.bool)
    n = int(valid.sum(-1).max())
    order = torch.argsort(valid.to(torch.int8), dim=-1, descending=True, stable=True)[:, :n]

    def take(t):
        return t.gather(1, order.reshape(order.shape + (1,) * (t.ndim - 2)).expand(*order.shape, *t.shape[2:]))

    return Gaussians(take(gs.means), take(gs.quats), take(gs.scales),
                     take(gs.opacities) * take(valid).to(gs.opacities.dtype), take(gs.colors))


def render_targets(gs: Gaussians, target_cams: list[Cameras], batched: bool, backend: str) -> torch.Tensor:
    """(B, T, H, W, 3) renders of every example's targets."""
    B = len(target_cams)
    if not batched:  # one call per example and target camera
        return torch.stack([torch.cat([rasterize(gs[b], target_cams[b][t:t + 1], backend=backend)[0]
                                       for t in range(len(target_cams[b]))]) for b in range(B)])
    if backend == "gsplat":
        from gsplat import rasterization

        p = padded(gs)
        W, H = target_cams[0].image_size
        rgb, _, _ = rasterization(p.means, p.quats, p.scales, p.opacities, p.colors,
                                  torch.stack([c.w2c for c in target_cams]), torch.stack([c.K for c in target_cams]),
                                  W, H, packed=True, rasterize_mode="classic")
        return rgb
    # torch backend: one call per example with all of its cameras (the rasterizer's own batching)
    return torch.stack([rasterize(gs[b], target_cams[b], backend=backend)[0] for b in range(B)])


def network_flops(model: Avat3r, x: dict) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as fc:
        gs = model(x["images"], x["cameras"], x["pos"], x["conf"], x["codes"], x["feats"])
        (gs.means.float().sum() + gs.colors.float().sum()).backward()
    model.zero_grad(set_to_none=True)
    return float(fc.get_total_flops())


def measure(preset: str, v: Variant, args, dev: str) -> dict:
    cuda = dev == "cuda"
    cfg = model_config(preset, args.dry_run)
    torch.manual_seed(0)
    model = Avat3r(cfg).to(dev).train()
    target_res = args.target_res or (32 if args.dry_run else cfg.input_res)
    x = batch_inputs(cfg, v.batch, args.targets, target_res, dev)
    flops = network_flops(model, x)
    if v.compile:
        for blk in [*model.encoder.blocks, *model.decoder.blocks]:
            blk.compile()
    opt = torch.optim.Adam(model.parameters(), lr=1e-4, fused=True if v.fused_adam else None)
    backend = "gsplat" if cuda else "torch"

    def step():
        with torch.autocast(dev, dtype=torch.bfloat16, enabled=v.bf16):
            gs = model(x["images"], x["cameras"], x["pos"], x["conf"], x["codes"], x["feats"])
        gs = dataclasses.replace(gs, **{k: getattr(gs, k).float() for k in ("means", "quats", "scales",
                                                                            "opacities", "colors")})
        rgb = render_targets(gs, x["target_cams"], v.batched_render, backend)
        loss = (rgb - x["targets"]).abs().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()

    sync = torch.cuda.synchronize if cuda else (lambda: None)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    for _ in range(args.warmup):
        step()
    sync()
    times = []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - t0)
    sec = statistics.median(times)
    return {"preset": preset, "variant": v.name, "batch": v.batch, "step_ms": 1e3 * sec, "steps_per_s": 1 / sec,
            "examples_per_s": v.batch / sec, "tflop_per_step": flops / 1e12,
            "mfu_percent": 100 * flops / sec / (BF16_PEAK_TFLOPS * 1e12) if cuda else math.nan,
            "peak_gb": torch.cuda.max_memory_allocated() / 1e9 if cuda else math.nan}


def table(rows: list[dict]) -> str:
    def f(x, fmt):
        return "–" if isinstance(x, float) and math.isnan(x) else format(x, fmt)

    lines = ["| preset | variant | batch | step ms | steps/s | examples/s | network TFLOP/step | MFU % | peak GB |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['preset']} | {r['variant']} | {r['batch']} | failed: {r['error']} | | | | | |")
            continue
        lines.append(f"| {r['preset']} | {r['variant']} | {r['batch']} | {f(r['step_ms'], '.1f')} | "
                     f"{f(r['steps_per_s'], '.2f')} | {f(r['examples_per_s'], '.2f')} | "
                     f"{f(r['tflop_per_step'], '.4g')} | {f(r['mfu_percent'], '.1f')} | {f(r['peak_gb'], '.1f')} |")
    return "\n".join(lines)


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--presets", default=",".join(PRESETS))
    ap.add_argument("--batch", type=int, default=4, help="examples per step in the batch > 1 rows")
    ap.add_argument("--targets", type=int, default=8, help="target views rendered per example")
    ap.add_argument("--target-res", type=int, default=0, help="target image size (default: the input size)")
    ap.add_argument("--steps", type=int, default=10, help="timed steps per row (median reported)")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps first (compilation happens here)")
    ap.add_argument("--dry-run", action="store_true", help="CPU, shrunken presets, 2 targets, 1 warm-up + 2 steps")
    args = ap.parse_args(argv)
    if args.dry_run:
        args.batch, args.targets, args.steps, args.warmup = min(args.batch, 2), 2, 2, 1
    dev = "cuda" if torch.cuda.is_available() and not args.dry_run else "cpu"
    if dev == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    elif not args.dry_run:
        raise SystemExit("bench/gpu_throughput.py needs CUDA; use --dry-run on a CPU")
    rows = []
    for preset in args.presets.split(","):
        for v in variants(args.batch, dev == "cuda"):
            try:
                rows.append(measure(preset, v, args, dev))
            except Exception as err:  # a failing option must not hide the other rows
                if args.dry_run:
                    raise
                rows.append({"preset": preset, "variant": v.name, "batch": v.batch,
                             "error": f"{type(err).__name__}: {str(err).splitlines()[0][:120]}"})
            print(table(rows[-1:]).splitlines()[-1], flush=True)
    name = torch.cuda.get_device_name(0) if dev == "cuda" else "CPU (dry run)"
    res = args.target_res or ("32²" if args.dry_run else "input")
    print(f"\n{name}, torch {torch.__version__}, {args.targets} targets per example at {res} resolution, "
          f"median of {args.steps} steps after {args.warmup} warm-up\n")
    print(table(rows))
    return rows


if __name__ == "__main__":
    main()
