"""The ``.rig.npz`` file: a numpy zip any language can read (no pickles), written deterministically.

Members: ``base`` (N, 14) float32, ``deltas`` (E, N, 14) float16 (float32 when saved so), ``meta`` a 0-d unicode
string holding JSON (format, version, expression space, names, neutral, ranges, columns, fit report, input
cameras). The rig is ``base + Σ_k (code_k − neutral_k) · deltas[k]`` in the columns of ``core.COLUMNS``.
"""

from __future__ import annotations

import io
import json
import os
import zipfile
from pathlib import Path

import numpy as np
import torch

from ..fileio import atomic_write_bytes, check_format, json_safe
from .core import COLUMNS, N_PARAMS, Rig, RigError

RIG_FORMAT = "avat3r-rig"
RIG_VERSION = 1
MEMBERS = ("base", "deltas", "meta")
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)  # fixed, so equal rigs are equal files
MAX_GAUSSIANS = 50_000_000  # a header claiming more is a damaged or hostile file, not a head


def rig_bytes(rig: Rig, float16: bool = True) -> bytes:
    """The file's bytes: members deflated, timestamps fixed."""
    meta = {k: json_safe(v) for k, v in rig.meta.items()}
    meta.update(format=RIG_FORMAT, version=RIG_VERSION, expression_space=rig.space, names=list(rig.names),
                neutral=[float(x) for x in rig.neutral], ranges=rig.ranges.tolist(), columns=list(COLUMNS),
                count=len(rig), deltas_dtype="float16" if float16 else "float32")
    arrays = {"base": rig.base.detach().cpu().numpy().astype(np.float32),
              "deltas": rig.deltas.detach().cpu().numpy().astype(np.float16 if float16 else np.float32),
              "meta": np.array(json.dumps(meta, sort_keys=True))}
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, arr in arrays.items():
            member = io.BytesIO()
            np.lib.format.write_array(member, np.require(arr, requirements='C'), allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=_ZIP_TIME)
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, member.getvalue())
    return buf.getvalue()


def save_rig(path: str | os.PathLike, rig: Rig, float16: bool = True) -> int:
    """Write ``rig`` atomically; returns the file size in bytes."""
    data = rig_bytes(rig, float16)
    atomic_write_bytes(path, data)
    return len(data)


def load_rig(path: str | os.PathLike) -> Rig:
    """Read and check a ``.rig.npz``; every defect is one ``RigError`` line naming the file."""
    path = Path(path)
    if not path.is_file():
        raise RigError(f"{path}: no such rig file")
    if not zipfile.is_zipfile(path):
        raise RigError(f"{path}: not a rig (a .rig.npz is a numpy zip file)")
    try:
        with np.load(path, allow_pickle=False) as npz:
            names = set(npz.files)
            missing = [m for m in MEMBERS if m not in names]
            if missing:
                raise RigError(f"{path}: missing member {missing[0]} (a rig holds {', '.join(MEMBERS)})")
            extra = sorted(names - set(MEMBERS))
            if extra:
                raise RigError(f"{path}: unexpected member {extra[0]!r} (a rig holds {', '.join(MEMBERS)})")
            meta_arr = npz["meta"]
            if meta_arr.shape != () or meta_arr.dtype.kind != "U":
                raise RigError(f"{path}: member meta must be one JSON string")
            meta = _parse_meta(str(meta_arr), path)
            count, dim = meta["count"], len(meta["names"])
            if not isinstance(count, int) or not 0 < count <= MAX_GAUSSIANS:
                raise RigError(f"{path}: meta count must be a positive number of Gaussians, got {count!r}")
            base, deltas = _check_array(npz, "base", (count, N_PARAMS), path), \
                _check_array(npz, "deltas", (dim, count, N_PARAMS), path)
    except RigError:
        raise
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as err:
        raise RigError(f"{path}: unreadable rig ({err})") from None
    return Rig(torch.from_numpy(base.astype(np.float32)), torch.from_numpy(deltas.astype(np.float32)),
               meta["expression_space"], tuple(meta["names"]), torch.tensor(meta["neutral"], dtype=torch.float32),
               torch.tensor(meta["ranges"], dtype=torch.float32),
               meta={k: v for k, v in meta.items() if k not in _CORE_META}, source=str(path))


_CORE_META = ("format", "version", "expression_space", "names", "neutral", "ranges", "columns", "count",
              "deltas_dtype")


def _parse_meta(text: str, path: Path) -> dict:
    try:
        meta = json.loads(text)
    except json.JSONDecodeError as err:
        raise RigError(f"{path}: member meta is not valid JSON ({err})") from None
    check_format(meta, RIG_FORMAT, RIG_VERSION, f"{path}: meta", "an avat3r rig", RigError)
    lacking = [k for k in _CORE_META[2:] if k not in meta]
    if lacking:
        raise RigError(f"{path}: meta lacks {', '.join(lacking)}")
    if meta["columns"] != list(COLUMNS):
        raise RigError(f"{path}: meta columns {meta['columns']!r} are not this version's {list(COLUMNS)!r}")
    names, neutral, ranges = meta["names"], meta["neutral"], meta["ranges"]
    if not (isinstance(names, list) and names and all(isinstance(n, str) for n in names)):
        raise RigError(f"{path}: meta names must be a non-empty list of strings")
    E = len(names)
    if not (isinstance(neutral, list) and len(neutral) == E and all(_is_number(x) for x in neutral)):
        raise RigError(f"{path}: meta neutral must be {E} finite numbers")
    if not (isinstance(ranges, list) and len(ranges) == E and all(
            isinstance(r, list) and len(r) == 2 and all(_is_number(x) for x in r) and r[0] <= r[1] for r in ranges)):
        raise RigError(f"{path}: meta ranges must be {E} [low, high] pairs of finite numbers")
    if not isinstance(meta["expression_space"], str) or not meta["expression_space"]:
        raise RigError(f"{path}: meta expression_space must name the rig's expression space")
    return meta


def _is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and np.isfinite(x)


def _check_array(npz, name: str, shape: tuple, path: Path) -> np.ndarray:
    arr = npz[name]
    allowed = ("float32",) if name == "base" else ("float16", "float32")
    if arr.dtype.name not in allowed:
        raise RigError(f"{path}: member {name} must be {' or '.join(allowed)}, got {arr.dtype}")
    if arr.shape != shape:
        raise RigError(f"{path}: member {name} has shape {arr.shape}, the meta needs {shape}")
    if not np.isfinite(arr).all():
        raise RigError(f"{path}: member {name} has non-finite values (NaN or inf)")
    return arr
