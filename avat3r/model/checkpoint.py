"""Checkpoints: ``model.safetensors`` + ``config.json`` (model config and metadata), written atomically.

config.json::

    {"format": "avat3r-checkpoint", "version": 1, "config": {...Avat3rConfig...},
     "weights_sha256": "...", "meta": {"expression_space": ..., "expression_names": [...], "neutral": [...],
                                       "position_prior": ..., "feature_prior": ..., "step": ...}}

A new checkpoint folder is written under a temporary name and renamed into place. Saving into an existing
folder (which may hold a training loop's ``train_state/``) replaces the weights and then config.json, each
atomically; config.json names the weights' sha256, so a save interrupted between the two is detected on load.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors_bytes
from safetensors.torch import save as save_safetensors_bytes

from ..errors import Avat3rError
from ..fileio import atomic_write_bytes, check_format, json_safe
from .config import Avat3rConfig, ConfigError
from .network import Avat3r

CHECKPOINT_FORMAT = "avat3r-checkpoint"
CHECKPOINT_VERSION = 1
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"


class CheckpointError(Avat3rError, ValueError):
    """A checkpoint folder is missing, incomplete or inconsistent."""


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def weights_sha256(directory: str | os.PathLike) -> str:
    """sha256 of a checkpoint's weights file (the identity recorded in avatars made with it)."""
    h = hashlib.sha256()
    with open(Path(directory) / WEIGHTS_FILE, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _state_bytes(model: Avat3r) -> bytes:
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    return save_safetensors_bytes(tensors, metadata={"format": "pt", "config_hash": model.config_hash})


def save_checkpoint(directory: str | os.PathLike, model: Avat3r, meta: dict | None = None) -> str:
    """Write ``model.safetensors`` and ``config.json`` into ``directory``; returns the weights' sha256."""
    directory = Path(directory)
    weights = _state_bytes(model)
    digest = sha256_bytes(weights)
    doc = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "config": model.config.to_dict(),
           "weights_sha256": digest, "meta": json_safe(dict(meta or {}))}
    config_bytes = (json.dumps(doc, indent=1) + "\n").encode()
    if directory.exists():
        if not directory.is_dir():
            raise CheckpointError(f"{directory}: exists and is not a folder")
        atomic_write_bytes(directory / WEIGHTS_FILE, weights)
        atomic_write_bytes(directory / CONFIG_FILE, config_bytes)
        return digest
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=directory.parent, prefix=f".{directory.name}.", suffix=".tmp"))
    try:
        (tmp / WEIGHTS_FILE).write_bytes(weights)
        (tmp / CONFIG_FILE).write_bytes(config_bytes)
        os.replace(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return digest


def read_checkpoint_config(directory: str | os.PathLike) -> tuple[Avat3rConfig, dict, dict]:
    """(config, meta, whole config.json) without reading the weights."""
    directory = Path(directory)
    if not directory.is_dir():
        raise CheckpointError(f"{directory}: no such checkpoint folder")
    path = directory / CONFIG_FILE
    if not path.is_file():
        raise CheckpointError(f"{directory}: missing {CONFIG_FILE}")
    try:
        doc = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{path}: not valid JSON ({err})") from None
    check_format(doc, CHECKPOINT_FORMAT, CHECKPOINT_VERSION, str(path), "an avat3r checkpoint", CheckpointError)
    try:
        config = Avat3rConfig.from_dict(doc.get("config"))
    except (ConfigError, TypeError) as err:
        raise CheckpointError(f"{path}: {err}") from None
    return config, dict(doc.get("meta") or {}), doc


def load_checkpoint(directory: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[Avat3r, dict]:
    """Build the model from ``config.json`` and load ``model.safetensors``. Returns (model, meta) where meta
    holds config.json's metadata plus ``sha256`` (of the weights) and ``config`` (dict)."""
    directory = Path(directory)
    config, meta, doc = read_checkpoint_config(directory)
    wpath = directory / WEIGHTS_FILE
    if not wpath.is_file():
        raise CheckpointError(f"{directory}: missing {WEIGHTS_FILE}")
    data = wpath.read_bytes()
    digest = sha256_bytes(data)
    if doc.get("weights_sha256") not in (None, digest):
        raise CheckpointError(f"{directory}: {WEIGHTS_FILE} does not match {CONFIG_FILE} (sha256 differs; "
                              "an interrupted save or mixed files)")
    try:
        tensors = load_safetensors_bytes(data)
    except (SafetensorError, ValueError, TypeError) as err:
        raise CheckpointError(f"{wpath}: not a readable safetensors file ({err})") from None
    model = Avat3r(config)
    load_weights(model, tensors, str(wpath))
    meta.update(sha256=digest, config=config.to_dict())
    return model.to(device).eval(), meta


def load_weights(model: torch.nn.Module, tensors: dict[str, torch.Tensor], source: str,
                 prefix_only: str | None = None) -> None:
    """Load ``tensors`` into ``model`` (all of it, or only keys under ``prefix_only``) with a one-line error
    naming the first missing, unexpected or mis-shaped tensor."""
    expected = {k: v for k, v in model.state_dict().items() if prefix_only is None or k.startswith(prefix_only)}
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing:
        raise CheckpointError(f"{source}: weights do not match the config: {len(missing)} missing "
                              f"(first: {missing[0]})")
    if unexpected:
        raise CheckpointError(f"{source}: weights do not match the config: {len(unexpected)} unexpected "
                              f"(first: {unexpected[0]})")
    for k, v in expected.items():
        if tuple(tensors[k].shape) != tuple(v.shape):
            raise CheckpointError(f"{source}: tensor {k} has shape {tuple(tensors[k].shape)}, the config "
                                  f"needs {tuple(v.shape)}")
    # a NaN or inf weight makes every output NaN (a blank avatar, not an error); the sha256 only proves the
    # file is the one that was saved, not that training had not diverged when it was
    for k in expected:
        t = tensors[k]
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise CheckpointError(f"{source}: tensor {k} has non-finite values (NaN or inf)")
    model.load_state_dict(tensors, strict=prefix_only is None)
