"""The ``.avt`` avatar file (DESIGN §4): one encoded identity that animates without re-running the priors.

A zip (stored, fixed timestamps) with exactly these members:

- ``meta.json``: ``{"format": "avat3r-avatar", "version": 1, "config": {...model config...},
  "config_hash", "checkpoint_sha256", "cameras": cams.json-style input cameras, "expression_space",
  "expression_names", "neutral", "position_prior", "feature_prior", "has_decoder", ...extra keys}``
- ``state.safetensors``: the IdentityState (tokens after self-attention, P, RGB, confidence, cameras).
- ``decoder.safetensors`` (optional): the weights decode() needs, so the avatar animates on its own.

Never a pickle: any other member (``*.pkl``, ``data/…``) makes the whole file refused.
"""

from __future__ import annotations

import io
import json
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors_bytes
from safetensors.torch import save as save_safetensors_bytes

from .cameras import CameraError, Cameras, cameras_from_json, cameras_to_json
from .errors import Avat3rError
from .expressions import ExpressionError, check_codes
from .fileio import atomic_write_bytes, check_format, json_safe
from .model.checkpoint import CheckpointError, load_weights
from .model.config import Avat3rConfig, ConfigError
from .model.network import Avat3r, IdentityState, ModelInputError

AVATAR_FORMAT = "avat3r-avatar"
AVATAR_VERSION = 1
META, STATE, DECODER = "meta.json", "state.safetensors", "decoder.safetensors"
MEMBERS = (META, STATE, DECODER)
# the most each member may inflate to: far above the paper preset's (state ≈ 40 MB, decoder weights ≈ 0.5 GB),
# low enough that a hostile file is refused from its header instead of being read whole into memory
MEMBER_LIMITS = {META: 16 << 20, STATE: 1 << 30, DECODER: 4 << 30}
REQUIRED_META = ("expression_space", "expression_names", "neutral")
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)  # fixed: the same avatar gives the same bytes


class AvatarError(Avat3rError, ValueError):
    """A .avt file cannot be written or is not a valid avatar."""


@dataclass
class Avatar:
    """One encoded identity and, when known, a model that decodes it (the stages' animate.load_animatable
    supplies the checkpoint's model for an avatar that carries no decoder weights)."""

    state: IdentityState  # a batch of 1
    meta: dict
    config: Avat3rConfig
    model: Avat3r | None = None  # built from decoder.safetensors when the file carries it
    source: str = "avatar"  # the file it came from, for error messages

    @property
    def cameras(self) -> Cameras:
        """The input cameras, on the state's device."""
        return self.state.cameras(0)

    @property
    def expression_space(self) -> str:
        return self.meta["expression_space"]

    @property
    def neutral(self) -> torch.Tensor:
        return torch.tensor(self.meta["neutral"], dtype=torch.float32)


def save_avatar(path: str | os.PathLike, state: IdentityState, meta: dict, model: Avat3r | None = None) -> None:
    """Write one encoded identity (state batch of 1) as a .avt. ``meta`` carries ``expression_space``,
    ``expression_names``, ``neutral`` and, when no ``model`` is given, the model ``config``; optional
    ``checkpoint_sha256``, ``position_prior``, ``feature_prior``, ``camera_names`` and any JSON extras.
    With ``model`` the decoder weights are stored too."""
    if state.batch != 1:
        raise AvatarError(f"an avatar holds one identity; the state has a batch of {state.batch}")
    missing = [k for k in REQUIRED_META if k not in meta]
    if missing:
        raise AvatarError(f"avatar metadata lacks {', '.join(missing)}")
    if model is not None:
        config = model.config
    elif "config" in meta or "model_config" in meta:
        config = Avat3rConfig.from_dict(meta.get("config") or meta["model_config"])
    else:
        raise AvatarError("save_avatar needs the model or meta['config'] to record the model config")
    if config.hash() != state.config_hash:
        raise AvatarError(f"the state was encoded by model config {state.config_hash}, not {config.hash()}")
    if len(meta["neutral"]) != config.expression_dim or len(meta["expression_names"]) != config.expression_dim:
        raise AvatarError(f"neutral code and expression names must have {config.expression_dim} entries")
    cams = state.cameras(0)
    names = list(meta.get("camera_names") or meta.get("input_images") or [f"view{i}" for i in range(len(cams))])
    doc = {k: json_safe(v) for k, v in meta.items() if k not in ("camera_names", "model_config")}
    doc.update(format=AVATAR_FORMAT, version=AVATAR_VERSION, config=config.to_dict(), config_hash=config.hash(),
               cameras=cameras_to_json(cams.to(dtype=torch.float64), names), has_decoder=model is not None)
    for k in ("checkpoint_sha256", "position_prior", "feature_prior"):
        doc.setdefault(k, None)
    members = {META: (json.dumps(doc, indent=1, sort_keys=True) + "\n").encode(),
               STATE: save_safetensors_bytes(state.to_tensors(), metadata={"format": "pt"})}
    if model is not None:
        dec = {k: v.detach().contiguous().cpu() for k, v in model.decoder_state_dict().items()}
        members[DECODER] = save_safetensors_bytes(dec, metadata={"format": "pt"})
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as zf:
        for name, data in members.items():
            zf.writestr(zipfile.ZipInfo(name, date_time=_ZIP_TIME), data)
    atomic_write_bytes(path, buf.getvalue())


def _check_state(state: IdentityState, config: Avat3rConfig, n_views: int, source: str) -> None:
    R, V, D = config.input_res, n_views, config.dim
    expected = {"tokens": (1, V * config.tokens_per_view, D), "pos": (1, V, R, R, 3), "rgb": (1, V, R, R, 3),
                "conf": (1, V, R, R), "valid": (1, V, R, R), "K": (1, V, 3, 3), "w2c": (1, V, 4, 4)}
    for name, shape in expected.items():
        t = getattr(state, name)
        if tuple(t.shape) != shape:
            raise AvatarError(f"{source}: state tensor {name} has shape {tuple(t.shape)}, the model config "
                              f"needs {shape}")
        if name != "valid" and t.dtype != torch.float32:
            raise AvatarError(f"{source}: state tensor {name} must be float32, got {t.dtype}")
        # a NaN or inf would decode to NaN Gaussians, which render as nothing: a blank head, not an error
        if name != "valid" and not bool(torch.isfinite(t).all()):
            raise AvatarError(f"{source}: state tensor {name} has non-finite values (NaN or inf)")
    if not bool(state.valid.any()):
        raise AvatarError(f"{source}: the identity state has no valid Gaussians (every pixel's confidence is "
                          "at or below the threshold); reconstruct it again")
    if (state.R, state.G) != (R, config.gaussian_res) or tuple(state.size) != (R, R):
        raise AvatarError(f"{source}: state resolution R={state.R}, G={state.G}, size={state.size} does not "
                          f"match the model config ({R})")
    if state.config_hash != config.hash():
        raise AvatarError(f"{source}: state was encoded by model config {state.config_hash}, meta.json "
                          f"records {config.hash()}")


def _read_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, path: Path) -> bytes:
    """A member's bytes, refused from its header when it declares more than its limit, and read at most one byte
    past the limit otherwise (a header can lie about what its data inflates to)."""
    limit = MEMBER_LIMITS[info.filename]
    too_big = AvatarError(f"{path}: member {info.filename} inflates to more than an avatar's {limit:,} bytes")
    if info.file_size > limit:
        raise too_big
    with zf.open(info) as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise too_big
    return data


def load_avatar(path: str | os.PathLike, device: str | torch.device = "cpu") -> Avatar:
    """Read and validate a .avt; builds the decoder-only model when the file carries its weights."""
    path = Path(path)
    if not path.is_file():
        raise AvatarError(f"{path}: no such avatar file")
    if not zipfile.is_zipfile(path):
        raise AvatarError(f"{path}: not an avatar (.avt is a zip file)")
    try:
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
            unexpected = [n for n in names if n not in MEMBERS]
            if unexpected:
                raise AvatarError(f"{path}: unexpected member {unexpected[0]!r} (an avatar holds only "
                                  f"{', '.join(MEMBERS)})")
            if len(set(names)) != len(names):
                raise AvatarError(f"{path}: duplicate members")
            missing = [n for n in (META, STATE) if n not in names]
            if missing:
                raise AvatarError(f"{path}: missing member {missing[0]}")
            data = {info.filename: _read_member(zf, info, path) for info in zf.infolist()}
    except (zipfile.BadZipFile, OSError) as err:
        raise AvatarError(f"{path}: unreadable zip ({err})") from None
    try:
        meta = json.loads(data[META])
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise AvatarError(f"{path}: meta.json is not valid JSON ({err})") from None
    check_format(meta, AVATAR_FORMAT, AVATAR_VERSION, f"{path}: meta.json", "an avat3r avatar", AvatarError)
    missing = [k for k in REQUIRED_META + ("config", "cameras") if k not in meta]
    if missing:
        raise AvatarError(f"{path}: meta.json lacks {', '.join(missing)}")
    try:
        config = Avat3rConfig.from_dict(meta["config"])
    except (ConfigError, TypeError) as err:
        raise AvatarError(f"{path}: meta.json: {err}") from None
    try:
        _, cams = cameras_from_json(meta["cameras"], f"{path}: meta.json")
    except CameraError as err:  # names the file already
        raise AvatarError(str(err)) from None
    try:
        state = IdentityState.from_tensors(load_safetensors_bytes(data[STATE]))
    except ModelInputError as err:
        raise AvatarError(f"{path}: {err}") from None
    except (SafetensorError, ValueError, TypeError) as err:
        raise AvatarError(f"{path}: state.safetensors is unreadable ({err})") from None
    _check_state(state, config, len(cams), str(path))
    neutral = meta["neutral"]
    if not isinstance(neutral, list) or not all(isinstance(x, (int, float)) for x in neutral):
        raise AvatarError(f"{path}: meta.json: neutral must be a list of numbers")
    if len(neutral) != config.expression_dim:
        raise AvatarError(f"{path}: neutral code has {len(neutral)} entries, the model takes "
                          f"{config.expression_dim}")
    try:
        check_codes(torch.tensor([neutral], dtype=torch.float64))
    except ExpressionError as err:
        raise AvatarError(f"{path}: meta.json: neutral code: {err}") from None
    model = None
    if DECODER in data:
        model = Avat3r(config, with_encoder=False)
        try:
            load_weights(model, load_safetensors_bytes(data[DECODER]), f"{path}:{DECODER}")
        except CheckpointError as err:
            raise AvatarError(str(err)) from None
        except (SafetensorError, ValueError, TypeError) as err:
            raise AvatarError(f"{path}: {DECODER} is unreadable ({err})") from None
        model = model.to(device).eval()
    return Avatar(state=state.to(device), meta=meta, config=config, model=model, source=str(path))
