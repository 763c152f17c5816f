"""Evaluation metrics of paper §4.2: PSNR, SSIM, LPIPS (paired images), JOD (FovVideoVDP), AKD and CSIM,
plus the expression metrics that say whether the avatar follows its expression code (see "expression
metrics" below).

Every metric either gives a number computed here or says it is "not available" and why; never a stand-in
number. SSIM is the loss's implementation (3DGS window). LPIPS needs the torchvision backbone on disk; JOD needs
the optional ``pyfvvdp`` package; AKD and CSIM need a keypoint / identity model registered by name (the paper
uses PIPNet and ArcFace; neither ships weights with avat3r).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from ..errors import Avat3rError

# one definition of each image comparison for training and evaluation; eval re-exports them
from ..photometric import REGION_TAU as REGION_TAU
from ..photometric import LpipsWeightsMissing, build_lpips, lpips_distance, ssim
from ..photometric import changing_region as changing_region
from ..photometric import psnr as psnr


# -- paired-image metrics ----------------------------------------------------------------------------
def _f(x: torch.Tensor) -> torch.Tensor:
    """float32, or float64 when given float64 (reference computations)."""
    return x if x.dtype == torch.float64 else x.float()


def ssim_metric(pred: torch.Tensor, target: torch.Tensor, per_image: bool = False) -> torch.Tensor:
    return ssim(_f(pred).clamp(0, 1), _f(target), per_image=per_image)


class Unavailable(Avat3rError, RuntimeError):
    """A metric cannot be computed here; the message says why (one line)."""


class LpipsMetric:
    name = "lpips"

    def __init__(self, net: str = "alex", weights: str | None = None, device="cpu"):
        try:
            self.module = build_lpips(net, weights).to(device)
        except (LpipsWeightsMissing, ValueError) as e:  # missing, or not a torchvision checkpoint
            raise Unavailable(str(e).splitlines()[0]) from None

    @torch.no_grad()
    def __call__(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return lpips_distance(self.module, pred.float().clamp(0, 1), target.float())


class JodMetric:
    """FovVideoVDP's JOD (10 = identical) via ``pyfvvdp``, which is optional and runs offline (its display
    models ship with the package). Each example's target views are scored as images; ``video`` scores a
    video with the temporal model.

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

    @torch.no_grad()
    def video(self, pred: torch.Tensor, target: torch.Tensor, fps: float) -> float:
        """JOD of a video (F,H,W,3) against its truth, with the temporal model at ``fps`` frames per second."""
        q, _ = self.metric.predict(pred.float().clamp(0, 1), target.float(), dim_order="FHWC",
                                   frames_per_second=float(fps))
        return float(q)


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


def _face_mesh_keypoints() -> KeypointModel:
    from ..face.keypoints import face_mesh_keypoints

    return face_mesh_keypoints()  # FaceTrackerMissing (one line) without the [face] extra: AKD not available


register_keypoint_model("face-mesh", _face_mesh_keypoints)  # the shipped tracker's 478 landmarks


def _lookup(registry: dict, name: str | None, what: str, metric: str):
    if not registry:
        raise Unavailable(f"{metric} needs a {what} model and none is registered (see register_{what}_model)")
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


# -- expression metrics -------------------------------------------------------------------------------
# Whole-frame PSNR barely sees an expression (a smile moves ~2 % of a 64² frame), and an avatar that ignores its
# code scores almost as well as one that follows it. These scores compare the avatar decoded with the target
# code against the same avatar decoded with the reference code (the inputs' expression), inside the pixels the
# expression change moves in the truth. Images are (V,H,W,3) in [0,1]: the target views of one example. Every
# score is a finite float, or None where it is undefined (an empty region: the truth does not change). The
# changing region (avat3r.photometric.changing_region, REGION_TAU) is the one the training loss weights.
NEUTRAL_CHANGE = 0.05  # a code whose parameters all change by less than this is grouped as "neutral"
PSNR_MAX = 100.0  # dB: the PSNR of a perfect prediction, so that every score is a finite number


def weighted_psnr(pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None) -> float | None:
    """PSNR of the MSE pooled over all pixels of all views (each pixel weighted by ``weight`` (V,H,W), channels
    averaged) — not a mean of per-view PSNRs, so no single view can score infinity. None when the weights sum
    to zero."""
    err = ((pred.double() - target.double()) ** 2).mean(dim=-1)
    w = torch.ones_like(err) if weight is None else weight.double().expand_as(err)
    total = float(w.sum())
    if total <= 0:
        return None
    mse = float((err * w).sum()) / total
    return min(PSNR_MAX, 10.0 * math.log10(1.0 / mse)) if mse > 0 else PSNR_MAX


def pooled_psnr(pred: torch.Tensor, target: torch.Tensor) -> float:
    """Whole-frame PSNR of an example: the MSE averaged over all pixels of all its target views, then the log."""
    return weighted_psnr(pred, target)


def foreground_psnr(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> float | None:
    """PSNR of the MSE weighted by the true soft foreground ``mask`` (V,H,W), pooled over views: errors on the
    background do not count."""
    return weighted_psnr(pred, target, mask)


def region_psnr(pred: torch.Tensor, target: torch.Tensor, region: torch.Tensor) -> float | None:
    """PSNR of the MSE pooled over all region pixels of all views; None for an empty region."""
    return weighted_psnr(pred, target, region)


def _mean_abs_change(a: torch.Tensor, b: torch.Tensor, region: torch.Tensor) -> float:
    change = (a.double() - b.double()).abs().mean(dim=-1)
    return float((change * region.double()).sum()) / float(region.double().sum())


def expression_gain(pred: torch.Tensor, pred_ref: torch.Tensor, target: torch.Tensor,
                    region: torch.Tensor) -> float | None:
    """Expression gain (dB): region PSNR of the avatar decoded with the target code (``pred``) − region PSNR of
    the same avatar decoded with the reference code (``pred_ref``), both against the target truth. 0 for an
    avatar that ignores its code; None for an empty region."""
    with_code, without = region_psnr(pred, target, region), region_psnr(pred_ref, target, region)
    return None if with_code is None or without is None else with_code - without


def pasted_gain(pred_ref: torch.Tensor, target: torch.Tensor, target_ref: torch.Tensor,
                 region: torch.Tensor) -> float | None:
    """The expression gain (dB) this avatar would score if its change between the two codes were exactly the
    truth's, pasted onto its reference-code render: ``pred_ref + (target − target_ref)``, clipped to [0, 1].
    A reference for the response, not a bound: where the reconstruction is sharp, a gain far below it is the
    code's fault; where it is blurry the truth's change overshoots the blurred pixels, and an avatar that
    redraws the region (a closed eyelid over a blurred eye) can score above it. None for an empty region."""
    perfect_response = (pred_ref.double() + target.double() - target_ref.double()).clamp(0, 1)
    return expression_gain(perfect_response, pred_ref, target, region)


def response_ratio(pred: torch.Tensor, pred_ref: torch.Tensor, target: torch.Tensor, target_ref: torch.Tensor,
                   region: torch.Tensor) -> float | None:
    """Response ratio: mean over region pixels of |pred − pred_ref| / mean over region pixels of
    |target − target_ref|. 1 when the avatar changes as much as the truth, 0 when it ignores its code; None for
    an empty region (or a truth that does not change inside it)."""
    if float(region.sum()) <= 0:
        return None
    truth = _mean_abs_change(target, target_ref, region)
    return _mean_abs_change(pred, pred_ref, region) / truth if truth > 0 else None


def aligned_ratio(pred: torch.Tensor, pred_ref: torch.Tensor, target: torch.Tensor, target_ref: torch.Tensor,
                  region: torch.Tensor) -> float | None:
    """The part of the avatar's change that goes the truth's way: ⟨Δavatar, Δtruth⟩ / ⟨Δtruth, Δtruth⟩ over the
    region's pixels and channels. 1 for the truth, 0.5 half-way, 0 for an avatar that ignores its code *or*
    changes in ways unrelated to the truth (which the ratio would count), −1 for the opposite change. None for an
    empty region (or a truth that does not change inside it)."""
    inside = region.bool()
    if not bool(inside.any()):
        return None
    change = (pred.double() - pred_ref.double())[inside]
    truth = (target.double() - target_ref.double())[inside]
    norm = float((truth * truth).sum())
    return float((change * truth).sum()) / norm if norm > 0 else None


def leak_ratio(pred: torch.Tensor, pred_ref: torch.Tensor, target: torch.Tensor, target_ref: torch.Tensor,
               region: torch.Tensor, outside: torch.Tensor) -> float | None:
    """How much the avatar changes where the truth does not: mean |pred − pred_ref| over the ``outside``
    pixels (the foreground outside the region, in views with a reference image) / mean |target − target_ref|
    in the region. 0 for a change confined to the truth's pixels (and for an avatar that ignores its code: read
    it beside the ratio); an avatar whose code makes the whole head shimmer scores high. None when either set
    is empty (or the truth does not change)."""
    if float(region.sum()) <= 0 or float(outside.sum()) <= 0:
        return None
    truth = _mean_abs_change(target, target_ref, region)
    return _mean_abs_change(pred, pred_ref, outside) / truth if truth > 0 else None


def example_scores(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None,
                   pred_ref: torch.Tensor | None = None, target_ref: torch.Tensor | None = None,
                   ref_valid: torch.Tensor | None = None) -> dict[str, float | None]:
    """All pooled and expression scores of one example (the columns of metrics.parquet); the expression
    scores are None without the reference images and the avatar at the reference code."""
    scores = {"psnr": pooled_psnr(pred, target),
              "psnr_fg": foreground_psnr(pred, target, mask) if mask is not None else None,
              "psnr_region": None, "psnr_region_ref": None, "expr_gain": None, "pasted_gain": None,
              "response_ratio": None, "aligned_ratio": None, "leak_ratio": None, "region_frac": None}
    if pred_ref is None or target_ref is None:
        return scores
    region = changing_region(target, target_ref, ref_valid)
    scores.update(psnr_region=region_psnr(pred, target, region),
                  psnr_region_ref=region_psnr(pred_ref, target, region),
                  expr_gain=expression_gain(pred, pred_ref, target, region),
                  pasted_gain=pasted_gain(pred_ref, target, target_ref, region),
                  response_ratio=response_ratio(pred, pred_ref, target, target_ref, region),
                  aligned_ratio=aligned_ratio(pred, pred_ref, target, target_ref, region),
                  leak_ratio=leak_ratio(pred, pred_ref, target, target_ref, region, outside_region(region, mask, ref_valid)),
                  region_frac=float(region.float().mean()))
    return scores


def outside_region(region: torch.Tensor, mask: torch.Tensor | None, ref_valid: torch.Tensor | None) -> torch.Tensor:
    """(V,H,W) the pixels the leak ratio looks at: not in the region, in the true foreground (everywhere without
    a mask), in views that have a reference image."""
    outside = ~region.bool()
    if mask is not None:
        outside = outside & (mask > 0.5)
    if ref_valid is not None:
        outside = outside & ref_valid.bool().reshape(-1, 1, 1)
    return outside


EXPRESSION_SCORES = ("psnr_fg", "psnr_region", "psnr_region_ref", "expr_gain", "pasted_gain", "response_ratio",
                     "aligned_ratio", "leak_ratio", "region_frac")


def expression_group(expr: torch.Tensor, ref_expr: torch.Tensor, names: Sequence[str],
                     threshold: float = NEUTRAL_CHANGE) -> str:
    """The group of a code change: the name of the parameter with the largest |expr − ref_expr|, without a
    trailing Left/Right (``mouthSmileLeft`` → ``mouthSmile``); ``neutral`` when no parameter changes by
    ``threshold`` or more."""
    delta = (torch.as_tensor(expr).double() - torch.as_tensor(ref_expr).double()).abs().reshape(-1)
    i = int(delta.argmax())
    if float(delta[i]) < threshold:
        return "neutral"
    return re.sub(r"(Left|Right)$", "", names[i]) or names[i]
