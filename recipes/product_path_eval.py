"""Score checkpoints the way `reconstruct` feeds them: 4 photos brought to the model's input side as
`reconstruct` brings them (area resize), priors computed there, targets rendered at any resolution.

--photo-res sets the side the photos are taken at. SynthHeads renders are not anti-aliased, so a render at the
input side is not the area average of a larger one (at 64², against the 2×2 average of the 128² render: 17–22 dB
foreground PSNR): photos taken above the input side and resized (the default, 128²) are what a camera and
`reconstruct` give; --photo-res 64 scores the aliased 64² renders that models trained on `--res 64` data saw.

For each held-out SynthHeads person (seed 0, persons the shipped model never saw, each through its own rig): a
neutral reconstruction from 4 non-back views, then the four named expressions decoded from the code and
rendered into 6 other views at --res. Prints the mean ± standard error per checkpoint of the neutral
foreground PSNR and each expression's gain (avat3r.eval.metrics), and the paired difference of every checkpoint
against the first.

    python recipes/product_path_eval.py models/synthheads-tiny runs/leg14-128/checkpoints/step_00006000 --res 128
"""

from __future__ import annotations

import argparse
import math

import numpy as np
import torch

from avat3r.cameras import k_farthest_viewpoints
from avat3r.data import synthheads as S
from avat3r.data.images import as_resized_photos
from avat3r.eval.metrics import changing_region, expression_gain, foreground_psnr
from avat3r.model.checkpoint import load_checkpoint
from avat3r.priors import compute_priors
from avat3r.render import rasterize

EXPRESSIONS = {"jawOpen": {"jawOpen": 1.0}, "smile": {"mouthSmileLeft": 1.0, "mouthSmileRight": 1.0},
               "blink": {"eyeBlinkLeft": 1.0, "eyeBlinkRight": 1.0}, "tongueOut": {"jawOpen": 0.65, "tongueOut": 1.0}}


def code_of(values: dict) -> torch.Tensor:
    code = S.neutral_code().clone()
    for name, v in values.items():
        code[S.EXPRESSION_NAMES.index(name)] = v
    return code


def score_person(models: dict, person: int, res: int, photo_res: int) -> dict:
    """{checkpoint: {"fg": neutral fg PSNR, expression: gain}} for one person; each model gets the same photos
    brought to its own input side."""
    _, rig_photo = S.make_rig(0, 12, photo_res, person=person)  # the same cameras at each resolution
    _, rig_out = S.make_rig(0, 12, res, person=person)
    identity = S.make_identity(0, person)
    inputs = k_farthest_viewpoints(rig_photo, 4, generator=torch.Generator().manual_seed(person), exclude_back=True)
    targets = [i for i in range(len(rig_photo)) if i not in inputs][:6]
    neutral = S.neutral_code()
    photos = S.render_views(S.head_gaussians(identity, neutral), rig_photo[inputs])[:2]
    truth_neutral, truth_mask, _ = S.render_views(S.head_gaussians(identity, neutral), rig_out[targets])
    truths = {name: S.render_views(S.head_gaussians(identity, code_of(v)), rig_out[targets])[0]
              for name, v in EXPRESSIONS.items()}
    views = {}  # input side → what `reconstruct` makes of the photos there: resized photos, cameras, priors
    for side in sorted({model.config.input_res for model in models.values()}):
        rig_in = S.make_rig(0, 12, side, person=person)[1][inputs]
        rgb, mask = as_resized_photos(*photos, side)
        views[side] = (rgb, rig_in, *compute_priors(rgb, rig_in, mask, position="geometric")[:2])
    out = {}
    for name, model in models.items():
        rgb, rig_in, pos, conf = views[model.config.input_res]
        with torch.inference_mode():
            state = model.encode(rgb[None], rig_in, pos[None], conf[None])

            def render(code: torch.Tensor) -> torch.Tensor:
                return rasterize(model.decode(state, code[None])[0], rig_out[targets])[0].clamp(0, 1)

            at_neutral = render(neutral)
            scores = {"fg": foreground_psnr(at_neutral, truth_neutral, truth_mask)}
            for expr, values in EXPRESSIONS.items():
                region = changing_region(truths[expr], truth_neutral)
                scores[expr] = expression_gain(render(code_of(values)), at_neutral, truths[expr], region)
        out[name] = scores
    return out


def mean_se(values) -> str:
    a = np.asarray(values, dtype=np.float64)
    return f"{a.mean():+.2f} ± {a.std(ddof=1) / math.sqrt(len(a)):.2f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoints", nargs="+", help="checkpoint folders (the first is the reference)")
    ap.add_argument("--res", type=int, default=128, help="target image side")
    ap.add_argument("--photo-res", type=int, default=128, help="side the photos are taken at (resized to the "
                    "model's input side as reconstruct does)")
    ap.add_argument("--persons", default="200-211", help="held-out persons of seed 0, FIRST-LAST")
    args = ap.parse_args()
    first, last = (int(x) for x in args.persons.split("-"))
    models = {c: load_checkpoint(c)[0].eval() for c in args.checkpoints}
    rows = [score_person(models, p, args.res, args.photo_res) for p in range(first, last + 1)]
    keys = ["fg", *EXPRESSIONS]
    print(f"| checkpoint ({len(rows)} persons, {args.photo_res}² photos, {args.res}² targets) | " + " | ".join(keys) + " |")
    print("|---|" + "---|" * len(keys))
    ref = args.checkpoints[0]
    for c in args.checkpoints:
        print(f"| {c} | " + " | ".join(mean_se([r[c][k] for r in rows]) for k in keys) + " |")
        if c != ref:
            print(f"| {c} − {ref} | " + " | ".join(mean_se([r[c][k] - r[ref][k] for r in rows]) for k in keys)
                  + " |")


if __name__ == "__main__":
    main()
