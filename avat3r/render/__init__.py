"""rasterize(): render Gaussians into a batch of cameras with gsplat (CUDA) or pure PyTorch (any device)."""

from __future__ import annotations

import torch

from ..cameras import Cameras
from ..errors import Avat3rError
from ..gaussians import Gaussians

BACKENDS = ("auto", "torch", "gsplat", "dense")


class RenderError(Avat3rError, RuntimeError):
    pass


def _colors(g: Gaussians, cameras: Cameras) -> torch.Tensor:
    """(C, N, 3) colours; view-dependent when the Gaussians carry higher SH bands (gsplat semantics)."""
    if g.sh_rest is None:
        return g.colors[None].expand(len(cameras), -1, -1)
    from ..gaussians import SH_C0
    from .sh import sh_to_rgb

    coeffs = torch.cat([((g.colors - 0.5) / SH_C0)[:, None, :], g.sh_rest], dim=1)  # (N, K, 3)
    dirs = g.means[None] - cameras.centers[:, None, :]
    rgb = sh_to_rgb(g.sh_degree, dirs, coeffs[None].expand(len(cameras), -1, -1, -1))
    return torch.clamp_min(rgb + 0.5, 0.0)


def rasterize(gaussians: Gaussians, cameras: Cameras, background: torch.Tensor | float | None = None,
              backend: str = "auto", eps2d: float = 0.3, near: float = 0.01, far: float = 1e10):
    """Render an unbatched set of Gaussians into C cameras of one image size.

    Returns ``rgb`` (C,H,W,3) composited over ``background`` (default black), ``alpha`` (C,H,W) and
    ``depth`` (C,H,W): expected camera z of the visible Gaussians (Σwᵢzᵢ / α, 0 where α = 0).
    ``backend``: "auto" (gsplat on CUDA, torch otherwise), "torch", "gsplat", "dense" (reference).
    """
    if backend not in BACKENDS:
        raise RenderError(f"unknown render backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    g = gaussians.compact() if gaussians.valid is not None else gaussians
    if g.means.ndim != 2:
        raise RenderError("rasterize() takes an unbatched set of Gaussians (N, …); loop over the batch")
    cameras = cameras.to(g.device, g.means.dtype)
    W, H = cameras.image_size
    if backend == "auto":
        backend = "gsplat" if g.device.type == "cuda" else "torch"
    colors = _colors(g, cameras)
    if backend == "gsplat":
        if g.device.type != "cuda":
            raise RenderError("the gsplat backend needs CUDA tensors; use backend='torch' on CPU")
        from .gsplat_backend import rasterize_gsplat as fn
    elif backend == "torch":
        from .tiled import rasterize_tiled as fn
    else:
        from .dense import rasterize_dense as fn
    rgb, alpha, dsum = _per_camera_colors(fn, g, colors, cameras, W, H, eps2d, near, far)
    depth = torch.where(alpha > 0, dsum / alpha.clamp_min(1e-10), torch.zeros_like(dsum))
    if background is not None:
        bg = torch.as_tensor(background, dtype=rgb.dtype, device=rgb.device).reshape(-1, 3)
        rgb = rgb + (1 - alpha[..., None]) * bg[:, None, None, :]
    return rgb, alpha, depth


def _per_camera_colors(fn, g, colors, cameras, W, H, eps2d, near, far):
    """Backends take (N,3) colours; view-dependent colours differ per camera, so render camera by camera."""
    if g.sh_rest is None:
        return fn(g.means, g.quats, g.scales, g.opacities, g.colors, cameras.K, cameras.w2c, W, H,
                  eps2d=eps2d, near=near, far=far)
    outs = [fn(g.means, g.quats, g.scales, g.opacities, colors[c], cameras.K[c:c + 1], cameras.w2c[c:c + 1],
               W, H, eps2d=eps2d, near=near, far=far) for c in range(len(cameras))]
    return tuple(torch.cat(x) for x in zip(*outs))
