"""Dense reference compositor: every pixel against every visible Gaussian, front to back by depth.

O(pixels × Gaussians) memory and time, so only for small scenes; it is the readable statement of the
semantics that the tiled torch backend and gsplat must match (DESIGN §2), and the test oracle.
"""

from __future__ import annotations

import torch

from ..cameras import pixel_centers
from .projection import ALPHA_MAX, ALPHA_MIN, T_MIN, project


def composite_dense(means2d, conics, depths, opacities, colors, width: int, height: int,
                    alpha_min: float = ALPHA_MIN, t_min: float = T_MIN):
    """One camera: (N,2) means, (N,3) conics, (N,) depth/opacity, (N,3) colours of *visible* Gaussians
    → rgb (H,W,3) without background, alpha (H,W), accumulated depth Σ wᵢzᵢ (H,W)."""
    order = torch.argsort(depths)
    means2d, conics, depths, opacities, colors = (t[order] for t in (means2d, conics, depths, opacities, colors))
    uv = pixel_centers(width, height, means2d.device, means2d.dtype).reshape(-1, 1, 2)
    d = uv - means2d[None]  # (P, N, 2)
    sigma = 0.5 * (conics[:, 0] * d[..., 0] ** 2 + conics[:, 2] * d[..., 1] ** 2) + conics[:, 1] * d[..., 0] * d[..., 1]
    alpha = torch.clamp_max(opacities * torch.exp(-sigma), ALPHA_MAX)
    alpha = torch.where((alpha >= alpha_min) & (sigma >= 0), alpha, torch.zeros_like(alpha))
    # transmittance after each Gaussian; a Gaussian counts only while it keeps T above t_min
    T_after = torch.cumprod(1 - alpha, dim=-1)
    keep = T_after > t_min
    alpha = alpha * keep
    T_before = torch.cumprod(torch.cat([torch.ones_like(alpha[:, :1]), 1 - alpha[:, :-1]], dim=-1), dim=-1)
    w = alpha * T_before
    rgb = (w @ colors).reshape(height, width, -1)
    acc = w.sum(-1).reshape(height, width)
    depth = (w @ depths).reshape(height, width)
    return rgb, acc, depth


def rasterize_dense(means, quats, scales, opacities, colors, K, w2c, width, height, eps2d=0.3,
                    near=0.01, far=1e10, alpha_min: float = ALPHA_MIN, t_min: float = T_MIN, cull: bool = True):
    """C cameras → rgb (C,H,W,3) (no background), alpha (C,H,W), accumulated depth (C,H,W)."""
    proj = project(means, quats, scales, opacities, K, w2c, width, height, eps2d, near, far)
    outs = []
    for c in range(K.shape[0]):
        vis = (proj.radii[c] > 0).any(-1) if cull else (proj.depths[c] > near)
        outs.append(composite_dense(proj.means2d[c][vis], proj.conics[c][vis], proj.depths[c][vis],
                                    proj.opacities[c][vis], colors[vis], width, height, alpha_min, t_min))
    return tuple(torch.stack(x) for x in zip(*outs))
