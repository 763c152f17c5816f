"""Neutral SynthHeads assembly and the expression deformation applied per frame.

The neutral cloud is built once per identity (cached). Expressions are then a few vectorised operations:
sparse linear displacement fields (smile, funnel, puff, brows, tongue), a jaw rotation about a hinge weighted
per Gaussian (hard split along the lips so the mouth opens onto the interior), and eyelids that slide over the
eyeballs. Hair, ears, eyeballs and accessories keep their neutral values bit for bit.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import torch

from ...gaussians import Gaussians
from .expressions import EXPR_INDEX, check_code
from .face import HeadShape
from .hair import build_accessories, build_facial_hair, build_hair
from .head import (
    build_brows,
    build_ears,
    build_eyes,
    build_mouth_interior,
    build_neck,
    build_skin,
    lid_geometry,
)
from .identity import Identity, person_rng
from .parts import FIELD_PARTS, PART_ID, GaussianAccumulator
from .shapes import gauss2, normalize, quat_mul, smoothstep


@dataclass
class NeutralHead:
    means: np.ndarray
    quats: np.ndarray
    scales: np.ndarray
    opacities: np.ndarray
    colors: np.ndarray
    part: np.ndarray  # (N,) int8 into PARTS
    linear: list  # [(expression index, gaussian indices, displacement at full activation (n,3))]
    jaw_idx: np.ndarray
    jaw_w: np.ndarray
    hinge: np.ndarray
    jaw_max_angle: float
    lids: dict


def _fields(shape: HeadShape, p: np.ndarray, nrm_side: np.ndarray) -> dict[str, np.ndarray]:
    """Full-activation displacements (n,3) of the smooth face fields at neutral positions ``p``."""
    x, y, z = p[:, 0], p[:, 1], p[:, 2]
    front = smoothstep(0.0, 0.03, z)[:, None]
    m, w = shape.y_mouth, shape.mouth_w
    out = {}
    for name, s in (("mouthSmileLeft", 1), ("mouthSmileRight", -1)):
        g = gauss2(x - s * w, y - m, 0.013, 0.012)
        cheek = gauss2(x - s * (w + 0.012), y - m - 0.025, 0.014, 0.012)
        d = g[:, None] * np.array([s * 0.0055, 0.0065, -0.0025]) + cheek[:, None] * np.array([s * 0.001, 0.003, 0.002])
        out[name] = d * front
    g = gauss2(x, y - m, w * 1.15, 0.012)
    out["mouthFunnel"] = g[:, None] * np.stack([-0.35 * x, -0.2 * (y - m), np.full_like(x, 0.008)], -1) * front
    g = sum(gauss2(x - s * 0.036, y - m - 0.008, 0.017, 0.017)[:, None] * nrm_side[s] for s in (-1, 1))
    out["cheekPuff"] = 0.009 * g * front
    band = smoothstep(shape.y_eye + 0.004, shape.y_eye + 0.012, y) * smoothstep(shape.y_brow + 0.05, shape.y_brow, y)
    inner = gauss2(np.abs(x) - 0.012, 0, 0.012, 1) * band
    out["browInnerUp"] = inner[:, None] * np.array([0.0, 0.0065, 0.0005]) * front
    for name, s in (("browOuterUpLeft", 1), ("browOuterUpRight", -1)):
        outer = gauss2(x - s * (shape.eye_x + 0.012), 0, 0.013, 1) * band
        out[name] = outer[:, None] * np.array([0.0, 0.0055, 0.0]) * front
    return out


def build_neutral(ident: Identity) -> NeutralHead:
    shape = HeadShape(ident)
    rng = person_rng(ident.seed, ident.person, 1)
    acc = GaussianAccumulator()
    build_skin(shape, rng, acc)
    build_neck(shape, rng, acc)
    build_ears(shape, rng, acc)
    lids = build_eyes(shape, rng, acc)
    build_brows(shape, rng, acc)
    mouth = build_mouth_interior(shape, rng, acc)
    build_facial_hair(shape, rng, acc)
    build_hair(shape, rng, acc)
    build_accessories(shape, rng, acc)
    a = acc.arrays()
    means = a["means"].astype(np.float64)

    field_idx = np.flatnonzero(np.isin(a["part"], [PART_ID[n] for n in FIELD_PARTS]))
    side_n = {s: normalize(np.array([s * 0.75, -0.1, 0.65])) for s in (-1, 1)}
    fields = _fields(shape, means[field_idx], side_n)
    linear = []
    for name, d in fields.items():
        keep = np.abs(d).max(-1) > 1e-6
        linear.append((EXPR_INDEX[name], field_idx[keep], d[keep].astype(np.float32)))
    tongue = mouth["tongue"]
    reach = mouth["tongue_reach"][:, None]
    linear.append((EXPR_INDEX["tongueOut"], tongue, (reach * np.array([0.0, -0.004, 0.03])).astype(np.float32)))

    jaw_w = np.zeros(len(means))
    jaw_w[field_idx] = shape.jaw_weight(means[field_idx])
    jaw_w[mouth["teeth_lower"]] = 1.0
    jaw_w[mouth["tongue"]] = 1.0
    cav = mouth["cavity"]
    jaw_w[cav] = smoothstep(shape.y_mouth + 0.008, shape.y_mouth - 0.012, means[cav, 1])
    jaw_idx = np.flatnonzero(jaw_w > 1e-4)
    lids["idx"] = lids["idx"].astype(np.int64)
    n = NeutralHead(means=a["means"], quats=a["quats"], scales=a["scales"], opacities=a["opacities"],
                    colors=a["colors"], part=a["part"], linear=linear, jaw_idx=jaw_idx,
                    jaw_w=jaw_w[jaw_idx].astype(np.float32), hinge=shape.hinge, jaw_max_angle=shape.jaw_max_angle,
                    lids=lids)
    p, q, s = lid_geometry(lids, np.zeros(len(lids["idx"])), np.zeros(len(lids["idx"])))
    n.means[lids["idx"]], n.quats[lids["idx"]], n.scales[lids["idx"]] = p, q, s
    return n


_CACHE: OrderedDict[tuple, NeutralHead] = OrderedDict()
_CACHE_SIZE = 16


def neutral_head(ident: Identity) -> NeutralHead:
    """The cached neutral geometry of ``ident`` (built on first use; LRU of a few identities)."""
    key = ident.cache_key()
    if key in _CACHE:
        _CACHE.move_to_end(key)
        return _CACHE[key]
    head = build_neutral(ident)
    _CACHE[key] = head
    while len(_CACHE) > _CACHE_SIZE:
        _CACHE.popitem(last=False)
    return head


def deform(head: NeutralHead, expr) -> Gaussians:
    """Apply an expression code to the neutral head → unbatched float32 Gaussians (same order every frame)."""
    z = check_code(expr)
    means = head.means.astype(np.float64)
    quats = head.quats.copy()
    scales = head.scales.copy()
    for e, idx, d in head.linear:
        if z[e] != 0:
            means[idx] += z[e] * d
    a = z[EXPR_INDEX["jawOpen"]] * head.jaw_max_angle
    if a != 0:
        ang = a * head.jaw_w.astype(np.float64)
        c, s = np.cos(ang), np.sin(ang)
        rel = means[head.jaw_idx] - head.hinge
        y = rel[:, 1] * c - rel[:, 2] * s
        zz = rel[:, 1] * s + rel[:, 2] * c
        means[head.jaw_idx] = head.hinge + np.stack([rel[:, 0], y, zz], -1)
        rq = np.stack([np.cos(ang / 2), np.sin(ang / 2), np.zeros_like(ang), np.zeros_like(ang)], -1)
        quats[head.jaw_idx] = quat_mul(rq, quats[head.jaw_idx].astype(np.float64))
    lids = head.lids
    left = lids["side"] > 0
    blink = np.where(left, z[EXPR_INDEX["eyeBlinkLeft"]], z[EXPR_INDEX["eyeBlinkRight"]])
    wide = np.where(left, z[EXPR_INDEX["eyeWideLeft"]], z[EXPR_INDEX["eyeWideRight"]])
    if blink.any() or wide.any():
        p, q, s = lid_geometry(lids, blink, wide)
        means[lids["idx"]], quats[lids["idx"]], scales[lids["idx"]] = p, q, s
    return Gaussians(means=torch.from_numpy(means.astype(np.float32)), quats=torch.from_numpy(quats.astype(np.float32)),
                     scales=torch.from_numpy(scales.astype(np.float32)),
                     opacities=torch.from_numpy(head.opacities.copy()), colors=torch.from_numpy(head.colors.copy()))
