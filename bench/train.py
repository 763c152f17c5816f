"""Training benchmark (DESIGN §7): steps/s and peak memory of the ``tiny`` preset on CPU, through the real
training loop (forward, rendering of the 8 supervised views, Eq. 18 loss, backward, Adam).

Examples are synthetic and held in memory (a textured sphere seen by 4 input and 8 target cameras, exact position
maps), so the numbers measure the step, not shard decoding. Peak memory is the process's maximum resident set
size (ru_maxrss), which includes the Python interpreter and torch itself.

    python bench/train.py                      # tiny preset, 64² inputs and targets, 6 timed steps
    python bench/train.py --write-docs         # also append a "## Training" section to docs/benchmarks.md
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import sphere_views

from avat3r.train.loop import train
from avat3r.train.recipe import recipe_from_dict

DOCS = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"


class SphereExamples:
    expression_space = "synthheads-v1"

    def __init__(self, res: int, expression_dim: int = 13):
        self.res, self.e = res, expression_dim

    def example(self, i: int) -> dict:
        g = torch.Generator().manual_seed(i)
        rgb, cams, pos, conf = sphere_views((torch.rand(4, generator=g) * 2 - 1).tolist(), self.res)
        trgb, tcams, _, tmask = sphere_views((torch.rand(8, generator=g) * 3 - 1.5).tolist(), self.res)
        expr = torch.rand(self.e, generator=g)
        return {"inputs_rgb": rgb, "inputs_cameras": cams, "inputs_pos": pos, "inputs_conf": conf,
                "inputs_expr": expr.expand(4, -1).clone(), "target_rgb": trgb, "target_mask": tmask,
                "target_cameras": tcams, "expr": expr, "person": "sphere"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=6, help="timed steps (one more untimed warm-up step first)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--write-docs", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    recipe = recipe_from_dict({"model": {"preset": "tiny"}, "loss": {"lpips": 0.0},
                               "optim": {"max_steps": args.steps + 1, "lr": 1e-4},
                               "run": {"checkpoint_every": 10 ** 9, "preview_every": 10 ** 9, "log_every": 10 ** 9}},
                              source="bench")
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        result = train(recipe, Path(tmp) / "run", examples=SphereExamples(64), progress=False)
        wall = time.perf_counter() - t0
    timed = [result.seconds[s] for s in range(1, args.steps + 1)]
    median = statistics.median(timed)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    n_params = None
    from avat3r.model import Avat3r, Avat3rConfig

    n_params = sum(p.numel() for p in Avat3r(Avat3rConfig.preset("tiny")).parameters())
    lines = [
        "## Training", "",
        (f"`python bench/train.py` on {platform.machine()}, torch {torch.__version__}, {args.threads} CPU "
         f"threads, float32; load average at the start {load:.1f} (timings on a shared machine scale with it)."), "",
        (f"**tiny** preset ({n_params / 1e6:.2f} M parameters), batch 1: 4 input views at 64², 8 supervised views "
         "at 64² rendered with the torch rasterizer, L1 + D-SSIM (LPIPS off), Adam, gradient clipping; through "
         "`avat3r.train.loop.train` (in-memory examples, no checkpoint writes)."), "",
        "| measure | value |", "|---|---|",
        f"| step time, median of {args.steps} | {median:.2f} s |",
        f"| steps/s | {1 / median:.3f} |",
        f"| step time min / max | {min(timed):.2f} / {max(timed):.2f} s |",
        f"| peak resident memory (whole process) | {peak_mb:.0f} MB |",
        f"| wall time incl. set-up and warm-up step | {wall:.1f} s |", "",
        f"At this rate the recipe's 4000 steps take about {4000 * median / 3600:.1f} h on this machine.", ""]
    text = "\n".join(lines)
    print(text)
    if args.write_docs:
        # Append; a rerun replaces only its own "## Training" section, never the other sections.
        existing = DOCS.read_text() if DOCS.exists() else "# Benchmarks\n"
        head, sep, rest = existing.partition("\n## Training\n")
        tail = ""
        if sep and "\n## " in rest:
            tail = "\n## " + rest.split("\n## ", 1)[1]
        DOCS.write_text(head.rstrip("\n") + "\n\n" + text.rstrip("\n") + "\n" + tail)


if __name__ == "__main__":
    main()
