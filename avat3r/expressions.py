"""Expression spaces and expression sequences (``expr.parquet``).

An *expression space* names the meaning of an expression code: its dimension, the name of every
dimension and the neutral code. Each checkpoint declares the space it was trained in, and a sequence
carries the space it was made for, so an avatar is never driven by codes of another space.

``expr.parquet`` (DESIGN §4): one row per frame, columns ``frame`` (int32) and ``expr``
(fixed-size list<float32>, the code), file metadata ``expression_space`` and ``fps``.
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from .errors import Avat3rError
from .fileio import atomic_write_bytes

SEQUENCE_FORMAT_VERSION = "1"
DEFAULT_FPS = 25.0
# Codes of every space we know are O(1): blendshape weights in [0, 1], latents near the unit ball. A code
# beyond this is a unit or file error; fed to the network it only overflows (1e30 gives an all-NaN frame).
MAX_ABS_CODE = 100.0


class ExpressionError(Avat3rError, ValueError):
    """An expression sequence or space is malformed or does not fit; the message says why."""


# -- expression spaces ---------------------------------------------------------------------------
@dataclass(frozen=True)
class ExpressionSpace:
    name: str
    names: tuple[str, ...]  # one name per dimension
    neutral: tuple[float, ...]  # the neutral (rest) code

    @property
    def dim(self) -> int:
        return len(self.names)

    def neutral_code(self) -> torch.Tensor:
        return torch.tensor(self.neutral, dtype=torch.float32)


def _synthheads_space() -> ExpressionSpace:
    # imported lazily: the SynthHeads generator is heavy and most callers only need a name check
    from .data import synthheads

    neutral = torch.as_tensor(synthheads.neutral_code(), dtype=torch.float32).reshape(-1)
    return ExpressionSpace(synthheads.EXPRESSION_SPACE, tuple(synthheads.EXPRESSION_NAMES),
                           tuple(float(x) for x in neutral))


def _ava256_space() -> ExpressionSpace:
    # Ava-256 drives its decoders with a 256-d learned latent code; its dimensions carry no names and
    # the dataset's neutral frames sit near the origin of that latent space.
    return ExpressionSpace("ava256", tuple(f"latent_{i:03d}" for i in range(256)), (0.0,) * 256)


def _flame2023_space() -> ExpressionSpace:
    # NeRSemble's FLAME 2023 tracking: 100 expression coefficients and the jaw pose (axis-angle, radians);
    # all zero is FLAME's neutral face with the mouth closed.
    names = tuple(f"expr{i:03d}" for i in range(100)) + ("jaw_x", "jaw_y", "jaw_z")
    return ExpressionSpace("flame2023", names, (0.0,) * len(names))


_SPACE_FACTORIES: dict[str, Callable[[], ExpressionSpace]] = {
    "synthheads-v1": _synthheads_space,
    "ava256": _ava256_space,
    "flame2023": _flame2023_space,
}
_SPACE_CACHE: dict[str, ExpressionSpace] = {}


def register_space(name: str, factory: Callable[[], ExpressionSpace]) -> None:
    """Add an expression space (e.g. for a new dataset); ``factory`` is called on first use."""
    _SPACE_FACTORIES[name] = factory
    _SPACE_CACHE.pop(name, None)


def space_names() -> tuple[str, ...]:
    return tuple(_SPACE_FACTORIES)


def get_space(name: str) -> ExpressionSpace:
    if name not in _SPACE_FACTORIES:
        raise ExpressionError(f"unknown expression space {name!r}; known: {', '.join(_SPACE_FACTORIES)}")
    if name not in _SPACE_CACHE:
        space = _SPACE_FACTORIES[name]()
        if space.name != name or len(space.neutral) != len(space.names):
            raise ExpressionError(f"expression space {name!r} is inconsistent (name or neutral size)")
        _SPACE_CACHE[name] = space
    return _SPACE_CACHE[name]


# -- sequences -----------------------------------------------------------------------------------
@dataclass
class ExpressionSequence:
    """``codes`` (T, E) float32, one code per frame, played at ``fps`` in expression space ``space``."""

    codes: torch.Tensor
    fps: float
    space: str

    def __post_init__(self):
        self.codes = torch.as_tensor(self.codes).detach().to("cpu", torch.float32)
        if self.codes.ndim != 2 or self.codes.shape[0] == 0 or self.codes.shape[1] == 0:
            raise ExpressionError(f"an expression sequence needs codes shaped (T, E) with T, E > 0, "
                                  f"got {tuple(self.codes.shape)}")
        check_codes(self.codes)
        self.fps = float(self.fps)
        if not (math.isfinite(self.fps) and self.fps > 0):
            raise ExpressionError(f"fps must be a positive number, got {self.fps}")
        if not isinstance(self.space, str) or not self.space:
            raise ExpressionError("an expression sequence needs the name of its expression space")

    def __len__(self) -> int:
        return self.codes.shape[0]

    @property
    def dim(self) -> int:
        return self.codes.shape[1]


def check_codes(codes: torch.Tensor, where: str = "") -> None:
    """Refuse non-finite codes and codes beyond ±MAX_ABS_CODE; the message names the first bad frame."""
    prefix = f"{where}: " if where else ""
    finite = torch.isfinite(codes)
    if not bool(finite.all()):
        frame = int((~finite).reshape(codes.shape[0], -1).any(-1).nonzero()[0])
        raise ExpressionError(f"{prefix}expression codes contain non-finite values (first at frame {frame})")
    flat = codes.reshape(codes.shape[0], -1)
    big = flat.abs() > MAX_ABS_CODE
    if bool(big.any()):
        frame, dim = (int(i) for i in big.nonzero()[0])
        raise ExpressionError(f"{prefix}expression code of frame {frame} has {float(flat[frame, dim]):g} in "
                              f"dimension {dim}; codes must lie within ±{MAX_ABS_CODE:g}")


def check_space(seq: ExpressionSequence, expected_space: str, expected_dim: int | None = None) -> None:
    """Refuse a sequence made for another expression space (or of the wrong code size)."""
    if seq.space != expected_space:
        raise ExpressionError(f"the expression sequence is in space {seq.space!r} but the avatar was trained "
                              f"in {expected_space!r}; use a sequence made for {expected_space!r}")
    if expected_dim is not None and seq.dim != expected_dim:
        raise ExpressionError(f"the expression sequence has {seq.dim}-d codes but space {expected_space!r} "
                              f"of this model uses {expected_dim}-d codes")


def sequence_table(seq: ExpressionSequence):
    """The sequence as a pyarrow Table with the file's schema and metadata."""
    import pyarrow as pa

    t, e = seq.codes.shape
    flat = pa.array(seq.codes.numpy().reshape(-1), type=pa.float32())
    expr = pa.FixedSizeListArray.from_arrays(flat, e)
    frame = pa.array(np.arange(t, dtype=np.int32), type=pa.int32())
    meta = {b"expression_space": seq.space.encode(), b"fps": repr(seq.fps).encode(),
            b"expr_format_version": SEQUENCE_FORMAT_VERSION.encode()}
    return pa.table({"frame": frame, "expr": expr}).replace_schema_metadata(meta)


def write_sequence(path: str | os.PathLike, seq: ExpressionSequence | torch.Tensor | np.ndarray,
                   fps: float | None = None, space: str | None = None) -> None:
    """Write ``expr.parquet`` atomically. Pass an ExpressionSequence, or codes (T,E) with ``fps`` and ``space``."""
    import pyarrow.parquet as pq

    if not isinstance(seq, ExpressionSequence):
        if space is None:
            raise ExpressionError("write_sequence needs the expression space of raw codes")
        seq = ExpressionSequence(seq, DEFAULT_FPS if fps is None else fps, space)
    elif fps is not None or space is not None:
        raise ExpressionError("pass either an ExpressionSequence or codes with fps and space, not both")
    buf = io.BytesIO()
    pq.write_table(sequence_table(seq), buf)
    atomic_write_bytes(path, buf.getvalue())


def read_sequence(path: str | os.PathLike) -> ExpressionSequence:
    """Read ``expr.parquet``; frames are put in ``frame`` order and must be 0..T−1 without gaps."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(str(path))
    except FileNotFoundError:
        raise ExpressionError(f"{path}: no such expression sequence file") from None
    except (pa.ArrowException, OSError) as err:
        raise ExpressionError(f"{path}: not a Parquet expression sequence ({str(err).splitlines()[0]})") from None
    meta = table.schema.metadata or {}
    missing = [c for c in ("frame", "expr") if c not in table.column_names]
    if missing:
        raise ExpressionError(f"{path}: not an expression sequence: missing column(s) {', '.join(missing)}")
    if b"expression_space" not in meta or b"fps" not in meta:
        raise ExpressionError(f"{path}: not an expression sequence: file metadata needs expression_space and fps")
    expr_type = table.schema.field("expr").type
    if not (pa.types.is_fixed_size_list(expr_type) and pa.types.is_floating(expr_type.value_type)):
        raise ExpressionError(f"{path}: column 'expr' must be a fixed-size list of floats, got {expr_type}")
    try:
        fps = float(meta[b"fps"].decode())
    except ValueError:
        raise ExpressionError(f"{path}: metadata fps={meta[b'fps']!r} is not a number") from None
    if table.num_rows == 0:
        raise ExpressionError(f"{path}: the expression sequence has no frames")
    expr = table.column("expr").combine_chunks()
    if expr.null_count:
        raise ExpressionError(f"{path}: column 'expr' has missing values")
    dim = expr_type.list_size
    codes = np.asarray(expr.flatten().to_numpy(zero_copy_only=False), dtype=np.float32).reshape(-1, dim)
    frames = np.asarray(table.column("frame").to_numpy(zero_copy_only=False))
    order = np.argsort(frames, kind="stable")
    if not np.array_equal(frames[order], np.arange(len(frames))):
        raise ExpressionError(f"{path}: column 'frame' must number the frames 0..{len(frames) - 1} once each")
    try:
        return ExpressionSequence(torch.from_numpy(codes[order].copy()), fps, meta[b"expression_space"].decode())
    except ExpressionError as err:
        raise ExpressionError(f"{path}: {err}") from None


# -- built-in sequences --------------------------------------------------------------------------
BUILTIN_SEQUENCES = ("neutral", "demo")

# the demo: SynthHeads segments played back to back, (segment, seconds); each starts and ends near neutral
_DEMO_SEGMENTS = (("neutral", 0.5), ("EXP_smile", 1.6), ("EXP_jaw003", 1.6), ("EXP_tongue001", 1.6),
                  ("EXP_eye_wide", 1.6))  # neutral → smile → jaw open → tongue out → eyes wide + blink


def builtin_sequence(name: str, space: str = "synthheads-v1", fps: float = DEFAULT_FPS,
                     n_frames: int | None = None) -> ExpressionSequence:
    """A ready-made sequence: ``neutral`` (the space's neutral code, ``n_frames`` long, default 1 s) or
    ``demo`` (synthheads-v1 only: neutral → smile → jaw open → tongue out → blink, ~7 s, resampled to
    ``n_frames`` when given)."""
    if n_frames is not None and n_frames <= 0:
        raise ExpressionError("a sequence needs at least one frame")
    if name == "neutral":
        neutral = get_space(space).neutral_code()
        t = max(1, round(fps)) if n_frames is None else n_frames
        return ExpressionSequence(neutral.expand(t, -1).clone(), fps, space)
    if name != "demo":
        raise ExpressionError(f"unknown built-in sequence {name!r}; choose one of {', '.join(BUILTIN_SEQUENCES)}")
    if space != "synthheads-v1":
        raise ExpressionError(f"built-in sequence 'demo' is made of synthheads-v1 segments; expression space "
                              f"{space!r} has no named segments (write an expr.parquet instead)")
    from .data import synthheads

    seq = torch.cat([synthheads.segment_codes(seg, max(1, round(sec * fps))) for seg, sec in _DEMO_SEGMENTS])
    if n_frames is not None:
        seq = resample_codes(seq, n_frames)
    return ExpressionSequence(seq.contiguous(), fps, space)


def resample_codes(codes: torch.Tensor, n_frames: int) -> torch.Tensor:
    """The same motion at another length: (T, E) → (n_frames, E) by nearest-frame lookup."""
    if n_frames <= 0:
        raise ExpressionError("a sequence needs at least one frame")
    return codes[torch.linspace(0, len(codes) - 1, n_frames).round().long()].contiguous()


def load_sequence(spec: str, space: str, fps: float | None = None) -> ExpressionSequence:
    """A sequence from a built-in name (``neutral``, ``demo``) or an ``expr.parquet`` path."""
    if spec in BUILTIN_SEQUENCES:
        return builtin_sequence(spec, space, DEFAULT_FPS if fps is None else fps)
    seq = read_sequence(spec)
    if fps is not None:
        seq.fps = float(fps)
    return seq
