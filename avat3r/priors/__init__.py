"""Priors for the model's inputs (paper §3.1): position/confidence maps and foundation-model features.

Position priors map ``(images (V,H,W,3) in [0,1], cameras (V), masks (V,H,W) | None)`` to
``pos`` (V,H,W,3) world float32 (always finite) and ``conf`` (V,H,W) float32 in [0,1]:
``geometric`` (default, weights-free visual hull + photo-consistency), ``dust3r`` (needs the DUSt3R code and a
checkpoint), ``ground-truth`` (from depth maps), ``none`` (a head-sized ellipsoid).
Feature priors map ``images`` to ``feats`` (V,C,h,w) float32: ``sapiens`` (TorchScript backbone), ``none``.
"""

from __future__ import annotations

from collections.abc import Callable

from .base import PriorError, dust3r_confidence

POSITION_PRIORS = ("geometric", "dust3r", "ground-truth", "none")
FEATURE_PRIORS = ("sapiens", "none")
DEFAULT_POSITION_PRIOR = "geometric"


def get_position_prior(name: str = DEFAULT_POSITION_PRIOR, **options) -> Callable:
    """Build the position prior called ``name`` (options go to its constructor)."""
    if name == "geometric":
        from .geometric import GeometricPrior
        return GeometricPrior(**options)
    if name == "dust3r":
        from .dust3r import Dust3rPrior
        return Dust3rPrior(**options)
    if name == "ground-truth":
        from .ground_truth import GroundTruthPrior
        return GroundTruthPrior(**options)
    if name == "none":
        from .base import NonePositionPrior
        return NonePositionPrior(**options)
    raise PriorError(f"unknown position prior {name!r}; choose one of {', '.join(POSITION_PRIORS)}")


class NoFeaturePrior:
    name = "none"

    def __call__(self, images):
        return None


def get_feature_prior(name: str = "none", **options) -> Callable:
    """Build the feature prior called ``name``; ``none`` returns None for every call."""
    if name == "sapiens":
        from .sapiens import SapiensFeatures
        return SapiensFeatures(**options)
    if name == "none":
        return NoFeaturePrior()
    raise PriorError(f"unknown feature prior {name!r}; choose one of {', '.join(FEATURE_PRIORS)}")


def compute_priors(images, cameras, masks=None, position: str = DEFAULT_POSITION_PRIOR, features: str = "none",
                   position_options: dict | None = None, feature_options: dict | None = None):
    """Priors for one set of posed photos (used by `reconstruct`): returns (pos, conf, feats or None)."""
    pos, conf = get_position_prior(position, **(position_options or {}))(images, cameras, masks)
    feats = get_feature_prior(features, **(feature_options or {}))(images)
    return pos, conf, feats


__all__ = [
    "DEFAULT_POSITION_PRIOR",
    "FEATURE_PRIORS",
    "POSITION_PRIORS",
    "PriorError",
    "compute_priors",
    "dust3r_confidence",
    "get_feature_prior",
    "get_position_prior",
]
