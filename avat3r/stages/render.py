"""The render stage: every frame of a source seen along a camera path, written to the outputs as it arrives."""

from __future__ import annotations

import torch

from ..cameras import Cameras
from ..gaussians import Gaussians
from .camera_path import CameraPath
from .common import Progress, StageError, resolve_device
from .outputs import RenderOutputs
from .sources import Source


def parse_background(text: str | None) -> tuple[float, float, float]:
    """``"r,g,b"`` with components in [0, 1] (``"1,1,1"`` is white)."""
    if text is None:
        return (0.0, 0.0, 0.0)
    try:
        parts = tuple(float(x) for x in str(text).split(","))
    except ValueError:
        raise StageError(f"background must be r,g,b in [0,1], got {text!r}", param="background") from None
    if len(parts) != 3 or not all(0.0 <= x <= 1.0 for x in parts):
        raise StageError(f"background must be three comma-separated values in [0,1], got {text!r}",
                         param="background")
    return parts


def render_image(g: Gaussians, camera: Cameras, background, backend: str = "auto",
                 device: torch.device | str = "cpu") -> torch.Tensor:
    """(H, W, 3) float image of one unbatched set seen from one camera."""
    from ..render import rasterize

    g = g.to(device)
    if len(g) == 0:  # everything masked out: the background only
        w, h = camera.image_size
        return torch.tensor(background, dtype=torch.float32).expand(h, w, 3).clone()
    with torch.inference_mode():
        rgb, _, _ = rasterize(g, camera.to(device), background=torch.tensor(background, device=device),
                              backend=backend)
    return rgb[0].clamp(0, 1).cpu()


def render(source: Source, path: str, outputs_kw: dict, size: int = 512, background=(0.0, 0.0, 0.0),
           fps: float | None = None, radius: float = 1.0, n_frames: int | None = None, backend: str = "auto",
           device: str = "auto", progress: Progress = None) -> int:
    """Render every frame of ``source`` along ``path`` into the outputs (``RenderOutputs(**outputs_kw)``) as
    frames arrive; returns the count.

    A static source is shown for ``n_frames`` frames (default: one orbit turn, one pass over the cycled
    cameras, or one frontal frame)."""
    dev = resolve_device(device)
    cams = CameraPath(path, size, radius, source.input_cameras)
    outputs = RenderOutputs(fps=fps or source.fps or 25.0, **outputs_kw)
    ok = False
    try:
        n_static = n_frames if n_frames is not None else cams.static_frames
        if source.static is not None and not outputs.needs_images:
            n_static = 1  # PLY export only: one file, no camera path to follow
        if n_static < 1:
            raise StageError(f"n_frames must be at least 1, got {n_static}", param="n_frames")
        for frame in source.frame_iter(n_static):
            cam = cams.camera(frame.index, frame.n_frames or source.n_frames)
            rgb = render_image(frame.gaussians, cam, background, backend, dev) if outputs.needs_images else None
            outputs.write(frame, rgb)
            if progress:
                progress(1)
        ok = True
    finally:
        outputs.close(ok)
        source.close()
    return outputs.count
