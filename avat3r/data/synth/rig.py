"""An Ava-256-like capture rig: cameras about a metre from the head, mostly frontal, some sides and backs."""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch

from ...cameras import Cameras, intrinsics, look_at

HEAD_EXTENT = 0.27  # metres of head (hair to chin) the field of view is sized for


def _yaw_pitch_lattice(n: int, yaw: tuple[float, float], pitch: tuple[float, float], rng) -> np.ndarray:
    """``n`` (yaw, pitch) pairs in degrees spread over a rectangle (Fibonacci lattice with jitter)."""
    i = np.arange(n)
    a = (i + rng.uniform(0.2, 0.8, n)) / max(n, 1)
    b = (i * 0.6180339887 + rng.uniform(0, 1)) % 1.0
    return np.stack([yaw[0] + (yaw[1] - yaw[0]) * a, pitch[0] + (pitch[1] - pitch[0]) * b], -1)


@lru_cache(maxsize=32)
def _rig(seed: int, n_cameras: int, res: int, person: int | None = None):
    """The shared rig of a dataset (``person=None``) or the rig one person was filmed with: its own camera
    layout, a head pose offset of up to ±15° yaw and ±8° pitch, its own distance (0.8–1.25 m), focal lengths
    and aim — the spread of real captures, so that no model learns one rig."""
    per_person = person is not None
    entropy = [int(seed), 0x716] + ([int(person) + 1] if per_person else [])
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence(entropy)))
    n_back = 0 if n_cameras < 4 else max(1, round(0.12 * n_cameras))
    n_side = 0 if n_cameras < 3 else max(1, round(0.18 * n_cameras))
    n_front = n_cameras - n_back - n_side
    front = _yaw_pitch_lattice(n_front, (-72, 72), (-25, 38), rng)
    if n_front:
        front[0] = rng.uniform(-3, 3, 2) + np.array([0.0, 4.0])  # one near-frontal reference camera
    side = _yaw_pitch_lattice(n_side, (80, 104), (-20, 30), rng)
    side[:, 0] *= np.where(np.arange(n_side) % 2 == 0, 1, -1)
    back = _yaw_pitch_lattice(n_back, (128, 232), (-10, 35), rng)
    yp = np.concatenate([front, side, back])
    if per_person:
        yp = yp + np.array([rng.uniform(-15, 15), rng.uniform(-8, 8)])
    yp = np.deg2rad(yp)
    yaw, pitch = yp[:, 0], yp[:, 1]
    direction = np.stack([np.cos(pitch) * np.sin(yaw), np.sin(pitch), np.cos(pitch) * np.cos(yaw)], -1)
    order = np.argsort(-direction[:, 2], kind="stable")  # cam00 is the most frontal
    direction = direction[order]
    if per_person:
        dist = rng.uniform(0.8, 1.25) * rng.uniform(0.95, 1.05, n_cameras)
        aim = rng.normal(0, 0.01, 3) + np.array([0.0, -0.01, 0.0])
        target = rng.normal(0, 0.008, (n_cameras, 3)) + aim
        fill = rng.uniform(0.55, 0.9, n_cameras)
    else:
        dist = rng.uniform(0.9, 1.1, n_cameras)
        target = rng.normal(0, 0.006, (n_cameras, 3)) + np.array([0.0, -0.01, 0.0])
        fill = rng.uniform(0.6, 0.85, n_cameras)
    eye = direction * dist[:, None]
    f = fill * res * dist / HEAD_EXTENT
    pp = res / 2 + rng.uniform(-0.01, 0.01, (n_cameras, 2)) * res
    K = torch.stack([intrinsics(float(f[k]), float(f[k]), float(pp[k, 0]), float(pp[k, 1]))
                     for k in range(n_cameras)]).float()
    w2c = look_at(torch.from_numpy(eye).float(), torch.from_numpy(target).float())
    names = [f"cam{k:02d}" for k in range(n_cameras)]
    return names, K, w2c


def make_rig(seed: int, n_cameras: int = 64, res: int = 256, person: int | None = None) -> tuple[list[str], Cameras]:
    """Camera names and ``Cameras`` of the rig of dataset ``seed``: shared by every person (``person=None``)
    or the rig ``person`` was filmed with (per-person rigs)."""
    if n_cameras < 1 or n_cameras > 1000:
        raise ValueError(f"n_cameras must be in 1..1000, got {n_cameras}")
    if res < 8:
        raise ValueError(f"image resolution must be at least 8 pixels, got {res}")
    names, K, w2c = _rig(int(seed), int(n_cameras), int(res), None if person is None else int(person))
    return list(names), Cameras(K.clone(), w2c.clone(), res, res)
