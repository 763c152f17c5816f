"""Evaluation metrics of paper §4.2: PSNR, SSIM, LPIPS (paired images), JOD (FovVideoVDP), AKD and CSIM.

Every metric either gives a number computed here or says it is "not available" and why; never a stand-in
number. SSIM is the loss's implementation (3DGS window). LPIPS needs the torchvision backbone on disk; JOD needs
the optional ``pyfvvdp`` package; AKD and CSIM need a keypoint / identity model registered by name (the paper
uses PIPNet and ArcFace; neither ships weights with avat3r).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..train.losses import LpipsWeightsMissing, build_lpips, lpips_distance, ssim


# -- paired-image metrics ----------------------------------------------------------------------------
def _f(x: torch.Tensor) -> torch.Tensor:
    """float32, or float64 when given float64 (reference computations)."""
    return x if x.dtype == torch.float64 else x.float()


def psnr(pred: torch.Tensor, target: torch.Tensor, per_image: bool = False, max_value: float = 1.0):
    """10·log10(max² / MSE) of (…,H,W,3) images; ``per_image`` over the flattened leading axes."""
    diff = (_f(pred) - _f(target)) ** 2
    mse = diff.reshape(-1, *diff.shape[-3:]).mean(dim=(1, 2, 3)) if per_image else diff.mean()
    return 10.0 * torch.log10(max_value ** 2 / mse.clamp_min(1e-20))


def ssim_metric(pred: torch.Tensor, target: torch.Tensor, per_image: bool = False) -> torch.Tensor:
    return ssim(_f(pred).clamp(0, 1), _f(target), per_image=per_image)


class Unavailable(RuntimeError):
    """A metric cannot be computed here; the message says why (one line)."""


class LpipsMetric:
    name = "lpips"

    def __init__(self, net: str = "alex", weights: str | None = None, device="cpu"):
        try:
            self.module = build_lpips(net, weights).to(device)
        except LpipsWeightsMissing as e:
            raise Unavailable(str(e)) from None

    @torch.no_grad()
    def __call__(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return lpips_distance(self.module, pred.float().clamp(0, 1), target.float())


class JodMetric:
    """FovVideoVDP's JOD (10 = identical) via ``pyfvvdp``, which is optional and runs offline (its display
    models ship with the package). Each example's target views are scored as images (no temporal axis).

    Install it with ``pip install --no-deps pyfvvdp imageio``: its declared dependency on the PyPI package
    ``ffmpeg`` installs a module of the same name that shadows ffmpeg-python, which video writing needs."""

    name = "jod"

    def __init__(self, display: str = "standard_fhd", device="cpu"):
        try:
            from pyfvvdp import fvvdp
        except ImportError:
            raise Unavailable("JOD needs the optional package pyfvvdp (pip install --no-deps pyfvvdp imageio)") from None
        try:
            self.metric = fvvdp(display_name=display, heatmap=None, quiet=True, device=torch.device(device))
        except Exception as e:  # noqa: BLE001 - any failure to set it up offline means "not available"
            raise Unavailable(f"pyfvvdp could not start offline ({str(e).splitlines()[0]})") from None

    @torch.no_grad()
    def __call__(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        scores = []
        for p, t in zip(pred.reshape(-1, *pred.shape[-3:]), target.reshape(-1, *target.shape[-3:])):
            q, _ = self.metric.predict(p.float().clamp(0, 1), t.float(), dim_order="HWC", frames_per_second=0)
            scores.append(float(q))
        return torch.tensor(scores)


# -- face metrics through pluggable models --------------------------------------------------------------
KeypointModel = Callable[[torch.Tensor], torch.Tensor]  # (N,H,W,3) → (N,K,2) pixels (NaN where not found)
IdentityModel = Callable[[torch.Tensor], torch.Tensor]  # (N,H,W,3) → (N,D) embeddings

KEYPOINT_MODELS: dict[str, Callable[..., KeypointModel]] = {}
IDENTITY_MODELS: dict[str, Callable[..., IdentityModel]] = {}


def register_keypoint_model(name: str, factory: Callable[..., KeypointModel]) -> None:
    """Make a keypoint detector available to AKD under ``name`` (the paper's is PIPNet, 98 WFLW points)."""
    KEYPOINT_MODELS[name] = factory


def register_identity_model(name: str, factory: Callable[..., IdentityModel]) -> None:
    """Make a face-identity embedder available to CSIM under ``name`` (the paper's is ArcFace)."""
    IDENTITY_MODELS[name] = factory


def _lookup(registry: dict, name: str | None, what: str, metric: str):
    if not registry:
        raise Unavailable(f"{metric} needs a {what} model and none is registered (avat3r ships no {what} weights; "
                          f"see register_{what}_model)")
    if name is None:
        name = min(registry)
    if name not in registry:
        raise Unavailable(f"{metric}: no {what} model named {name!r} (registered: {', '.join(sorted(registry))})")
    try:
        return registry[name]()
    except Exception as e:  # noqa: BLE001 - e.g. weights missing: report, do not invent numbers
        raise Unavailable(f"{metric}: the {what} model {name!r} could not start ({str(e).splitlines()[0]})") from None


class AkdMetric:
    """Average keypoint distance in pixels between keypoints detected on prediction and ground truth."""

    name = "akd"

    def __init__(self, model: str | None = None):
        self.model = _lookup(KEYPOINT_MODELS, model, "keypoint", "AKD")

    @torch.no_grad()
    def __call__(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        kp_p = self.model(pred.reshape(-1, *pred.shape[-3:]).float().clamp(0, 1))
        kp_t = self.model(target.reshape(-1, *target.shape[-3:]).float())
        # Points the detector missed (NaN) are ignored; an image with none left scores NaN.
        return torch.nanmean((kp_p - kp_t).norm(dim=-1), dim=-1)


class CsimMetric:
    """Cosine similarity of identity embeddings of prediction and ground truth."""

    name = "csim"

    def __init__(self, model: str | None = None):
        self.model = _lookup(IDENTITY_MODELS, model, "identity", "CSIM")

    @torch.no_grad()
    def __call__(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        e_p = self.model(pred.reshape(-1, *pred.shape[-3:]).float().clamp(0, 1))
        e_t = self.model(target.reshape(-1, *target.shape[-3:]).float())
        return torch.nn.functional.cosine_similarity(e_p, e_t, dim=-1)


# -- the metric set an evaluation runs ------------------------------------------------------------------
METRICS = ("psnr", "ssim", "lpips", "jod", "akd", "csim")


@dataclass
class MetricSet:
    """Per-image metric functions that could be set up, and the reason for each one that could not."""

    functions: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]]
    unavailable: dict[str, str]

    @torch.no_grad()
    def __call__(self, pred: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per-image values (flattened leading axes) of every available metric."""
        return {name: fn(pred, target).reshape(-1).float().cpu() for name, fn in self.functions.items()}


def build_metrics(lpips_net: str = "alex", lpips_weights: str | None = None, keypoint_model: str | None = None,
                  identity_model: str | None = None, jod_display: str = "standard_fhd",
                  device="cpu") -> MetricSet:
    functions = {"psnr": lambda p, t: psnr(p, t, per_image=True),
                 "ssim": lambda p, t: ssim_metric(p, t, per_image=True)}
    unavailable = {}
    builders = {"lpips": lambda: LpipsMetric(lpips_net, lpips_weights, device),
                "jod": lambda: JodMetric(jod_display, device), "akd": lambda: AkdMetric(keypoint_model),
                "csim": lambda: CsimMetric(identity_model)}
    for name, build in builders.items():
        try:
            functions[name] = build()
        except Unavailable as e:
            unavailable[name] = str(e)
    return MetricSet(functions, unavailable)
