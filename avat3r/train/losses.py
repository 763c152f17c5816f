"""Photometric losses of paper §3.3: L1 (Eq. 15), D-SSIM (Eq. 16), LPIPS (Eq. 17) and their sum (Eq. 18).

SSIM, LPIPS and the changing region of an expression come from ``avat3r.photometric``, which evaluation uses
too, so training and evaluation measure the same thing.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..photometric import build_lpips, lpips_distance, ssim, ssim_map


def l1_loss(pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """Eq. (15): mean absolute error over all pixels and channels; with a per-pixel ``weight`` (…,H,W) the
    weighted mean (normalised by the mean weight, so the loss keeps its scale)."""
    err = (pred - target).abs()
    if weight is None:
        return err.mean()
    w = weight[..., None].expand_as(err)
    return (err * w).sum() / w.sum().clamp_min(1e-12)


def dssim_loss(pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """Eq. (16): 1 − SSIM; with a per-pixel ``weight`` (…,H,W) the weighted mean of the SSIM map."""
    if weight is None:
        return 1.0 - ssim(pred, target)
    m = ssim_map(pred, target)  # (N,3,H,W)
    w = weight.reshape(-1, 1, *weight.shape[-2:]).expand_as(m)
    return 1.0 - (m * w).sum() / w.sum().clamp_min(1e-12)


# -- Eq. (18) ---------------------------------------------------------------------------------------
@dataclass
class LossWeights:
    l1: float = 0.8
    ssim: float = 0.2
    lpips: float = 0.1
    lpips_start_step: int = 0


class PhotometricLoss(torch.nn.Module):
    """L = λ_l1·L1 + λ_ssim·D-SSIM + λ_lpips·LPIPS (Eq. 18), LPIPS only from ``lpips_start_step`` on.

    The LPIPS network is built at construction when its weight is positive, so missing backbone weights stop a
    run before its first step rather than at step 3M.
    """

    def __init__(self, weights: LossWeights, lpips_net: str = "alex", lpips_weights: str | None = None,
                 allow_random_backbone: bool = False):
        super().__init__()
        self.weights = weights
        self.lpips = (build_lpips(lpips_net, lpips_weights or None, allow_random_backbone)
                      if weights.lpips > 0 else None)

    def lpips_active(self, step: int) -> bool:
        return self.lpips is not None and step >= self.weights.lpips_start_step

    def forward(self, pred: torch.Tensor, target: torch.Tensor, step: int,
                pixel_weight: torch.Tensor | None = None) -> tuple[torch.Tensor, dict]:
        """``pixel_weight`` (…,H,W) re-weights L1 and D-SSIM (e.g. 1 + λ·changing region); LPIPS stays global."""
        w = self.weights
        parts = {"l1": l1_loss(pred, target, pixel_weight), "dssim": dssim_loss(pred, target, pixel_weight)}
        total = w.l1 * parts["l1"] + w.ssim * parts["dssim"]
        if self.lpips_active(step):
            parts["lpips"] = lpips_distance(self.lpips, pred, target).mean()
            total = total + w.lpips * parts["lpips"]
        return total, {k: v.detach() for k, v in parts.items()}
