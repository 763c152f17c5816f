"""Where the render stage's frames go: an MP4, a folder of PNG frames and/or PLY files, all published together."""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path

import torch

from ..fileio import StagedFolder
from .common import StageError
from .sources import Frame


def _frame_files(ext: str) -> Callable[[str], bool]:
    """The files a frame folder of ``ext`` files holds (000000.png, …, and temp files of its writes)."""
    return lambda name: bool(re.fullmatch(rf"\d{{6}}\{ext}|\..*\.tmp", name))


class RenderOutputs:
    """Fan each rendered frame out to an MP4, a PNG folder and/or PLY files.

    Folders are built aside and swapped in by ``close()`` (see StagedFolder): an older render's frames never
    stay beside the new ones, and a killed render leaves only a ``.NAME.partial`` folder."""

    def __init__(self, video: str | os.PathLike | None = None, frames_dir: str | os.PathLike | None = None,
                 ply: str | os.PathLike | None = None, fps: float = 25.0):
        from ..video import FrameDirWriter, VideoWriter

        if video is None and frames_dir is None and ply is None:
            raise StageError("nothing to write: give a video, a frames folder and/or a ply output", param="outputs")
        self.ply_file = Path(ply) if ply is not None and str(ply).endswith(".ply") else None
        ply_dir = Path(ply) if ply is not None and self.ply_file is None else None
        if frames_dir is not None and ply_dir is not None and \
                os.path.realpath(frames_dir) == os.path.realpath(ply_dir):
            raise StageError("the frames and ply outputs name the same folder; give each its own", param="outputs")
        self._stages: list[StagedFolder] = []
        try:
            if frames_dir is not None:
                self._stages.append(StagedFolder(frames_dir, _frame_files(".png"), "rendered frames"))
            if ply_dir is not None:
                self._stages.append(StagedFolder(ply_dir, _frame_files(".ply"), "PLY frames"))
        except BaseException:
            for stage in self._stages:
                stage.abort()
            raise
        self.frames = FrameDirWriter(self._stages[0].path) if frames_dir is not None else None
        self.ply_dir = self._stages[-1].path if ply_dir is not None else None
        self.video = VideoWriter(video, fps) if video is not None else None
        self.count = 0

    @property
    def needs_images(self) -> bool:
        return self.video is not None or self.frames is not None

    def write(self, frame: Frame, rgb: torch.Tensor | None) -> None:
        from ..gaussians import write_ply

        if self.video is not None:
            self.video.write(rgb)
        if self.frames is not None:
            self.frames.write(rgb, self.count)
        if self.ply_dir is not None:
            write_ply(self.ply_dir / f"{frame.index:06d}.ply", frame.gaussians)
        elif self.ply_file is not None and self.count == 0:
            write_ply(self.ply_file, frame.gaussians)
        self.count += 1

    def close(self, ok: bool = True) -> None:
        """Publish every output, or on failure drop them all (no folder is swapped in beside a failed video)."""
        try:
            if self.video is not None:
                self.video.close() if ok else self.video.abort()
        except BaseException:
            ok = False
            raise
        finally:
            for stage in self._stages:
                stage.close() if ok else stage.abort()
