"""SynthHeads identities: the per-person shape, colour, hair and accessory parameters.

An identity is a pure function of ``(seed, person)``: a PCG64 generator seeded from both draws every field,
so the same person looks the same on every machine and in every run.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

HAIR_STYLES = ("bald", "short", "long", "bun", "curly")
FACIAL_HAIR = ("none", "stubble", "moustache", "beard")

# Skin tones from very light to very dark (linear-ish sRGB in [0, 1]); a person's tone is a blend of two
# neighbours so the axis is continuous rather than a handful of classes.
_SKIN = np.array([[0.96, 0.80, 0.70], [0.92, 0.72, 0.60], [0.85, 0.64, 0.50], [0.76, 0.55, 0.40],
                  [0.62, 0.42, 0.29], [0.47, 0.31, 0.21], [0.33, 0.21, 0.14]])
_IRIS = np.array([[0.30, 0.17, 0.07], [0.42, 0.27, 0.12], [0.22, 0.42, 0.70], [0.30, 0.55, 0.78],
                  [0.30, 0.50, 0.30], [0.45, 0.50, 0.52], [0.50, 0.40, 0.18]])
_HAIR = np.array([[0.05, 0.04, 0.035], [0.16, 0.10, 0.06], [0.32, 0.20, 0.11], [0.70, 0.55, 0.30],
                  [0.88, 0.76, 0.50], [0.58, 0.23, 0.09], [0.72, 0.72, 0.70], [0.20, 0.25, 0.60]])
_HAIR_P = np.array([0.24, 0.22, 0.16, 0.1, 0.08, 0.08, 0.08, 0.04])
_ACCESSORY = np.array([[0.08, 0.08, 0.09], [0.55, 0.12, 0.10], [0.12, 0.25, 0.55], [0.75, 0.60, 0.20],
                       [0.15, 0.45, 0.25], [0.85, 0.85, 0.85]])


@dataclass
class Identity:
    """Everything that makes one SynthHeads person; lengths in metres, factors relative to an average head."""

    seed: int
    person: int
    head_width: float  # skull half-width factor (× 0.074 m)
    head_height: float  # skull half-height factor (× 0.105 m)
    head_depth: float  # skull half-depth factor (× 0.094 m)
    jaw_width: float  # lower-face width relative to the skull (0.7 narrow … 0.95 square)
    chin_length: float  # extra chin drop, m
    nose_length: float
    nose_width: float
    nose_projection: float
    ear_size: float
    ear_angle: float  # degrees the ears stand out from the head
    eye_spacing: float  # distance between the eye centres, m
    eye_size: float
    brow_thickness: float
    lip_fullness: float
    mouth_width: float  # half-width of the mouth, m
    skin_color: tuple[float, float, float]
    skin_texture: float  # strength of skin mottling
    freckles: float
    iris_color: tuple[float, float, float]
    lip_color: tuple[float, float, float]
    hair_color: tuple[float, float, float]
    brow_color: tuple[float, float, float]
    hair_style: str
    hair_volume: float  # 0 … 1: how far the hair stands off the scalp
    hair_length: float  # 0 … 1 within the style
    facial_hair: str
    glasses: bool
    glasses_color: tuple[float, float, float]
    headband: bool
    headband_color: tuple[float, float, float]

    def to_dict(self) -> dict:
        d = asdict(self)
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in d.items()}

    def cache_key(self) -> tuple:
        return tuple(tuple(v) if isinstance(v, list) else v for v in self.to_dict().values())


def person_rng(seed: int, person: int, stream: int = 0) -> np.random.Generator:
    """A PCG64 generator determined by (seed, person, stream); streams keep identity and geometry draws apart."""
    if seed < 0 or person < 0:
        raise ValueError(f"seed and person must be non-negative, got seed={seed}, person={person}")
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([int(seed), int(person), int(stream)])))


def _blend(rng: np.random.Generator, palette: np.ndarray, p=None) -> np.ndarray:
    i = rng.choice(len(palette), p=p)
    j = i + 1 if (rng.random() < 0.5 and i + 1 < len(palette)) or i == 0 else i - 1
    t = rng.uniform(0, 0.4)
    return ((1 - t) * palette[i] + t * palette[j]) * rng.uniform(0.95, 1.05)


def _rgb(c) -> tuple[float, float, float]:
    return tuple(round(float(x), 4) for x in np.clip(c, 0.0, 1.0))


def make_identity(seed: int, person: int) -> Identity:
    """The SynthHeads person ``person`` of dataset ``seed`` (deterministic)."""
    rng = person_rng(seed, person, 0)
    u = rng.uniform
    skin = _blend(rng, _SKIN)
    hair = _blend(rng, _HAIR, _HAIR_P)
    style = HAIR_STYLES[rng.choice(5, p=[0.12, 0.34, 0.26, 0.12, 0.16])]
    lip = skin * np.array([0.82, 0.55, 0.55]) + np.array([0.08, 0.0, 0.02]) * u(0.5, 1.5)
    brow = hair * 0.75 if style != "bald" or rng.random() < 0.5 else _HAIR[rng.integers(0, 3)]
    if np.mean(hair) > 0.6:  # grey/white/blonde hair: brows a little darker so they still read
        brow = brow * 0.7
    facial = FACIAL_HAIR[rng.choice(4, p=[0.55, 0.15, 0.12, 0.18])]
    return Identity(
        seed=int(seed), person=int(person),
        head_width=round(u(0.94, 1.07), 4), head_height=round(u(0.95, 1.06), 4),
        head_depth=round(u(0.95, 1.06), 4), jaw_width=round(u(0.72, 0.94), 4),
        chin_length=round(u(0.0, 0.012), 4), nose_length=round(u(0.85, 1.2), 4),
        nose_width=round(u(0.8, 1.3), 4), nose_projection=round(u(0.8, 1.25), 4),
        ear_size=round(u(0.85, 1.2), 4), ear_angle=round(u(8.0, 32.0), 3),
        eye_spacing=round(u(0.058, 0.068), 5), eye_size=round(u(0.92, 1.08), 4),
        brow_thickness=round(u(0.6, 1.4), 4), lip_fullness=round(u(0.7, 1.3), 4),
        mouth_width=round(u(0.021, 0.027), 5),
        skin_color=_rgb(skin), skin_texture=round(u(0.03, 0.09), 4),
        freckles=round(float(max(0.0, u(-0.6, 1.0))), 4),
        iris_color=_rgb(_blend(rng, _IRIS)), lip_color=_rgb(lip), hair_color=_rgb(hair), brow_color=_rgb(brow),
        hair_style=style, hair_volume=round(u(0.0, 1.0), 4), hair_length=round(u(0.0, 1.0), 4),
        facial_hair=facial,
        glasses=bool(rng.random() < 0.3), glasses_color=_rgb(_ACCESSORY[rng.integers(0, len(_ACCESSORY))]),
        headband=bool(rng.random() < 0.15), headband_color=_rgb(_ACCESSORY[rng.integers(1, len(_ACCESSORY))]),
    )


def person_name(person: int) -> str:
    return f"p{int(person):04d}"
