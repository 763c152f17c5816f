"""Model benchmark (DESIGN §3, §7): CPU timings of encode, decode and render for the ``tiny`` preset and the
``paper`` preset's parameter count and FLOPs per encode / decode at 512² (4 views).

decode runs the L_c cross-attention blocks over every token plus the upsampler, so it is not small next to
encode; the timings report the network-only decode/encode ratio as measured. FLOPs come from
``torch.utils.flop_counter.FlopCounterMode`` on a meta-device run (shapes only, no memory, no arithmetic).

    python bench/model.py                 # tiny at 64², decode with 8 frames per call
    python bench/model.py --write-docs    # also put the table into docs/benchmarks.md ("## Model")
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import sphere_views, timed

from avat3r.model import Avat3r, Avat3rConfig
from avat3r.render import rasterize


def head_inputs(config: Avat3rConfig, device="cpu", views: int = 4):
    """Four views of a textured 0.12 m sphere from 0.7 m: images, cameras, positions, confidence (batch of 1)."""
    R = config.input_res
    angles = torch.linspace(-1.0, 1.0, views).tolist()
    if device == "meta":
        _, cams, _, _ = sphere_views(angles, R, wobble=0.0)
        return (torch.empty(1, views, R, R, 3, device="meta"), cams.to("meta"),
                torch.empty(1, views, R, R, 3, device="meta"), torch.empty(1, views, R, R, device="meta"))
    rgb, cams, pos, conf = sphere_views(angles, R, wobble=0.0)
    return rgb[None], cams, pos[None], conf[None]


def cpu_timings(frames: int, min_time: float) -> dict:
    load = os.getloadavg()[0]
    cfg = Avat3rConfig.preset("tiny")
    torch.manual_seed(0)
    model = Avat3r(cfg).eval()
    images, cams, pos, conf = head_inputs(cfg)
    codes = torch.randn(frames, cfg.expression_dim, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        state = model.encode(images, cams, pos, conf)
        t_encode = timed(lambda: model.encode(images, cams, pos, conf), min_time)
        t_decode_1 = timed(lambda: model.decode(state, codes[:1]), min_time)
        t_decode_f = timed(lambda: model.decode(state, codes), min_time) / frames
        g = model.decode(state, codes[:1])[0].compact()
        t_render = timed(lambda: rasterize(g, cams[:1], backend="torch"), min_time)
    return {"config": cfg, "params": sum(p.numel() for p in model.parameters()), "encode": t_encode,
            "decode_1": t_decode_1, "decode_f": t_decode_f, "frames": frames, "render": t_render,
            "gaussians": len(g), "load": load}


def model_flops(preset: str) -> dict:
    from torch.utils.flop_counter import FlopCounterMode

    cfg = Avat3rConfig.preset(preset)
    with torch.device("meta"):
        model = Avat3r(cfg)
    images, cams, pos, conf = head_inputs(cfg, "meta")
    feats = None
    if cfg.use_features:
        feats = torch.empty(1, 4, cfg.feature_dim, 64, 64, device="meta")  # Sapiens-2B: 1/16 of 1024²
    with FlopCounterMode(display=False) as fc:
        state = model.encode(images, cams, pos, conf, feats)
    enc = fc.get_total_flops()
    with FlopCounterMode(display=False) as fc:
        model.decode(state, torch.empty(1, cfg.expression_dim, device="meta"))
    dec = fc.get_total_flops()
    return {"params": sum(p.numel() for p in model.parameters()), "encode": enc, "decode": dec,
            "encoder_params": sum(p.numel() for p in model.encoder.parameters()),
            "decoder_params": sum(p.numel() for p in model.decoder.parameters())}


def markdown(t: dict, f: dict, ft: dict) -> str:
    c = t["config"]
    lines = [
        "## Model",
        "",
        (f"`python bench/model.py` on {platform.processor() or platform.machine()}, torch {torch.__version__}, "
         f"{torch.get_num_threads()} CPU threads, float32, 4 input views; load average at the start "
         f"{t['load']:.1f} (timings on a shared machine scale with it)."),
        "",
        (f"**tiny** preset (D={c.dim}, L_s={c.self_layers}, L_c={c.cross_layers}, {c.input_res}², "
         f"patch {c.patch}, {t['params'] / 1e6:.2f} M parameters), untrained weights:"),
        "",
        "| step | ms | GFLOP |",
        "|---|---|---|",
        f"| encode (Eq. 4-7, once per avatar) | {t['encode'] * 1e3:.1f} | {ft['encode'] / 1e9:.2f} |",
        f"| decode, 1 frame per call | {t['decode_1'] * 1e3:.1f} | {ft['decode'] / 1e9:.2f} |",
        f"| decode per frame, {t['frames']} frames per call | {t['decode_f'] * 1e3:.1f} | {ft['decode'] / 1e9:.2f} |",
        f"| render one {c.input_res}² frame ({t['gaussians']} Gaussians, torch backend) | {t['render'] * 1e3:.1f} | |",
        "",
        (f"Network-only decode/encode ratio: {t['decode_1'] / t['encode']:.2f} (1 frame per call), "
         f"{t['decode_f'] / t['encode']:.2f} ({t['frames']} frames per call). Decode runs L_c cross-attention "
         "blocks over all tokens plus the upsampler and heads, so it costs about as much as encode; the saving "
         "of animation is the priors and encode, not a small decoder."),
        "",
        (f"**paper** preset (D=768, L_s=L_c=8, 512², patch 16, Sapiens C_s=1920): "
         f"{f['params']:,} parameters ({f['encoder_params'] / 1e6:.1f} M encoder, "
         f"{f['decoder_params'] / 1e6:.1f} M decoder). FLOPs (FlopCounterMode, meta device, one example of "
         "4 views):"),
        "",
        "| pass | GFLOP |",
        "|---|---|",
        f"| encode | {f['encode'] / 1e9:.1f} |",
        f"| decode (per frame) | {f['decode'] / 1e9:.1f} |",
        "",
        f"Paper-preset decode/encode FLOP ratio: {f['decode'] / f['encode']:.2f}.",
        "",
    ]
    return "\n".join(lines)


def write_section(path: Path, section: str) -> None:
    """Replace the "## Model" section of ``path`` (or append it), leaving every other section alone."""
    text = path.read_text() if path.exists() else "# Benchmarks\n\n"
    pattern = re.compile(r"^## Model\n.*?(?=^## |\Z)", re.DOTALL | re.MULTILINE)
    text = pattern.sub(lambda _: section + "\n", text, count=1) if pattern.search(text) else \
        text.rstrip("\n") + "\n\n" + section + "\n"
    from avat3r.fileio import atomic_write_bytes

    atomic_write_bytes(path, text.encode())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--frames", type=int, default=8, help="frames per decode call")
    ap.add_argument("--threads", type=int, default=1,
                    help="CPU threads (1 by default: on a shared 2-core machine two threads thrash)")
    ap.add_argument("--min-time", type=float, default=2.0, help="seconds of timing per measurement")
    ap.add_argument("--write-docs", action="store_true", help="write the section into docs/benchmarks.md")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    t = cpu_timings(args.frames, args.min_time)
    section = markdown(t, model_flops("paper"), model_flops("tiny"))
    print(section)
    if args.write_docs:
        write_section(Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md", section)


if __name__ == "__main__":
    main()
