"""Rendering SynthHeads: views of a head, the deterministic on-the-fly sample source and a contact sheet."""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import contextmanager
from functools import lru_cache

import numpy as np
import torch

from ...cameras import Cameras, camera_dict
from ...gaussians import Gaussians
from ...imageio import block_mean
from ...render import rasterize
from .expressions import ALL_SEGMENTS, EXPR_INDEX, RANDOM_SEGMENT, check_code, random_code, segment_codes
from .identity import make_identity
from .rig import make_rig
from .rigging import deform, neutral_head

PAIR_BUDGET = 6_000_000  # pixel × Gaussian pairs per render call while the torch backend is dense


def _torch_backend_is_dense() -> bool:
    from ...render import dense, tiled

    return tiled.rasterize_tiled is dense.rasterize_dense


def render_views(gaussians: Gaussians, cameras: Cameras, supersample: int = 1):
    """Render on black → rgb (V,H,W,3), alpha mask (V,H,W), depth (V,H,W), float32 on the CPU.

    ``supersample`` = s > 1 renders at s× the side and averages s×s blocks (depth weighted by alpha): an
    area-sampled image, like a camera's photo scaled down. At s = 1 each pixel samples the splats at its centre,
    and splats below a pixel are dilated to 0.3 px without losing opacity, so a low-resolution render is
    brighter and coarser than the average of a high-resolution one.

    While the torch backend is the dense reference (memory ∝ pixels × Gaussians), the image is rendered in
    square crops so a full head fits in memory; crops composite every pixel exactly as a whole image would.
    """
    W, H = cameras.image_size
    if supersample > 1:
        rgb, alpha, depth = render_views(gaussians, cameras.resized(W * supersample, H * supersample))
        a = block_mean(alpha, supersample)
        return (block_mean(rgb, supersample), a,
                torch.where(a > 0, block_mean(alpha * depth, supersample) / a.clamp_min(1e-12), torch.zeros_like(a)))
    with torch.no_grad():
        dense = gaussians.device.type != "cuda" and _torch_backend_is_dense()
        if not dense or W * H * len(gaussians) <= PAIR_BUDGET:
            rgb, alpha, depth = rasterize(gaussians, cameras, backend="auto")
            return rgb.float().cpu(), alpha.float().cpu(), depth.float().cpu()
        tile = max(8, int(np.sqrt(PAIR_BUDGET / max(len(gaussians), 1))) // 8 * 8)
        rgb = torch.zeros(len(cameras), H, W, 3)
        alpha = torch.zeros(len(cameras), H, W)
        depth = torch.zeros(len(cameras), H, W)
        for y0 in range(0, H, tile):
            for x0 in range(0, W, tile):
                w, h = min(tile, W - x0), min(tile, H - y0)
                r, a, d = rasterize(gaussians, cameras.cropped(x0, y0, w, h), backend="auto")
                rgb[:, y0:y0 + h, x0:x0 + w], alpha[:, y0:y0 + h, x0:x0 + w] = r, a
                depth[:, y0:y0 + h, x0:x0 + w] = d
        return rgb, alpha, depth


@contextmanager
def single_thread():
    """Run torch on one thread: results then do not depend on the machine's or the caller's thread count
    (reduction order), and data-loader workers are single-threaded anyway."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def head_gaussians(identity, expr) -> Gaussians:
    """Gaussians of ``identity`` making expression ``expr`` (E,) (neutral geometry cached per identity)."""
    return deform(neutral_head(identity), expr)


def _camera_index(camera, names: list[str]) -> int:
    if isinstance(camera, str):
        if camera not in names:
            raise ValueError(f"unknown camera {camera!r}; the rig has {names[0]}…{names[-1]}")
        return names.index(camera)
    k = int(camera)
    if not 0 <= k < len(names):
        raise ValueError(f"camera index {k} is outside the rig's {len(names)} cameras")
    return k


@lru_cache(maxsize=8)
def _codes(segment: str, n_frames: int) -> torch.Tensor:
    return segment_codes(segment, n_frames)


@lru_cache(maxsize=1)
def _render_frame(seed: int, person: int, segment: str, frame: int, n_frames: int, n_cameras: int, res: int,
                  person_rig: bool = False, supersample: int = 1):
    """All rig cameras of one frame in one batched render (about 2× faster than one camera at a time).
    Every sample comes from this full-rig render, so a sample's bytes never depend on which other cameras
    were asked for; the cache makes consecutive calls for the same frame cheap."""
    if segment not in ALL_SEGMENTS:
        raise ValueError(f"unknown SynthHeads segment {segment!r}; choose one of {', '.join(ALL_SEGMENTS)}")
    if not 0 <= int(frame) < int(n_frames):
        raise ValueError(f"frame {frame} is outside the segment's {n_frames} frames")
    names, cams = make_rig(seed, n_cameras, res, person if person_rig else None)
    if segment == RANDOM_SEGMENT:
        expr = random_code(seed, person, frame)
    else:
        expr = _codes(segment, int(n_frames))[int(frame)].clone()
    g = head_gaussians(make_identity(seed, person), expr)
    with single_thread():
        rgb, alpha, depth = render_views(g, cams, supersample)
    return names, cams, expr, rgb, alpha, depth


def render_frame_samples(seed: int, person: int, segment: str, frame: int, cameras=None, n_frames: int = 30,
                         n_cameras: int = 64, res: int = 256, person_rig: bool = False,
                         supersample: int = 1) -> list[dict]:
    """The samples of one frame seen by several rig cameras (names or indices; all by default), each
    byte-identical to :func:`render_sample`'s. ``person_rig``: the person's own rig, not the shared one;
    ``supersample``: see :func:`render_views`."""
    names, cams, expr, rgb, alpha, depth = _render_frame(int(seed), int(person), segment, int(frame),
                                                         int(n_frames), int(n_cameras), int(res), bool(person_rig),
                                                         int(supersample))
    indices = range(len(names)) if cameras is None else [_camera_index(c, names) for c in cameras]
    return [{
        "rgb": np.round(rgb[k].clamp(0, 1).numpy() * 255).astype(np.uint8),
        "mask": np.round(alpha[k].clamp(0, 1).numpy() * 255).astype(np.uint8),
        "depth": depth[k].numpy().astype(np.float32),
        "camera": camera_dict(cams.K[k], cams.w2c[k], cams.width[k], cams.height[k]),
        "expr": expr.numpy().astype(np.float32),
    } for k in indices]


def render_sample(seed: int, person: int, segment: str, frame: int, camera, n_frames: int = 30,
                  n_cameras: int = 64, res: int = 256, person_rig: bool = False, supersample: int = 1) -> dict:
    """One sample (DESIGN §4) as a pure function of its arguments: ``rgb`` uint8 H×W×3, ``mask`` uint8 H×W,
    ``depth`` float32 H×W, ``camera`` {K, w2c, width, height}, ``expr`` float32 (E,)."""
    return render_frame_samples(seed, person, segment, frame, [camera], n_frames, n_cameras, res, person_rig,
                                supersample)[0]


def _code(**values) -> np.ndarray:
    z = np.zeros(len(EXPR_INDEX), dtype=np.float32)
    for k, v in values.items():
        z[EXPR_INDEX[k]] = v
    return check_code(z).astype(np.float32)


# contact sheet columns: (expression, view) where view is a yaw in degrees the nearest rig camera is chosen by
SHEET_COLUMNS = (
    (_code(), 0), (_code(jawOpen=1.0), 0), (_code(mouthSmileLeft=1, mouthSmileRight=1, jawOpen=0.2), 0),
    (_code(eyeWideLeft=1, eyeWideRight=1, browInnerUp=1, browOuterUpLeft=1, browOuterUpRight=1), 0),
    (_code(eyeBlinkLeft=1, eyeBlinkRight=1), 0), (_code(jawOpen=0.65, tongueOut=1), 0),
    (_code(mouthFunnel=1, cheekPuff=1), 35), (_code(mouthSmileLeft=1, mouthSmileRight=1), -45),
    (_code(jawOpen=0.8), 90), (_code(), 160),
)


def contact_sheet(seed: int, persons: int | Sequence[int] = 8, res: int = 128, n_cameras: int = 64) -> np.ndarray:
    """uint8 image: one row per person, columns = expressions seen from the front and other rig views."""
    ids = list(range(persons)) if isinstance(persons, int) else [int(p) for p in persons]
    if not ids:
        raise ValueError("contact_sheet needs at least one person")
    _, cams = make_rig(seed, n_cameras, res)
    dirs = torch.nn.functional.normalize(cams.centers, dim=-1)
    yaw = torch.rad2deg(torch.atan2(dirs[:, 0], dirs[:, 2]))
    pitch = torch.rad2deg(torch.asin(dirs[:, 1].clamp(-1, 1)))
    views = []
    for _, want in SHEET_COLUMNS:
        err = torch.remainder(yaw - want + 180, 360) - 180
        views.append(int(torch.argmin(err.abs() + 0.5 * (pitch - 8).abs())))
    rows = []
    for p in ids:
        ident = make_identity(seed, p)
        tiles = []
        for (code, _), v in zip(SHEET_COLUMNS, views):
            with single_thread():
                rgb, _, _ = render_views(head_gaussians(ident, code), cams[v])
            tiles.append(rgb[0].clamp(0, 1).numpy())
        rows.append(np.concatenate(tiles, axis=1))
    return np.round(np.concatenate(rows, axis=0) * 255).astype(np.uint8)
