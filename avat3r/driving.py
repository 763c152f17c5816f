"""Driving-video expressions: the frames of a face video → an expression sequence (`animate --video`).

An *extractor* turns RGB frames (N, H, W, 3) in [0, 1] into codes (N, E) of one expression space, and says
which space (``extractor.space``), so a video never drives an avatar with codes of another space. Extractors
are registered by name; avat3r ships ``landmarks`` (the face tracker's landmarks → ARKit-named coefficients,
:mod:`avat3r.face.expressions`, for any space with ARKit names; the default when the tracker is installed) and
``regressor``: a small CNN stored as safetensors + config.json
(``ExpressionRegressor``), e.g. ``models/synthheads-expr`` for the synthheads-v1 space, trained on SynthHeads
renders by :func:`fit_regressor` (``recipes/train_expression_regressor.py``). Register another (say, a
face tracker whose blendshapes map onto a space) with :func:`register_extractor`.

Frames are centre-cropped to a square and resized to the extractor's input size; the shipped regressor
expects the face to fill that square from brows to chin, as in the videos `prep synth-video` films.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .cameras import Cameras, intrinsics, look_at
from .errors import Avat3rError
from .expressions import ExpressionSequence
from .fileio import atomic_write_bytes

REGRESSOR_FORMAT = "avat3r-expression-regressor"
REGRESSOR_VERSION = 1
ENV_REGRESSOR = "AVAT3R_EXPRESSION_REGRESSOR"
DEFAULT_REGRESSOR = Path("models/synthheads-expr")  # in the working directory, else a shipped model (avat3r.shipped)


class DrivingError(Avat3rError, ValueError):
    """A driving video or extractor cannot be used; the message says why and what to do."""


# -- the shipped extractor: a small CNN regressor -------------------------------------------------
@dataclass(frozen=True)
class RegressorConfig:
    space: str  # expression space of the codes it predicts
    dim: int  # code size E
    input_size: int = 96  # square input, pixels (a multiple of 16)
    width: int = 32  # channels of the first convolution (doubling per stride-2 stage, capped at 4×)
    bounded: bool = True  # codes in [0, 1] (a sigmoid output), as synthheads-v1's are


class ExpressionRegressor(nn.Module):
    """Four stride-2 convolutions (input/16 resolution left), then a two-layer MLP to the code: small enough
    to fit on a CPU in minutes, which is all a 13-parameter expression space of rendered faces needs."""

    def __init__(self, config: RegressorConfig):
        super().__init__()
        self.config = config
        w = config.width
        chans = [3, w, 2 * w, 4 * w, 4 * w]
        layers: list[nn.Module] = []
        for cin, cout in zip(chans[:-1], chans[1:]):
            # batch norm, not group/instance norm: per-image statistics would discard the absolute intensities
            # a code can depend on; without any normalisation the network stays at the mean code
            layers += [nn.Conv2d(cin, cout, 3, stride=2, padding=1), nn.BatchNorm2d(cout), nn.SiLU()]
        self.features = nn.Sequential(*layers)
        side = config.input_size // 16
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(chans[-1] * side * side, 256), nn.SiLU(),
                                  nn.Linear(256, config.dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, S, S) RGB in [0, 1] → (N, E) codes."""
        y = self.head(self.features(x * 2.0 - 1.0))
        return torch.sigmoid(y) if self.config.bounded else y


def prepare_frames(frames: torch.Tensor | np.ndarray, size: int) -> torch.Tensor:
    """(N, H, W, 3) uint8 or float RGB → (N, 3, size, size) float in [0, 1]: centre square crop, area resize."""
    x = torch.as_tensor(np.asarray(frames) if not isinstance(frames, torch.Tensor) else frames)
    if x.ndim != 4 or x.shape[-1] != 3:
        raise DrivingError(f"frames must be (N, H, W, 3) RGB, got {tuple(x.shape)}")
    x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
    h, w = x.shape[1:3]
    s = min(h, w)
    x = x[:, (h - s) // 2:(h - s) // 2 + s, (w - s) // 2:(w - s) // 2 + s].permute(0, 3, 1, 2)
    if s != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=s > size)
    return x.clamp(0, 1).contiguous()


class RegressorExtractor:
    """An ``ExpressionRegressor`` as an extractor: call on (N, H, W, 3) frames."""

    name = "regressor"

    def __init__(self, model: ExpressionRegressor, device="cpu"):
        self.model = model.to(device).eval()
        self.device = torch.device(device)
        self.space = model.config.space

    @torch.no_grad()
    def __call__(self, frames) -> torch.Tensor:
        x = prepare_frames(frames, self.model.config.input_size).to(self.device)
        return self.model(x).float().cpu()


def save_regressor(out_dir: str | os.PathLike, model: ExpressionRegressor, info: dict | None = None) -> None:
    """Write ``model.safetensors`` and ``config.json`` (each atomically) to ``out_dir``."""
    from safetensors.torch import save as save_tensors

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    atomic_write_bytes(out / "model.safetensors", save_tensors(tensors))
    config = {"format": REGRESSOR_FORMAT, "version": REGRESSOR_VERSION, "config": asdict(model.config),
              "info": info or {}}
    atomic_write_bytes(out / "config.json", (json.dumps(config, indent=1) + "\n").encode())


def load_regressor(path: str | os.PathLike) -> ExpressionRegressor:
    """Read a regressor folder written by :func:`save_regressor` (never a pickle)."""
    from safetensors.torch import load_file

    path = Path(path)
    cfg_file, weights = path / "config.json", path / "model.safetensors"
    if not cfg_file.is_file() or not weights.is_file():
        raise DrivingError(f"{path}: not an expression regressor (needs config.json and model.safetensors); "
                           f"give the regressor's folder or set {ENV_REGRESSOR}", param="extractor_weights")
    try:
        meta = json.loads(cfg_file.read_text())
    except json.JSONDecodeError as err:
        raise DrivingError(f"{cfg_file}: not JSON ({err})") from None
    if meta.get("format") != REGRESSOR_FORMAT:
        raise DrivingError(f"{cfg_file}: format {meta.get('format')!r} is not {REGRESSOR_FORMAT!r}")
    if meta.get("version") != REGRESSOR_VERSION:
        raise DrivingError(f"{cfg_file}: version {meta.get('version')!r}; this avat3r reads {REGRESSOR_VERSION}")
    try:
        model = ExpressionRegressor(RegressorConfig(**meta["config"]))
        model.load_state_dict(load_file(str(weights)))
    except (TypeError, KeyError, RuntimeError) as err:
        raise DrivingError(f"{path}: weights do not fit the config ({str(err).splitlines()[0]})") from None
    return model


# -- extractor registry ----------------------------------------------------------------------------
# with a ``space`` attribute; an extractor with a ``finish(outputs)`` method is two-pass: its per-batch outputs
# (in frame order) are handed to ``finish``, which returns the codes (e.g. calibrated on the whole video)
Extractor = Callable[[torch.Tensor], torch.Tensor]
_EXTRACTORS: dict[str, Callable[..., Extractor]] = {}


def register_extractor(name: str, factory: Callable[..., Extractor]) -> None:
    """Make ``factory(weights=PATH_OR_NONE, device=...)`` available to `animate --video --extractor NAME`."""
    _EXTRACTORS[name] = factory


def extractor_names() -> tuple[str, ...]:
    return tuple(sorted(_EXTRACTORS))


def _default_regressor() -> Path:
    from .shipped import shipped_model

    return DEFAULT_REGRESSOR if DEFAULT_REGRESSOR.exists() else shipped_model(DEFAULT_REGRESSOR.name) or DEFAULT_REGRESSOR


def _regressor_factory(weights: str | os.PathLike | None = None, device="cpu") -> RegressorExtractor:
    path = weights or os.environ.get(ENV_REGRESSOR) or _default_regressor()
    if not Path(path).exists():
        raise DrivingError(f"expression regressor {path} not found: give its folder (e.g. the shipped "
                           f"synthheads-expr) or set {ENV_REGRESSOR}", param="extractor_weights")
    return RegressorExtractor(load_regressor(path), device)


register_extractor("regressor", _regressor_factory)


def _landmarks_factory(weights=None, device="cpu", space: str = "synthheads-v1"):
    from .face.expressions import landmark_extractor_factory  # the face tracker loads only when used

    return landmark_extractor_factory(weights, device, space)


register_extractor("landmarks", _landmarks_factory)


def default_extractor(weights: str | os.PathLike | None = None) -> str:
    """``landmarks`` when the face tracker is installed and no regressor weights are given, else ``regressor``."""
    from .face.tracker import tracker_available

    return "landmarks" if weights is None and tracker_available() else "regressor"


def build_extractor(name: str | None = "regressor", weights: str | os.PathLike | None = None, device="cpu",
                    space: str | None = None) -> Extractor:
    """The named extractor (None: :func:`default_extractor`); ``space`` (the avatar's expression space) goes to
    factories that take it, such as ``landmarks``, which maps onto any space with ARKit-named parameters."""
    import inspect

    name = name or default_extractor(weights)
    if name not in _EXTRACTORS:
        raise DrivingError(f"unknown expression extractor {name!r}; known: {', '.join(extractor_names())}")
    factory = _EXTRACTORS[name]
    kwargs = {"weights": weights, "device": device}
    if space is not None and "space" in inspect.signature(factory).parameters:
        kwargs["space"] = space
    return factory(**kwargs)


# -- video → sequence --------------------------------------------------------------------------------
def _batches(frames: Iterable[np.ndarray], n: int) -> Iterator[np.ndarray]:
    batch: list[np.ndarray] = []
    for f in frames:
        batch.append(f)
        if len(batch) == n:
            yield np.stack(batch)
            batch = []
    if batch:
        yield np.stack(batch)


def smooth_codes(codes: torch.Tensor, window: int) -> torch.Tensor:
    """Centred moving average over ``window`` frames (odd; 1 = none), edges padded by repetition:
    per-frame regression jitters, a face does not."""
    if window <= 1:
        return codes
    if window % 2 == 0:
        raise DrivingError(f"the smoothing window must be odd, got {window}")
    x = codes.T[None]  # (1, E, T)
    x = F.pad(x, (window // 2, window // 2), mode="replicate")
    return F.avg_pool1d(x, window, stride=1)[0].T.contiguous()


def extract_sequence(video: str | os.PathLike, extractor: Extractor, expected_space: str | None = None,
                     batch: int = 32, smooth: int = 1, fps: float | None = None,
                     progress: Callable[[int], None] | None = None) -> ExpressionSequence:
    """Run ``extractor`` over every frame of ``video``; the sequence plays at the video's frame rate."""
    from .video import read_video_frames, video_info

    space = getattr(extractor, "space", None)
    if not space:
        raise DrivingError("the expression extractor does not name its expression space")
    if expected_space is not None and space != expected_space:
        raise DrivingError(f"the extractor predicts {space!r} codes but the avatar was trained in "
                           f"{expected_space!r}; use an extractor for {expected_space!r}")
    rate = float(fps) if fps is not None else float(video_info(video)["fps"])
    codes = []
    for frames in _batches(read_video_frames(video), max(1, int(batch))):
        codes.append(torch.as_tensor(extractor(frames), dtype=torch.float32))
        if progress is not None:
            progress(len(frames))
    if not codes:
        raise DrivingError(f"{video}: the video has no frames")
    codes = torch.cat(codes)
    finish = getattr(extractor, "finish", None)
    if callable(finish):  # a two-pass extractor: per-frame measures first, codes once the whole video is seen
        codes = torch.as_tensor(finish(codes), dtype=torch.float32)
    return ExpressionSequence(smooth_codes(codes, smooth), rate, space)


# A driving video frames the face, not the whole head: brows to chin fill the frame, so that expressions
# move many pixels (at a rig view's framing a smile changes about 4 pixels of a 64² image).
DRIVING_FILL = (1.25, 1.55)  # head extent (hair to chin) over image height; the video uses the middle
DRIVING_RES = 96


def driving_cameras(rng: np.random.Generator, n: int, res: int, yaw_deg: float = 20.0, pitch_deg: float = 12.0,
                    fill: tuple[float, float] = DRIVING_FILL) -> Cameras:
    """Near-frontal cameras framed on the face (``fill``: head extent over image height), with pose jitter."""
    from .data.synth.rig import HEAD_EXTENT

    yaw = np.deg2rad(rng.uniform(-yaw_deg, yaw_deg, n))
    pitch = np.deg2rad(rng.uniform(-pitch_deg, pitch_deg, n) + 4.0)
    dist = rng.uniform(0.9, 1.1, n)
    d = np.stack([np.cos(pitch) * np.sin(yaw), np.sin(pitch), np.cos(pitch) * np.cos(yaw)], -1)
    f = rng.uniform(*fill, n) * res * dist / HEAD_EXTENT
    pp = res / 2 + rng.uniform(-0.03, 0.03, (n, 2)) * res
    K = torch.stack([intrinsics(float(f[k]), float(f[k]), float(pp[k, 0]), float(pp[k, 1])) for k in range(n)])
    target = torch.tensor([0.0, -0.01, 0.0])
    return Cameras(K.float(), look_at(torch.from_numpy(d * dist[:, None]).float(), target), res, res)
