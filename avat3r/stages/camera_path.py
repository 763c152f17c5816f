"""Render cameras along a path: one camera per frame index."""

from __future__ import annotations

import math

import torch

from ..cameras import MAX_IMAGE_SIDE, Cameras, frontal_path, intrinsics_from_fov, look_at, read_cams_json
from .common import StageError

CAMERA_PATHS = ("frontal", "orbit", "inputs")  # or a cams.json
DEFAULT_FOV_DEGREES = 18.0  # a 0.32 m field at 1 m: the whole head with hair, like the input crops
DEFAULT_STATIC_FRAMES = 60  # orbit/frontal length for a static .ply / neutral avatar


class CameraPath:
    """One render camera per frame index: ``frontal``, ``orbit`` (one turn over the sequence), ``inputs``
    (cycles the avatar's input cameras) or a cams.json (cycles its cameras)."""

    def __init__(self, spec: str, size: int = 512, radius: float = 1.0, input_cameras: Cameras | None = None,
                 fov_degrees: float = DEFAULT_FOV_DEGREES, elevation_degrees: float = 0.0):
        if not 2 <= size <= MAX_IMAGE_SIDE:  # a typo such as 100000 would allocate a 10¹⁰-pixel image
            raise StageError(f"size must be between 2 and {MAX_IMAGE_SIDE} pixels, got {size}", param="size")
        if not (math.isfinite(radius) and radius > 0):  # inf puts the camera nowhere: blank frames
            raise StageError(f"radius must be a positive number of metres, got {radius}", param="radius")
        self.spec, self.size, self.radius = spec, int(size), float(radius)
        self.fov, self.elevation = fov_degrees, elevation_degrees
        self.cycle: Cameras | None = None
        if spec in ("frontal", "orbit"):
            return
        if spec == "inputs":
            if input_cameras is None or len(input_cameras) == 0:
                raise StageError("the inputs camera path needs the avatar's input cameras, and this source has none",
                                 param="path")
            self.cycle = self._fit(input_cameras)
        elif spec.endswith(".json"):
            _, cams = read_cams_json(spec)
            self.cycle = self._fit(cams)
        else:
            raise StageError(f"unknown camera path {spec!r}; use frontal, orbit, inputs or a cams.json file",
                             param="path")

    def _fit(self, cams: Cameras) -> Cameras:
        """Scale cameras to ``size`` pixels wide (height by the first camera's aspect), so all frames share a size."""
        w, h = int(cams.width[0]), int(cams.height[0])
        return cams.resized(self.size, max(1, round(self.size * h / w)))

    @property
    def static_frames(self) -> int:
        """Frames for a static source: one turn of the orbit, one pass over the cycled cameras, or one frame."""
        if self.cycle is not None:
            return len(self.cycle)
        return DEFAULT_STATIC_FRAMES if self.spec == "orbit" else 1

    def camera(self, index: int, n_frames: int | None = None) -> Cameras:
        if self.cycle is not None:
            return self.cycle[index % len(self.cycle)]
        if self.spec == "frontal":
            return frontal_path(1, self.radius, self.size, self.size, self.fov)
        period = n_frames if n_frames and n_frames > 0 else DEFAULT_STATIC_FRAMES
        az = 2 * math.pi * (index % period) / period
        el = math.radians(self.elevation)
        eye = torch.tensor([[self.radius * math.cos(el) * math.sin(az), self.radius * math.sin(el),
                             self.radius * math.cos(el) * math.cos(az)]])
        K = intrinsics_from_fov(self.fov, self.size, self.size)[None]
        return Cameras(K, look_at(eye), self.size, self.size)
