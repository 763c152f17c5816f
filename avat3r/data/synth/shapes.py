"""Geometric building blocks for SynthHeads: point sets, smooth weights and Gaussian orientations (numpy)."""

from __future__ import annotations

import numpy as np

GOLDEN_ANGLE = np.pi * (3.0 - np.sqrt(5.0))
LIGHT = np.array([0.35, 0.55, 0.75]) / np.linalg.norm([0.35, 0.55, 0.75])  # baked key light, front-top-left


def smoothstep(e0, e1, x):
    """Hermite step from 0 at ``e0`` to 1 at ``e1`` (either order)."""
    t = np.clip((np.asarray(x, dtype=np.float64) - e0) / (e1 - e0), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def gauss2(x, y, sx, sy):
    return np.exp(-0.5 * ((x / sx) ** 2 + (y / sy) ** 2))


def normalize(v):
    return v / np.maximum(np.linalg.norm(v, axis=-1, keepdims=True), 1e-12)


def fibonacci_cap(n: int, cos_min: float = -1.0, rng: np.random.Generator | None = None,
                  jitter: float = 0.3) -> np.ndarray:
    """``n`` near-uniform unit vectors around +z with z ≥ ``cos_min`` (a spherical cap; −1 = full sphere)."""
    i = np.arange(n) + 0.5
    z = 1.0 - (1.0 - cos_min) * i / n
    phi = i * GOLDEN_ANGLE
    r = np.sqrt(np.clip(1.0 - z * z, 0.0, 1.0))
    if rng is not None:  # break the lattice's visible spirals a little (a fraction of the local spacing)
        spacing = np.sqrt(2 * np.pi * (1.0 - cos_min) / n)
        z = np.clip(z + rng.uniform(-jitter, jitter, n) * (1.0 - cos_min) / n, cos_min, 1.0)
        phi = phi + rng.uniform(-jitter, jitter, n) * spacing / np.maximum(r, spacing)
        r = np.sqrt(np.clip(1.0 - z * z, 0.0, 1.0))
    return np.stack([r * np.cos(phi), r * np.sin(phi), z], axis=-1)


def tangent_basis(n: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Two unit tangents orthogonal to unit normals ``n`` (N,3)."""
    helper = np.where(np.abs(n[:, 1:2]) < 0.9, np.array([[0.0, 1.0, 0.0]]), np.array([[1.0, 0.0, 0.0]]))
    t1 = normalize(np.cross(helper, n))
    return t1, np.cross(n, t1)


def matrix_to_quat(R: np.ndarray) -> np.ndarray:
    """Rotation matrices (N,3,3) → unit quaternions (N,4) wxyz (Shepperd's method, branch per row)."""
    R = np.asarray(R, dtype=np.float64)
    m00, m11, m22 = R[:, 0, 0], R[:, 1, 1], R[:, 2, 2]
    tr = m00 + m11 + m22
    q = np.empty((R.shape[0], 4))
    cands = np.stack([tr, m00, m11, m22], axis=-1)
    k = np.argmax(cands, axis=-1)
    for case in range(4):
        s = k == case
        if not s.any():
            continue
        r = R[s]
        if case == 0:
            t = np.sqrt(1.0 + tr[s]) * 2
            q[s] = np.stack([0.25 * t, (r[:, 2, 1] - r[:, 1, 2]) / t, (r[:, 0, 2] - r[:, 2, 0]) / t,
                             (r[:, 1, 0] - r[:, 0, 1]) / t], -1)
        elif case == 1:
            t = np.sqrt(1.0 + r[:, 0, 0] - r[:, 1, 1] - r[:, 2, 2]) * 2
            q[s] = np.stack([(r[:, 2, 1] - r[:, 1, 2]) / t, 0.25 * t, (r[:, 0, 1] + r[:, 1, 0]) / t,
                             (r[:, 0, 2] + r[:, 2, 0]) / t], -1)
        elif case == 2:
            t = np.sqrt(1.0 + r[:, 1, 1] - r[:, 0, 0] - r[:, 2, 2]) * 2
            q[s] = np.stack([(r[:, 0, 2] - r[:, 2, 0]) / t, (r[:, 0, 1] + r[:, 1, 0]) / t, 0.25 * t,
                             (r[:, 1, 2] + r[:, 2, 1]) / t], -1)
        else:
            t = np.sqrt(1.0 + r[:, 2, 2] - r[:, 0, 0] - r[:, 1, 1]) * 2
            q[s] = np.stack([(r[:, 1, 0] - r[:, 0, 1]) / t, (r[:, 0, 2] + r[:, 2, 0]) / t,
                             (r[:, 1, 2] + r[:, 2, 1]) / t, 0.25 * t], -1)
    q = normalize(q)
    return q * np.where(q[:, :1] < 0, -1.0, 1.0)


def axes_to_quat(a1: np.ndarray, a2: np.ndarray) -> np.ndarray:
    """Quaternions whose rotation maps local x, y to the (orthonormalised) axes ``a1``, ``a2`` (N,3)."""
    x = normalize(a1)
    y = normalize(a2 - np.sum(a2 * x, -1, keepdims=True) * x)
    z = np.cross(x, y)
    return matrix_to_quat(np.stack([x, y, z], axis=-1))


def covariance_to_gaussian(cov: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric PSD covariances (N,3,3) → (quats wxyz (N,4), scales (N,3)) with Σ = R S² Rᵀ."""
    w, V = np.linalg.eigh(cov)
    det = np.linalg.det(V)
    V[:, :, 2] *= np.sign(det)[:, None]  # proper rotations only
    return matrix_to_quat(V), np.sqrt(np.clip(w, 1e-12, None))


def quat_mul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Hamilton product of wxyz quaternions (broadcasting)."""
    aw, ax, ay, az = np.moveaxis(a, -1, 0)
    bw, bx, by, bz = np.moveaxis(b, -1, 0)
    return np.stack([aw * bw - ax * bx - ay * by - az * bz, aw * bx + ax * bw + ay * bz - az * by,
                     aw * by - ax * bz + ay * bw + az * bx, aw * bz + ax * by - ay * bx + az * bw], axis=-1)


def shade(normals: np.ndarray, ambient: float = 0.5, diffuse: float = 0.55, sky: float = 0.1) -> np.ndarray:
    """Baked Lambert shading factor (N,) so shapes read in flat-coloured Gaussians."""
    n = normalize(normals)
    return ambient + diffuse * np.clip(n @ LIGHT, 0.0, None) + sky * n[:, 1]


def value_noise(points: np.ndarray, rng: np.random.Generator, n_waves: int = 8, k_min: float = 80.0,
                k_max: float = 400.0) -> np.ndarray:
    """Smooth pseudo-random field in [-1, 1] over 3D points: a sum of random plane waves (wavenumbers rad/m)."""
    dirs = normalize(rng.normal(size=(n_waves, 3)))
    k = np.exp(rng.uniform(np.log(k_min), np.log(k_max), n_waves))
    phase = rng.uniform(0, 2 * np.pi, n_waves)
    return np.sin(points @ (dirs * k[:, None]).T + phase).sum(-1) / np.sqrt(n_waves / 2) / 1.5
