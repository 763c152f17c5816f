"""Shared pieces of the priors: input checks, foreground masks, the head-sized ellipsoid and the `none` prior.

Every position prior returns ``pos`` (V,H,W,3) world float32, always finite, and ``conf`` (V,H,W) float32 in
[0, 1] (DESIGN §4: one confidence threshold serves every backend).
"""

from __future__ import annotations

import torch

from ..cameras import Cameras, rays
from ..errors import Avat3rError

# A head-sized ellipsoid around the head-centric origin (metres; x = ear to ear, y = chin to crown, z = depth).
HEAD_RADII = (0.09, 0.12, 0.11)
# Background is black (DESIGN §2): a pixel brighter than this luminance is foreground when no mask is given.
DEFAULT_MASK_THRESHOLD = 0.02


class PriorError(Avat3rError, ValueError):
    """Bad input to a prior, or a prior whose package/weights are missing; the message is one line."""


def check_inputs(images: torch.Tensor, cameras: Cameras, masks: torch.Tensor | None) -> tuple[int, int, int]:
    """Validate shapes against each other; returns (V, H, W)."""
    if images.ndim != 4 or images.shape[-1] != 3:
        raise PriorError(f"images must be (V,H,W,3), got {tuple(images.shape)}")
    V, H, W, _ = images.shape
    if len(cameras) != V:
        raise PriorError(f"{V} images but {len(cameras)} cameras")
    if cameras.image_size != (W, H):
        raise PriorError(f"images are {W}x{H} but the cameras are {cameras.image_size[0]}x{cameras.image_size[1]}")
    if masks is not None and tuple(masks.shape) != (V, H, W):
        raise PriorError(f"masks must be (V,H,W) = {(V, H, W)}, got {tuple(masks.shape)}")
    return V, H, W


def luminance(images: torch.Tensor) -> torch.Tensor:
    return images[..., 0] * 0.299 + images[..., 1] * 0.587 + images[..., 2] * 0.114


def foreground_masks(images: torch.Tensor, masks: torch.Tensor | None,
                     threshold: float = DEFAULT_MASK_THRESHOLD) -> torch.Tensor:
    """(V,H,W) float masks in [0,1]: the given ones, else "brighter than the black background"."""
    if masks is not None:
        return masks.to(torch.float32).clamp(0, 1)
    return (luminance(images.to(torch.float32)) > threshold).to(torch.float32)


def ray_ellipsoid(origins: torch.Tensor, dirs: torch.Tensor, radii=HEAD_RADII,
                  center=(0.0, 0.0, 0.0)) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Entry/exit ray parameters of an axis-aligned ellipsoid for unit rays (…,3).

    Returns ``t_near``, ``t_far`` and ``hit`` (bool). Where a ray misses, both t's are the parameter of the
    ray's closest approach to the (scaled) centre, so points built from them stay finite.
    """
    r = torch.as_tensor(radii, dtype=origins.dtype, device=origins.device)
    c = torch.as_tensor(center, dtype=origins.dtype, device=origins.device)
    o, d = (origins - c) / r, dirs / r  # unit sphere in scaled space; t keeps its meaning
    a = (d * d).sum(-1)
    b = (o * d).sum(-1)
    cc = (o * o).sum(-1) - 1
    disc = b * b - a * cc
    hit = disc > 0
    sq = disc.clamp_min(0).sqrt()
    t_mid = -b / a
    return torch.where(hit, (-b - sq) / a, t_mid), torch.where(hit, (-b + sq) / a, t_mid), hit


def ellipsoid_positions(cameras: Cameras, radii=HEAD_RADII) -> tuple[torch.Tensor, torch.Tensor]:
    """(V,H,W,3) world points where each pixel ray enters the head ellipsoid (closest approach if it misses)
    and the (V,H,W) hit mask."""
    o, d = rays(cameras.to(dtype=torch.float32))
    t0, _, hit = ray_ellipsoid(o, d, radii)
    return o + t0[..., None].clamp_min(0) * d, hit


class NonePositionPrior:
    """No learned or geometric prior: every pixel's ray meets a head-sized ellipsoid (the model's Δp head
    learns the rest); confidence is the foreground mask, or 1 without one."""

    name = "none"

    def __init__(self, radii=HEAD_RADII, **_unused):
        self.radii = tuple(float(r) for r in radii)

    def __call__(self, images: torch.Tensor, cameras: Cameras, masks: torch.Tensor | None = None):
        V, H, W = check_inputs(images, cameras, masks)
        pos, _ = ellipsoid_positions(cameras, self.radii)
        conf = torch.ones(V, H, W) if masks is None else masks.to(torch.float32).clamp(0, 1)
        return pos.to(torch.float32).contiguous(), conf.contiguous()


def dust3r_confidence(c: torch.Tensor) -> torch.Tensor:
    """DUSt3R's unbounded confidence c ≥ 1 → [0, 1) by 1 − 1/c (DESIGN §4), so one τ serves every backend."""
    return (1.0 - 1.0 / c.to(torch.float32).clamp_min(1.0)).clamp(0.0, 1.0)
