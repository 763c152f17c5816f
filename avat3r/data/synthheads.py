"""SynthHeads: procedural Gaussian heads for offline training and tests (DESIGN §5).

Identities × expressions × an Ava-256-like camera rig, every head a set of 3D Gaussians rendered by our own
rasterizer, everything deterministic from a seed. ``render_sample`` is the on-the-fly sample source: the
same ``(seed, person, segment, frame, camera)`` always gives the same bytes. Parameters are described in
docs/synthheads.md. The implementation lives in ``avat3r.data.synth``.
"""

from __future__ import annotations

import numpy as np

from .synth.expressions import (
    ALL_SEGMENTS,
    EXPRESSION_NAMES,
    EXPRESSION_SPACE,
    RANDOM_SEGMENT,
    SEGMENTS,
    neutral_code,
    random_code,
    segment_codes,
)
from .synth.head import CAVITY_COLOR
from .synth.identity import FACIAL_HAIR, HAIR_STYLES, Identity, make_identity, person_name
from .synth.parts import PARTS, RIGID_PARTS
from .synth.render import contact_sheet, head_gaussians, render_frame_samples, render_sample, render_views
from .synth.rig import make_rig
from .synth.rigging import neutral_head

__all__ = [
    "ALL_SEGMENTS",
    "RANDOM_SEGMENT",
    "random_code",
    "CAVITY_COLOR",
    "EXPRESSION_NAMES",
    "EXPRESSION_SPACE",
    "FACIAL_HAIR",
    "HAIR_STYLES",
    "PARTS",
    "RIGID_PARTS",
    "SEGMENTS",
    "Identity",
    "contact_sheet",
    "head_gaussians",
    "head_parts",
    "make_identity",
    "make_rig",
    "neutral_code",
    "person_name",
    "render_frame_samples",
    "render_sample",
    "render_views",
    "segment_codes",
]


def head_parts(identity: Identity) -> np.ndarray:
    """(N,) part label of every Gaussian of ``head_gaussians(identity, ·)`` (indices into ``PARTS``)."""
    return neutral_head(identity).part.copy()
