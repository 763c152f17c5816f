"""Batched pinhole cameras in the OpenCV convention, rays, and viewpoint sampling.

Conventions (DESIGN §2): x right, y down, z forward; ``K`` in pixels with pixel centres at +0.5;
``w2c`` world-to-camera 4×4; depth is camera z. The world is head-centric: origin at the head centre,
+x towards the subject's left, +y up, +z out of the face, metres.

``cams.json`` schema (version 1)::

    {"version": 1,
     "cameras": [{"image": "front.png",          # file name inside the image folder
                  "K": [[fx, 0, cx], [0, fy, cy], [0, 0, 1]],   # pixels, pixel centres at +0.5
                  "w2c": [[...4...], [...], [...], [0, 0, 0, 1]],  # world-to-camera, OpenCV axes, metres
                  "width": 512, "height": 512}, ...]}
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from .errors import Avat3rError
from .fileio import atomic_write_bytes

CAMS_JSON_VERSION = 1
BACK_ONLY_DEGREES = 110.0  # a camera further than this from +z (the face direction) sees only the back
# Sanity ranges of Cameras.validate(): far beyond any real camera, so a value outside is a unit or typing
# error that would otherwise give a blank or garbled result
MAX_IMAGE_SIDE = 16384  # pixels
FOCAL_RANGE = (1e-3, 1e3)  # focal length in image sides (the longer one): ≈ 180° … 0.06° field of view
PRINCIPAL_POINT_RANGE = 1e3  # image sides the principal point may lie outside the image (crops move it)


class CameraError(Avat3rError, ValueError):
    """A camera is malformed; the message names it."""


@dataclass
class Cameras:
    """A batch of N pinhole cameras. ``width``/``height`` are (N,) int64 tensors."""

    K: torch.Tensor  # (N, 3, 3)
    w2c: torch.Tensor  # (N, 4, 4)
    width: torch.Tensor  # (N,)
    height: torch.Tensor  # (N,)

    def __post_init__(self):
        if self.K.ndim == 2:
            self.K = self.K[None]
        if self.w2c.ndim == 2:
            self.w2c = self.w2c[None]
        n = self.K.shape[0]
        self.width = torch.as_tensor(self.width, dtype=torch.int64).reshape(-1).expand(n).clone()
        self.height = torch.as_tensor(self.height, dtype=torch.int64).reshape(-1).expand(n).clone()
        if self.K.shape != (n, 3, 3) or self.w2c.shape != (n, 4, 4):
            raise CameraError(f"cameras need K (N,3,3) and w2c (N,4,4), got {tuple(self.K.shape)} and "
                              f"{tuple(self.w2c.shape)}")

    # -- batch handling -------------------------------------------------------------------------
    def __len__(self) -> int:
        return self.K.shape[0]

    def __getitem__(self, idx) -> Cameras:
        if isinstance(idx, int):
            idx = slice(idx, idx + 1) if idx != -1 else slice(-1, None)
        return Cameras(self.K[idx], self.w2c[idx], self.width[idx], self.height[idx])

    def to(self, device=None, dtype=None) -> Cameras:
        return Cameras(self.K.to(device=device, dtype=dtype), self.w2c.to(device=device, dtype=dtype),
                       self.width, self.height)

    @property
    def device(self) -> torch.device:
        return self.K.device

    @staticmethod
    def cat(batches: Sequence[Cameras]) -> Cameras:
        return Cameras(torch.cat([c.K for c in batches]), torch.cat([c.w2c for c in batches]),
                       torch.cat([c.width for c in batches]), torch.cat([c.height for c in batches]))

    @property
    def image_size(self) -> tuple[int, int]:
        """(width, height) shared by every camera of the batch."""
        w, h = int(self.width[0]), int(self.height[0])
        if bool((self.width != w).any()) or bool((self.height != h).any()):
            raise CameraError("cameras of this batch have different image sizes; resize them first")
        return w, h

    # -- geometry -------------------------------------------------------------------------------
    @property
    def c2w(self) -> torch.Tensor:
        return torch.linalg.inv(self.w2c)

    @property
    def centers(self) -> torch.Tensor:
        """(N, 3) camera centres in world coordinates: −Rᵀt."""
        R, t = self.w2c[:, :3, :3], self.w2c[:, :3, 3]
        return -(R.transpose(1, 2) @ t[..., None])[..., 0]

    @property
    def forward(self) -> torch.Tensor:
        """(N, 3) unit viewing directions (camera +z) in world coordinates."""
        return self.w2c[:, 2, :3]

    def resized(self, width: int, height: int) -> Cameras:
        """Same cameras for images scaled to (width, height): intrinsics scale with the pixel grid."""
        sx = width / self.width.to(self.K.dtype)
        sy = height / self.height.to(self.K.dtype)
        K = self.K.clone()
        K[:, 0, :] *= sx[:, None]
        K[:, 1, :] *= sy[:, None]
        return Cameras(K, self.w2c.clone(), width, height)

    def cropped(self, x0: int, y0: int, width: int, height: int) -> Cameras:
        """Same cameras for the crop whose top-left pixel is (x0, y0)."""
        K = self.K.clone()
        K[:, 0, 2] -= x0
        K[:, 1, 2] -= y0
        return Cameras(K, self.w2c.clone(), width, height)

    def validate(self, names: Sequence[str] | None = None) -> None:
        """Raise CameraError naming the first bad camera. Sanity ranges (module constants): image sides are
        1..MAX_IMAGE_SIDE pixels; K is a pinhole [[fx, 0, cx], [0, fy, cy], [0, 0, 1]] whose focal lengths lie
        within FOCAL_RANGE times the image's longer side and whose principal point lies within
        PRINCIPAL_POINT_RANGE image sides of the image; w2c is a proper rigid transform."""
        for i in range(len(self)):
            name = names[i] if names is not None else f"#{i}"
            K, w2c = self.K[i].double(), self.w2c[i].double()
            w, h = int(self.width[i]), int(self.height[i])
            if not (torch.isfinite(K).all() and torch.isfinite(w2c).all()):
                raise CameraError(f"camera {name}: K or w2c has non-finite values")
            if not (0 < w <= MAX_IMAGE_SIDE and 0 < h <= MAX_IMAGE_SIDE):
                raise CameraError(f"camera {name}: image size must be positive, at most {MAX_IMAGE_SIDE} "
                                  f"pixels a side, got {w}x{h}")
            if (K[2] - torch.tensor([0, 0, 1.0], dtype=K.dtype)).abs().max() > 1e-6:
                raise CameraError(f"camera {name}: the last row of K must be [0, 0, 1], got "
                                  f"{[round(float(x), 6) for x in K[2]]}")
            # rays and projections use fx, fy, cx, cy only: a skewed K would silently be taken for another camera
            skew, lower = float(K[0, 1]), float(K[1, 0])
            if abs(skew) > 1e-6 * abs(float(K[0, 0])) or abs(lower) > 1e-6 * abs(float(K[1, 1])):
                raise CameraError(f"camera {name}: K has skew (K[0][1]={skew:g}, K[1][0]={lower:g}); only "
                                  "pinhole intrinsics without skew are supported")
            side = max(w, h)
            lo, hi = FOCAL_RANGE[0] * side, FOCAL_RANGE[1] * side
            if not (lo <= K[0, 0] <= hi and lo <= K[1, 1] <= hi):
                raise CameraError(f"camera {name}: focal lengths must lie between {lo:g} and {hi:g} pixels "
                                  f"({FOCAL_RANGE[0]:g}-{FOCAL_RANGE[1]:g} times the image side), got "
                                  f"fx={float(K[0, 0]):g}, fy={float(K[1, 1]):g}")
            reach = PRINCIPAL_POINT_RANGE * side
            if not (-reach <= K[0, 2] <= w + reach and -reach <= K[1, 2] <= h + reach):
                raise CameraError(f"camera {name}: principal point ({float(K[0, 2]):g}, {float(K[1, 2]):g}) lies "
                                  f"more than {PRINCIPAL_POINT_RANGE:g} image sides outside the {w}x{h} image")
            R = w2c[:3, :3]
            ortho = (R @ R.T - torch.eye(3, dtype=R.dtype)).abs().max()
            if ortho > 1e-4 or torch.linalg.det(R) < 0:
                raise CameraError(f"camera {name}: w2c[:3,:3] is not a proper rotation "
                                  f"(|RRᵀ−I|={float(ortho):.2g}, det={float(torch.linalg.det(R)):.3f})")
            if (w2c[3] - torch.tensor([0, 0, 0, 1.0], dtype=w2c.dtype)).abs().max() > 1e-6:
                raise CameraError(f"camera {name}: the last row of w2c must be [0, 0, 0, 1]")


def intrinsics(fx: float, fy: float, cx: float, cy: float) -> torch.Tensor:
    return torch.tensor([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]])


def intrinsics_from_fov(fov_y_degrees: float, width: int, height: int) -> torch.Tensor:
    f = 0.5 * height / math.tan(math.radians(fov_y_degrees) / 2)
    return intrinsics(f, f, width / 2, height / 2)


def look_at(eye: torch.Tensor, target: torch.Tensor | None = None, up: torch.Tensor | None = None) -> torch.Tensor:
    """World-to-camera matrices (N, 4, 4) for cameras at ``eye`` (N, 3) looking at ``target``.

    ``up`` is the world up (+y); the camera's y axis points down the image, so it is −up projected.
    """
    eye = torch.as_tensor(eye, dtype=torch.float32).reshape(-1, 3)
    target = torch.zeros_like(eye) if target is None else torch.as_tensor(target, dtype=eye.dtype).expand_as(eye)
    up = torch.tensor([0.0, 1.0, 0.0]) if up is None else torch.as_tensor(up, dtype=eye.dtype)
    up = up.expand_as(eye)
    z = torch.nn.functional.normalize(target - eye, dim=-1)
    x = torch.cross(z, up, dim=-1)
    # looking straight along ±up: pick any perpendicular x
    degenerate = x.norm(dim=-1) < 1e-6
    if degenerate.any():
        x[degenerate] = torch.cross(z[degenerate], torch.tensor([0.0, 0.0, 1.0]).expand_as(z[degenerate]), dim=-1)
    x = torch.nn.functional.normalize(x, dim=-1)
    y = torch.cross(z, x, dim=-1)
    R = torch.stack([x, y, z], dim=1)  # rows are the camera axes in world coordinates
    w2c = torch.eye(4).repeat(eye.shape[0], 1, 1)
    w2c[:, :3, :3] = R
    w2c[:, :3, 3] = -(R @ eye[..., None])[..., 0]
    return w2c


# -- rays ----------------------------------------------------------------------------------------
def pixel_centers(width: int, height: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """(H, W, 2) pixel-centre coordinates (u, v) = (x + 0.5, y + 0.5)."""
    v, u = torch.meshgrid(torch.arange(height, device=device, dtype=dtype) + 0.5,
                          torch.arange(width, device=device, dtype=dtype) + 0.5, indexing="ij")
    return torch.stack([u, v], dim=-1)


def camera_directions(cameras: Cameras) -> torch.Tensor:
    """(N, H, W, 3) un-normalised camera-frame directions with z = 1 (so depth · dir is the point)."""
    W, H = cameras.image_size
    uv = pixel_centers(W, H, cameras.device, cameras.K.dtype)
    fx, fy = cameras.K[:, 0, 0, None, None], cameras.K[:, 1, 1, None, None]
    cx, cy = cameras.K[:, 0, 2, None, None], cameras.K[:, 1, 2, None, None]
    x = (uv[..., 0] - cx) / fx
    y = (uv[..., 1] - cy) / fy
    return torch.stack([x, y, torch.ones_like(x)], dim=-1)


def rays(cameras: Cameras) -> tuple[torch.Tensor, torch.Tensor]:
    """World-space ray origins and unit directions, each (N, H, W, 3)."""
    d_cam = camera_directions(cameras)
    R_c2w = cameras.w2c[:, :3, :3].transpose(1, 2)
    d = torch.einsum("nij,nhwj->nhwi", R_c2w, d_cam)
    d = torch.nn.functional.normalize(d, dim=-1)
    o = cameras.centers[:, None, None, :].expand_as(d)
    return o, d


def plucker(cameras: Cameras) -> torch.Tensor:
    """(N, H, W, 6) Plücker ray coordinates [o × d, d] with unit d (the paper's per-pixel ray map)."""
    o, d = rays(cameras)
    return torch.cat([torch.cross(o, d, dim=-1), d], dim=-1)


def unproject(cameras: Cameras, depth: torch.Tensor) -> torch.Tensor:
    """World points (N, H, W, 3) of pixel centres at camera-z ``depth`` (N, H, W)."""
    p_cam = camera_directions(cameras) * depth[..., None]
    c2w = cameras.c2w
    return torch.einsum("nij,nhwj->nhwi", c2w[:, :3, :3], p_cam) + c2w[:, None, None, :3, 3]


def project(cameras: Cameras, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Project world points (N, P, 3) → pixel coordinates (N, P, 2) (continuous, centres at +.5) and depth (N, P)."""
    p = torch.einsum("nij,npj->npi", cameras.w2c[:, :3, :3], points) + cameras.w2c[:, None, :3, 3]
    z = p[..., 2]
    uv = torch.einsum("nij,npj->npi", cameras.K, p)[..., :2] / z[..., None]
    return uv, z


# -- camera paths --------------------------------------------------------------------------------
def orbit_path(n_frames: int, radius: float = 1.0, elevation_degrees: float = 0.0, sweep_degrees: float = 360.0,
               width: int = 512, height: int = 512, fov_y_degrees: float = 12.0) -> Cameras:
    """Cameras circling the head at ``radius`` metres, starting in front (+z), looking at the origin."""
    az = torch.linspace(0, math.radians(sweep_degrees), n_frames + (1 if sweep_degrees >= 360 else 0))[:n_frames]
    el = math.radians(elevation_degrees)
    eye = torch.stack([radius * math.cos(el) * torch.sin(az), radius * math.sin(el) * torch.ones_like(az),
                       radius * math.cos(el) * torch.cos(az)], dim=-1)
    K = intrinsics_from_fov(fov_y_degrees, width, height).expand(n_frames, 3, 3).clone()
    return Cameras(K, look_at(eye), width, height)


def frontal_path(n_frames: int, radius: float = 1.0, width: int = 512, height: int = 512,
                 fov_y_degrees: float = 12.0) -> Cameras:
    """A fixed frontal camera repeated ``n_frames`` times (for expression-only videos)."""
    eye = torch.tensor([[0.0, 0.0, radius]]).expand(n_frames, 3)
    K = intrinsics_from_fov(fov_y_degrees, width, height).expand(n_frames, 3, 3).clone()
    return Cameras(K, look_at(eye), width, height)


def view_angle_degrees(cameras: Cameras) -> torch.Tensor:
    """(N,) angle between each camera's position (seen from the head centre) and the face direction +z."""
    c = torch.nn.functional.normalize(cameras.centers, dim=-1)
    return torch.rad2deg(torch.acos(c[:, 2].clamp(-1, 1)))


def is_back_only(cameras: Cameras, max_degrees: float = BACK_ONLY_DEGREES) -> torch.Tensor:
    return view_angle_degrees(cameras) > max_degrees


# -- viewpoint sampling (paper App. C) -----------------------------------------------------------
def farthest_point_sampling(points: torch.Tensor, k: int, start: int = 0) -> list[int]:
    """Greedy farthest-point sampling of ``k`` indices from (N, D) ``points``, beginning at ``start``."""
    n = points.shape[0]
    if not 0 < k <= n:
        raise ValueError(f"cannot pick {k} of {n} points")
    chosen = [start]
    dist = (points - points[start]).norm(dim=-1)
    for _ in range(k - 1):
        nxt = int(torch.argmax(dist))
        chosen.append(nxt)
        dist = torch.minimum(dist, (points - points[nxt]).norm(dim=-1))
    return chosen


def k_farthest_viewpoints(cameras: Cameras, k: int = 4, n_candidates: int = 10,
                          generator: torch.Generator | None = None, exclude_back: bool = True) -> list[int]:
    """Paper App. C: from a random camera, farthest-point-sample ``n_candidates`` evenly spread cameras
    (on the unit sphere of viewing directions), then pick ``k`` of them at random. Back-only cameras are
    never returned when ``exclude_back``. Returns indices into ``cameras``."""
    allowed = torch.arange(len(cameras))
    if exclude_back:
        allowed = allowed[~is_back_only(cameras)]
    if len(allowed) < k:
        raise ValueError(f"need {k} usable input cameras, only {len(allowed)} are not back-only")
    dirs = torch.nn.functional.normalize(cameras.centers[allowed].float(), dim=-1)
    start = int(torch.randint(len(allowed), (1,), generator=generator))
    cand = farthest_point_sampling(dirs, min(n_candidates, len(allowed)), start)
    pick = torch.randperm(len(cand), generator=generator)[:k]
    return [int(allowed[cand[int(i)]]) for i in pick]


# -- JSON form (cams.json, shard camera.json, .avt and frame-stream metadata) ---------------------------------
def camera_dict(K, w2c, width, height) -> dict:
    """One camera as every file stores it: ``K`` and ``w2c`` as float64 nested lists, ``width`` and ``height``
    as ints (a cams.json entry adds ``image``)."""
    return {"K": torch.as_tensor(K, dtype=torch.float64).tolist(),
            "w2c": torch.as_tensor(w2c, dtype=torch.float64).tolist(), "width": int(width), "height": int(height)}


def cameras_to_dicts(cameras: Cameras) -> list[dict]:
    return [camera_dict(cameras.K[i], cameras.w2c[i], cameras.width[i], cameras.height[i])
            for i in range(len(cameras))]


def image_side(value, field: str) -> int:
    """A width or height read from JSON: a whole number of pixels (``64.0`` is 64; ``64.9``, ``"64"`` and
    ``true`` are refused rather than truncated or coerced), 1..MAX_IMAGE_SIDE."""
    ok = isinstance(value, int) or (isinstance(value, float) and value.is_integer())
    if isinstance(value, bool) or not ok or not 0 < value <= MAX_IMAGE_SIDE:
        raise CameraError(f"image size: {field} must be a whole number of pixels between 1 and "
                          f"{MAX_IMAGE_SIDE}, got {value!r}")
    return int(value)


def cameras_from_dicts(entries: Sequence, source: str, names: Sequence[str] | None = None,
                       validate: bool = True) -> Cameras:
    """float32 Cameras from ``camera_dict`` entries; CameraError names ``source`` and the camera (``names[i]``,
    else ``#i``). ``validate`` applies Cameras.validate's sanity ranges (for files a user hands us)."""
    names = [f"#{i}" for i in range(len(entries))] if names is None else [str(n) for n in names]
    Ks, w2cs, ws, hs = [], [], [], []
    for name, e in zip(names, entries):
        try:
            K = torch.tensor(e["K"], dtype=torch.float64)
            w2c = torch.tensor(e["w2c"], dtype=torch.float64)
            w, h = e["width"], e["height"]
        except (KeyError, TypeError, ValueError) as err:
            raise CameraError(f"{source}: camera {name}: missing or malformed field ({err})") from None
        try:
            w, h = image_side(w, "width"), image_side(h, "height")
        except CameraError as err:
            raise CameraError(f"{source}: camera {name}: {err}") from None
        if K.shape != (3, 3) or w2c.shape != (4, 4):
            raise CameraError(f"{source}: camera {name}: K must be 3×3 and w2c 4×4")
        Ks.append(K); w2cs.append(w2c); ws.append(w); hs.append(h)
    cams = Cameras(torch.stack(Ks), torch.stack(w2cs), torch.tensor(ws), torch.tensor(hs))
    if validate:
        try:
            cams.validate(names)
        except CameraError as err:
            raise CameraError(f"{source}: {err}") from None
    return Cameras(cams.K.float(), cams.w2c.float(), cams.width, cams.height)


def cameras_to_json(cameras: Cameras, images: Sequence[str]) -> dict:
    """The cams.json document (module docstring) of ``cameras`` seen by ``images``."""
    if len(images) != len(cameras):
        raise CameraError(f"{len(images)} image names for {len(cameras)} cameras")
    return {"version": CAMS_JSON_VERSION,
            "cameras": [{"image": str(name), **d} for name, d in zip(images, cameras_to_dicts(cameras))]}


def cameras_from_json(doc: dict, source: str = "cams.json") -> tuple[list[str], Cameras]:
    if not isinstance(doc, dict) or doc.get("version") != CAMS_JSON_VERSION:
        raise CameraError(f"{source}: expected a cams.json object with \"version\": {CAMS_JSON_VERSION}")
    entries = doc.get("cameras")
    if not isinstance(entries, list) or not entries:
        raise CameraError(f"{source}: \"cameras\" must be a non-empty list")
    names = [str(e.get("image", f"#{i}")) if isinstance(e, dict) else f"#{i}" for i, e in enumerate(entries)]
    return names, cameras_from_dicts(entries, source, names)


def write_cams_json(path: str | os.PathLike, cameras: Cameras, images: Sequence[str]) -> None:
    atomic_write_bytes(path, (json.dumps(cameras_to_json(cameras, images), indent=1) + "\n").encode())


def read_cams_json(path: str | os.PathLike) -> tuple[list[str], Cameras]:
    """Read and validate a cams.json; returns (image names, Cameras) in file order (float32)."""
    try:
        doc = json.loads(Path(path).read_bytes().decode("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CameraError(f"{path}: cannot read cams.json ({err})") from None
    return cameras_from_json(doc, str(path))
