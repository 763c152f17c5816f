"""Rig fit quality and browser-viewer frame rate.

1. For held-out SynthHeads persons (new identities, their own camera rigs) reconstructed with the shipped model
   from 4 neutral views: fit the rig (`avat3r export` defaults) and compare rig vs network renders (frontal and
   ±35° views, 128²) over the built-in demo sequence and random codes: mean and worst-frame PSNR, file size.
2. The viewer page in headless Chromium (software WebGL2: SwiftShader): per-frame rig, sort and draw time with
   the rig re-applied and the camera turned every frame.
3. `--screenshot docs/viewer.png`: the page with the jaw open, for the README.

    python bench/viewer.py                          # 3 persons, viewer at 512²
    python bench/viewer.py --persons 219 --screenshot docs/viewer.png
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import tempfile
from pathlib import Path

import torch

from avat3r.cameras import k_farthest_viewpoints
from avat3r.data import synthheads as S
from avat3r.expressions import builtin_sequence
from avat3r.model.checkpoint import load_checkpoint
from avat3r.priors import compute_priors
from avat3r.rig import compare, eval_cameras, fit_rig, rig_bytes, sample_codes
from avat3r.rig.fit import SPACE_RANGES

REPO = Path(__file__).resolve().parents[1]


def encode_person(model, person: int):
    _, rig = S.make_rig(0, 12, 64, person=person)
    inputs = k_farthest_viewpoints(rig, 4, generator=torch.Generator().manual_seed(3))
    rgb, mask, _ = S.render_views(S.head_gaussians(S.make_identity(0, person), S.neutral_code()), rig[inputs])
    pos, conf, _ = compute_priors(rgb, rig[inputs], mask, position="geometric")
    with torch.inference_mode():
        return model.encode(rgb[None], rig[inputs], pos[None], conf[None])


def fit_quality(persons, samples: int, n_random: int) -> tuple[list[dict], object]:
    model, meta = load_checkpoint(REPO / "models" / "synthheads-tiny")
    model.eval()
    neutral = torch.tensor(meta["neutral"], dtype=torch.float32)
    demo = builtin_sequence("demo", meta["expression_space"]).codes
    rows, last = [], None
    for person in persons:
        state = encode_person(model, person)

        def decode(codes, state=state):
            return model.decode(state, codes)

        rig, keep = fit_rig(decode, meta["expression_space"], meta["expression_names"], neutral, n_samples=samples,
                            n_eval=0)
        lo, hi = SPACE_RANGES[meta["expression_space"]]
        random = sample_codes(neutral, torch.tensor([[lo, hi]] * len(neutral)), samples + n_random, seed=99)[samples:]
        cams = eval_cameras(128)
        d = compare(rig, decode, keep, demo, cams)
        r = compare(rig, decode, keep, random, cams)
        size = len(rig_bytes(rig))
        rows.append({"person": person, "gaussians": len(rig), "demo_mean": d["psnr_mean"],
                     "demo_worst": d["psnr_worst"], "random_mean": r["psnr_mean"], "random_worst": r["psnr_worst"],
                     "rms_means_mm": 1000 * r["rms"]["means"], "bytes": size})
        print(json.dumps(rows[-1]), flush=True)
        last = rig
    return rows, last


def viewer_timing(rig, size: int, frames: int, screenshot: Path | None) -> dict:
    from avat3r.viewer import write_viewer
    from avat3r.viewer.chromium import Chromium

    with tempfile.TemporaryDirectory() as tmp:
        page = Path(tmp) / "viewer.html"
        write_viewer(page, rig, builtin_sequence("demo", rig.space), size=size, title="head.avt")
        with Chromium(width=size + 320, height=size) as browser:
            browser.open(page.as_uri())
            browser.evaluate("window.avat3r.bench(5)")  # warm-up (shader compile, JIT)
            stats = browser.evaluate(f"window.avat3r.bench({frames})")
            version = browser.send("Browser.getVersion", session=False)["product"]
            renderer = browser.evaluate("(() => { const gl = document.getElementById('view').getContext('webgl2');"
                                        " const e = gl.getExtension('WEBGL_debug_renderer_info');"
                                        " return e ? gl.getParameter(e.UNMASKED_RENDERER_WEBGL) : '?'; })()")
            if screenshot is not None:
                from avat3r.stages.camera_path import CameraPath

                cam = CameraPath("orbit", size, 1.0).camera(56, 60)  # 24° to the subject's right
                code = rig.neutral.clone()
                code[list(rig.names).index("jawOpen")] = 0.8
                code[list(rig.names).index("mouthSmileLeft")] = 0.5
                code[list(rig.names).index("mouthSmileRight")] = 0.5
                browser.evaluate(f"window.avat3r.setCamera({json.dumps(cam.K[0].tolist())}, "
                                 f"{json.dumps(cam.w2c[0].tolist())}, {size}, {size})")
                browser.evaluate(f"window.avat3r.setCode({json.dumps([float(x) for x in code])})")
                browser.evaluate("window.avat3r.renderOnce()")
                screenshot.write_bytes(browser.screenshot(0, 0, size + 320, size))
    mean = {k: statistics.mean(s[k] for s in stats) for k in ("rig_ms", "sort_ms", "draw_ms", "total_ms")}
    return {"size": size, "frames": frames, "splats": stats[0]["count"], "chromium": version, "gl": renderer,
            **mean, "fps": 1000.0 / mean["total_ms"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--persons", type=int, nargs="+", default=[215, 219, 223])
    ap.add_argument("--samples", type=int, default=128)
    ap.add_argument("--random", type=int, default=32, help="held-out random codes per person")
    ap.add_argument("--size", type=int, nargs="+", default=[512, 256], help="viewer canvas sizes")
    ap.add_argument("--frames", type=int, default=30)
    ap.add_argument("--screenshot", type=Path)
    args = ap.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    print(f"# {datetime.date.today()} {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"torch threads {torch.get_num_threads()}")
    rows, rig = fit_quality(args.persons, args.samples, args.random)
    print("\n| person | Gaussians | demo PSNR mean / worst | random PSNR mean / worst | position RMS | rig file |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['person']} | {r['gaussians']:,} | {r['demo_mean']:.1f} / {r['demo_worst']:.1f} dB | "
              f"{r['random_mean']:.1f} / {r['random_worst']:.1f} dB | {r['rms_means_mm']:.2f} mm | "
              f"{r['bytes'] / 1e6:.2f} MB |")
    from avat3r.viewer.chromium import find_chromium

    if find_chromium() is None:
        print("\nno chromium: viewer timing skipped")
        return
    print("\n| canvas | splats | rig ms | sort ms | draw ms | frame ms | fps |")
    print("|---|---|---|---|---|---|---|")
    for i, size in enumerate(args.size):
        t = viewer_timing(rig, size, args.frames, args.screenshot if i == 0 else None)
        print(f"| {size}² | {t['splats']:,} | {t['rig_ms']:.1f} | {t['sort_ms']:.1f} | {t['draw_ms']:.1f} | "
              f"{t['total_ms']:.1f} | {t['fps']:.1f} |")
    print(f"\n{t['chromium']}, WebGL renderer: {t['gl']}")


if __name__ == "__main__":
    main()
