"""The ``gan3d`` lifting backend: one photo → 4 posed views through a 3D-GAN inversion exported as TorchScript.

The paper's single-image path (Avat3r §5): a 3D GAN is inverted on the photo and the inverted head is
rendered from 4 viewpoints, which Avat3r then takes as its inputs. No GAN and no weights ship with avat3r; the
user exports their own inversion (EG3D, GGHead, PanoHead… with its inversion or encoder) as one TorchScript
file. avat3r loads it with ``torch.jit.load`` (on the CPU first, then moved to ``device``; TorchScript's own
loader, never Python's pickle) and makes one call::

    views = module(image, K, w2c, width, height)

- ``image``: Tensor (1, 3, H, W), float32 RGB in [0, 1]: the photo as read, any size (aligning and cropping
  it the way the GAN expects is the module's job);
- ``K``: Tensor (V, 3, 3), float32 pixel intrinsics of the V = 4 views, pixel centres at +0.5, principal point
  at the image centre;
- ``w2c``: Tensor (V, 4, 4), float32 world-to-camera matrices in avat3r's conventions (:mod:`avat3r.cameras`:
  OpenCV axes x right, y down, z forward; a head-centred world in metres, origin at the head centre, +x towards
  the subject's left, +y up, +z out of the face). The module maps them to its GAN's own camera convention and
  units;
- ``width``, ``height``: int, the size of the views to render;
- returns Tensor (V, 3, height, width), float RGB in [0, 1], the inverted head seen by each camera
  (preferably on a black background; ``reconstruct`` mattes others out with GrabCut or ``masks``).

A module made with ``torch.jit.script`` takes this signature. ``torch.jit.trace`` cannot trace int arguments,
so a traced module may instead take ``forward(image, K, w2c)`` and render at the size it was traced at, which
must be ``width = 2·cx`` by ``height = 2·cy`` of ``K`` (the size avat3r asks for; :data:`DEFAULT_SIZE` unless
``size`` says otherwise). The call runs with autograd enabled, so an inversion may optimise inside it.

avat3r chooses the cameras (:func:`gan3d_cameras`): square views of ``size`` pixels, ``fov_degrees`` across,
at ``distance`` metres from the head centre and looking at it: frontal, 35° to the subject's left, 35° to the
right and 20° above (:data:`VIEW_YAW_PITCH`), a spread a 3D GAN trained on mostly frontal photos renders well.
At the default 1 m and 20° a 0.27 m head fills about three quarters of the view, as in the training captures.
The output folder gets view_0..3.png, cams.json (exactly these cameras) and lift.json (the model, the angles).

The module's path is the ``model`` argument, else ``$AVAT3R_GAN3D``; without either (or when the file is
missing) a one-line :class:`~avat3r.lift.LiftError` says how to supply it. Nothing is ever substituted.
"""

from __future__ import annotations

import math
import os
import warnings
from pathlib import Path

import torch

from .cameras import MAX_IMAGE_SIDE, Cameras, intrinsics_from_fov, look_at
from .lift import N_VIEWS, LiftError

ENV_MODEL = "AVAT3R_GAN3D"
DEFAULT_SIZE = 512  # pixels, square views (most 3D GANs render 512²)
DEFAULT_FOV_DEGREES = 20.0
DEFAULT_DISTANCE = 1.0  # metres from the head centre
VIEW_YAW_PITCH = ((0.0, 0.0), (35.0, 0.0), (-35.0, 0.0), (0.0, 20.0))  # degrees; +yaw: the subject's left, +pitch: above
RANGE_TOLERANCE = 1e-3  # pixel values this far outside [0, 1] are rounding and clamped; farther is an error


def gan3d_cameras(size: int = DEFAULT_SIZE, fov_degrees: float = DEFAULT_FOV_DEGREES,
                  distance: float = DEFAULT_DISTANCE) -> Cameras:
    """The 4 cameras the GAN renders: :data:`VIEW_YAW_PITCH` at ``distance`` metres, looking at the head centre,
    ``size``² pixels with ``fov_degrees`` across and the principal point at the centre."""
    size = int(size)
    if not 8 <= size <= MAX_IMAGE_SIDE:
        raise LiftError(f"the gan3d view size must be 8..{MAX_IMAGE_SIDE} pixels, got {size}", param="size")
    if not (math.isfinite(fov_degrees) and 1.0 <= fov_degrees <= 120.0):
        raise LiftError(f"the gan3d field of view must be 1..120 degrees, got {fov_degrees:g}", param="fov_degrees")
    if not (math.isfinite(distance) and 0.3 <= distance <= 100.0):
        raise LiftError(f"the gan3d camera distance must be 0.3..100 metres, got {distance:g}", param="distance")
    yaw, pitch = (torch.tensor([v[i] for v in VIEW_YAW_PITCH], dtype=torch.float64).deg2rad() for i in (0, 1))
    eye = distance * torch.stack([pitch.cos() * yaw.sin(), pitch.sin(), pitch.cos() * yaw.cos()], dim=-1)
    K = intrinsics_from_fov(float(fov_degrees), size, size).expand(N_VIEWS, 3, 3).clone()
    return Cameras(K, look_at(eye.float()), size, size)


def model_path(model: str | os.PathLike | None = None) -> Path:
    """The TorchScript file: ``model``, else ``$AVAT3R_GAN3D``; a one-line LiftError when neither names a file."""
    if model is None or str(model) == "":
        model = os.environ.get(ENV_MODEL) or None
    if model is None:
        raise LiftError("the gan3d backend needs a 3D-GAN inversion exported as TorchScript (none ships with "
                        f"avat3r): give its file as the gan3d model or set ${ENV_MODEL}", param="gan3d")
    path = Path(model)
    if not path.is_file():
        what = "is a folder, not a TorchScript file" if path.is_dir() else "does not exist"
        raise LiftError(f"3D-GAN model {path} {what} (the gan3d model, or ${ENV_MODEL})", param="gan3d")
    return path


def _first_sentence(err: BaseException) -> str:
    """A short reason from a torch error: TorchScript's interpreter errors carry a traceback, whose last line
    is the error; others are long paragraphs, whose first sentence is the point."""
    lines = [ln.strip() for ln in str(err).strip().splitlines() if ln.strip()]
    if not lines:
        return type(err).__name__
    if lines[0].startswith("The following operation failed"):
        return lines[-1].removeprefix("builtins.").rstrip(".")
    return lines[0].split(". ")[0].rstrip(".")


class Gan3dModule:
    """A loaded TorchScript 3D-GAN inversion (see the module docstring); call with (photo, Cameras)."""

    def __init__(self, path: str | os.PathLike, device: str | torch.device = "cpu"):
        self.path = Path(path)
        self.device = torch.device(device)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)  # torch's deprecation notice for TorchScript
                module = torch.jit.load(str(self.path), map_location="cpu")
        except (RuntimeError, ValueError) as err:
            raise LiftError(f"{self.path}: not a TorchScript module ({_first_sentence(err)}); export the "
                            "inversion with torch.jit.script (or trace) and save it with its .save()",
                            param="gan3d") from None
        self.module = module.to(self.device).eval()
        self.n_args = self._count_args()

    def _count_args(self) -> int:
        """The number of inputs forward takes: 5 (image, K, w2c, width, height) or 3 (image, K, w2c)."""
        try:
            schema = self.module.forward.schema
        except AttributeError:  # a module without a scripted forward: the call below reports it
            return 5
        args = [a for a in schema.arguments if a.name != "self"]
        if len(args) not in (3, 5):
            raise LiftError(f"{self.path}: forward takes {len(args)} inputs ({', '.join(a.name for a in args)}); "
                            "a gan3d module takes (image, K, w2c, width, height), or (image, K, w2c) when traced",
                            param="gan3d")
        return len(args)

    def __call__(self, image: torch.Tensor, cameras: Cameras) -> torch.Tensor:
        """``image`` (H, W, 3) float in [0, 1] → views (V, 3, height, width) float32 on the CPU, checked."""
        x = image.permute(2, 0, 1)[None].contiguous().float().to(self.device)
        K, w2c = cameras.K.float().to(self.device), cameras.w2c.float().to(self.device)
        W, H = cameras.image_size
        args = (x, K, w2c, int(W), int(H)) if self.n_args == 5 else (x, K, w2c)
        try:
            out = self.module(*args)
        except Exception as err:  # the user's module can fail in any way (TorchScript raises torch.jit.Error)
            raise LiftError(f"{self.path}: the 3D-GAN module failed ({_first_sentence(err)})", param="gan3d") from None
        return self.check(out, len(cameras), W, H)

    def check(self, out, n: int, width: int, height: int) -> torch.Tensor:
        if not isinstance(out, torch.Tensor):
            raise LiftError(f"{self.path}: the 3D-GAN module returned {type(out).__name__}, expected a Tensor "
                            f"({n}, 3, {height}, {width})", param="gan3d")
        if tuple(out.shape) != (n, 3, height, width):
            raise LiftError(f"{self.path}: the 3D-GAN module returned shape {tuple(out.shape)}, expected "
                            f"({n}, 3, {height}, {width}) (views, RGB, height, width)", param="gan3d")
        if not out.is_floating_point():
            raise LiftError(f"{self.path}: the 3D-GAN module returned {out.dtype} pixels, expected float in [0, 1]",
                            param="gan3d")
        out = out.detach().to("cpu", torch.float32)
        bad = ~torch.isfinite(out)
        if bad.any():
            views = sorted({int(v) for v in bad.nonzero()[:, 0]})
            raise LiftError(f"{self.path}: the 3D-GAN module returned non-finite pixels (NaN or inf) in view "
                            f"{', '.join(map(str, views))}", param="gan3d")
        lo, hi = float(out.min()), float(out.max())
        if lo < -RANGE_TOLERANCE or hi > 1 + RANGE_TOLERANCE:
            raise LiftError(f"{self.path}: the 3D-GAN module returned pixels from {lo:.3g} to {hi:.3g}, expected "
                            "[0, 1] (a GAN's [-1, 1] output is (x + 1) / 2)", param="gan3d")
        return out.clamp(0, 1)


def lift_gan3d(image_path: str | os.PathLike, out_dir: str | os.PathLike, model: str | os.PathLike | None = None,
               size: int = DEFAULT_SIZE, fov_degrees: float = DEFAULT_FOV_DEGREES, distance: float = DEFAULT_DISTANCE,
               device: str | None = "cpu") -> list[Path]:
    """Lift one photo to ``out_dir``/view_0..3.png + cams.json + lift.json with the TorchScript 3D-GAN inversion
    ``model`` (else ``$AVAT3R_GAN3D``); returns the written image paths."""
    from .face.lift import _write_views
    from .imageio import read_image as read_png
    from .stages.common import resolve_device

    cameras = gan3d_cameras(size, fov_degrees, distance)
    path = model_path(model)
    dev = resolve_device(device)
    image = torch.from_numpy(read_png(image_path).copy()).float() / 255.0
    gan = Gan3dModule(path, dev)
    views = gan(image, cameras)
    info = {"backend": "gan3d", "source": Path(image_path).name, "model": path.name, "size": int(size),
            "fov_degrees": float(fov_degrees), "distance_m": float(distance),
            "yaw_pitch_degrees": [list(v) for v in VIEW_YAW_PITCH],
            "view_degrees": [round(math.degrees(math.acos(math.cos(math.radians(y)) * math.cos(math.radians(p)))), 2)
                             for y, p in VIEW_YAW_PITCH]}
    return _write_views(Path(out_dir), list(views.permute(0, 2, 3, 1)), cameras, info)
