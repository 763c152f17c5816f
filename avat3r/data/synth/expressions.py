"""The synthheads-v1 expression space and the Ava-256-like segments (smooth expression trajectories)."""

from __future__ import annotations

import numpy as np
import torch

EXPRESSION_SPACE = "synthheads-v1"
# aligned with ARKit blendshape names; values in [0, 1]; "Left" is the subject's left (+x)
EXPRESSION_NAMES = ("jawOpen", "mouthSmileLeft", "mouthSmileRight", "mouthFunnel", "eyeBlinkLeft",
                    "eyeBlinkRight", "eyeWideLeft", "eyeWideRight", "browInnerUp", "browOuterUpLeft",
                    "browOuterUpRight", "cheekPuff", "tongueOut")
EXPR_INDEX = {n: i for i, n in enumerate(EXPRESSION_NAMES)}

# segment → [(expression names, amplitude, (start, full, hold_end, end) in normalised time)]
_SEGMENT_TRACKS = {
    "neutral": [],
    "EXP_jaw003": [(("jawOpen",), 1.0, (0.05, 0.35, 0.55, 0.85)),
                   (("mouthFunnel",), 0.6, (0.6, 0.75, 0.85, 0.97))],
    "EXP_eye_wide": [(("eyeWideLeft", "eyeWideRight"), 1.0, (0.05, 0.3, 0.55, 0.7)),
                     (("browInnerUp",), 0.9, (0.05, 0.3, 0.55, 0.7)),
                     (("browOuterUpLeft", "browOuterUpRight"), 0.8, (0.08, 0.3, 0.55, 0.7)),
                     (("eyeBlinkLeft", "eyeBlinkRight"), 1.0, (0.72, 0.8, 0.85, 0.93))],
    "EXP_tongue001": [(("jawOpen",), 0.65, (0.05, 0.3, 0.8, 0.95)),
                      (("tongueOut",), 1.0, (0.25, 0.42, 0.65, 0.82))],
    "EXP_smile": [(("mouthSmileLeft", "mouthSmileRight"), 1.0, (0.05, 0.35, 0.6, 0.85)),
                  (("jawOpen",), 0.22, (0.25, 0.42, 0.55, 0.7)),
                  (("cheekPuff",), 0.9, (0.8, 0.88, 0.93, 0.99))],
    "EXP_blink": [(("eyeBlinkLeft", "eyeBlinkRight"), 1.0, (0.05, 0.3, 0.6, 0.85))],
}
SEGMENTS = tuple(_SEGMENT_TRACKS)
# Not a fixed trajectory: every (person, frame) draws its own combination over the whole space, so training
# data holds as many distinct codes as frames (a fixed segment gives every person the same few codes).
RANDOM_SEGMENT = "random"
ALL_SEGMENTS = SEGMENTS + (RANDOM_SEGMENT,)

# groups of parameters that move together in the random segment (mostly symmetric, sometimes one-sided)
_RANDOM_GROUPS = (("jawOpen",), ("mouthSmileLeft", "mouthSmileRight"), ("mouthFunnel",),
                  ("eyeBlinkLeft", "eyeBlinkRight"), ("eyeWideLeft", "eyeWideRight"), ("browInnerUp",),
                  ("browOuterUpLeft", "browOuterUpRight"), ("cheekPuff",), ("tongueOut",))


def neutral_code() -> torch.Tensor:
    return torch.zeros(len(EXPRESSION_NAMES), dtype=torch.float32)


def raised_cosine(t: np.ndarray, start: float, full: float, hold_end: float, end: float) -> np.ndarray:
    """0 before ``start``, a half-cosine rise to 1 at ``full``, 1 until ``hold_end``, a fall to 0 at ``end``."""
    rise = 0.5 - 0.5 * np.cos(np.pi * np.clip((t - start) / (full - start), 0, 1))
    fall = 0.5 + 0.5 * np.cos(np.pi * np.clip((t - hold_end) / (end - hold_end), 0, 1))
    return np.where(t < hold_end, rise, fall)


def segment_codes(segment: str, n_frames: int) -> torch.Tensor:
    """(T, E) float32 codes of ``segment`` sampled at frame centres (t = (i + ½)/T; one frame = the peak)."""
    if segment not in _SEGMENT_TRACKS:
        raise ValueError(f"unknown SynthHeads segment {segment!r}; choose one of {', '.join(SEGMENTS)}")
    if n_frames < 1:
        raise ValueError(f"a segment needs at least one frame, got n_frames={n_frames}")
    t = (np.arange(n_frames) + 0.5) / n_frames
    codes = np.zeros((n_frames, len(EXPRESSION_NAMES)), dtype=np.float64)
    for names, amp, knots in _SEGMENT_TRACKS[segment]:
        v = amp * raised_cosine(t, *knots)
        for name in names:
            codes[:, EXPR_INDEX[name]] = np.maximum(codes[:, EXPR_INDEX[name]], v)
    return torch.from_numpy(np.clip(codes, 0, 1).astype(np.float32))


def random_code(seed: int, person: int, frame: int) -> torch.Tensor:
    """(E,) code of ``frame`` of the random segment of ``person``: 1–3 parameter groups at random strengths
    (one in ten frames neutral); a tongue out always comes with an open jaw, or it would stay hidden."""
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([int(seed), 0xE4, int(person), int(frame)])))
    z = np.zeros(len(EXPRESSION_NAMES))
    if rng.uniform() >= 0.1:
        k = int(rng.choice([1, 2, 3], p=[0.45, 0.35, 0.2]))
        for g in rng.choice(len(_RANDOM_GROUPS), size=k, replace=False):
            names = _RANDOM_GROUPS[int(g)]
            v = rng.uniform(0.35, 1.0)
            one_sided = len(names) == 2 and rng.uniform() < 0.2
            for j, name in enumerate(names):
                z[EXPR_INDEX[name]] = v if not one_sided or j == int(rng.integers(2)) else rng.uniform(0, 0.2)
        if z[EXPR_INDEX["tongueOut"]] > 0:
            z[EXPR_INDEX["jawOpen"]] = max(z[EXPR_INDEX["jawOpen"]], rng.uniform(0.5, 0.9))
    return torch.from_numpy(np.clip(z, 0, 1).astype(np.float32))


def check_code(expr) -> np.ndarray:
    z = np.asarray(expr.detach().cpu() if isinstance(expr, torch.Tensor) else expr, dtype=np.float64).reshape(-1)
    if z.shape[0] != len(EXPRESSION_NAMES):
        raise ValueError(f"a {EXPRESSION_SPACE} expression code has {len(EXPRESSION_NAMES)} values, got {z.shape[0]}")
    if not np.isfinite(z).all():
        raise ValueError("expression code has non-finite values")
    return np.clip(z, 0.0, 1.0)
