"""What the stages share: their error, the compute device, and loading the model a checkpoint holds."""

from __future__ import annotations

import os
from collections.abc import Callable

import torch

from ..errors import Avat3rError

Progress = Callable[[int], None] | None


class StageError(Avat3rError, ValueError):
    """A stage cannot run on these inputs; the message is one line that says why."""


def resolve_device(device: str | None) -> torch.device:
    """``None``/``""``/``"auto"``: CUDA when available, else CPU; otherwise a torch device name."""
    if device in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise StageError(f"unknown device {device!r}; use cpu, cuda, cuda:N or auto", param="device") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise StageError("device cuda was requested but no CUDA GPU is available; use the cpu", param="device")
    return dev


def load_model(checkpoint: str | os.PathLike, device: torch.device):
    """(model in eval mode, meta) from a checkpoint folder, a training run directory (→ its latest checkpoint)
    or a shipped model's name."""
    from ..model.checkpoint import load_checkpoint
    from ..train.checkpointing import resolve_checkpoint

    model, meta = load_checkpoint(resolve_checkpoint(checkpoint), device)
    return model.eval(), meta
