"""The ``landmarks`` expression extractor (`animate --video --extractor landmarks`): face-mesh landmarks →
ARKit-named expression coefficients, for any expression space whose parameters carry ARKit blendshape names
(``synthheads-v1``).

Per frame the tracker's 3D mesh is aligned to the canonical face (a similarity transform on the rigid
landmarks), so every measure below is in metres of the head's own frame, whatever the head pose and distance:

| measure | ARKit names |
|---|---|
| gap between the inner lips, nose-to-chin distance | ``jawOpen`` |
| eye aperture (upper to lower lid, 3 pairs), relative | ``eyeBlink*``, ``eyeWide*``, ``eyeSquint*`` |
| mouth corner up + outwards | ``mouthSmile*`` |
| mouth width | ``mouthFunnel``, ``mouthPucker`` |
| inner / outer brow height above the eye corners | ``browInnerUp``, ``browOuterUp*``, ``browDown*`` |
| cheek width | ``cheekPuff`` |

Each measure is taken relative to the video's most neutral frame (the frame closest to the rest value of every
mouth measure: mouth closed, corners low, width typical; the eye apertures, which jitter, relative
to their median over the video) and divided by its *gain*, the
change at a coefficient of 1, measured on SynthHeads faces through the same tracker (``GAINS``); codes are
clipped to [0, 1]. Names the landmarks cannot see (``tongueOut``, …) stay at the space's neutral value.
Frames without a face take the codes of the nearest frame with one.
"""

from __future__ import annotations

import numpy as np
import torch

from ..driving import DrivingError
from .tracker import FaceTracker, NoFaceError, frame_ranges, track_faces

# the 52 ARKit blendshape names; a space whose parameters use none of the measured ones cannot be driven
ARKIT_NAMES = frozenset("""
browDownLeft browDownRight browInnerUp browOuterUpLeft browOuterUpRight cheekPuff cheekSquintLeft
cheekSquintRight eyeBlinkLeft eyeBlinkRight eyeLookDownLeft eyeLookDownRight eyeLookInLeft eyeLookInRight
eyeLookOutLeft eyeLookOutRight eyeLookUpLeft eyeLookUpRight eyeSquintLeft eyeSquintRight eyeWideLeft
eyeWideRight jawForward jawLeft jawOpen jawRight mouthClose mouthDimpleLeft mouthDimpleRight mouthFrownLeft
mouthFrownRight mouthFunnel mouthLeft mouthLowerDownLeft mouthLowerDownRight mouthPressLeft mouthPressRight
mouthPucker mouthRight mouthRollLower mouthRollUpper mouthShrugLower mouthShrugUpper mouthSmileLeft
mouthSmileRight mouthStretchLeft mouthStretchRight mouthUpperUpLeft mouthUpperUpRight noseSneerLeft
noseSneerRight tongueOut""".split())

# mediapipe face-mesh indices, (subject's right, subject's left) where sided
LIPS_INNER = ((13, 14), (82, 87), (312, 317))  # (upper, lower) pairs
NOSE_BASE, CHIN = 2, 152
MOUTH_CORNER = (61, 291)
LIP_MID = (0, 17)  # outer upper / lower lip centre
EYE_LIDS = (((159, 145), (158, 153), (160, 144)), ((386, 374), (385, 380), (387, 373)))  # (upper, lower)
EYE_CORNERS = ((33, 133), (263, 362))  # (outer, inner)
BROW_INNER = ((107, 55), (336, 285))
BROW_OUTER = ((70, 46), (300, 276))
CHEEK = ((205, 187, 50), (425, 411, 280))

FEATURES = ("gap", "chin", "eye_r", "eye_l", "smile_r", "smile_l", "width", "protrusion", "brow_in",
            "brow_out_r", "brow_out_l", "cheek")
# what a coefficient of 1 changes each measure by (metres; the eyes: the fraction of the neutral aperture),
# measured on SynthHeads persons through the same tracker (recipes/build_face_model.py --gains). Blinks are the
# exception: the tracker sees SynthHeads' closed lids on some persons only (the aperture shrinks by 12–70 %
# depending on the person); 0.5 keeps a neutral eye's jitter (±10 %) under 0.2 and reads a real blink as 1. It
# sees no eye widening nor lip protrusion on SynthHeads: eyeWide keeps a nominal gain (a 25 % larger aperture),
# protrusion is not used.
GAINS = {"gap": 0.0268, "chin": 0.0069, "blink": 0.5, "wide": 0.25, "smile": 0.0100, "width": 0.0056,
         "protrusion": 0.006, "brow_in": 0.0020, "brow_out": 0.0021, "cheek": 0.00095}
# the rest end of each measure (a quantile over the video) and its scale in code units, for the neutral frame
REST_QUANTILE = {"gap": 0.05, "chin": 0.05, "eye_r": 0.5, "eye_l": 0.5, "smile_r": 0.1, "smile_l": 0.1,
                 "width": 0.5, "protrusion": 0.5, "brow_in": 0.1, "brow_out_r": 0.1, "brow_out_l": 0.1,
                 "cheek": 0.1}
EYE_FEATURES = (2, 3)
NEUTRAL_FEATURES = ("gap", "chin", "smile_r", "smile_l", "width")
LOW_FACE_RATE = 0.8  # animate warns when fewer frames than this have a face


def _side_order() -> tuple[int, int]:
    """(0, 1) when the first landmark of each pair is the subject's right (−x) in the canonical face."""
    from .tracker import canonical_face

    model, _ = canonical_face()
    return (0, 1) if model[MOUTH_CORNER[0], 0] < model[MOUTH_CORNER[1], 0] else (1, 0)


def measure(H: np.ndarray) -> np.ndarray:
    """(N, 478, 3) head-frame landmarks → (N, F) measures (FEATURES order; NaN rows stay NaN)."""
    right, left = _side_order()
    y = H[..., 1]
    gap = np.mean([y[:, u] - y[:, lo] for u, lo in LIPS_INNER], axis=0)
    chin = y[:, NOSE_BASE] - y[:, CHIN]

    def eye(s):
        ap = np.mean([np.linalg.norm(H[:, u] - H[:, lo], axis=-1) for u, lo in EYE_LIDS[s]], axis=0)
        o, i = EYE_CORNERS[s]
        return ap / np.linalg.norm(H[:, o] - H[:, i], axis=-1)

    def smile(s):
        c = H[:, MOUTH_CORNER[s]]
        outward = c[:, 0] if s == left else -c[:, 0]
        return c[:, 1] + outward

    width = np.abs(H[:, MOUTH_CORNER[left], 0] - H[:, MOUTH_CORNER[right], 0])
    protrusion = np.mean([H[:, i, 2] for i in LIP_MID], axis=0)
    eye_y = lambda s: np.mean([y[:, i] for i in EYE_CORNERS[s]], axis=0)  # noqa: E731
    brow_in = np.mean([y[:, i] for s in (right, left) for i in BROW_INNER[s]], axis=0) - (eye_y(right) + eye_y(left)) / 2
    brow_out = [np.mean([y[:, i] for i in BROW_OUTER[s]], axis=0) - eye_y(s) for s in (right, left)]
    cheek = np.mean([H[:, j, 0] for j in CHEEK[left]], axis=0) - np.mean([H[:, j, 0] for j in CHEEK[right]], axis=0)
    return np.stack([gap, chin, eye(right), eye(left), smile(right), smile(left), width, protrusion, brow_in, brow_out[0],
                     brow_out[1], cheek], axis=1)


def _feature_scale() -> np.ndarray:
    g = GAINS
    return np.array([g["gap"], g["chin"], g["blink"], g["blink"], g["smile"], g["smile"], g["width"],
                     g["protrusion"], g["brow_in"], g["brow_out"], g["brow_out"], g["cheek"]])


def neutral_frame(F: np.ndarray) -> int:
    """Index of the most neutral row of measures F (N, F) (rows with NaN never chosen)."""
    ok = np.isfinite(F).all(1)
    if not ok.any():
        raise NoFaceError("no frame with a face to calibrate against")
    rest = np.array([np.quantile(F[ok, k], REST_QUANTILE[name]) for k, name in enumerate(FEATURES)])
    dev = np.abs(F - rest) / _feature_scale()
    # the mouth decides: its measures move by centimetres, while the brows' and cheeks' gains (1–2 mm) are near
    # the tracker's jitter, and the eyes' reference is their median (see reference_measures)
    use = [FEATURES.index(n) for n in NEUTRAL_FEATURES]
    score = np.where(ok, dev[:, use].sum(1), np.inf)
    return int(np.argmin(score))


def reference_measures(F: np.ndarray, neutral: int) -> np.ndarray:
    """The neutral measures: those of the most neutral frame, but for the eye apertures, which jitter by about
    ±10 % from frame to frame, the median over the video (eyes are open most of the time)."""
    ref = F[neutral].copy()
    ok = np.isfinite(F).all(1)
    for k in EYE_FEATURES:
        ref[k] = np.median(F[ok, k])
    return ref


def arkit_coefficients(F: np.ndarray, ref: np.ndarray) -> dict[str, np.ndarray]:
    """Measures (N, F) and the neutral measures (F,) → ARKit coefficients in [0, 1], by name."""
    d = F - ref
    k = {n: i for i, n in enumerate(FEATURES)}
    g = GAINS
    c = lambda v: np.clip(v, 0.0, 1.0)  # noqa: E731
    out: dict[str, np.ndarray] = {}
    out["jawOpen"] = c(0.7 * d[:, k["gap"]] / g["gap"] + 0.3 * d[:, k["chin"]] / g["chin"])
    for side, name in (("r", "Right"), ("l", "Left")):
        rel = F[:, k[f"eye_{side}"]] / ref[k[f"eye_{side}"]] - 1.0
        out[f"eyeBlink{name}"] = c(-rel / g["blink"])
        out[f"eyeWide{name}"] = c(rel / g["wide"])
        out[f"eyeSquint{name}"] = c(-rel / g["blink"] * 0.5)
        out[f"mouthSmile{name}"] = c(d[:, k[f"smile_{side}"]] / g["smile"])
        out[f"browOuterUp{name}"] = c(d[:, k[f"brow_out_{side}"]] / g["brow_out"])
        out[f"browDown{name}"] = c(-(d[:, k[f"brow_out_{side}"]] + d[:, k["brow_in"]]) / (2 * g["brow_out"]))
    out["mouthFunnel"] = c(-d[:, k["width"]] / g["width"])
    out["mouthPucker"] = out["mouthFunnel"]
    out["browInnerUp"] = c(d[:, k["brow_in"]] / g["brow_in"])
    out["cheekPuff"] = c(d[:, k["cheek"]] / g["cheek"])
    return out


def space_mapping(space: str) -> tuple[list[str], np.ndarray]:
    """(parameter names, neutral code) of ``space``; a space without measurable ARKit names is refused."""
    from ..expressions import get_space

    try:
        sp = get_space(space)
    except Exception as err:  # an unknown space is the caller's one-line error too
        raise DrivingError(str(err)) from None
    measured = {n for n in sp.names if n in ARKIT_NAMES} & set(arkit_coefficients(np.zeros((1, len(FEATURES))),
                                                                                 np.ones(len(FEATURES))))
    if not measured:
        raise DrivingError(f"expression space {space!r} has no ARKit-named parameters (its names are "
                           f"{', '.join(sp.names[:3])}, …); the landmarks extractor cannot drive it: use the regressor "
                           "with weights trained for that space", param="extractor")
    return list(sp.names), np.asarray(sp.neutral, np.float32)


class LandmarkExtractor:
    """A two-pass extractor: called on batches of frames (in video order) it returns per-frame measures;
    :meth:`finish` turns all of them into codes of ``space`` (the neutral frame needs the whole video)."""

    name = "landmarks"

    def __init__(self, space: str = "synthheads-v1"):
        from .tracker import _mediapipe

        _mediapipe()  # a missing tracker is a one-line error before any frame is read
        self.names, self.neutral = space_mapping(space)
        self.space = space
        self._tracker: FaceTracker | None = None
        self.found: list[bool] = []
        self.neutral_index: int | None = None

    def __call__(self, frames) -> torch.Tensor:
        x = frames.numpy() if isinstance(frames, torch.Tensor) else np.asarray(frames)
        if x.dtype != np.uint8:
            x = (np.clip(x, 0, 1) * 255 + 0.5).astype(np.uint8)
        if self._tracker is None:
            self._tracker = FaceTracker(static=False)
        track = track_faces(list(x), video=True, smooth_sigma=0.0, tracker=self._tracker)
        self.found.extend(bool(f) for f in track.found)
        return torch.from_numpy(measure(track.head_landmarks())).float()

    @property
    def face_found_rate(self) -> float:
        return float(np.mean(self.found)) if self.found else 0.0

    def missing_frames(self) -> str:
        return frame_ranges(i for i, f in enumerate(self.found) if not f)

    def close(self) -> None:
        if self._tracker is not None:
            self._tracker.close()
            self._tracker = None

    def finish(self, measures: torch.Tensor) -> torch.Tensor:
        self.close()
        F = measures.double().numpy()
        ok = np.isfinite(F).all(1)
        if not ok.any():
            raise NoFaceError(f"no face found in any of the {len(F)} frames (frames {frame_ranges(range(len(F)))})")
        self.neutral_index = neutral_frame(F)
        # frames without a face: the nearest frame with one
        idx = np.flatnonzero(ok)
        nearest = idx[np.abs(np.arange(len(F))[:, None] - idx[None]).argmin(1)]
        F = F[nearest]
        coeffs = arkit_coefficients(F, reference_measures(F, self.neutral_index))
        codes = np.tile(self.neutral, (len(F), 1))
        for j, n in enumerate(self.names):
            if n in coeffs:
                codes[:, j] = coeffs[n]
        return torch.from_numpy(codes.astype(np.float32))


def landmark_extractor_factory(weights=None, device="cpu", space: str = "synthheads-v1") -> LandmarkExtractor:
    if weights is not None:
        raise DrivingError("the landmarks extractor takes no weights; weights are for the regressor",
                           param="extractor_weights")
    return LandmarkExtractor(space)
