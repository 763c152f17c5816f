"""A small avatar of a held-out SynthHeads person, reconstructed with the shipped model (shared by the rig and
viewer tests): 4 neutral views at the model's 64² input, written as a self-contained .avt."""

from __future__ import annotations

from pathlib import Path

import torch

from avat3r.avatar import save_avatar
from avat3r.cameras import k_farthest_viewpoints
from avat3r.data import synthheads as S
from avat3r.model.checkpoint import load_checkpoint
from avat3r.priors import compute_priors

SHIPPED = Path(__file__).resolve().parents[1] / "models" / "synthheads-tiny"
HELD_OUT_PERSON = 219  # the demo's person; the shipped model trained on persons 0-119


def shipped_avatar(path: Path, person: int = HELD_OUT_PERSON) -> Path:
    """Write ``person``'s avatar (self-contained, neutral inputs) to ``path``."""
    model, meta = load_checkpoint(SHIPPED)
    model.eval()
    _, rig = S.make_rig(0, 12, model.config.input_res, person=person)
    inputs = k_farthest_viewpoints(rig, 4, generator=torch.Generator().manual_seed(3))
    rgb, mask, _ = S.render_views(S.head_gaussians(S.make_identity(0, person), S.neutral_code()), rig[inputs])
    pos, conf, _ = compute_priors(rgb, rig[inputs], mask, position="geometric")
    with torch.inference_mode():
        state = model.encode(rgb[None], rig[inputs], pos[None], conf[None])
    save_avatar(path, state, {"expression_space": meta["expression_space"],
                              "expression_names": list(meta["expression_names"]),
                              "neutral": list(meta["neutral"]), "checkpoint_sha256": meta["sha256"],
                              "position_prior": "geometric", "feature_prior": "none"}, model)
    return path
