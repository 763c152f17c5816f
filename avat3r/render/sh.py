"""View-dependent colour from real spherical harmonics up to degree 3 (the 3DGS / gsplat convention).

gsplat evaluates SH only in its CUDA kernels (its public ``spherical_harmonics``); the CPU path of our renderer
needs the same function in torch, differentiable, so it lives here. Basis order and constants follow the 3DGS
PLY layout: for each degree l the coefficients m = -l..l, with the signs of the 3DGS reference code.
"""

from __future__ import annotations

import torch

C0 = 0.28209479177387814
C1 = 0.4886025119029199
C2 = (1.0925484305920792, -1.0925484305920792, 0.31539156525252005, -1.0925484305920792, 0.5462742152960396)
C3 = (-0.5900435899266435, 2.890611442640554, -0.4570457994644658, 0.3731763325901154, -0.4570457994644658,
      1.445305721320277, -0.5900435899266435)


def sh_basis(degree: int, dirs: torch.Tensor) -> torch.Tensor:
    """(..., 3) directions (any length) → (..., (degree+1)²) basis values at the unit direction."""
    if not 0 <= degree <= 3:
        raise ValueError(f"SH degree must be 0-3, got {degree}")
    d = torch.nn.functional.normalize(dirs, dim=-1)
    x, y, z = d.unbind(-1)
    out = [torch.full_like(x, C0)]
    if degree >= 1:
        out += [-C1 * y, C1 * z, -C1 * x]
    if degree >= 2:
        xx, yy, zz = x * x, y * y, z * z
        out += [C2[0] * x * y, C2[1] * y * z, C2[2] * (2 * zz - xx - yy), C2[3] * x * z, C2[4] * (xx - yy)]
    if degree >= 3:
        out += [C3[0] * y * (3 * xx - yy), C3[1] * x * y * z, C3[2] * y * (4 * zz - xx - yy),
                C3[3] * z * (2 * zz - 3 * xx - 3 * yy), C3[4] * x * (4 * zz - xx - yy), C3[5] * z * (xx - yy),
                C3[6] * x * (xx - 3 * yy)]
    return torch.stack(out, dim=-1)


def sh_to_rgb(degree: int, dirs: torch.Tensor, coeffs: torch.Tensor) -> torch.Tensor:
    """Σ_k basis_k(dirs) · coeffs_k: dirs (..., 3), coeffs (..., K ≥ (degree+1)², 3) → (..., 3), without the
    +0.5 offset (the caller adds it, as 3DGS does)."""
    basis = sh_basis(degree, dirs)
    return (basis[..., None] * coeffs[..., : basis.shape[-1], :]).sum(-2)
