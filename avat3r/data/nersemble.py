"""NeRSemble captures as released → head-centric shards (`avat3r prep nersemble`).

Two on-disk layouts are read exactly as their download tools write them:

- ``v2`` (``nersemble-data``): ``{pid:03d}/calibration/camera_params.json`` (``world_2_cam`` {serial: 4×4} and
  one shared 3×3 ``intrinsics`` valid at the full 2200×3208 portrait resolution, scaled here to the decoded
  video size), ``{pid}/calibration/color_calibration.json`` (applied, see ``nersemble_images``),
  ``{pid}/sequences/{SEQ}/images/cam_{serial}.mp4`` and ``{pid}/sequences/BACKGROUND/image_{serial}.jpg``
  (masks by background differencing).
- ``benchmark`` (``nersemble-benchmark``; ROOT is the download folder or one of its ``mono_flame_avatar`` /
  ``nvs`` folders): the same calibration file with ``intrinsics`` per serial at the delivered resolution, the
  background already removed from ``images/cam_{serial}.mp4``, ``alpha_maps/cam_{serial}.mp4`` as masks and,
  for ``mono_flame_avatar``, ``tracking/flame2023_tracking_v2.npz``.

**Captures.** One capture is one participant's sequence: person ``p{pid:03d}``, segment the sequence name
(``EXP-1-head``), capture ``p{pid:03d}_{SEQ}`` (sequence names use letters, digits, ``-``, ``_`` and ``+`` only,
so they are valid in sample keys and shard names). Frames are the videos' frame indices (the timesteps).

**Units.** Metres, assumed: neither release states its unit, but FLAME, which the benchmark's tracking aligns
with the same calibrations, is metric, and the benchmark's viewer draws 0.1-long axes beside the head.
``WORLD_UNIT_METRES`` records the assumption.

**Head frame.** With FLAME tracking, each frame's model→world transform (Euler ``XYZ`` of ``rotation``,
intrinsic, as the benchmark's ``FlameProvider`` builds it; translation ``translation``; the 3×3 scaled by
``scale``) is folded into the cameras: FLAME's own axes already are +x subject's left, +y up, +z out of the
face, and the origin moves to ``FLAME_HEAD_CENTRE`` in FLAME model coordinates. Without tracking, each frame's
head centre is triangulated from the cameras' silhouettes (the centroid of the crown-to-chin band of each mask,
``HEAD_BAND_METRES`` tall from its top row; cameras whose mask touches the image top are left out) and the
axes come from the rig (``estimate_head_frame``: the 16 cameras all face the person, and they are mounted
upright).

**Codes.** With tracking: FLAME expression (100) + jaw pose (3), the ``flame2023`` space; without: none.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .captures import (
    PLACEHOLDER_SPACE,
    CaptureError,
    CaptureSummary,
    FrameJob,
    FrameViews,
    View,
    camera_centres_and_ups,
    check_capture_name,
    convert_capture,
    estimate_head_frame,
    fold_head_pose,
    merge_captures,
    select_part,
    triangulate,
)
from .manifest import Manifest
from .nersemble_images import (
    alpha_mask,
    background_mask,
    correct_colour,
    file_cache,
    read_background,
    read_colour_calibration,
    read_video_frame,
    video_frame_count,
)

SOURCE = "nersemble"
LAYOUTS = ("v2", "benchmark")
BENCHMARK_TASKS = ("mono_flame_avatar", "nvs")  # the tracked task first: it wins a capture found in both
FULL_SIZE = (2200, 3208)  # (width, height) the v2 intrinsics are valid at
WORLD_UNIT_METRES = 1.0  # see "Units" above
EXPRESSION_SPACE = "flame2023"
EXPR_DIM = 103  # FLAME 2023 expression (100) + jaw pose (3, axis-angle)
TRACKING_FILE = "flame2023_tracking_v2.npz"
# The head centre in FLAME model coordinates (metres): the FLAME mean head's nose tip sits at about
# (0, -0.008, 0.076); SynthHeads, whose origin is the head centre, has its nose tip at about (0, -0.033, 0.113)
# from it, which puts the centre at (0, 0.025, -0.037); the mid-point of the FLAME mean head's bounding box
# above the chin is (0, 0.036, -0.039). Rounded between the two.
FLAME_HEAD_CENTRE = (0.0, 0.03, -0.04)
HEAD_BAND_METRES = 0.24  # crown-to-chin band of a silhouette whose centroid approximates the head centre
SPLITS = ("test", "train")
_PID = re.compile(r"^\d+$")


# -- calibration ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Calibration:
    path: str
    w2c: dict  # serial → 4×4 world-to-camera (OpenCV), release units
    K: dict  # serial → 3×3
    full_size: tuple[int, int] | None  # (W, H) the intrinsics are for; None: the delivered video size


def _matrix(path: str, what: str, value, shape: tuple[int, int]) -> np.ndarray:
    try:
        m = np.asarray(value, np.float64)
    except (TypeError, ValueError):
        m = np.zeros(0)
    if m.shape != shape or not np.isfinite(m).all():
        raise CaptureError(f"{path}: {what} must be a {shape[0]}x{shape[1]} matrix of finite numbers")
    return m


@file_cache(maxsize=16)
def read_calibration(path: str, layout: str) -> Calibration:
    """``camera_params.json`` of either layout, checked: rigid 4×4 world-to-cameras and pinhole intrinsics."""
    try:
        doc = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise CaptureError(f"{path}: camera calibration missing") from None
    except OSError as err:
        raise CaptureError(f"{path}: cannot read the camera calibration ({err.strerror})") from None
    except ValueError as err:
        raise CaptureError(f"{path}: not JSON ({err})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("world_2_cam"), dict) or not doc["world_2_cam"]:
        raise CaptureError(f"{path}: expected 'world_2_cam' (an object of 4x4 matrices per camera serial)")
    if "intrinsics" not in doc:
        raise CaptureError(f"{path}: 'intrinsics' missing")
    w2c = {}
    for serial, m in doc["world_2_cam"].items():
        m = _matrix(path, f"world_2_cam[{serial}]", m, (4, 4))
        R = m[:3, :3]
        if np.abs(R @ R.T - np.eye(3)).max() > 1e-3 or np.linalg.det(R) < 0 or \
                np.abs(m[3] - [0, 0, 0, 1]).max() > 1e-6:
            raise CaptureError(f"{path}: world_2_cam[{serial}] is not a rigid transform")
        w2c[str(serial)] = m
    intr = doc["intrinsics"]
    if layout == "v2":
        if isinstance(intr, dict):
            raise CaptureError(f"{path}: 'intrinsics' is per camera, as the benchmark writes it; use "
                               "--layout benchmark", param="layout")
        shared = _matrix(path, "intrinsics", intr, (3, 3))
        K, full = {s: shared for s in w2c}, FULL_SIZE
    else:
        if not isinstance(intr, dict):
            raise CaptureError(f"{path}: 'intrinsics' is one shared matrix, as nersemble-data v2 writes it; use "
                               "--layout v2", param="layout")
        K = {str(s): _matrix(path, f"intrinsics[{s}]", m, (3, 3)) for s, m in intr.items()}
        missing = sorted(set(w2c) - set(K))
        if missing:
            raise CaptureError(f"{path}: no intrinsics for camera(s) {', '.join(missing)}")
        full = None
    for s, k in K.items():
        if k[0, 0] <= 0 or k[1, 1] <= 0 or np.abs(k[2] - [0, 0, 1]).max() > 1e-6:
            raise CaptureError(f"{path}: intrinsics{'' if layout == 'v2' else f'[{s}]'} are not a pinhole "
                               "matrix [[fx,0,cx],[0,fy,cy],[0,0,1]] with positive focal lengths")
    return Calibration(path, w2c, K, full)


def scaled_intrinsics(K: np.ndarray, full_size: tuple[int, int] | None, width: int, height: int,
                      where: str) -> np.ndarray:
    """K for a frame decoded at width×height, when K was calibrated at ``full_size`` (pixel edges scale, so
    u' = s·u in the +0.5-centre convention)."""
    if full_size is None:
        return np.asarray(K, np.float64)
    sx, sy = width / full_size[0], height / full_size[1]
    if abs(sx - sy) > 0.01 * max(sx, sy):
        raise CaptureError(f"{where}: decoded {width}x{height} is not a scaled {full_size[0]}x{full_size[1]} "
                           "frame (the size the intrinsics are for)")
    return np.diag([sx, sy, 1.0]) @ np.asarray(K, np.float64)


# -- FLAME tracking ------------------------------------------------------------------------------
def euler_xyz(angles: np.ndarray) -> np.ndarray:
    """Intrinsic X-Y-Z Euler angles (radians) → rotation matrix R = Rx(a)·Ry(b)·Rz(c) (scipy's 'XYZ')."""
    a, b, c = (float(v) for v in angles)
    rx = np.array([[1, 0, 0], [0, math.cos(a), -math.sin(a)], [0, math.sin(a), math.cos(a)]])
    ry = np.array([[math.cos(b), 0, math.sin(b)], [0, 1, 0], [-math.sin(b), 0, math.cos(b)]])
    rz = np.array([[math.cos(c), -math.sin(c), 0], [math.sin(c), math.cos(c), 0], [0, 0, 1]])
    return rx @ ry @ rz


@dataclass(frozen=True)
class Tracking:
    path: str
    rows: dict  # video frame index → row
    rotation: np.ndarray  # (T, 3) Euler XYZ
    translation: np.ndarray  # (T, 3)
    scale: float
    codes: np.ndarray  # (T, 103) expression + jaw
    matrix_mismatch_degrees: float | None  # stored rotation_matrices vs the Euler angles (None: not stored)

    def head_to_world(self, row: int) -> np.ndarray:
        """Canonical head frame (origin at FLAME_HEAD_CENTRE, FLAME axes) → world, rigid, metres."""
        R = euler_xyz(self.rotation[row])
        out = np.eye(4)
        out[:3, :3] = R
        out[:3, 3] = self.translation[row] + self.scale * R @ np.asarray(FLAME_HEAD_CENTRE)
        return out


@file_cache(maxsize=4)
def read_tracking(path: str) -> Tracking:
    """``flame2023_tracking_v2.npz``: shape, expression (T,100), rotation (T,3), rotation_matrices (T,3,3),
    translation (T,3), jaw (T,3), frames (T,), scale (1,1), neck, eyes; the fields used here are checked."""
    try:
        with np.load(path, allow_pickle=False) as z:
            data = {k: np.asarray(z[k]) for k in z.files}
    except FileNotFoundError:
        raise CaptureError(f"{path}: FLAME tracking missing") from None
    except (OSError, ValueError) as err:
        raise CaptureError(f"{path}: not an npz FLAME tracking file ({str(err).splitlines()[0]})") from None
    need = ("expression", "rotation", "translation", "jaw", "scale")
    missing = [k for k in need if k not in data]
    if missing:
        raise CaptureError(f"{path}: FLAME tracking lacks field(s) {', '.join(missing)}")
    expr = data["expression"]
    T = expr.shape[0] if expr.ndim == 2 else -1
    shapes = {"expression": (T, 100), "rotation": (T, 3), "translation": (T, 3), "jaw": (T, 3)}
    for k, shape in shapes.items():
        if data[k].shape != shape or T <= 0 or not np.isfinite(data[k].astype(np.float64)).all():
            raise CaptureError(f"{path}: '{k}' must be {shape[0] if T > 0 else 'T'}x{shape[1]} finite numbers "
                               f"(got shape {tuple(data[k].shape)})")
    if data["scale"].size != 1 or not (np.isfinite(data["scale"]).all() and float(data["scale"].reshape(-1)[0]) > 0):
        raise CaptureError(f"{path}: 'scale' must be one positive number")
    frames = data.get("frames", np.arange(T))
    if frames.shape != (T,) or not np.issubdtype(frames.dtype, np.number) or \
            len(set(frames.tolist())) != T or (frames < 0).any():
        raise CaptureError(f"{path}: 'frames' must list {T} distinct frame indices")
    rotation = data["rotation"].astype(np.float64)
    mismatch = None
    if "rotation_matrices" in data and data["rotation_matrices"].shape == (T, 3, 3):
        mats = data["rotation_matrices"].astype(np.float64)
        mismatch = max(_angle_degrees(euler_xyz(r), m) for r, m in zip(rotation, mats))
    codes = np.concatenate([expr, data["jaw"]], axis=1).astype(np.float32)
    return Tracking(path, {int(f): k for k, f in enumerate(frames.tolist())}, rotation,
                    data["translation"].astype(np.float64), float(data["scale"].reshape(-1)[0]), codes, mismatch)


def _angle_degrees(a: np.ndarray, b: np.ndarray) -> float:
    """Angle between two rotations from ‖A − B‖ = 2√2·sin(θ/2) (precise for small angles, unlike acos)."""
    d = float(np.linalg.norm(a - b)) / (2 * math.sqrt(2))
    return math.degrees(2 * math.asin(min(1.0, d))) if math.isfinite(d) else 180.0


# -- head centre from silhouettes ----------------------------------------------------------------
def band_centroid(mask: np.ndarray, band_px: float) -> tuple[float, float] | None:
    """Centroid (u, v; pixel centres at +0.5) of the mask's top ``band_px`` rows, from its first foreground
    row; None when the mask is empty or touches the image top (the crown is cut off)."""
    fg = mask >= 128
    rows = np.flatnonzero(fg.any(axis=1))
    if len(rows) == 0 or rows[0] == 0:
        return None
    top = rows[0]
    band = fg[top:top + max(1, int(round(band_px)))]
    v, u = np.nonzero(band)
    return float(u.mean() + 0.5), float(v.mean() + top + 0.5)


def head_centre_from_masks(K: Sequence[np.ndarray], w2c: Sequence[np.ndarray],
                           masks: Sequence[np.ndarray]) -> np.ndarray | None:
    """World head centre triangulated from the silhouettes' crown-to-chin band centroids (two passes: the
    band's height in pixels needs the head's depth); None with fewer than two usable views."""
    K, w2c = np.asarray(K, np.float64), np.asarray(w2c, np.float64)
    pp = np.stack([k[:2, 2] for k in K])
    point = triangulate(K, w2c, pp)  # where the optical axes meet: the rig's aim, about the head
    for _ in range(2):
        uv, used = [], []
        for k, (Kk, m) in enumerate(zip(K, masks)):
            depth = float((w2c[k, :3, :3] @ point + w2c[k, :3, 3])[2])
            if depth <= 0:
                continue
            c = band_centroid(m, HEAD_BAND_METRES * Kk[1, 1] / depth)
            if c is not None:
                uv.append(c)
                used.append(k)
        if len(used) < 2:
            return None
        point = triangulate(K[used], w2c[used], np.asarray(uv))
    return point


# -- captures ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Source:
    """Everything a worker needs to load a capture's frames (picklable)."""

    layout: str
    sequence_dir: str
    calibration: str
    serials: tuple[str, ...]
    colour: str | None = None  # color_calibration.json (v2)
    background_dir: str | None = None  # BACKGROUND/ with image_{serial}.jpg (v2)
    tracking: str | None = None  # FLAME tracking npz (benchmark mono_flame_avatar)

    def video(self, serial: str) -> str:
        return os.path.join(self.sequence_dir, "images", f"cam_{serial}.mp4")

    def alpha_video(self, serial: str) -> str:
        return os.path.join(self.sequence_dir, "alpha_maps", f"cam_{serial}.mp4")


@dataclass(frozen=True)
class Capture:
    name: str
    person: str
    sequence: str
    source: Source


def _participants(folder: Path) -> list[Path]:
    return sorted((p for p in folder.iterdir() if p.is_dir() and _PID.match(p.name)), key=lambda p: int(p.name))


def _sequences(pdir: Path) -> list[Path]:
    seq = pdir / "sequences"
    if not seq.is_dir():
        return []
    return sorted(p for p in seq.iterdir() if p.is_dir() and p.name != "BACKGROUND" and (p / "images").is_dir())


def _task_folders(root: Path) -> list[Path]:
    if root.name in BENCHMARK_TASKS:
        return [root]
    return [root / t for t in BENCHMARK_TASKS if (root / t).is_dir()]


def find_captures(root: str | os.PathLike, layout: str, participants: Sequence[int] | None = None,
                  sequences: Sequence[str] | None = None, cameras: Sequence[str] | None = None) -> list[Capture]:
    """The captures under ``root`` (sorted by name), filtered by participant ids, sequence names and camera
    serials; refuses an unknown layout, an empty selection and filters that match nothing."""
    root = Path(root)
    if layout not in LAYOUTS:
        raise CaptureError(f"layout must be one of {', '.join(LAYOUTS)}, got {layout!r}", param="layout")
    if not root.is_dir():
        raise CaptureError(f"{root}: no such folder")
    folders = [root] if layout == "v2" else _task_folders(root)
    if not folders:
        raise CaptureError(f"{root}: no {' or '.join(BENCHMARK_TASKS)} folder of a NeRSemble benchmark download")
    wanted = None if not participants else {int(p) for p in participants}
    found: dict[str, Capture] = {}
    seen_pids, seen_seqs = set(), set()
    for folder in folders:
        for pdir in _participants(folder):
            pid = int(pdir.name)
            if wanted is not None and pid not in wanted:
                continue
            seen_pids.add(pid)
            calib = pdir / "calibration" / "camera_params.json"
            for sdir in _sequences(pdir):
                seen_seqs.add(sdir.name)
                if sequences and sdir.name not in sequences:
                    continue
                name = check_capture_name(f"p{pid:03d}_{sdir.name}")
                if name in found:
                    continue
                tracking = sdir / "tracking" / TRACKING_FILE
                colour = pdir / "calibration" / "color_calibration.json"
                src = Source(layout, str(sdir), str(calib), (),
                             colour=str(colour) if layout == "v2" and colour.is_file() else None,
                             background_dir=str(pdir / "sequences" / "BACKGROUND") if layout == "v2" else None,
                             tracking=str(tracking) if layout == "benchmark" and tracking.is_file() else None)
                found[name] = Capture(name, f"p{pid:03d}", sdir.name, src)
    if wanted is not None and wanted - seen_pids:
        raise CaptureError(f"{root}: no participant folder {', '.join(f'{p:03d}' for p in sorted(wanted - seen_pids))}",
                           param="participants")
    if sequences and set(sequences) - seen_seqs:
        raise CaptureError(f"{root}: no sequence {', '.join(sorted(set(sequences) - seen_seqs))} in the selected "
                           "participants", param="sequences")
    if not found:
        where = "{pid:03d}/sequences/{SEQ}/images/" if layout == "v2" else \
            "{task}/{pid:03d}/sequences/{SEQ}/images/"
        raise CaptureError(f"{root}: no NeRSemble {layout} capture found (expected {where}cam_{{serial}}.mp4)")
    out = []
    for name in sorted(found):
        c = found[name]
        calib = read_calibration(c.source.calibration, layout)
        serials = sorted(calib.w2c)
        if cameras:
            unknown = sorted(set(cameras) - set(serials))
            if unknown:
                raise CaptureError(f"{calib.path}: no camera {', '.join(unknown)} (it has {', '.join(serials)})",
                                   param="cameras")
            serials = [s for s in serials if s in set(cameras)]
        src = c.source
        out.append(Capture(c.name, c.person, c.sequence, Source(src.layout, src.sequence_dir, src.calibration,
                                                                tuple(serials), src.colour, src.background_dir,
                                                                src.tracking)))
    return out


def capture_frames(capture: Capture, every: int = 1, max_frames: int | None = None) -> list[int]:
    """Frame indices to convert: every ``every``-th timestep of the longest camera video, at most
    ``max_frames``; frames a camera lacks become missing views, frames none has missing frames."""
    counts = [video_frame_count(capture.source.video(s)) for s in capture.source.serials]
    counts = [c for c in counts if c is not None]
    if not counts:
        raise CaptureError(f"{capture.source.sequence_dir}/images: none of the selected cameras has a video")
    frames = list(range(0, max(counts), every))
    return frames if max_frames is None else frames[:max_frames]


def load_frame(job: FrameJob) -> FrameViews | None:
    """One frame of a capture: every camera's full-resolution image, mask, K and head-centric w2c; None when no
    camera has the frame (or, with tracking, the frame is untracked; without it, too few silhouettes show
    the head to place it)."""
    src: Source = job.payload[0]
    calib = read_calibration(src.calibration, src.layout)
    head_to_world, code = None, None
    if src.tracking is not None:
        tracking = read_tracking(src.tracking)
        row = tracking.rows.get(job.frame)
        if row is None:
            return None
        head_to_world, code = tracking.head_to_world(row), tracking.codes[row]
    colour = read_colour_calibration(src.colour) if src.colour is not None else None
    loaded, missing = [], 0
    for serial in src.serials:
        rgb = read_video_frame(src.video(serial), job.frame)
        if rgb is None:
            missing += 1
            continue
        h, w = rgb.shape[:2]
        if src.layout == "v2":
            plate = read_background(os.path.join(src.background_dir, f"image_{serial}.jpg"), w, h)
            mask = background_mask(rgb, plate)  # on the raw colours: the plate is uncorrected too
        else:
            alpha = read_video_frame(src.alpha_video(serial), job.frame)
            mask = None if alpha is None else alpha_mask(alpha, w, h)
        if colour is not None:
            if serial not in colour:
                raise CaptureError(f"{src.colour}: no colour correction for camera {serial}")
            rgb = correct_colour(rgb, colour[serial])
        K = scaled_intrinsics(calib.K[serial], calib.full_size, w, h, src.video(serial))
        loaded.append((serial, rgb, mask, K, calib.w2c[serial]))
    if not loaded:
        return None
    if head_to_world is None:
        with_masks = [v for v in loaded if v[2] is not None]
        centre = head_centre_from_masks([v[3] for v in with_masks], [v[4] for v in with_masks],
                                        [v[2] for v in with_masks]) if len(with_masks) >= 2 else None
        if centre is None:
            return None
        centres, ups = camera_centres_and_ups(np.stack([calib.w2c[s] for s in src.serials]))
        head_to_world = estimate_head_frame(centre, centres, ups)
    views = [View(s, rgb, mask, K, fold_head_pose(w2c, head_to_world, WORLD_UNIT_METRES))
             for s, rgb, mask, K, w2c in loaded]
    return FrameViews(job.segment, job.frame, views, code, missing)


# -- the whole conversion ------------------------------------------------------------------------
@dataclass
class NersembleResult:
    captures: list[CaptureSummary] = field(default_factory=list)
    planned: list[str] = field(default_factory=list)  # this part's captures
    manifest: Manifest | None = None  # the merged manifest (None with parts)
    expression_space: str = PLACEHOLDER_SPACE


def plan_nersemble(root: str | os.PathLike, layout: str, participants: Sequence[int] | None = None,
                   sequences: Sequence[str] | None = None, cameras: Sequence[str] | None = None,
                   every: int = 1, frames: int | None = None,
                   part: tuple[int, int] = (0, 1)) -> tuple[list[tuple[Capture, list[FrameJob]]], str]:
    """This part's captures with their frame jobs, and the expression space of the whole selection (decided
    before the part is chosen, so every part writes the same space)."""
    if every < 1:
        raise CaptureError(f"every must be at least 1, got {every}", param="every")
    if frames is not None and frames < 1:
        raise CaptureError(f"frames must be at least 1, got {frames}", param="frames")
    captures = find_captures(root, layout, participants, sequences, cameras)
    tracked = [c.name for c in captures if c.source.tracking is not None]
    if tracked and len(tracked) != len(captures):
        untracked = [c.name for c in captures if c.source.tracking is None]
        raise CaptureError(f"captures {', '.join(tracked[:3])} have FLAME tracking but {', '.join(untracked[:3])} "
                           "do not; convert them into separate output folders (select with --participants)")
    space = EXPRESSION_SPACE if tracked else PLACEHOLDER_SPACE
    chosen = set(select_part([c.name for c in captures], part))
    plan = []
    for c in captures:
        if c.name in chosen:
            jobs = [FrameJob(c.name, c.sequence, f, (c.source,)) for f in capture_frames(c, every, frames)]
            plan.append((c, jobs))
    return plan, space


def prep_nersemble(root: str | os.PathLike, layout: str, out: str | os.PathLike,
                   participants: Sequence[int] | None = None, sequences: Sequence[str] | None = None,
                   cameras: Sequence[str] | None = None, every: int = 1, frames: int | None = None,
                   res: int = 512, workers: int = 1, part: tuple[int, int] | None = None, split: str = "test",
                   progress: Callable[[int], None] | None = None,
                   plan: tuple | None = None) -> NersembleResult:
    """Convert the selected captures (this ``part``'s) into ``out``; without ``part``, merge them into
    ``manifest.parquet`` with every person in ``split`` (NeRSemble evaluates a model trained elsewhere, so
    ``test`` by default). ``plan``: what ``plan_nersemble`` returned for these arguments, when the caller
    already has it (to size a progress bar)."""
    if split not in SPLITS:
        raise CaptureError(f"split must be one of {', '.join(SPLITS)}, got {split!r}", param="split")
    plan, space = plan or plan_nersemble(root, layout, participants, sequences, cameras, every, frames,
                                         part or (0, 1))
    out = Path(out)
    result = NersembleResult(planned=[c.name for c, _ in plan], expression_space=space)
    dim = EXPR_DIM if space == EXPRESSION_SPACE else 1
    for capture, jobs in plan:
        src = capture.source
        info = {"layout": layout, "participant_split": split, "cameras": list(src.serials),
                "head_frame": "flame" if src.tracking else "silhouettes",
                "masks": "background_difference" if layout == "v2" else "alpha_maps",
                "colour_correction": src.colour is not None}
        if src.tracking:
            info["flame_head_centre"] = list(FLAME_HEAD_CENTRE)
            mismatch = read_tracking(src.tracking).matrix_mismatch_degrees
            if mismatch is not None:
                info["rotation_matrices_vs_euler_degrees"] = round(mismatch, 4)
        result.captures.append(convert_capture(out, capture.name, capture.person, jobs, load_frame, res, space,
                                               dim, SOURCE, workers=workers, info=info, progress=progress))
    if part is None:
        persons = sorted({json.loads(p.read_text())["person"] for p in (out / "captures").glob("*.json")})
        result.manifest = merge_captures(out, test_persons=persons if split == "test" else ())
    return result
