"""EWA projection of 3D Gaussians to screen space, with gsplat's semantics (DESIGN §2).

Shared by every torch rasterizer: mean, conic, depth and opacity-aware radius per (camera, Gaussian).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

ALPHA_MIN = 1.0 / 255.0  # gsplat skips a Gaussian in a pixel below this alpha
ALPHA_MAX = 0.999  # gsplat's clamp (INRIA uses 0.99)
T_MIN = 1e-4  # a pixel stops once its transmittance would fall to this
EXTEND_SIGMAS = 3.33


@dataclass
class Projected:
    means2d: torch.Tensor  # (C, N, 2) pixel coordinates, centres at +0.5
    conics: torch.Tensor  # (C, N, 3) inverse 2D covariance (a, b, c)
    depths: torch.Tensor  # (C, N) camera z
    radii: torch.Tensor  # (C, N, 2) int, 0 where culled
    opacities: torch.Tensor  # (C, N)


def quat_to_rotmat(quats: torch.Tensor) -> torch.Tensor:
    """(…,4) wxyz quaternions (normalised here, as gsplat does) → (…,3,3) rotation matrices."""
    w, x, y, z = torch.nn.functional.normalize(quats, dim=-1).unbind(-1)
    return torch.stack([
        1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
    ], dim=-1).reshape(quats.shape[:-1] + (3, 3))


def covariances(quats: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """Σ = R S Sᵀ Rᵀ, (…,3,3)."""
    M = quat_to_rotmat(quats) * scales[..., None, :]
    return M @ M.transpose(-1, -2)


def _screen_covariance(quats, scales, R, j00, j02, j11, j12):
    """Entries a, b, c of the 2D covariance J·Rc·Σ·Rcᵀ·Jᵀ, (C, N) each.

    Written out per entry rather than as (C, N, 3, 3) matrix products: with Σ = M·Mᵀ (M = R(q)·diag(s)) it is
    (T·M)(T·M)ᵀ with the 2×3 matrix T = J·Rc, about 60 elementwise ops on (C, N) tensors, which is an order of
    magnitude faster on CPU than batched 3×3 products and differentiates through autograd just as well."""
    w, x, y, z = torch.nn.functional.normalize(quats, dim=-1).unbind(-1)
    sx, sy, sz = scales.unbind(-1)
    M = [[(1 - 2 * (y * y + z * z)) * sx, 2 * (x * y - w * z) * sy, 2 * (x * z + w * y) * sz],
         [2 * (x * y + w * z) * sx, (1 - 2 * (x * x + z * z)) * sy, 2 * (y * z - w * x) * sz],
         [2 * (x * z - w * y) * sx, 2 * (y * z + w * x) * sy, (1 - 2 * (x * x + y * y)) * sz]]
    Rc = [[R[:, i, j, None] for j in range(3)] for i in range(3)]  # (C, 1) each
    # J = [[j00, 0, j02], [0, j11, j12]]
    T0 = [j00 * Rc[0][j] + j02 * Rc[2][j] for j in range(3)]
    T1 = [j11 * Rc[1][j] + j12 * Rc[2][j] for j in range(3)]
    U0 = [T0[0] * M[0][k] + T0[1] * M[1][k] + T0[2] * M[2][k] for k in range(3)]
    U1 = [T1[0] * M[0][k] + T1[1] * M[1][k] + T1[2] * M[2][k] for k in range(3)]
    a = U0[0] * U0[0] + U0[1] * U0[1] + U0[2] * U0[2]
    b = U0[0] * U1[0] + U0[1] * U1[1] + U0[2] * U1[2]
    c = U1[0] * U1[0] + U1[1] * U1[1] + U1[2] * U1[2]
    return a, b, c


def project(means: torch.Tensor, quats: torch.Tensor, scales: torch.Tensor, opacities: torch.Tensor,
            K: torch.Tensor, w2c: torch.Tensor, width: int, height: int, eps2d: float = 0.3,
            near: float = 0.01, far: float = 1e10) -> Projected:
    """Project N Gaussians into C cameras (K (C,3,3), w2c (C,4,4))."""
    R, t = w2c[:, :3, :3], w2c[:, :3, 3]
    p = torch.matmul(means, R.transpose(1, 2)) + t[:, None, :]  # (C, N, 3)
    x, y, z = p.unbind(-1)

    fx, fy = K[:, 0, 0, None], K[:, 1, 1, None]
    cx, cy = K[:, 0, 2, None], K[:, 1, 2, None]
    # the Jacobian is evaluated with x/z, y/z clamped to 1.3× the field of view (as gsplat and INRIA do)
    z_safe = torch.where(z.abs() > 1e-12, z, torch.full_like(z, 1e-12))
    tan_x, tan_y = 0.5 * width / fx, 0.5 * height / fy
    tx = z_safe * torch.minimum((width - cx) / fx + 0.3 * tan_x,
                                torch.maximum(-(cx / fx + 0.3 * tan_x), x / z_safe))
    ty = z_safe * torch.minimum((height - cy) / fy + 0.3 * tan_y,
                                torch.maximum(-(cy / fy + 0.3 * tan_y), y / z_safe))
    a, b, c = _screen_covariance(quats, scales, R, fx / z_safe, -fx * tx / z_safe**2, fy / z_safe,
                                 -fy * ty / z_safe**2)
    a = a + eps2d
    c = c + eps2d
    det = a * c - b * b
    det_ok = det > 0
    det_safe = torch.where(det_ok, det, torch.ones_like(det))
    conics = torch.stack([c / det_safe, -b / det_safe, a / det_safe], dim=-1)
    means2d = torch.stack([fx * x / z_safe + cx, fy * y / z_safe + cy], dim=-1)

    opac = opacities[None].expand_as(z)
    with torch.no_grad():
        # opacity-aware extent: beyond it alpha < 1/255 along the axes
        extend = torch.sqrt(2 * torch.log(opac.clamp_min(1e-30) / ALPHA_MIN).clamp_min(0)).clamp_max(EXTEND_SIGMAS)
        rx = torch.ceil(extend * torch.sqrt(a.clamp_min(0)))
        ry = torch.ceil(extend * torch.sqrt(c.clamp_min(0)))
        visible = det_ok & (z > near) & (z < far) & (opac >= ALPHA_MIN) & ((rx > 0) | (ry > 0))
        visible &= (means2d[..., 0] + rx > 0) & (means2d[..., 0] - rx < width)
        visible &= (means2d[..., 1] + ry > 0) & (means2d[..., 1] - ry < height)
        radii = torch.stack([rx, ry], dim=-1).to(torch.int32) * visible[..., None]
    return Projected(means2d, conics, z, radii, opac)
