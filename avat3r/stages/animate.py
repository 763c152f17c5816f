"""The animate stage: an avatar and a model that decodes it (or a linear rig fitted to one), expression codes →
Gaussians per frame, written as a frame stream as they are decoded."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator
from typing import IO, TYPE_CHECKING

import torch

from ..expressions import ExpressionSequence, check_space
from ..gaussians import Gaussians
from ..stream import FrameStreamWriter
from .common import Progress, StageError, load_model, resolve_device

if TYPE_CHECKING:  # the model code is imported only by the stages that decode
    from ..avatar import Avatar
    from ..rig import Rig


def load_animatable(avatar_path: str | os.PathLike, checkpoint: str | os.PathLike | None = None,
                    device: str = "cpu") -> Avatar | Rig:
    """The avatar with a model that can decode it, on ``device``: the checkpoint it was made with when given
    (its sha256 must match the one the avatar records), else the decoder weights the avatar carries.
    A ``.rig.npz`` loads as its ``Rig`` (no network, no checkpoint; it runs on the CPU)."""
    from ..avatar import load_avatar
    from ..rig import is_rig_path, load_rig

    if is_rig_path(avatar_path):
        return load_rig(avatar_path)
    dev = resolve_device(device)
    avatar = load_avatar(avatar_path)
    model = avatar.model
    if checkpoint is not None:
        model, ck_meta = load_model(checkpoint, dev)
        want = avatar.meta.get("checkpoint_sha256")
        if want and want != ck_meta["sha256"]:
            raise StageError(f"{avatar_path} was reconstructed with checkpoint sha256 {want[:12]}…, but "
                             f"{checkpoint} is {ck_meta['sha256'][:12]}…; give the checkpoint it was made with",
                             param="checkpoint")
    if model is None:
        raise StageError(f"{avatar_path} carries no decoder weights; give the checkpoint it was reconstructed "
                         "with, or reconstruct it self-contained", param="checkpoint")
    return dataclasses.replace(avatar, state=avatar.state.to(dev), model=model.to(dev).eval())


def animatable_device(avatar: Avatar | Rig) -> torch.device:
    """Where an animatable's frames are computed (a rig: always the CPU)."""
    from ..rig import Rig

    return torch.device("cpu") if isinstance(avatar, Rig) else avatar.state.tokens.device


def decode_frames(avatar: Avatar | Rig, codes: torch.Tensor, batch: int = 8) -> Iterator[Gaussians]:
    """Decode ``codes`` (T,E) in batches of ``batch`` frames; yields each frame's valid Gaussians (CPU). A rig
    applies its deltas instead of running a network."""
    from ..expressions import ExpressionError, check_codes
    from ..rig import Rig

    if batch < 1:
        raise StageError(f"batch must be at least 1, got {batch}", param="batch")
    try:
        check_codes(codes)
    except ExpressionError as err:
        raise StageError(f"{avatar.source}: {err}") from None
    if isinstance(avatar, Rig):
        for code in codes:
            yield avatar(code)
        return
    dev = avatar.state.tokens.device
    for start in range(0, codes.shape[0], batch):
        with torch.inference_mode():
            g = avatar.model.decode(avatar.state, codes[start:start + batch].to(dev))
        for f in range(g.means.shape[0]):
            frame = g[f].compact().to("cpu")
            bad = frame.nonfinite_field()
            if bad is not None:  # NaN Gaussians render as nothing: a black frame instead of an error
                raise StageError(f"{avatar.source}: decoded frame {start + f} has non-finite Gaussians.{bad} "
                                 "(the decoder weights or the identity state are broken)")
            yield frame


def check_sequence(avatar: Avatar | Rig, seq: ExpressionSequence) -> None:
    """The sequence's codes must be in the avatar's expression space, of the model's (or rig's) size."""
    from ..rig import Rig

    dim = avatar.dim if isinstance(avatar, Rig) else avatar.model.config.expression_dim
    check_space(seq, avatar.expression_space, dim)


def animate(avatar: Avatar | Rig, seq: ExpressionSequence, out: IO[bytes], batch: int = 8,
            progress: Progress = None) -> int:
    """Write one frame-stream sample per code of ``seq`` to ``out`` as frames are decoded; returns the count."""
    check_sequence(avatar, seq)
    cams = avatar.cameras
    writer = FrameStreamWriter(out, seq.fps, seq.space, None if cams is None else cams.to("cpu"), n_frames=len(seq))
    with writer:
        for i, g in enumerate(decode_frames(avatar, seq.codes, batch)):
            writer.write(i, g, seq.codes[i])
            if progress:
                progress(1)
    return writer.frames_written
