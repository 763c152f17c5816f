"""The `ground-truth` position prior: positions unprojected from a known depth map (synthetic data, ablations)."""

from __future__ import annotations

import torch

from ..cameras import Cameras, unproject
from .base import PriorError, check_inputs, ellipsoid_positions, foreground_masks


class GroundTruthPrior:
    """``pos`` = unproject(cameras, depth); ``conf`` = the mask (or depth > 0 without one).

    The depth (V,H,W) camera z comes from ``depth=`` at construction or per call; pixels without depth
    (0 or non-finite) take the head-ellipsoid point so positions stay finite.
    """

    name = "ground-truth"

    def __init__(self, depth: torch.Tensor | None = None, **_unused):
        self.depth = depth

    def __call__(self, images: torch.Tensor, cameras: Cameras, masks: torch.Tensor | None = None,
                 depth: torch.Tensor | None = None):
        V, H, W = check_inputs(images, cameras, masks)
        depth = self.depth if depth is None else depth
        if depth is None:
            raise PriorError("the ground-truth prior needs depth maps (samples with depth.npy, or depth=...)")
        depth = torch.as_tensor(depth, dtype=torch.float32)
        if tuple(depth.shape) != (V, H, W):
            raise PriorError(f"depth must be (V,H,W) = {(V, H, W)}, got {tuple(depth.shape)}")
        cams = cameras.to("cpu", torch.float32)
        valid = torch.isfinite(depth) & (depth > 0)
        pos = unproject(cams, torch.where(valid, depth, torch.ones_like(depth)))
        fallback, _ = ellipsoid_positions(cams)
        pos = torch.where(valid[..., None], pos, fallback)
        conf = foreground_masks(images, masks) if masks is not None else valid.to(torch.float32)
        return pos.to(torch.float32).contiguous(), (conf * valid).to(torch.float32).contiguous()
