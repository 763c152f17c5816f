"""The shipped SynthHeads model: it loads, declares what it was trained with, and beats its own step-0
reprojection (the untrained network, whose zero-initialised heads only splat the input pixels) on a held-out
person seen from cameras that are not among the inputs."""

from __future__ import annotations

from pathlib import Path

import torch

from avat3r.cameras import k_farthest_viewpoints
from avat3r.data import synthheads as S
from avat3r.eval.runner import reprojection_baseline
from avat3r.model.checkpoint import load_checkpoint
from avat3r.priors import compute_priors
from avat3r.render import rasterize

SHIPPED = Path(__file__).resolve().parents[1] / "models" / "synthheads-tiny"
HELD_OUT_PERSON = 215  # persons 210–219 of the shipped model's data are its test split


def _psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(-10 * torch.log10(((a - b) ** 2).mean()))


def test_shipped_model_loads_with_its_metadata():
    model, meta = load_checkpoint(SHIPPED)
    assert meta["expression_space"] == S.EXPRESSION_SPACE
    assert list(meta["expression_names"]) == list(S.EXPRESSION_NAMES)
    assert meta["position_prior"] == "geometric" and meta["feature_prior"] == "none"
    assert model.config.input_res == 64
    assert (SHIPPED / "model.safetensors").stat().st_size < 25e6


def test_shipped_model_beats_its_step0_reprojection_on_a_held_out_person():
    torch.manual_seed(0)
    model, _ = load_checkpoint(SHIPPED)
    baseline = reprojection_baseline(model.config)
    _, rig = S.make_rig(0, 12, 64)
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
