"""PSNR inside the face's expressive regions, for SynthHeads manifests (docs/results.md).

Whole-frame PSNR hardly sees expressions at 64² (a smile moves a few pixels). SynthHeads knows which Gaussians
are lips, teeth, tongue, mouth cavity, eyes, lids and brows, so each target view gets a soft mask: those parts'
visible coverage, rendered with occlusion from the target camera at the target's expression. This script
evaluates checkpoints on exactly the examples `avat3r eval` uses (same manifest, split, seed, input mode) and
reports whole-frame and region PSNR, with paired differences to the first checkpoint:

    python recipes/expression_region_eval.py -m data/synthheads-64-prior/manifest.parquet --mode other \\
        full=models/synthheads-tiny no-expression=runs/tiny-no-expression
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys

import numpy as np
import torch
from tqdm import tqdm

from avat3r.data.synth.identity import make_identity
from avat3r.data.synth.parts import PART_ID
from avat3r.data.synth.render import head_gaussians, render_views, single_thread
from avat3r.data.synthheads import head_parts
from avat3r.eval.metrics import psnr
from avat3r.eval.runner import _data_options, default_examples, load_trained
from avat3r.train.loop import collate_examples, predict, render_targets

EXPRESSIVE_PARTS = ("lips", "teeth", "tongue", "cavity", "sclera", "iris", "pupil", "lid", "brow")
MODES = {"mixed": {"random_timesteps": True, "inputs_elsewhere": False},
         "consistent": {"random_timesteps": False, "inputs_elsewhere": False},
         "other": {"random_timesteps": False, "inputs_elsewhere": True}}


def region_masks(ex: dict, synth_seed: int) -> torch.Tensor:
    """(V, H, W) visible coverage of the expressive parts in each target view of example ``ex``."""
    person = int(str(ex["person"]).lstrip("p"))
    identity = make_identity(synth_seed, person)
    g = head_gaussians(identity, torch.as_tensor(ex["expr"], dtype=torch.float32))
    expressive = np.isin(head_parts(identity), [PART_ID[p] for p in EXPRESSIVE_PARTS])
    g = dataclasses.replace(g, colors=torch.from_numpy(expressive).float()[:, None].expand(-1, 3).contiguous())
    with single_thread():
        rgb, _, _ = render_views(g, ex["target_cameras"])
    return rgb[..., 0].clamp(0, 1)


def masked_psnr(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> float:
    """PSNR of the mask-weighted MSE pooled over an example's views (some views see the face barely)."""
    w = mask[..., None].expand_as(pred)
    mse = float(((pred - target) ** 2 * w).sum() / w.sum().clamp_min(1e-8))
    return 10 * math.log10(1.0 / max(mse, 1e-12))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoints", nargs="+", help="LABEL=PATH; differences are taken against the first")
    ap.add_argument("-m", "--manifest", required=True)
    ap.add_argument("--mode", choices=sorted(MODES), default="mixed")
    ap.add_argument("--split", default="test")
    ap.add_argument("-n", "--examples", type=int, default=24)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--synth-seed", type=int, default=0, help="seed the SynthHeads set was made with")
    args = ap.parse_args()

    results, masks, coverage = {}, {}, []
    for spec in args.checkpoints:
        label, path = spec.split("=", 1)
        model, meta = load_trained(path)
        model.eval()
        examples = default_examples(args.manifest, args.split, args.seed, {**_data_options(meta), **MODES[args.mode]})
        whole, region = [], []
        with torch.no_grad():
            for i in tqdm(range(args.examples), desc=label, file=sys.stderr):
                ex = examples.example(i)
                if i not in masks:
                    masks[i] = region_masks(ex, args.synth_seed)
                    coverage.append(float(masks[i].mean()))
                batch = collate_examples([ex])
                pred = render_targets(predict(model, batch), batch["target_cameras"], "auto")[0].clamp(0, 1)
                target = batch["target_rgb"][0].float()
                whole.append(float(psnr(pred, target, per_image=True).mean()))  # as `avat3r eval` reports it
                region.append(masked_psnr(pred, target, masks[i]))
        results[label] = (np.array(whole), np.array(region))

    ref = next(iter(results.values()))
    se = lambda d: d.std(ddof=1) / math.sqrt(len(d))  # noqa: E731
    print(f"mode {args.mode}, {args.examples} examples; expressive parts cover {100 * np.mean(coverage):.1f} % of "
          "the target pixels")
    print("| model | whole-frame PSNR | Δ (paired) | expressive-region PSNR | Δ (paired) |")
    print("|---|---|---|---|---|")
    for label, (w, r) in results.items():
        print(f"| {label} | {w.mean():.2f} | {(w - ref[0]).mean():+.2f} ± {se(w - ref[0]):.2f} | {r.mean():.2f} | "
              f"{(r - ref[1]).mean():+.2f} ± {se(r - ref[1]):.2f} |")


if __name__ == "__main__":
    main()
