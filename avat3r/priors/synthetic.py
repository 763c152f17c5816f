"""A small textured head-like scene with known geometry, for checking position priors without a dataset.

Flat Gaussians tile an ellipsoid (head-sized, with a nose bump) and carry a procedural texture, so
photo-consistency has something to match. ``scene_views`` renders a frontal-hemisphere rig and picks the
input views like training does (k-farthest viewpoints, no back-only cameras).
"""

from __future__ import annotations

import math

import torch

from ..cameras import Cameras, intrinsics_from_fov, k_farthest_viewpoints, look_at
from ..gaussians import Gaussians


def _quat_from_z(n: torch.Tensor) -> torch.Tensor:
    """wxyz quaternions rotating +z onto the unit normals ``n`` (N,3)."""
    z = torch.tensor([0.0, 0.0, 1.0]).expand_as(n)
    axis = torch.cross(z, n, dim=-1)
    w = 1.0 + (z * n).sum(-1)
    q = torch.cat([w[:, None], axis], dim=-1)
    flipped = w < 1e-6  # n = −z: rotate half a turn about x
    q[flipped] = torch.tensor([0.0, 1.0, 0.0, 0.0])
    return torch.nn.functional.normalize(q, dim=-1)


def textured_head(n: int = 12000, seed: int = 0, radii=(0.075, 0.1, 0.09)) -> Gaussians:
    """~``n`` flat, opaque Gaussians on a bumpy ellipsoid with a procedural colour texture."""
    g = torch.Generator().manual_seed(seed)
    i = torch.arange(n, dtype=torch.float64) + 0.5
    phi = torch.acos(1 - 2 * i / n)
    theta = math.pi * (1 + 5 ** 0.5) * i
    u = torch.stack([torch.sin(phi) * torch.cos(theta), torch.cos(phi), torch.sin(phi) * torch.sin(theta)], -1)
    u = u.float()  # unit directions, y up
    r = torch.tensor(radii)
    # a nose: a bump on the +z side; ears/cheeks: gentle low-frequency shape noise
    nose = 0.25 * torch.exp(-((u[:, 0] / 0.18) ** 2 + ((u[:, 1] + 0.05) / 0.28) ** 2)) * (u[:, 2] > 0)
    wobble = 0.04 * torch.sin(3 * u[:, 0] + 1) * torch.cos(2 * u[:, 1])
    pts = u * r * (1 + nose + wobble)[:, None]
    normals = torch.nn.functional.normalize(u / r, dim=-1)
    spacing = math.sqrt(4 * math.pi * float(r.mean()) ** 2 / n)
    scales = torch.stack([torch.full((n,), 0.9 * spacing), torch.full((n,), 0.9 * spacing),
                          torch.full((n,), 0.08 * spacing)], -1)
    # texture: skin base with stripes, blotches and per-Gaussian noise
    base = torch.tensor([0.75, 0.55, 0.45])
    stripes = 0.5 + 0.5 * torch.sin(40 * pts[:, 0] / 0.1) * torch.sin(30 * pts[:, 1] / 0.1 + 2 * pts[:, 2] / 0.1)
    blot_c = torch.nn.functional.normalize(torch.randn(60, 3, generator=g), dim=-1)
    blot = torch.exp(-((u[:, None, :] - blot_c[None]) ** 2).sum(-1) / 0.01).amax(-1)
    noise = torch.rand(n, 3, generator=g)
    colors = (base * (0.55 + 0.35 * stripes[:, None]) + 0.25 * blot[:, None] * torch.tensor([-0.4, 0.1, 0.3])
              + 0.15 * (noise - 0.5)).clamp(0.05, 1)
    return Gaussians(means=pts, quats=_quat_from_z(normals), scales=scales,
                     opacities=torch.full((n,), 0.98), colors=colors)


def hemisphere_rig(n_cameras: int = 16, res: int = 96, radius: float = 1.0, fov_deg: float = 16.0,
                   seed: int = 0) -> Cameras:
    """Cameras spread over the frontal hemisphere-plus (azimuth ±120°, elevation −20°…40°), aimed at the origin."""
    g = torch.Generator().manual_seed(seed)
    az = (torch.rand(n_cameras, generator=g) * 2 - 1) * math.radians(120)
    el = math.radians(-20) + torch.rand(n_cameras, generator=g) * math.radians(60)
    eye = radius * torch.stack([torch.cos(el) * torch.sin(az), torch.sin(el), torch.cos(el) * torch.cos(az)], -1)
    K = intrinsics_from_fov(fov_deg, res, res).expand(n_cameras, 3, 3).clone()
    return Cameras(K, look_at(eye), res, res)


_BLOBS = torch.Generator().manual_seed(1234)
_BLOB_CENTRES = (torch.rand(400, 3, generator=_BLOBS) * 2 - 1) * torch.tensor([0.1, 0.12, 0.12])
_BLOB_SIGMAS = 0.004 + 0.012 * torch.rand(400, generator=_BLOBS)
_BLOB_COLOURS = (torch.rand(400, 3, generator=_BLOBS) - 0.5) * 0.5


def _texture(p: torch.Tensor) -> torch.Tensor:
    """An aperiodic 3D colour field (…,3): skin tone plus hundreds of random soft blobs of 4–16 mm
    (a periodic pattern would let a depth search match the wrong stripe)."""
    flat = p.reshape(-1, 3)
    out = torch.tensor([0.62, 0.45, 0.36]).expand(flat.shape[0], 3).clone()
    for chunk in range(0, flat.shape[0], 16384):
        q = flat[chunk:chunk + 16384]
        w = torch.exp(-((q[:, None, :] - _BLOB_CENTRES) ** 2).sum(-1) / (2 * _BLOB_SIGMAS ** 2))
        out[chunk:chunk + 16384] += w @ _BLOB_COLOURS
    return out.reshape(p.shape).clamp(0.03, 1)


HEAD_PARTS = (  # (centre, radii) of the ellipsoids whose union is the scene's head: skull/face, nose, ears
    ((0.0, 0.0, 0.0), (0.075, 0.1, 0.088)),
    ((0.0, -0.012, 0.083), (0.014, 0.03, 0.024)),
    ((0.074, -0.005, -0.005), (0.012, 0.028, 0.016)),
    ((-0.074, -0.005, -0.005), (0.012, 0.028, 0.016)),
)


def raycast_head(cameras: Cameras, supersample: int = 3):
    """Exact renders of the union of ``HEAD_PARTS``: rgb (V,H,W,3) on black, coverage alpha (V,H,W) and
    camera depth (V,H,W) at pixel centres (0 where the centre ray misses)."""
    from ..cameras import camera_directions
    from .base import ray_ellipsoid

    W, H = cameras.image_size
    s = supersample
    fine = cameras.resized(W * s, H * s)
    out = []
    for cams in (fine, cameras):
        dc = camera_directions(cams)
        R_c2w = cams.w2c[:, :3, :3].transpose(1, 2)
        d = torch.nn.functional.normalize(torch.einsum("nij,nhwj->nhwi", R_c2w, dc), dim=-1)
        o = cams.centers[:, None, None, :].expand_as(d)
        t_best = torch.full(d.shape[:-1], float("inf"))
        for c, r in HEAD_PARTS:
            t0, _, hit = ray_ellipsoid(o, d, r, c)
            t_best = torch.where(hit & (t0 > 0) & (t0 < t_best), t0, t_best)
        hit = torch.isfinite(t_best)
        p = o + torch.where(hit, t_best, torch.zeros_like(t_best))[..., None] * d
        z = ((p - o) * cams.forward[:, None, None, :]).sum(-1)
        out.append((torch.where(hit[..., None], _texture(p), torch.zeros_like(p)), hit.float(), z * hit))
    (rgb_f, a_f, _), (_, _, depth) = out
    pool = torch.nn.functional.avg_pool2d
    rgb = pool(rgb_f.permute(0, 3, 1, 2), s).permute(0, 2, 3, 1)
    alpha = pool(a_f[:, None], s)[:, 0]
    return rgb.contiguous(), alpha.contiguous(), depth.contiguous()


def scene_views(n_views: int = 4, res: int = 96, seed: int = 0):
    """Input views of the ray-cast head chosen like training (k-farthest, no back-only cameras) from a
    16-camera frontal rig; returns rgb (V,H,W,3), alpha (V,H,W), depth (V,H,W) and the Cameras."""
    rig = hemisphere_rig(16, res, seed=seed)
    pick = k_farthest_viewpoints(rig, k=n_views, generator=torch.Generator().manual_seed(seed))
    cams = rig[pick]
    rgb, alpha, depth = raycast_head(cams)
    return rgb, alpha, depth, cams
