"""The frame stream between ``animate`` and ``render`` (DESIGN §4).

An uncompressed tar stream, WebDataset style, one sample per frame with key ``{frame:06d}``:

- ``{frame:06d}.gaussians.safetensors`` — the frame's valid Gaussians only (``means``, ``quats``,
  ``scales``, ``opacities``, ``colors``, and ``sh_rest`` when present), float32;
- ``{frame:06d}.meta.json`` — ``stream_version``, ``frame``, ``n_frames`` (of the sequence, when known),
  ``fps``, ``expression_space``, the frame's expression code ``expr`` and the avatar's
  ``input_cameras`` (``K``, ``w2c``, ``width``, ``height``) so a renderer can look through them.

The writer emits tar headers itself and flushes after each frame, so a reader on the other end of a pipe
sees a frame as soon as it is produced (no seeking, no buffering of the whole archive). The reader uses
``tarfile`` in streaming mode (``"r|"``) over a short-read adapter, so it never waits for more bytes than
the member it is reading. Nothing is ever unpickled: safetensors and JSON only.
"""

from __future__ import annotations

import io
import json
import math
import os
import tarfile
from collections.abc import Iterator
from typing import IO

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from .cameras import CameraError, Cameras, cameras_from_dicts, cameras_to_dicts
from .errors import Avat3rError
from .fileio import AbortOnError, tar_end, tar_member
from .gaussians import Gaussians

STREAM_VERSION = 1
GAUSSIANS_MEMBER = "gaussians.safetensors"
META_MEMBER = "meta.json"
# the most one member may hold: a paper-preset frame (4 views × 512² Gaussians) is about 60 MB
MEMBER_LIMITS = {GAUSSIANS_MEMBER: 2 << 30, META_MEMBER: 16 << 20}
_FIELDS = ("means", "quats", "scales", "opacities", "colors")


class StreamError(Avat3rError, ValueError):
    """The frame stream is malformed or truncated; the message says where."""


def frame_cameras(meta: dict) -> Cameras | None:
    """The avatar's input cameras recorded in a frame's meta (checked like a cams.json's), or None if the
    stream has none."""
    entries = meta.get("input_cameras")
    if not entries:
        return None
    if not isinstance(entries, list):
        raise StreamError("frame stream: input_cameras must be a list of cameras")
    try:
        return cameras_from_dicts(entries, "frame stream: input_cameras")
    except CameraError as err:
        raise StreamError(str(err)) from None


# -- writing -------------------------------------------------------------------------------------
def gaussians_bytes(g: Gaussians, where: str = "frame stream") -> bytes:
    """safetensors bytes of the valid Gaussians of an unbatched set (float32, contiguous, on CPU)."""
    if g.means.ndim != 2:
        raise StreamError(f"{where}: a stream frame holds one unbatched set of Gaussians")
    g = g.compact().detach().to("cpu", torch.float32)
    bad = g.nonfinite_field()
    if bad is not None:  # a renderer would draw NaNs as nothing: a black video instead of an error
        raise StreamError(f"{where}: Gaussians.{bad} has non-finite values (NaN or inf)")
    tensors = {name: getattr(g, name).contiguous() for name in _FIELDS}
    if g.sh_rest is not None:
        tensors["sh_rest"] = g.sh_rest.contiguous()
    return st_save(tensors)


def gaussians_from_bytes(data: bytes, where: str = "frame stream") -> Gaussians:
    try:
        t = st_load(data)
    except (SafetensorError, ValueError, RuntimeError) as err:
        raise StreamError(f"{where}: gaussians.safetensors is not readable ({err})") from None
    missing = [f for f in _FIELDS if f not in t]
    if missing:
        raise StreamError(f"{where}: gaussians.safetensors lacks {', '.join(missing)}")
    unexpected = sorted(set(t) - set(_FIELDS) - {"sh_rest"})
    if unexpected:
        raise StreamError(f"{where}: gaussians.safetensors has an unexpected tensor {unexpected[0]!r}")
    for name, v in t.items():
        if v.dtype != torch.float32:
            raise StreamError(f"{where}: Gaussians.{name} must be float32, got {v.dtype}")
    if t["means"].ndim != 2 or t["means"].shape[1] != 3:
        raise StreamError(f"{where}: Gaussians.means has shape {tuple(t['means'].shape)}, expected (N, 3)")
    try:
        g = Gaussians(*(t[f] for f in _FIELDS), sh_rest=t.get("sh_rest"))
    except ValueError as err:
        raise StreamError(f"{where}: {err}") from None
    bad = g.nonfinite_field()
    if bad is not None:
        raise StreamError(f"{where}: Gaussians.{bad} has non-finite values (NaN or inf)")
    # activated values (DESIGN §2): a negative scale or an opacity outside [0, 1] is not a Gaussian
    if bool((g.scales < 0).any()):
        raise StreamError(f"{where}: Gaussians.scales has negative values")
    if bool(((g.opacities < 0) | (g.opacities > 1)).any()):
        raise StreamError(f"{where}: Gaussians.opacities has values outside [0, 1]")
    return g


class FrameStreamWriter(AbortOnError):
    """Write frames to a binary file object (a pipe, stdout or a file) one at a time.

    ``write(frame, gaussians, ...)`` emits the frame's two members and flushes; ``close()`` ends the
    archive (it does not close ``fileobj``). Use as a context manager.
    """

    def __init__(self, fileobj: IO[bytes], fps: float, expression_space: str,
                 input_cameras: Cameras | None = None, n_frames: int | None = None):
        self.fileobj = fileobj
        self.fps = float(fps)
        self.expression_space = expression_space
        self.n_frames = n_frames
        self._cameras = cameras_to_dicts(input_cameras) if input_cameras is not None else []
        self._written = 0
        self._bytes = 0
        self._closed = False

    def write(self, frame: int, gaussians: Gaussians, expr: torch.Tensor | None = None) -> None:
        if self._closed:
            raise StreamError("the frame stream is already closed")
        key = f"{int(frame):06d}"
        meta = {"stream_version": STREAM_VERSION, "frame": int(frame), "n_frames": self.n_frames,
                "fps": self.fps, "expression_space": self.expression_space,
                "n_gaussians": int(gaussians.valid.sum()) if gaussians.valid is not None else len(gaussians),
                "input_cameras": self._cameras}
        if expr is not None:
            meta["expr"] = [float(x) for x in torch.as_tensor(expr).reshape(-1).tolist()]
        data = gaussians_bytes(gaussians, f"frame stream, frame {key}")
        payload = (tar_member(f"{key}.{GAUSSIANS_MEMBER}", data)
                   + tar_member(f"{key}.{META_MEMBER}", json.dumps(meta).encode()))
        self.fileobj.write(payload)
        self.fileobj.flush()  # the reader may be waiting for this very frame
        self._written += 1
        self._bytes += len(payload)

    @property
    def frames_written(self) -> int:
        return self._written

    def close(self) -> None:
        """End of archive: two zero blocks, padded to a whole tar record as tar(1) expects."""
        if self._closed:
            return
        self._closed = True
        self.fileobj.write(tar_end(self._bytes))
        self.fileobj.flush()

    def abort(self) -> None:
        """Leave the archive unterminated, so readers report truncation instead of taking a partial sequence
        for a whole one."""


# -- reading -------------------------------------------------------------------------------------
class _ShortReads(io.RawIOBase):
    """Return whatever bytes are available (≥ 1) instead of blocking until a full buffer arrives.

    tarfile's stream mode asks its file for 10 KiB at a time; on a pipe a buffered ``read(n)`` would wait
    for all of them, holding back a frame that has fully arrived.
    """

    def __init__(self, fileobj):
        self._f = fileobj
        if hasattr(fileobj, "read1"):
            self._read = fileobj.read1
        elif hasattr(fileobj, "fileno") and not isinstance(fileobj, io.BytesIO):
            fd = fileobj.fileno()
            self._read = lambda n: os.read(fd, n)
        else:
            self._read = fileobj.read

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0:
            return self._f.read()
        return self._read(n)


def read_frame_stream(fileobj: IO[bytes]) -> Iterator[tuple[dict, Gaussians]]:
    """Yield ``(meta, gaussians)`` per frame as frames arrive. Raises StreamError on a malformed stream."""
    try:
        tar = tarfile.open(fileobj=_ShortReads(fileobj), mode="r|")
    except tarfile.TarError as err:
        if "empty" in str(err):
            raise StreamError("the frame stream is empty (did the writer fail?)") from None
        raise StreamError(f"not a frame stream (expected a tar stream: {err})") from None
    pending: dict[str, dict[str, bytes]] = {}
    n = 0
    expected = None  # the sequence length the writer announced, to detect a stream cut at a frame boundary
    try:
        for member in tar:
            if not member.isfile():
                continue
            key, dot, ext = member.name.rpartition("/")[2].partition(".")
            if not dot or ext not in (GAUSSIANS_MEMBER, META_MEMBER):
                raise StreamError(f"frame stream: unexpected member {member.name!r}")
            if member.size > MEMBER_LIMITS[ext]:
                raise StreamError(f"frame stream: member {member.name!r} holds {member.size:,} bytes, more than "
                                  f"a frame's {MEMBER_LIMITS[ext]:,}")
            f = tar.extractfile(member)
            data = f.read() if f is not None else b""
            if len(data) != member.size:
                raise StreamError(f"frame stream: member {member.name!r} is truncated")
            sample = pending.setdefault(key, {})
            if len(pending) > 2:  # a writer finishes one frame before the next: nothing piles up in memory
                raise StreamError(f"frame stream: frames {', '.join(sorted(pending))} are interleaved")
            sample[ext] = data
            if len(sample) == 2:
                del pending[key]
                meta, g = _decode_frame(key, sample)
                expected = meta.get("n_frames") if expected is None else expected
                yield meta, g
                n += 1
    except tarfile.TarError as err:
        raise StreamError(f"frame stream ended abruptly after {n} frame(s) ({err})") from None
    if pending:
        raise StreamError(f"frame stream: incomplete frame(s) {', '.join(sorted(pending))}")
    if n == 0:
        raise StreamError("the frame stream holds no frames")
    if isinstance(expected, int) and n < expected:
        raise StreamError(f"frame stream ended after {n} of {expected} frames (did the writer fail?)")


def _decode_frame(key: str, sample: dict[str, bytes]) -> tuple[dict, Gaussians]:
    where = f"frame stream, frame {key}"
    try:
        meta = json.loads(sample[META_MEMBER])
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise StreamError(f"{where}: meta.json is not JSON ({err})") from None
    if not isinstance(meta, dict) or meta.get("stream_version") != STREAM_VERSION:
        version = meta.get("stream_version") if isinstance(meta, dict) else None
        raise StreamError(f"{where}: unsupported stream_version {version!r} (this reader knows {STREAM_VERSION})")
    _check_meta_numbers(meta, where)
    return meta, gaussians_from_bytes(sample[GAUSSIANS_MEMBER], where)


def _check_meta_numbers(meta: dict, where: str) -> None:
    """The numbers a reader acts on: ``frame`` a frame index (int ≥ 0), ``n_frames`` (when known) a count ≥ 1,
    ``fps`` (when given) a finite positive rate."""
    def is_int(v) -> bool:
        return isinstance(v, int) and not isinstance(v, bool)

    frame, n_frames, fps = meta.get("frame"), meta.get("n_frames"), meta.get("fps")
    if not (is_int(frame) and frame >= 0):
        raise StreamError(f"{where}: meta.json: frame must be a frame index (a whole number ≥ 0), got {frame!r}")
    if n_frames is not None and not (is_int(n_frames) and n_frames >= 1):
        raise StreamError(f"{where}: meta.json: n_frames must be a whole number ≥ 1, got {n_frames!r}")
    if fps is not None and not (isinstance(fps, (int, float)) and not isinstance(fps, bool)
                                and math.isfinite(fps) and fps > 0):
        raise StreamError(f"{where}: meta.json: fps must be a positive number, got {fps!r}")


def open_stream_source(path: str | os.PathLike | None):
    """A binary file object for ``path``; ``None`` or ``-`` is standard input."""
    import sys

    if path is None or str(path) == "-":
        return sys.stdin.buffer
    return open(path, "rb")
