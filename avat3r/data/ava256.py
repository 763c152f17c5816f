"""Ava-256 as downloaded → head-centric shards (``avat3r prep ava256``).

The release (facebookresearch/ava-256, ``download.py``) stores one folder per capture, ``{mcd}--{mct}--{sid}``
(capture date, time, subject id), with everything Avat3r needs under ``decoder/``:

- ``camera_calibration.json``: ``{"KRT": [{cameraId, K, T, distortion, ...}]}``; ``K`` is stored transposed
  and valid at the full 2668 × 4096 (W × H, portrait) resolution; ``T`` is a 4×4 stored transposed whose
  ``T[:4, :3].T`` is the 3×4 world-to-camera ``[R|t]``; millimetres. Images on disk are smaller (667 × 1024 in
  the 4 TB release), so K is scaled by the image size actually read. Lens distortion is ignored, as the
  release's own loader ignores it.
- ``frame_list.csv`` (``seg_id,frame_id``); ``head_pose/head_pose.zip`` (``{frame:06d}.txt``, the 3×4
  head → world transform per frame, mm); ``image/cam{id}.zip`` (AVIF members ``cam{id}/{frame:06d}.avif``);
  ``segmentation_parts/cam{id}.zip`` (PNG label maps: 0 background, 1 hair, 2 body, 3 chair, 4 apparel,
  5 lenses, 6–10 lips, teeth, tongue; the head mask is everything but background and chair).
- ``kinematic_tracking/registration_vertices.zip``: the tracked mesh per frame (``{frame:06d}.ply``). We read
  it rather than ``keypoints_3d`` because its frame is known: the release's mesh demo maps its vertices to the
  world with the frame's head pose, so they lie in the head-pose (tracking template) frame, in mm, where the
  rigid head motion is already removed. The 3D keypoints are in world coordinates and their 274 indices are
  not documented, so they would tell neither where the head is nor which way it faces any better.

**Head-centric cameras** (DESIGN §2). The head pose is folded into every camera (``fold_head_pose``), so each
frame sees the head at rest in the *canonical* frame: the head centre at the origin, +x the subject's left,
+y up, +z out of the face, metres. The canonical → head-pose transform is one rigid 4×4 in mm: given with
``head_frame`` (one for the whole dataset: every capture is tracked with the same template), or estimated per
capture at a reference frame (the first ``EXP_neutral_peak`` frame, else the first listed one) from the rig:
+z towards the release's frontal cameras, +y along their image-up (``captures.estimate_head_frame``), and the
origin at the head centre of the tracked mesh (``head_centre``). The estimate assumes the subject faces the
frontal cameras upright at that frame; it is recorded in ``captures/{capture}.json`` (``info.head_frame``) so
a user can check it and pass a fixed one.

**Expression codes** are not stored in the release (its 256-d codes are latents of its own expression VAE).
They come from a parquet table (``read_codes``) or a TorchScript encoder of mesh offsets (``MeshEncoder``);
without either, the manifest carries the placeholder space ``none``.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
import warnings
import zipfile
import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np

from .captures import (
    PLACEHOLDER_SPACE,
    CaptureError,
    CaptureSummary,
    FrameJob,
    FrameViews,
    View,
    camera_centres_and_ups,
    capture_manifest_path,
    check_capture_name,
    convert_capture,
    estimate_head_frame,
    fold_head_pose,
    is_capture_done,
    merge_captures,
    select_part,
)

SOURCE = "ava256"
EXPRESSION_SPACE = "ava256"  # registered in avat3r.expressions: 256 unnamed latent dimensions, zero neutral
CODE_DIM = 256
FULL_WIDTH, FULL_HEIGHT = 2668, 4096  # the resolution the calibration's intrinsics are valid at
MM = 1e-3  # metres per release unit
ASPECT_TOLERANCE = 0.01  # image sides on disk may round (2668 / 8 = 333.5); a rotated image is far off
NEUTRAL_SEGMENT = "EXP_neutral_peak"
FRONTAL_CAMERAS = ("401168", "401875", "402040", "401031")  # the release's training script's frontal views
NOT_HEAD_LABELS = (0, 3)  # segmentation_parts: background, chair
ENCODER_BATCH = 64
# The paper trains on 244 of the 256 persons and holds out 12 without naming them. Ava-256's own training code
# takes the first N rows of its 256_ids.csv, so we hold out its last 12 rows (mcd, sid, mct); the same list is
# written as recipes/ava256-heldout.csv.
HELDOUT = (
    ("20230512", "ZEL435", "1009"), ("20230915", "ZEM686", "1145"), ("20230320", "ZJN985", "0810"),
    ("20230303", "ZKN852", "1634"), ("20230323", "ZQK191", "1348"), ("20220310", "ZSC414", "1128"),
    ("20220216", "ZSE894", "1324"), ("20230607", "ZUE409", "1652"), ("20220831", "ZUS575", "1047"),
    ("20230703", "ZWG600", "0826"), ("20230421", "ZWR419", "1716"), ("20230324", "ZZS850", "1118"),
)
SUBJECT_ID = re.compile(r"^[A-Za-z]{3}\d{3}$")


# -- captures and persons ------------------------------------------------------------------------
def capture_folder(mcd: str, sid: str, mct: str) -> str:
    """The folder name ``download.py`` gives a capture."""
    return f"{mcd}--{mct}--{sid}"


def person_of(capture: str) -> str:
    """The subject id of a capture folder (``20230405--1635--AAN112`` → ``AAN112``); folders of other shapes
    are their own person."""
    parts = capture.split("--")
    for part in reversed(parts):
        if SUBJECT_ID.match(part):
            return part
    return capture


def find_captures(root: str | os.PathLike) -> list[str]:
    """Capture folders under ``root``: sub-folders holding a ``decoder/`` folder, sorted."""
    root = Path(root)
    if not root.is_dir():
        raise CaptureError(f"{root}: not a folder (expected the Ava-256 download with one folder per capture)",
                           param="root")
    names = sorted(p.name for p in root.iterdir() if (p / "decoder").is_dir())
    if not names:
        raise CaptureError(f"{root}: no capture folders with a decoder/ inside (expected "
                           "{mcd}--{mct}--{sid}/decoder/ as download.py writes them)", param="root")
    return names


def read_names(path: str | os.PathLike) -> list[str]:
    """Captures or persons listed in a file: one name a line (``#`` comments), or rows of Ava-256's
    ``mcd,sid,mct`` (as 256_ids.csv and recipes/ava256-heldout.csv), which name the folder ``{mcd}--{mct}--{sid}``."""
    path = Path(path)
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise CaptureError(f"{path}: cannot read the list ({getattr(err, 'strerror', None) or err})") from None
    names = []
    for line in lines:
        line = line.split("#", 1)[0].strip()
        if not line or line.replace(" ", "") == "mcd,sid,mct":
            continue
        cells = [c.strip() for c in line.split(",")]
        if len(cells) == 3:
            names.append(capture_folder(cells[0], cells[1], cells[2]))
        elif len(cells) == 1:
            names.append(cells[0])
        else:
            raise CaptureError(f"{path}: line {line!r} is neither a name nor mcd,sid,mct")
    return names


def heldout_persons(path: str | os.PathLike | None = None) -> list[str]:
    """Subject ids held out for testing: from a list file, or by default the 12 of ``HELDOUT``."""
    names = read_names(path) if path is not None else [sid for _, sid, _ in HELDOUT]
    return sorted({person_of(n) for n in names})


def resolve_captures(root: str | os.PathLike, requested: Sequence[str] | None) -> list[str]:
    """The captures to convert: all of ``root`` (None), or those named; each item is a capture folder, a
    subject id, or a file listing either."""
    available = find_captures(root)
    if not requested:
        return available
    by_person: dict[str, list[str]] = {}
    for c in available:
        by_person.setdefault(person_of(c), []).append(c)
    chosen = []
    for item in requested:
        names = read_names(item) if Path(item).is_file() else [item]
        for name in names:
            if name in available:
                chosen.append(name)
            elif name in by_person:
                chosen.extend(by_person[name])
            else:
                raise CaptureError(f"capture {name!r} is not in {root} (give a folder name such as "
                                   f"{available[0]} or a subject id)", param="captures")
    return sorted(set(chosen))


# -- release files -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Calibrated:
    """One camera of the rig: full-resolution intrinsics and world-to-camera in mm."""

    id: str
    K: np.ndarray
    w2c: np.ndarray
    distortion: tuple[float, ...] = ()


def read_calibration(decoder: Path) -> dict[str, Calibrated]:
    """``camera_calibration.json`` → cameras by id (K and T un-transposed; see the module docstring)."""
    path = decoder / "camera_calibration.json"
    if not path.is_file():
        raise CaptureError(f"{path}: missing (every capture's decoder/ has its camera calibration)")
    try:
        entries = json.loads(path.read_text())["KRT"]
        if not isinstance(entries, list) or not entries:
            raise ValueError("KRT is empty")
        cams = {}
        for e in entries:
            K = np.asarray(e["K"], np.float64).T
            T = np.asarray(e["T"], np.float64)
            if K.shape != (3, 3) or T.shape != (4, 4):
                raise ValueError(f"camera {e['cameraId']}: K must be 3x3 and T 4x4")
            w2c = np.eye(4)
            w2c[:3, :4] = T[:4, :3].T
            R = w2c[:3, :3]
            if not (np.isfinite(K).all() and np.isfinite(w2c).all()) or abs(K[2, 2] - 1) > 1e-6 \
                    or np.abs(R @ R.T - np.eye(3)).max() > 1e-4 or np.linalg.det(R) < 0:
                raise ValueError(f"camera {e['cameraId']}: K or T is not a pinhole camera with a rotation")
            cid = str(e["cameraId"])
            cams[cid] = Calibrated(cid, K, w2c, tuple(float(x) for x in e.get("distortion") or ()))
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as err:
        raise CaptureError(f"{path}: not an Ava-256 camera calibration ({err})") from None
    return dict(sorted(cams.items()))


def read_frame_list(decoder: Path) -> list[tuple[str, int]]:
    """``frame_list.csv`` → (segment, frame) pairs in file order."""
    path = decoder / "frame_list.csv"
    if not path.is_file():
        raise CaptureError(f"{path}: missing (every capture's decoder/ lists its frames)")
    try:
        with path.open(newline="") as f:
            rows = list(csv.DictReader(f))
        frames = [(str(r["seg_id"]).strip(), int(r["frame_id"])) for r in rows]
    except (ValueError, KeyError, TypeError, UnicodeDecodeError, csv.Error) as err:
        raise CaptureError(f"{path}: expected columns seg_id,frame_id with integer frames ({err})") from None
    if not frames:
        raise CaptureError(f"{path}: lists no frames")
    return frames


class _Zips:
    """Open zips of one capture, each with its members indexed by base name (the release nests members in a
    ``cam{id}/`` folder in some zips and not in others). A worker keeps the zips of the capture it works on
    open across frames, since reading a zip's directory costs more than reading one member."""

    def __init__(self):
        self.decoder: Path | None = None
        self.open: dict[Path, tuple[zipfile.ZipFile | None, dict[str, str]]] = {}

    def close(self) -> None:
        for zf, _ in self.open.values():
            if zf is not None:
                zf.close()
        self.open.clear()
        self.decoder = None

    def member(self, decoder: Path, path: Path, base: str) -> tuple[bytes | None, str]:
        """(bytes, name) of the member called ``base`` in the zip at ``path``; (None, "") when the zip or the
        member is absent."""
        if decoder != self.decoder:
            self.close()
            self.decoder = decoder
        if path not in self.open:
            if not path.is_file():
                self.open[path] = (None, {})
            else:
                try:
                    zf = zipfile.ZipFile(path)
                except (zipfile.BadZipFile, OSError) as err:
                    raise CaptureError(f"{path}: not a readable zip ({err})") from None
                self.open[path] = (zf, {PurePosixPath(n).name: n for n in zf.namelist() if not n.endswith("/")})
        zf, index = self.open[path]
        name = index.get(base)
        if zf is None or name is None:
            return None, ""
        try:
            return zf.read(name), name
        except (zipfile.BadZipFile, zlib.error, OSError, EOFError, RuntimeError) as err:
            raise CaptureError(f"{path}: member {name} cannot be read ({err})") from None


_ZIPS = _Zips()


def read_head_poses(decoder: Path) -> dict[int, np.ndarray]:
    """``head_pose/head_pose.zip`` → 4×4 head → world (mm) per frame."""
    path = decoder / "head_pose" / "head_pose.zip"
    if not path.is_file():
        raise CaptureError(f"{path}: missing (the head pose of every frame)")
    poses = {}
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as err:
        raise CaptureError(f"{path}: not a readable zip ({err})") from None
    with zf:
        for name in zf.namelist():
            stem, ext = os.path.splitext(PurePosixPath(name).name)
            if ext != ".txt" or not stem.isdigit():
                continue
            try:
                m = np.loadtxt(io.BytesIO(zf.read(name)), dtype=np.float64, ndmin=2)
            except (ValueError, zipfile.BadZipFile, zlib.error, OSError, EOFError) as err:
                raise CaptureError(f"{path}: member {name} is not a 3x4 head pose ({err})") from None
            if m.shape not in ((3, 4), (4, 4)) or not np.isfinite(m).all() \
                    or np.abs(m[:3, :3] @ m[:3, :3].T - np.eye(3)).max() > 1e-3:
                raise CaptureError(f"{path}: member {name} is not a 3x4 rigid head pose")
            pose = np.eye(4)
            pose[:3] = m[:3]
            poses[int(stem)] = pose
    return poses


def read_vertices(decoder: Path, frame: int) -> np.ndarray | None:
    """The tracked mesh's vertices (V,3) of ``frame`` in the head-pose frame (mm), or None when absent."""
    from plyfile import PlyData

    path = decoder / "kinematic_tracking" / "registration_vertices.zip"
    data, name = _ZIPS.member(decoder, path, f"{frame:06d}.ply")
    if data is None:
        return None
    try:
        v = PlyData.read(io.BytesIO(data))["vertex"]
        verts = np.stack([np.asarray(v[k], np.float64) for k in ("x", "y", "z")], -1)
    except Exception as err:  # plyfile raises assorted types on damaged files
        raise CaptureError(f"{path}: member {name} is not a PLY mesh ({err})") from None
    if len(verts) < 4 or not np.isfinite(verts).all():
        raise CaptureError(f"{path}: member {name} has no usable vertices")
    return verts


def decode_rgb(data: bytes, where: str) -> np.ndarray:
    """AVIF (or any Pillow format) bytes → uint8 H×W×3."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as im:
            return np.asarray(im.convert("RGB"))
    except UnidentifiedImageError:
        raise CaptureError(f"{where}: cannot decode the image (not a format this Pillow reads; AVIF needs "
                           "Pillow 11.3 or later)") from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        raise CaptureError(f"{where}: cannot decode the image ({err})") from None


def decode_labels(data: bytes, where: str) -> np.ndarray:
    """PNG label map bytes → H×W integer labels (first channel of a multi-channel file)."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            labels = np.asarray(im)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        raise CaptureError(f"{where}: cannot decode the label map ({err})") from None
    return labels[..., 0] if labels.ndim == 3 else labels


def head_mask(labels: np.ndarray, width: int, height: int, where: str) -> np.ndarray:
    """uint8 {0, 255} mask of everything but background and chair, at the image's size (nearest label)."""
    from ..fileio import opencv

    mask = np.where(np.isin(labels, NOT_HEAD_LABELS), 0, 255).astype(np.uint8)
    h, w = mask.shape
    if (w, h) != (width, height):
        if abs((w / h) / (width / height) - 1) > ASPECT_TOLERANCE:
            raise CaptureError(f"{where}: label map is {w}x{h} but the image is {width}x{height}")
        mask = opencv().resize(mask, (width, height), interpolation=opencv().INTER_NEAREST)
    return mask


def scaled_intrinsics(K_full: np.ndarray, width: int, height: int, where: str) -> np.ndarray:
    """Full-resolution K → K of a ``width``×``height`` image on disk (each axis by its own ratio)."""
    sx, sy = width / FULL_WIDTH, height / FULL_HEIGHT
    if abs(sx / sy - 1) > ASPECT_TOLERANCE:
        raise CaptureError(f"{where}: image is {width}x{height}, not the release's {FULL_WIDTH}x{FULL_HEIGHT} "
                           "portrait shape scaled down")
    K = np.array(K_full, np.float64)
    K[0] *= sx
    K[1] *= sy
    return K


# -- the canonical head frame --------------------------------------------------------------------
def head_centre(verts: np.ndarray) -> np.ndarray:
    """The head centre of mesh vertices given in canonical axes (+y up, +z forward): mid-range across (x) and
    front to back (z), and half the front-to-back depth below the top of the mesh. The mesh runs down the neck,
    so its vertical mid-range would sit near the chin; the top of the skull does not move with expressions,
    and a head is about as tall above its centre as it is deep."""
    lo, hi = verts.min(0), verts.max(0)
    depth = hi[2] - lo[2]
    return np.array([(lo[0] + hi[0]) / 2, hi[1] - depth / 2, (lo[2] + hi[2]) / 2])


def estimate_canonical(verts: np.ndarray, head_pose: np.ndarray, cameras: Sequence[Calibrated],
                       front: Sequence[int] | None) -> np.ndarray:
    """Canonical → head-pose transform (4×4, mm) from one frame: axes from the rig (``estimate_head_frame``
    about the head centre), the origin at the mesh's ``head_centre`` in those axes. The two depend on each
    other only weakly (directions to cameras a metre away), so a few rounds settle both."""
    centres, ups = camera_centres_and_ups(np.stack([c.w2c for c in cameras]))
    inv_pose = np.linalg.inv(head_pose)
    centre = verts.mean(0)
    A = np.eye(4)
    for _ in range(20):
        world = head_pose[:3, :3] @ centre + head_pose[:3, 3]
        A = inv_pose @ estimate_head_frame(world, centres, ups, front)
        local = (verts - A[:3, 3]) @ A[:3, :3]  # vertices in the canonical axes at the current origin
        new = A[:3, :3] @ head_centre(local) + A[:3, 3]
        moved = float(np.linalg.norm(new - centre))
        centre = new
        if moved < 1e-4:
            break
    world = head_pose[:3, :3] @ centre + head_pose[:3, 3]
    return inv_pose @ estimate_head_frame(world, centres, ups, front)


def read_head_frame(path: str | os.PathLike) -> np.ndarray:
    """A canonical → head-pose transform file: JSON, a 4×4 list (mm) or ``{"head_frame": 4×4}`` (the record
    ``captures/{capture}.json`` keeps under ``info``)."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
        if isinstance(doc, dict):
            doc = doc.get("info", doc).get("head_frame")
        m = np.asarray(doc, np.float64)
    except (OSError, ValueError, TypeError, AttributeError, UnicodeDecodeError) as err:
        raise CaptureError(f"{path}: not a JSON 4x4 head frame ({getattr(err, 'strerror', None) or err})",
                           param="head_frame") from None
    R = m[:3, :3] if m.shape == (4, 4) else None
    if R is None or not np.isfinite(m).all() or np.abs(m[3] - [0, 0, 0, 1]).max() > 1e-6 \
            or np.abs(R @ R.T - np.eye(3)).max() > 1e-4 or np.linalg.det(R) < 0:
        raise CaptureError(f"{path}: the head frame must be a 4x4 rigid transform (rotation, translation in mm, "
                           "last row 0 0 0 1)", param="head_frame")
    return m


def rotation_degrees(R: np.ndarray) -> float:
    return math.degrees(math.acos(max(-1.0, min(1.0, (float(np.trace(R)) - 1) / 2))))


# -- expression codes ----------------------------------------------------------------------------
class CodeTable:
    """Codes from a parquet file: columns ``capture`` (folder name) or ``person`` (subject id), ``segment``,
    ``frame``, ``expr`` (list<float32> of 256 values, the Ava-256 latent of that frame)."""

    def __init__(self, path: str | os.PathLike):
        import pyarrow as pa
        import pyarrow.compute as pc
        import pyarrow.parquet as pq

        self.path = Path(path)
        try:
            table = pq.read_table(self.path)
        except (OSError, pa.ArrowException) as err:
            raise CaptureError(f"{self.path}: not a readable parquet table ({err})", param="codes") from None
        names = set(table.column_names)
        self.by = "capture" if "capture" in names else "person"
        need = {self.by, "segment", "frame", "expr"}
        if not need <= names:
            raise CaptureError(f"{self.path}: needs columns capture (or person), segment, frame, expr; missing "
                               f"{', '.join(sorted(need - names))}", param="codes")
        expr = table.column("expr").combine_chunks()
        if not (pa.types.is_list(expr.type) or pa.types.is_large_list(expr.type)
                or pa.types.is_fixed_size_list(expr.type)):
            raise CaptureError(f"{self.path}: column expr must be a list of floats", param="codes")
        widths = np.asarray(pc.list_value_length(expr).fill_null(0))
        bad = np.flatnonzero(widths != CODE_DIM)
        if len(bad):
            raise CaptureError(f"{self.path}: expression codes must have {CODE_DIM} values, row {int(bad[0])} "
                               f"has {int(widths[bad[0]])}", param="codes")
        self.codes = np.asarray(expr.flatten().to_numpy(zero_copy_only=False), np.float32).reshape(-1, CODE_DIM)
        if not np.isfinite(self.codes).all():
            row = int(np.flatnonzero(~np.isfinite(self.codes).all(1))[0])
            raise CaptureError(f"{self.path}: row {row} has a non-finite expression code", param="codes")
        self.keys = np.asarray(table.column(self.by).to_pylist(), dtype=object)
        self.segments = np.asarray(table.column("segment").to_pylist(), dtype=object)
        try:
            self.frames = np.asarray(table.column("frame").to_pylist(), dtype=np.int64)
        except (TypeError, ValueError):
            raise CaptureError(f"{self.path}: column frame must hold integer frame numbers", param="codes") from None

    def for_capture(self, capture: str) -> dict[tuple[str, int], np.ndarray]:
        key = capture if self.by == "capture" else person_of(capture)
        rows = np.flatnonzero(self.keys == key)
        return {(str(self.segments[r]), int(self.frames[r])): self.codes[r] for r in rows}


class MeshEncoder:
    """A TorchScript expression encoder (``torch.jit.load``; never unpickled Python).

    Interface: ``forward(offsets: Tensor) -> Tensor`` with ``offsets`` float32 (B, V, 3), the tracked mesh's
    vertices of B frames minus those of the capture's neutral frame (the first ``EXP_neutral_peak`` frame),
    in the head-pose frame and in millimetres as ``registration_vertices.zip`` stores them (V = 7306 in the
    face topology the release's repository ships), on the CPU; it returns float32 (B, 256), one Ava-256
    expression code per frame."""

    def __init__(self, path: str | os.PathLike):
        import torch

        self.path = Path(path)
        if not self.path.is_file():
            raise CaptureError(f"{self.path}: encoder not found", param="encoder")
        try:
            with warnings.catch_warnings():  # torch marks TorchScript as deprecated; it is the safe format here
                warnings.simplefilter("ignore", FutureWarning)
                self.module = torch.jit.load(str(self.path), map_location="cpu").eval()
        except (RuntimeError, ValueError, OSError) as err:
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise CaptureError(f"{self.path}: not a TorchScript module ({first})", param="encoder") from None

    def __call__(self, offsets: np.ndarray) -> np.ndarray:
        import torch

        with torch.no_grad():
            try:
                out = self.module(torch.as_tensor(offsets, dtype=torch.float32))
            except Exception as err:  # TorchScript raises its own error types
                first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
                raise CaptureError(f"{self.path}: the encoder failed on offsets shaped {tuple(offsets.shape)} "
                                   f"({first})", param="encoder") from None
        if not isinstance(out, torch.Tensor) or tuple(out.shape) != (len(offsets), CODE_DIM):
            shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise CaptureError(f"{self.path}: the encoder must return ({len(offsets)}, {CODE_DIM}) codes, got "
                               f"{shape}", param="encoder")
        out = out.detach().float().numpy()
        if not np.isfinite(out).all():
            raise CaptureError(f"{self.path}: the encoder returned non-finite codes", param="encoder")
        return out


def encode_frames(encoder: MeshEncoder, decoder: Path, all_frames: Sequence[tuple[str, int]],
                  frames: Sequence[tuple[str, int]]) -> dict[tuple[str, int], np.ndarray]:
    """Codes of ``frames`` from their meshes; frames without a mesh get none."""
    neutral = None
    for seg, fr in sorted(f for f in all_frames if f[0] == NEUTRAL_SEGMENT):
        neutral = read_vertices(decoder, fr)
        if neutral is not None:
            break
    if neutral is None:
        raise CaptureError(f"{decoder}: no {NEUTRAL_SEGMENT} frame with a tracked mesh, so there is no neutral "
                           "mesh to measure expressions from", param="encoder")
    codes, batch, keys = {}, [], []

    def flush():
        if batch:
            for k, c in zip(keys, encoder(np.stack(batch).astype(np.float32))):
                codes[k] = c
            batch.clear()
            keys.clear()

    for seg, fr in frames:
        verts = read_vertices(decoder, fr)
        if verts is None:
            continue
        if verts.shape != neutral.shape:
            raise CaptureError(f"{decoder}: frame {fr} has {len(verts)} mesh vertices, the neutral frame "
                               f"{len(neutral)}")
        batch.append(verts - neutral)
        keys.append((seg, fr))
        if len(batch) >= ENCODER_BATCH:
            flush()
    flush()
    return codes


# -- one capture ---------------------------------------------------------------------------------
@dataclass
class Options:
    """What to convert and how (the command's options, checked)."""

    res: int = 512
    cameras: Sequence[str] | None = None  # camera ids; None: every calibrated camera
    every: int = 1  # keep every n-th frame of each segment
    segments: Sequence[str] | None = None
    head_frame: np.ndarray | None = None  # canonical → head-pose (mm); None: estimate per capture
    codes: CodeTable | None = None
    encoder: MeshEncoder | None = None
    workers: int = 1

    @property
    def expression_space(self) -> str:
        return EXPRESSION_SPACE if (self.codes is not None or self.encoder is not None) else PLACEHOLDER_SPACE


@dataclass
class CapturePlan:
    capture: str
    person: str
    jobs: list[FrameJob]
    info: dict = field(default_factory=dict)


def _camera_id(name: str) -> str:
    return name[3:] if name.startswith("cam") else name


def plan_capture(root: Path, capture: str, opts: Options) -> CapturePlan:
    """Read a capture's calibration, frame list, head poses (and codes) and list its frame jobs."""
    check_capture_name(capture)
    decoder = root / capture / "decoder"
    if not decoder.is_dir():
        raise CaptureError(f"{decoder}: missing (expected the capture's decoder/ folder)")
    cams = read_calibration(decoder)
    calib = decoder / "camera_calibration.json"
    if opts.cameras:
        wanted = [_camera_id(c) for c in opts.cameras]
        unknown = [c for c in wanted if c not in cams]
        if unknown:
            raise CaptureError(f"{calib}: no camera {unknown[0]} (it has {len(cams)}, e.g. {next(iter(cams))})",
                               param="cameras")
        chosen = [cams[c] for c in sorted(set(wanted))]
    else:
        chosen = list(cams.values())
    if not (decoder / "segmentation_parts").is_dir():
        raise CaptureError(f"{decoder / 'segmentation_parts'}: missing (the label maps the head masks come from)")
    all_frames = read_frame_list(decoder)
    frames = sorted(set(f for f in all_frames if not opts.segments or f[0] in opts.segments))
    if not frames:
        raise CaptureError(f"{decoder / 'frame_list.csv'}: no frame of segment(s) {', '.join(opts.segments or [])}",
                           param="segments")
    if opts.every > 1:
        kept, seen = [], {}
        for seg, fr in frames:
            if seen.get(seg, 0) % opts.every == 0:
                kept.append((seg, fr))
            seen[seg] = seen.get(seg, 0) + 1
        frames = kept
    poses = read_head_poses(decoder)

    info: dict = {"cameras": len(chosen), "listed_frames": len(frames)}
    if opts.head_frame is not None:
        canonical = np.asarray(opts.head_frame, np.float64)
        info["head_frame_source"] = "given"
    else:
        reference = [f for f in sorted(all_frames) if f[0] == NEUTRAL_SEGMENT] + list(all_frames)
        verts, ref = None, None
        for seg, fr in reference:
            if fr in poses:
                verts = read_vertices(decoder, fr)
                if verts is not None:
                    ref = (seg, fr)
                    break
        if ref is None:
            raise CaptureError(f"{decoder}: no frame has both a head pose and a tracked mesh "
                               "(kinematic_tracking/registration_vertices.zip), so its head frame cannot be "
                               "estimated; give one", param="head_frame")
        rig = list(cams.values())
        front = [i for i, c in enumerate(rig) if c.id in FRONTAL_CAMERAS]
        canonical = estimate_canonical(verts, poses[ref[1]], rig, front if len(front) >= 2 else None)
        info["head_frame_source"] = "estimated"
        info["reference_frame"] = f"{ref[0]}/{ref[1]:06d}"
        info["front_cameras"] = [rig[i].id for i in front] if len(front) >= 2 else "all"
    info["head_frame"] = [[float(x) for x in row] for row in canonical]
    info["head_frame_tilt_deg"] = round(rotation_degrees(canonical[:3, :3]), 4)  # vs the head-pose axes
    info["distortion_ignored_max"] = max((abs(x) for c in chosen for x in c.distortion), default=0.0)

    codes: dict | None = None
    if opts.codes is not None:
        codes = opts.codes.for_capture(capture)
        if not codes:
            raise CaptureError(f"{opts.codes.path}: no codes for capture {capture} (column {opts.codes.by} holds "
                               f"{'folder names' if opts.codes.by == 'capture' else 'subject ids'})", param="codes")
    elif opts.encoder is not None:
        codes = encode_frames(opts.encoder, decoder, all_frames, [f for f in frames if f[1] in poses])

    cam_payload = tuple((c.id, tuple(c.K.reshape(-1)), tuple(c.w2c.reshape(-1))) for c in chosen)
    jobs, no_pose, no_code = [], 0, 0
    for seg, fr in frames:
        canon_to_world = None
        code = None
        if fr not in poses:
            no_pose += 1
        elif codes is not None and (seg, fr) not in codes:
            no_code += 1
        else:
            canon_to_world = tuple((poses[fr] @ canonical).reshape(-1))
            code = None if codes is None else tuple(float(x) for x in codes[(seg, fr)])
        jobs.append(FrameJob(capture, seg, fr, (str(decoder), cam_payload, canon_to_world, code)))
    info["frames_without_pose"] = no_pose
    if codes is not None:
        info["frames_without_code"] = no_code
    return CapturePlan(capture, person_of(capture), jobs, info)


def load_frame(job: FrameJob) -> FrameViews | None:
    """One frame's views (see ``plan_capture`` for the payload); None when no camera has an image (or the frame
    has no head pose or code). A view without its image or label map counts as missing."""
    decoder_s, cameras, canon_to_world, code = job.payload
    if canon_to_world is None:
        return None
    decoder = Path(decoder_s)
    canon_to_world = np.asarray(canon_to_world, np.float64).reshape(4, 4)
    views, missing = [], 0
    for cam_id, K_full, w2c_world in cameras:
        img_zip = decoder / "image" / f"cam{cam_id}.zip"
        data, name = _ZIPS.member(decoder, img_zip, f"{job.frame:06d}.avif")
        seg_zip = decoder / "segmentation_parts" / f"cam{cam_id}.zip"
        labels, label_name = _ZIPS.member(decoder, seg_zip, f"{job.frame:06d}.png")
        if data is None or labels is None:
            missing += 1
            continue
        rgb = decode_rgb(data, f"{img_zip}: member {name}")
        h, w = rgb.shape[:2]
        mask = head_mask(decode_labels(labels, f"{seg_zip}: member {label_name}"), w, h, f"{seg_zip}: member "
                         f"{label_name}")
        K = scaled_intrinsics(np.asarray(K_full).reshape(3, 3), w, h, f"{img_zip}: member {name}")
        w2c = fold_head_pose(np.asarray(w2c_world).reshape(4, 4), canon_to_world, MM)
        views.append(View(cam_id, rgb, mask, K, w2c))
    if not views:
        return None
    return FrameViews(job.segment, job.frame, views,
                      expr=None if code is None else np.asarray(code, np.float32), missing_views=missing)


# -- the whole conversion ------------------------------------------------------------------------
@dataclass
class Ava256Result:
    summaries: list[CaptureSummary]
    expression_space: str
    merged: bool
    samples: int = 0  # in the merged manifest
    test_persons: list[str] = field(default_factory=list)


def _check_done(out: Path, capture: str, opts: Options) -> None:
    """A capture converted earlier is skipped only if it was converted the way this run would: the merged
    manifest could not mix resolutions or expression spaces."""
    from .manifest import read_manifest

    done = read_manifest(capture_manifest_path(out, capture))
    size = int(done["width"][0]) if len(done) else opts.res
    if done.expression_space != opts.expression_space or size != opts.res:
        raise CaptureError(f"{capture} was converted into {out} at {size}² with expression space "
                           f"{done.expression_space!r}, this run asks for {opts.res}² and "
                           f"{opts.expression_space!r}; convert into another folder")


def prep_ava256(root: str | os.PathLike, out: str | os.PathLike, captures: Sequence[str] | None = None,
                opts: Options | None = None, part: tuple[int, int] | None = None,
                heldout: Iterable[str] | None = None,
                on_capture: Callable[[CapturePlan | None, str], Callable[[int], None] | None] | None = None,
                done: Callable[[CaptureSummary], None] | None = None) -> Ava256Result:
    """Convert the chosen captures (those of ``part`` i/n) into ``out``; without a part, merge them into
    ``manifest.parquet`` with the ``heldout`` persons as the test split (default ``HELDOUT``).

    ``on_capture(plan, name)`` is called before each capture (plan None: already done, skipped) and may return
    a per-frame progress callback; ``done(summary)`` after it."""
    root, out = Path(root), Path(out)
    opts = opts or Options()
    names = resolve_captures(root, captures)
    mine = select_part(names, part) if part is not None else names
    test = sorted(set(heldout)) if heldout is not None else heldout_persons()
    summaries = []
    try:
        for name in mine:
            if is_capture_done(out, name):
                _check_done(out, name, opts)
                progress = on_capture(None, name) if on_capture else None
                summary = convert_capture(out, name, person_of(name), [], load_frame, opts.res,
                                          opts.expression_space, CODE_DIM, SOURCE)
            else:
                plan = plan_capture(root, name, opts)
                plan.info["participant_split"] = "test" if plan.person in test else "train"
                progress = on_capture(plan, name) if on_capture else None
                summary = convert_capture(out, name, plan.person, plan.jobs, load_frame, opts.res,
                                          opts.expression_space, CODE_DIM, SOURCE, workers=opts.workers,
                                          info=plan.info, progress=progress)
            summaries.append(summary)
            if done:
                done(summary)
    finally:
        _ZIPS.close()
    result = Ava256Result(summaries, opts.expression_space, merged=part is None, test_persons=test)
    if part is None:
        result.samples = len(merge_captures(out, test_persons=test))
    return result
