"""Run-directory layout and crash-safe checkpoints.

A run directory holds ``checkpoints/step_XXXXXXXX/`` folders, each complete by construction: it is written as
``checkpoints/.tmp-step_XXXXXXXX/`` and renamed into place only after every file is on disk, so a crash during a
save leaves the previous checkpoint untouched and at worst a ``.tmp-*`` folder that the next save removes.
Each checkpoint holds ``model.safetensors`` + ``config.json`` (the deployable model, ``save_checkpoint``),
``train_state/`` (optimizer and scheduler, Accelerate's format: local only, loaded with weights_only=True) and
``train.json`` (step and recipe). Resuming picks the highest complete step.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path

from ..fileio import atomic_write_bytes
from ..model.checkpoint import CheckpointError  # one error for every unusable checkpoint

CHECKPOINTS = "checkpoints"
TRAIN_JSON = "train.json"
_STEP_DIR = re.compile(r"^step_(\d{8})$")


def step_dir_name(step: int) -> str:
    return f"step_{step:08d}"


def list_checkpoints(run_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    """Complete checkpoints of a run, oldest first."""
    root = Path(run_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := _STEP_DIR.match(p.name))]
    return sorted(found)


def latest_checkpoint(run_dir: str | os.PathLike) -> Path | None:
    found = list_checkpoints(run_dir)
    return found[-1][1] if found else None


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """A checkpoint folder itself, a run directory (→ its latest complete checkpoint), or the name of a shipped
    model (``synthheads-tiny``; avat3r.shipped says where those are found)."""
    from ..shipped import resolve_model_path

    path = resolve_model_path(path)
    if (path / "model.safetensors").is_file() and (path / "config.json").is_file():
        return path
    latest = latest_checkpoint(path)
    if latest is None:
        raise CheckpointError(f"{path} is neither a checkpoint (model.safetensors + config.json) nor a run "
                              f"directory with complete checkpoints")
    return latest


def write_checkpoint(run_dir: str | os.PathLike, step: int, write: Callable[[Path], None],
                     is_main: bool = True, barrier: Callable[[], None] = lambda: None) -> Path:
    """Write a checkpoint atomically: ``write(tmp_dir)`` fills a temporary folder (on every process: Accelerate
    saves per-process RNG files), then the main process renames it to ``step_XXXXXXXX``."""
    root = Path(run_dir) / CHECKPOINTS
    final = root / step_dir_name(step)
    tmp = root / f".tmp-{final.name}"
    if is_main:
        root.mkdir(parents=True, exist_ok=True)
        if tmp.exists():
            shutil.rmtree(tmp)  # a save that died half-way
        tmp.mkdir()
    barrier()
    try:
        write(tmp)
    except BaseException:
        if is_main:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    barrier()
    if is_main:
        _fsync_tree(tmp)
        if final.exists():  # the same step written again (e.g. a rerun): swap the old one out first
            old = root / f".old-{final.name}"
            shutil.rmtree(old, ignore_errors=True)
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
        _fsync_dir(root)
    barrier()
    return final


def prune_checkpoints(run_dir: str | os.PathLike, keep: int) -> None:
    """Delete all but the ``keep`` most recent complete checkpoints (0 keeps all)."""
    if keep <= 0:
        return
    for _, path in list_checkpoints(run_dir)[:-keep]:
        shutil.rmtree(path, ignore_errors=True)


def write_json(path: str | os.PathLike, doc: dict) -> None:
    atomic_write_bytes(path, (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode())


def read_train_json(checkpoint: str | os.PathLike) -> dict:
    path = Path(checkpoint) / TRAIN_JSON
    if not path.is_file():
        raise CheckpointError(f"{checkpoint} has no {TRAIN_JSON}; it was not written by `avat3r train`")
    return json.loads(path.read_text())


def _fsync_tree(root: Path) -> None:
    for dirpath, _, files in os.walk(root):
        for name in files:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(Path(dirpath))


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
