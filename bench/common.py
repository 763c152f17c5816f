"""Shared benchmark helpers: timing and a scene with exactly known geometry."""

from __future__ import annotations

import math
import statistics
import time

import torch

from avat3r.cameras import Cameras, intrinsics_from_fov, look_at, rays


def timed(fn, min_time: float = 2.0, min_reps: int = 3) -> float:
    """Median seconds per call after one warm-up."""
    fn()
    times, start = [], time.perf_counter()
    while len(times) < min_reps or time.perf_counter() - start < min_time:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def sphere_views(angles: list[float], res: int, wobble: float = 0.1):
    """Views of a textured 0.12 m sphere from 0.7 m at the given azimuths: images (V,R,R,3), cameras,
    exact positions (V,R,R,3, zero off the sphere) and the coverage mask (V,R,R)."""
    eyes = torch.stack([torch.tensor([0.7 * math.sin(a), wobble * math.cos(3 * a), 0.7 * math.cos(a)])
                        for a in angles])
    cams = Cameras(intrinsics_from_fov(30.0, res, res).expand(len(angles), 3, 3).clone(), look_at(eyes), res, res)
    o, d = rays(cams)
    b = (o * d).sum(-1)
    disc = b ** 2 - ((o * o).sum(-1) - 0.12 ** 2)
    hit = disc > 0
    t = torch.where(hit, -b - disc.clamp_min(0).sqrt(), -b)
    pos = o + t[..., None] * d
    rgb = torch.where(hit[..., None], 0.5 + 0.4 * torch.sin(20 * pos), torch.zeros_like(pos))
    return rgb, cams, torch.where(hit[..., None], pos, torch.zeros_like(pos)), hit.float()
