"""The shipped SynthHeads model: it loads, declares what it was trained with, and beats its own step-0
reprojection (the untrained network, whose zero-initialised heads only splat the input pixels) on a held-out
person seen from cameras that are not among the inputs."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from avat3r.cameras import k_farthest_viewpoints
from avat3r.data import synthheads as S
from avat3r.data.images import as_resized_photos
from avat3r.eval.runner import reprojection_baseline
from avat3r.model.checkpoint import load_checkpoint
from avat3r.priors import compute_priors
from avat3r.render import rasterize

# AVAT3R_TEST_SHIPPED points these tests at another checkpoint (e.g. to check that an older model fails them)
SHIPPED = Path(os.environ.get("AVAT3R_TEST_SHIPPED", Path(__file__).resolve().parents[1] / "models" / "synthheads-tiny"))
HELD_OUT_PERSON = 215  # the shipped model trained on persons 0–119 of seed 0, each through its own rig
HELD_OUT_PERSONS = (215, 216, 217)


def _psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(-10 * torch.log10(((a - b) ** 2).mean()))


def test_shipped_model_loads_with_its_metadata():
    model, meta = load_checkpoint(SHIPPED)
    assert meta["expression_space"] == S.EXPRESSION_SPACE
    assert list(meta["expression_names"]) == list(S.EXPRESSION_NAMES)
    assert meta["position_prior"] == "geometric" and meta["feature_prior"] == "none"
    assert model.config.input_res == 128 and model.config.patch == 16  # an 8×8 token grid per view
    assert (SHIPPED / "model.safetensors").stat().st_size < 25e6


def test_shipped_model_beats_its_step0_reprojection_on_a_held_out_person():
    torch.manual_seed(0)
    model, _ = load_checkpoint(SHIPPED)
    baseline = reprojection_baseline(model.config)
    _, rig = S.make_rig(0, 12, model.config.input_res, person=HELD_OUT_PERSON)  # a rig never trained on, too
    identity = S.make_identity(0, HELD_OUT_PERSON)
    inputs = k_farthest_viewpoints(rig, 4, generator=torch.Generator().manual_seed(3))
    targets = [i for i in range(len(rig)) if i not in inputs][:6]
    code = S.segment_codes("EXP_jaw003", 2)[0]
    rgb, mask, _ = S.render_views(S.head_gaussians(identity, code), rig[inputs])
    truth, _, _ = S.render_views(S.head_gaussians(identity, code), rig[targets])
    pos, conf, _ = compute_priors(rgb, rig[inputs], mask, position="geometric")
    scores = {}
    for name, net in (("trained", model), ("reprojection", baseline)):
        with torch.inference_mode():
            g = net.eval()(rgb[None], rig[inputs], pos[None], conf[None], code[None])[0]
            pred, _, _ = rasterize(g, rig[targets])
        scores[name] = _psnr(pred.clamp(0, 1), truth)
    assert scores["trained"] > scores["reprojection"] + 0.5, scores


def animation_scores(model, person: int) -> tuple[dict, dict]:
    """Gains and response ratios of each named expression for one held-out person: 4 neutral photos taken at
    128² and brought to the model's input side as `reconstruct` brings them, the avatar seen at 128² from the
    4 most frontal novel views."""
    from avat3r.eval.metrics import changing_region, expression_gain, response_ratio

    _, input_rig = S.make_rig(0, 12, model.config.input_res, person=person)
    _, rig = S.make_rig(0, 12, 128, person=person)
    identity = S.make_identity(0, person)
    inputs = k_farthest_viewpoints(input_rig, 4, generator=torch.Generator().manual_seed(3), exclude_back=True)
    by_frontality = torch.argsort(rig.centers[:, 2], descending=True).tolist()
    front = [i for i in by_frontality if i not in inputs][:4]  # the most frontal novel views: where expressions show
    neutral = S.neutral_code()
    rgb, mask = as_resized_photos(*S.render_views(S.head_gaussians(identity, neutral), rig[inputs])[:2],
                                  model.config.input_res)
    pos, conf, _ = compute_priors(rgb, input_rig[inputs], mask, position="geometric")
    truth_neutral, _, _ = S.render_views(S.head_gaussians(identity, neutral), rig[front])
    gains, ratios = {}, {}
    with torch.inference_mode():
        state = model.encode(rgb[None], input_rig[inputs], pos[None], conf[None])
        for name, values in EXPRESSIONS.items():
            code = neutral.clone()
            for k, v in values.items():
                code[S.EXPRESSION_NAMES.index(k)] = v
            truth, _, _ = S.render_views(S.head_gaussians(identity, code), rig[front])
            g = model.decode(state, torch.stack([code, neutral]))
            pred = rasterize(g[0], rig[front])[0].clamp(0, 1)
            pred_neutral = rasterize(g[1], rig[front])[0].clamp(0, 1)
            region = changing_region(truth, truth_neutral)
            gains[name] = expression_gain(pred, pred_neutral, truth, region)
            ratios[name] = response_ratio(pred, pred_neutral, truth, truth_neutral, region)
    return gains, ratios


def test_shipped_model_animates_held_out_persons_from_neutral_photos():
    """Reconstructed from 4 neutral photos, the avatar decoded at each expression must move the pixels the truth
    moves (expression gain in the changing region, as `avat3r eval` measures it) on views that are not inputs;
    means over 3 held-out persons, each through a rig never trained on."""
    model, _ = load_checkpoint(SHIPPED)
    model.eval()
    scores = [animation_scores(model, person) for person in HELD_OUT_PERSONS]
    gains = {k: sum(g[k] for g, _ in scores) / len(scores) for k in EXPRESSIONS}
    ratios = {k: sum(r[k] for _, r in scores) / len(scores) for k in EXPRESSIONS}
    # Floors the legs 1-2 model (trained on 8 fixed codes) fails: here its gains (jaw / smile / blink / tongue)
    # are 0.34 / 0.13 / -0.04 / 0.39 dB and its mean ratio 0.14. Leg 15: 2.40 / 0.57 / 0.41 / 2.40 dB, mean ratio
    # 0.52; the shipped model (leg 17): 3.46 / 0.97 / 0.41 / 3.12 dB, mean ratio 0.57.
    # Blinks move, but mostly not where the truth's do (docs/results.md), so their floor is low.
    assert all(gains[k] > 0.3 for k in ("jawOpen", "smile", "tongueOut")), (gains, ratios)
    assert gains["blink"] > 0.1, (gains, ratios)
    assert all(0.3 < r < 1.5 for r in ratios.values()), (gains, ratios)
    assert sum(ratios.values()) / len(ratios) > 0.4, (gains, ratios)


EXPRESSIONS = {"jawOpen": {"jawOpen": 1.0}, "smile": {"mouthSmileLeft": 1.0, "mouthSmileRight": 1.0},
               "blink": {"eyeBlinkLeft": 1.0, "eyeBlinkRight": 1.0}, "tongueOut": {"jawOpen": 0.65, "tongueOut": 1.0}}
