"""What the render stage draws: a frame stream, an avatar or a rig (neutral, or decoded along a sequence) or a
static ``.ply``, as one sequence of frames."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING

from ..cameras import Cameras
from ..expressions import ExpressionSequence
from ..gaussians import Gaussians
from ..stream import frame_cameras, read_frame_stream
from .animate import check_sequence, decode_frames, load_animatable
from .common import StageError

if TYPE_CHECKING:
    from ..avatar import Avatar
    from ..rig import Rig


@dataclass
class Frame:
    index: int
    n_frames: int | None
    gaussians: Gaussians


@dataclass
class Source:
    """A sequence of frames (a stream, a decoded sequence) or one static set."""

    frames: Iterable[Frame] | None
    input_cameras: Cameras | None
    fps: float | None = None
    n_frames: int | None = None  # the sequence length when known
    static: Gaussians | None = None  # shown on every frame of the camera path
    closer: Callable[[], None] | None = None

    def frame_iter(self, n_static: int) -> Iterable[Frame]:
        if self.static is not None:
            return (Frame(i, n_static, self.static) for i in range(n_static))
        return self.frames

    def close(self) -> None:
        if self.closer is not None:
            self.closer()


def stream_source(fileobj: IO[bytes], closer: Callable[[], None] | None = None) -> Source:
    """Frames of a frame stream. Blocks until the first frame arrives (it carries the input cameras and fps)."""
    it = read_frame_stream(fileobj)
    first_meta, first_g = next(it)

    def frames() -> Iterator[Frame]:
        yield Frame(int(first_meta["frame"]), first_meta.get("n_frames"), first_g)
        for meta, g in it:
            yield Frame(int(meta["frame"]), meta.get("n_frames"), g)

    return Source(frames(), frame_cameras(first_meta), first_meta.get("fps"), first_meta.get("n_frames"),
                  closer=closer)


def avatar_source(avatar: Avatar | Rig, seq: ExpressionSequence | None, batch: int = 8) -> Source:
    """Neutral (``seq`` None: decoded once, static) or a sequence, decoded in batches as frames are drawn (an
    avatar or a rig alike)."""
    cams = avatar.cameras
    cams = None if cams is None else cams.to("cpu")
    if seq is None:
        g = next(decode_frames(avatar, avatar.neutral[None], 1))
        return Source(None, cams, static=g)
    check_sequence(avatar, seq)
    n = len(seq)
    frames = (Frame(i, n, g) for i, g in enumerate(decode_frames(avatar, seq.codes, batch)))
    return Source(frames, cams, seq.fps, n)


def open_render_source(src: str | None, expr: str = "neutral", checkpoint=None, device: str = "auto",
                       batch: int = 8, fps: float | None = None, stdin: IO[bytes] | None = None) -> Source:
    """``src``: None/``-`` (a frame stream on stdin), a frame-stream file, an ``.avt``, a ``.rig.npz`` or a ``.ply``."""
    import sys

    from ..gaussians import read_ply

    if src is None or src == "-":
        return stream_source(stdin if stdin is not None else sys.stdin.buffer)
    p = Path(src)
    if not p.is_file():
        raise StageError(f"{src}: no such file")
    if p.suffix.lower() == ".ply":
        return Source(None, None, static=read_ply(p))
    if p.suffix.lower() in (".avt", ".npz"):  # an avatar, or a rig of one: the same expression checks
        from ..expressions import load_sequence

        avatar = load_animatable(p, checkpoint, device)
        seq = None if expr == "neutral" else load_sequence(expr, avatar.expression_space, fps)
        return avatar_source(avatar, seq, batch)
    f = open(p, "rb")
    try:
        return stream_source(f, closer=f.close)
    except BaseException:
        f.close()
        raise
