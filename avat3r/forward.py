"""One forward pass over a collated batch of examples: the model's Gaussians and their renders in the target
cameras. Training and evaluation both run it, so they predict and render the same way."""

from __future__ import annotations

from typing import Any

import torch

from .cameras import Cameras
from .render import rasterize


def to_device(batch: dict, device: torch.device) -> dict:
    out = {}
    for key, value in batch.items():
        if isinstance(value, torch.Tensor):
            out[key] = value.to(device)
        elif isinstance(value, list) and value and isinstance(value[0], Cameras):
            out[key] = [c.to(device) for c in value]
        else:
            out[key] = value
    return out



def predict(model: torch.nn.Module, batch: dict, codes: torch.Tensor | None = None) -> Any:
    """The model's Gaussians (B, N, …) for a collated batch; with ``codes`` (k·B, E) instead of the batch's
    ``expr``, k frames of every example, frame-major ((k·B, N, …))."""
    images = batch["inputs_rgb"].float()
    cameras = Cameras.cat(batch["inputs_cameras"])  # B·V cameras, b-major (the model's convention)
    feats = batch.get("inputs_feat")
    codes = batch["expr"] if codes is None else codes
    return model(images, cameras, batch["inputs_pos"].float(), batch["inputs_conf"].float(), codes.float(),
                 feats=None if feats is None else feats.float())


def render_targets(gaussians, target_cameras: list[Cameras], backend: str = "auto") -> torch.Tensor:
    """Render example b's Gaussians into its target cameras on black, in float32: (B, T, H, W, 3)."""
    device_type = gaussians.means.device.type
    with torch.autocast(device_type=device_type, enabled=False):
        images = [rasterize(gaussians[b].to(dtype=torch.float32), cams, background=None, backend=backend)[0]
                  for b, cams in enumerate(target_cameras)]
    return torch.stack(images)
