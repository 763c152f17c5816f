"""Video and image-sequence output (and input) through ffmpeg; PNG frames through ``imageio``.

MP4s are H.264 in yuv420p, which every player accepts but which needs even frame sizes: odd sizes are
padded by repeating the last row/column. Frames are piped to ffmpeg as raw rgb24 while they are
produced, so a video grows as frames arrive. The ffmpeg binary is the one on PATH, else the one that
``imageio-ffmpeg`` ships (which has no ffprobe: frames are counted by decoding).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from .errors import Avat3rError
from .fileio import AbortOnError, partial_file
from .imageio import to_uint8, write_png


class VideoError(Avat3rError, RuntimeError):
    """ffmpeg failed or a frame does not fit the video; the message says why."""


def ffmpeg_exe() -> str:
    exe = shutil.which("ffmpeg")
    if exe:
        return exe
    try:
        import imageio_ffmpeg

        return imageio_ffmpeg.get_ffmpeg_exe()
    except Exception as err:  # imageio-ffmpeg raises RuntimeError when its binary is missing
        raise VideoError(f"no ffmpeg found: install ffmpeg or imageio-ffmpeg ({err})") from None


def pad_to_even(frame: np.ndarray) -> np.ndarray:
    """Repeat the last row/column where the height/width is odd (yuv420p subsamples chroma 2×2)."""
    h, w = frame.shape[:2]
    if h % 2 == 0 and w % 2 == 0:
        return frame
    return np.pad(frame, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")


class VideoWriter(AbortOnError):
    """Write an H.264/yuv420p MP4 frame by frame; the file appears (atomically) on ``close()``.

    The frame size is fixed by the first frame. Use as a context manager; on an exception the partial
    video is discarded.
    """

    def __init__(self, path: str | os.PathLike, fps: float = 25.0, crf: int = 18, preset: str = "medium"):
        if fps <= 0:
            raise VideoError(f"fps must be positive, got {fps}")
        self.path = Path(path)
        self.fps = float(fps)
        self.crf = int(crf)
        self.preset = preset
        self.size: tuple[int, int] | None = None  # (width, height) of the encoded video
        self.frames = 0
        self._proc: subprocess.Popen | None = None
        self._tmp: str | None = None
        self._fd: int | None = None  # holds the lock on _tmp
        self._log = None

    def _start(self, width: int, height: int) -> None:
        import ffmpeg

        self.path.parent.mkdir(parents=True, exist_ok=True)
        # .NAME.<random>.partial.mp4, locked while we live: the next writer of this video removes it if we are
        # killed (a temp name ffmpeg opens itself cannot be one the system deletes for us)
        self._fd, self._tmp = partial_file(self.path, ".mp4")
        stream = (ffmpeg.input("pipe:", format="rawvideo", pix_fmt="rgb24", s=f"{width}x{height}",
                               framerate=self.fps)
                  .output(self._tmp, vcodec="libx264", pix_fmt="yuv420p", crf=self.crf, preset=self.preset,
                          movflags="+faststart", r=self.fps, format="mp4")
                  .global_args("-hide_banner", "-loglevel", "error", "-nostdin")
                  .overwrite_output())
        args = stream.compile(cmd=ffmpeg_exe())
        # ffmpeg's messages go to a file: a pipe we do not drain could fill up and stall the encoder
        self._log = tempfile.TemporaryFile()
        self._proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=self._log)
        self.size = (width, height)

    def write(self, frame: torch.Tensor | np.ndarray) -> None:
        img = pad_to_even(to_uint8(frame))
        h, w = img.shape[:2]
        if self._proc is None:
            self._start(w, h)
        elif (w, h) != self.size:
            raise VideoError(f"frame {self.frames} is {w}x{h} but the video is {self.size[0]}x{self.size[1]}")
        try:
            self._proc.stdin.write(img.tobytes())
        except BrokenPipeError:
            raise VideoError(f"ffmpeg stopped while writing {self.path}: {self._ffmpeg_log()}") from None
        self.frames += 1

    def _ffmpeg_log(self) -> str:
        if self._log is None:
            return ""
        self._log.seek(0)
        lines = self._log.read().decode(errors="replace").strip().splitlines()
        return lines[-1] if lines else "no message"

    def close(self) -> None:
        if self._proc is None:
            raise VideoError(f"no frames were written to {self.path}")
        proc, self._proc = self._proc, None
        proc.stdin.close()
        rc = proc.wait()
        try:
            if rc != 0:
                raise VideoError(f"ffmpeg failed (exit {rc}) writing {self.path}: {self._ffmpeg_log()}")
            os.replace(self._tmp, self.path)
            self._tmp = None
        finally:
            self._cleanup()

    def abort(self) -> None:
        if self._proc is not None:
            self._proc.kill()
            self._proc.wait()
            self._proc = None
        self._cleanup()

    def _cleanup(self) -> None:
        if self._tmp and os.path.exists(self._tmp):
            os.unlink(self._tmp)
        self._tmp = None
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if self._log is not None:
            self._log.close()
            self._log = None


# -- reading -------------------------------------------------------------------------------------
def count_frames(path: str | os.PathLike) -> tuple[int, float]:
    """(number of frames, duration in seconds) by decoding the file (no ffprobe needed)."""
    import imageio_ffmpeg

    if not Path(path).is_file():
        raise VideoError(f"{path}: no such video")
    try:
        return imageio_ffmpeg.count_frames_and_secs(str(path))
    except RuntimeError as err:
        raise VideoError(f"{path}: cannot count frames ({str(err).splitlines()[0]})") from None


def video_info(path: str | os.PathLike) -> dict:
    """ffmpeg's description of the first video stream: ``size`` (W, H), ``fps``, ``duration``, ``codec``, ``pix_fmt``."""
    import imageio_ffmpeg

    gen = imageio_ffmpeg.read_frames(str(path))
    try:
        meta = next(gen)
    except (RuntimeError, OSError) as err:
        raise VideoError(f"{path}: not a readable video ({str(err).splitlines()[0]})") from None
    finally:
        gen.close()
    return meta


def read_video_frames(path: str | os.PathLike) -> Iterator[np.ndarray]:
    """Decode a video into (H, W, 3) uint8 RGB frames, one at a time."""
    import imageio_ffmpeg

    if not Path(path).is_file():
        raise VideoError(f"{path}: no such video")
    gen = imageio_ffmpeg.read_frames(str(path), pix_fmt="rgb24")
    try:
        try:
            meta = next(gen)
        except (RuntimeError, OSError) as err:
            raise VideoError(f"{path}: not a readable video ({str(err).splitlines()[0]})") from None
        w, h = meta["size"]
        for buf in gen:
            yield np.frombuffer(buf, dtype=np.uint8).reshape(h, w, 3)
    finally:
        gen.close()


# -- PNG frames ----------------------------------------------------------------------------------
class FrameDirWriter:
    """Write frames as ``{index:06d}.png`` into a folder (created if needed)."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.frames = 0

    def write(self, frame: torch.Tensor | np.ndarray, index: int | None = None) -> Path:
        path = self.folder / f"{self.frames if index is None else int(index):06d}.png"
        write_png(path, frame)
        self.frames += 1
        return path
