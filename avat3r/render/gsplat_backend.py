"""gsplat CUDA backend: ``gsplat.rasterization`` (classic 3DGS, packed) returning our backend tuple."""

from __future__ import annotations


def rasterize_gsplat(means, quats, scales, opacities, colors, K, w2c, width, height, eps2d=0.3, near=0.01,
                     far=1e10):
    """C cameras → rgb (C,H,W,3) (no background), alpha (C,H,W), accumulated depth Σwᵢzᵢ (C,H,W).

    gsplat's "RGB+D" mode accumulates camera z with the same weights as the colours, in its last channel.
    """
    if means.device.type != "cuda":
        raise RuntimeError("the gsplat backend needs CUDA tensors; use the torch backend on CPU")
    from gsplat import rasterization

    renders, alphas, _ = rasterization(
        means, quats, scales, opacities, colors, w2c, K, int(width), int(height),
        near_plane=near, far_plane=far, eps2d=eps2d, packed=True, backgrounds=None,
        render_mode="RGB+D", rasterize_mode="classic")
    return renders[..., :3], alphas[..., 0], renders[..., 3]


