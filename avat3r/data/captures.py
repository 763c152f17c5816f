"""Multi-view captures → head-centric shards: the machinery `prep ava256` and `prep nersemble` share.

A dataset converter only knows how to read its release: it lists the frames of a capture (``FrameJob``) and
loads one frame (``FrameViews``: every camera's full-resolution image, mask, intrinsics and a head-centric
world-to-camera in metres). This module does the rest, the same way for every dataset:

- **Head-centric cameras** (DESIGN §2): ``fold_head_pose`` moves a camera into the head's frame and converts
  units to metres; ``estimate_head_frame`` finds the canonical axes (+y up, +z out of the face) from the rig when
  a release has no canonical head frame, and ``triangulate`` finds a head centre from per-view image points.
- **Crops** (paper App. C): a square around the projected head centre spanning ``HEAD_FRAME_RADIUS`` metres at
  its depth, resized to ``res``; K follows the crop and resize; the background outside the mask is black.
- **Per-capture output, resumable and splittable**: each capture becomes shards ``{capture}-shard-NNNNNN.tar``
  and, written last, ``captures/{capture}.parquet`` (its manifest) + ``captures/{capture}.json`` (counts). A
  capture is done when its manifest exists; a rerun skips it, and a killed one is redone from scratch (its
  stale shards removed). Each capture is locked while converted, so the jobs of a cluster array
  (``--part i/n``: capture ``k`` belongs to part ``k mod n``) never collide.
- **Merge**: ``merge_captures`` joins the per-capture manifests (sorted by capture) into ``manifest.parquet``
  with person-level splits from the held-out lists, so parts merged later equal one run byte for byte.

Frames are loaded and cropped in worker processes; results are written in job order, so the bytes do not
depend on the number of workers.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
import torch

from ..cameras import Cameras, camera_dict
from ..errors import Avat3rError
from ..fileio import OutputLock, atomic_write_bytes
from .images import HEAD_FRAME_RADIUS, crop_square, head_crop_box, resize_square
from .manifest import MANIFEST_NAME, Manifest, build_manifest, read_manifest, write_manifest
from .shards import ShardWriter, encode_sample, make_key

CAPTURES_DIR = "captures"
SUMMARY_NAME = "prep.json"
CAPTURE_NAME = re.compile(r"^[A-Za-z0-9_+-]+$")  # also a shard-name prefix: no dots, slashes or braces
PLACEHOLDER_SPACE = "none"  # no expression codes: a one-wide zero column (as `prep images` writes)


class CaptureError(Avat3rError, ValueError):
    """A capture cannot be converted or merged; the message names the capture (or file) and what to do."""


# -- geometry ------------------------------------------------------------------------------------
def fold_head_pose(w2c_world: np.ndarray, head_to_world: np.ndarray, metres_per_unit: float = 1.0) -> np.ndarray:
    """World-to-camera in the head's frame, in metres.

    ``w2c_world`` and ``head_to_world`` are 4×4 rigid transforms in the release's unit (Ava-256: mm). The head
    frame's points map to the camera through ``w2c_world @ head_to_world``; scaling points and camera
    coordinates alike by ``metres_per_unit`` leaves the projection unchanged and only scales the translation."""
    m = np.asarray(w2c_world, np.float64) @ np.asarray(head_to_world, np.float64)
    out = np.eye(4)
    out[:3, :3] = m[:3, :3]
    out[:3, 3] = m[:3, 3] * metres_per_unit
    return out


def camera_centres_and_ups(w2c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(N,3) camera centres and (N,3) image-up directions (−y of OpenCV cameras) of (N,4,4) world-to-cameras."""
    w2c = np.asarray(w2c, np.float64)
    R, t = w2c[:, :3, :3], w2c[:, :3, 3]
    centres = -np.einsum("nji,nj->ni", R, t)  # −Rᵀt
    ups = -R[:, 1, :]  # the camera's y axis (image down) in world coordinates, negated
    return centres, ups


def estimate_head_frame(centre: np.ndarray, camera_centres: np.ndarray, camera_ups: np.ndarray,
                        front: np.ndarray | None = None) -> np.ndarray:
    """4×4 canonical-head → world transform at ``centre``: +z towards the mean of the ``front`` cameras (all
    cameras when None; a frontal rig), +y along the cameras' mean image-up direction made orthogonal to +z, and
    +x = y × z (the subject's left). Valid for upright cameras (no roll), as capture rigs mount them."""
    centre = np.asarray(centre, np.float64)
    sel = slice(None) if front is None else np.asarray(front)
    to_cams = np.asarray(camera_centres, np.float64)[sel] - centre
    z = (to_cams / np.linalg.norm(to_cams, axis=1, keepdims=True)).mean(0)
    if np.linalg.norm(z) < 1e-6:
        raise CaptureError("the cameras surround the head evenly, so they do not tell which way the face looks; "
                           "name the frontal cameras")
    z /= np.linalg.norm(z)
    up = np.asarray(camera_ups, np.float64)[sel].mean(0)
    y = up - (up @ z) * z
    if np.linalg.norm(y) < 1e-6:
        raise CaptureError("the cameras' image-up directions are parallel to the face direction; "
                           "cannot tell up from down")
    y /= np.linalg.norm(y)
    x = np.cross(y, z)
    out = np.eye(4)
    out[:3, 0], out[:3, 1], out[:3, 2], out[:3, 3] = x, y, z, centre
    return out


def triangulate(K: np.ndarray, w2c: np.ndarray, uv: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """The 3D point closest (least squares) to the rays through pixels ``uv`` (N,2) of cameras K (N,3,3),
    w2c (N,4,4); e.g. the head centre from the mask centroids of several views."""
    K, w2c, uv = (np.asarray(a, np.float64) for a in (K, w2c, uv))
    if len(uv) < 2:
        raise CaptureError("a point needs at least two views to be triangulated")
    w = np.ones(len(uv)) if weights is None else np.asarray(weights, np.float64)
    A, b = np.zeros((3, 3)), np.zeros(3)
    for k in range(len(uv)):
        R, t = w2c[k, :3, :3], w2c[k, :3, 3]
        d = R.T @ np.linalg.solve(K[k], np.array([uv[k, 0], uv[k, 1], 1.0]))
        d /= np.linalg.norm(d)
        c = -R.T @ t
        P = np.eye(3) - np.outer(d, d)  # distance to the ray = |P (x − c)|
        A += w[k] * P
        b += w[k] * P @ c
    if np.linalg.cond(A) > 1e8:
        raise CaptureError("the views' rays are parallel; the point cannot be triangulated")
    return np.linalg.solve(A, b)


# -- one view ------------------------------------------------------------------------------------
@dataclass
class View:
    """One camera's full-resolution image of one frame: ``rgb`` uint8 H×W×3, ``mask`` uint8 H×W (255 = head;
    None = keep every pixel), ``K`` for this image's pixels, ``w2c`` head-centric in metres."""

    camera: str
    rgb: np.ndarray
    mask: np.ndarray | None
    K: np.ndarray
    w2c: np.ndarray


@dataclass
class FrameViews:
    """A frame's views plus its expression code (None: the release has none) and the views it lacks."""

    segment: str
    frame: int
    views: list[View]
    expr: np.ndarray | None = None
    missing_views: int = 0


def crop_view(view: View, res: int, radius: float = HEAD_FRAME_RADIUS) -> dict:
    """The view as a sample: the square head crop (background black) at ``res``², its mask and camera."""
    h, w = view.rgb.shape[:2]
    K = torch.as_tensor(np.asarray(view.K, np.float64)[None])
    cam = Cameras(K, torch.as_tensor(np.asarray(view.w2c, np.float64)[None]), torch.tensor([w]), torch.tensor([h]))
    x0, y0, side = head_crop_box(cam, radius)
    crop_cam = cam.cropped(x0, y0, side, side).resized(res, res)
    rgb = resize_square(crop_square(view.rgb, x0, y0, side), res)
    mask = None
    if view.mask is not None:
        if view.mask.shape != (h, w):
            raise CaptureError(f"camera {view.camera}: mask is {view.mask.shape[1]}x{view.mask.shape[0]} but the "
                               f"image is {w}x{h}")
        mask = resize_square(crop_square(view.mask, x0, y0, side), res)
        rgb = (rgb.astype(np.float32) * (mask.astype(np.float32)[..., None] / 255.0) + 0.5).astype(np.uint8)
    return {"rgb": rgb, "mask": mask,
            "camera": camera_dict(crop_cam.K[0].float(), crop_cam.w2c[0].float(), res, res)}


# -- one capture ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class FrameJob:
    """A frame to load: what a converter's loader needs (picklable, for worker processes)."""

    capture: str
    segment: str
    frame: int
    payload: tuple = ()  # converter-specific, e.g. the capture's root and chosen cameras


@dataclass
class CaptureSummary:
    capture: str
    person: str
    samples: int = 0
    frames: int = 0
    missing_frames: int = 0  # listed frames with no image at all
    missing_views: int = 0  # views absent from frames that have others
    skipped: bool = False  # already converted by an earlier run
    info: dict = field(default_factory=dict)  # converter's record (head frame, colour correction, …)

    def to_json(self) -> dict:
        return {"capture": self.capture, "person": self.person, "samples": self.samples, "frames": self.frames,
                "missing_frames": self.missing_frames, "missing_views": self.missing_views, "info": self.info}


def check_capture_name(name: str) -> str:
    if not CAPTURE_NAME.match(name):
        raise CaptureError(f"capture name {name!r} must be letters, digits, '_', '+' or '-' only")
    return name


def shard_pattern(capture: str) -> str:
    return f"{capture}-shard-{{:06d}}.tar"


def capture_manifest_path(out: Path, capture: str) -> Path:
    return out / CAPTURES_DIR / f"{capture}.parquet"


def is_capture_done(out: str | os.PathLike, capture: str) -> bool:
    return capture_manifest_path(Path(out), capture).is_file()


def _crop_frame(load: Callable[[FrameJob], FrameViews | None], res: int, radius: float,
                job: FrameJob) -> tuple[FrameViews | None, list[dict]]:
    """Worker body: load one frame and crop its views. Only the crops travel back to the parent, so the
    full-resolution images are dropped from the returned frame."""
    frame = load(job)
    if frame is None:
        return None, []
    samples = [crop_view(v, res, radius) for v in frame.views]
    for v in frame.views:
        v.rgb = v.mask = None
    return frame, samples


def _init_worker() -> None:
    torch.set_num_threads(1)


def _clear_stale(out: Path, capture: str) -> None:
    prefix = f"{capture}-shard-"
    for p in out.iterdir():
        if p.name.startswith(prefix) or p.name.startswith(f".{prefix}"):
            p.unlink()


def convert_capture(out: str | os.PathLike, capture: str, person: str, jobs: Sequence[FrameJob],
                    load: Callable[[FrameJob], FrameViews | None], res: int, expression_space: str,
                    expr_dim: int, source: str, radius: float = HEAD_FRAME_RADIUS, workers: int = 1,
                    info: dict | None = None, progress: Callable[[int], None] | None = None) -> CaptureSummary:
    """Convert one capture's ``jobs`` (in order) into shards + ``captures/{capture}.parquet``; skip it when
    already done. ``load`` (a top-level function, for workers) returns a frame's views, or None when the frame
    has no image at all (counted as missing). Codes: with ``expression_space`` other than ``none`` every frame
    must carry a code of ``expr_dim`` values."""
    out = Path(out)
    check_capture_name(capture)
    (out / CAPTURES_DIR).mkdir(parents=True, exist_ok=True)
    summary = CaptureSummary(capture, person, info=dict(info or {}))
    if is_capture_done(out, capture):
        done = json.loads((out / CAPTURES_DIR / f"{capture}.json").read_text())
        summary.samples, summary.frames = done["samples"], done["frames"]
        summary.missing_frames, summary.missing_views = done["missing_frames"], done["missing_views"]
        summary.skipped = True
        return summary
    has_codes = expression_space != PLACEHOLDER_SPACE
    with OutputLock(out / CAPTURES_DIR / capture):
        _clear_stale(out, capture)
        records, rows, exprs = [], [], []
        work = partial(_crop_frame, load, res, radius)
        workers = max(1, min(workers, len(jobs)))
        with ShardWriter(out, pattern=shard_pattern(capture)) as writer:
            def consume(result):
                frame, samples = result
                if frame is None or not samples:
                    summary.missing_frames += 1
                    if progress is not None:
                        progress(1)
                    return
                if has_codes:
                    if frame.expr is None:
                        raise CaptureError(f"{capture}: frame {frame.segment}/{frame.frame} has no expression code")
                    code = np.asarray(frame.expr, np.float32).reshape(-1)
                    if code.shape != (expr_dim,) or not np.isfinite(code).all():
                        raise CaptureError(f"{capture}: frame {frame.segment}/{frame.frame}: expression code must "
                                           f"be {expr_dim} finite values")
                else:
                    code = np.zeros(1, np.float32)
                summary.frames += 1
                summary.missing_views += frame.missing_views
                for view, sample in zip(frame.views, samples):
                    key = make_key(person, frame.segment, frame.frame, view.camera)
                    sample["expr"] = code if has_codes else None
                    records.append(writer.write(key, encode_sample(sample)))
                    rows.append({"person": person, "segment": frame.segment, "frame": frame.frame,
                                 "camera": view.camera, "width": res, "height": res, "split": "train",
                                 "has_prior": False})
                    exprs.append(code)
                if progress is not None:
                    progress(1)

            if workers == 1:
                for job in jobs:
                    consume(work(job))
            else:
                with mp.get_context("spawn").Pool(workers, initializer=_init_worker) as pool:
                    for result in pool.imap(work, jobs, chunksize=1):  # imap keeps the jobs' order
                        consume(result)
            writer.close()
        if not records:
            raise CaptureError(f"{capture}: none of its {len(jobs)} listed frames has an image")
        summary.samples = len(records)
        manifest = build_manifest(records, rows, np.stack(exprs), expression_space, source, out)
        record = json.dumps(summary.to_json(), indent=1, sort_keys=True).encode()
        atomic_write_bytes(out / CAPTURES_DIR / f"{capture}.json", record)
        write_manifest(capture_manifest_path(out, capture), manifest)  # last: marks the capture done
    return summary


# -- parts and merge -----------------------------------------------------------------------------
def parse_part(part: str | None) -> tuple[int, int]:
    """``"i/n"`` (0 ≤ i < n, as cluster array indices count) → (i, n); None → (0, 1)."""
    if part is None:
        return 0, 1
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", part)
    if not m or int(m.group(2)) < 1 or int(m.group(1)) >= int(m.group(2)):
        raise CaptureError(f"--part must be i/n with 0 <= i < n (e.g. 0/8), got {part!r}", param="part")
    return int(m.group(1)), int(m.group(2))


def select_part(captures: Sequence[str], part: tuple[int, int]) -> list[str]:
    """The captures of part i of n: every n-th of the sorted names, starting at i (disjoint, covering all)."""
    i, n = part
    return [c for k, c in enumerate(sorted(captures)) if k % n == i]


def read_list(path: str | os.PathLike | None) -> list[str]:
    """Names from a text file (one per line, ``#`` comments) or a CSV: its ``sid``/``person``/``name`` column
    when its header has one (Ava-256's ``mcd,sid,mct``), else its first column."""
    if path is None:
        return []
    path = Path(path)
    try:
        lines = path.read_text().splitlines()
    except OSError as err:
        raise CaptureError(f"{path}: cannot read the list ({err.strerror})") from None
    rows = [[c.strip() for c in line.split("#", 1)[0].split(",")] for line in lines]
    rows = [r for r in rows if any(r)]
    column = 0
    if rows:
        header = [c.lower() for c in rows[0]]
        named = [k for k, c in enumerate(header) if c in ("sid", "person", "name")]
        if named:
            column, rows = named[0], rows[1:]
    bad = [r for r in rows if len(r) <= column or not r[column]]
    if bad:
        raise CaptureError(f"{path}: line {','.join(bad[0])!r} has no name in column {column + 1}")
    return [r[column] for r in rows]


def recorded_holdout(out: str | os.PathLike) -> tuple[list[str], list[str]]:
    """(test persons, val persons) as the conversions recorded them (``info.participant_split`` of each
    ``captures/{capture}.json``), so ``prep merge`` after ``--part`` runs splits like one run would."""
    folder = Path(out) / CAPTURES_DIR
    test, val = set(), set()
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            rec = json.loads(path.read_text())
        except (OSError, ValueError):
            raise CaptureError(f"{path}: unreadable capture record; rerun its part") from None
        split = rec.get("info", {}).get("participant_split")
        (test if split == "test" else val if split == "val" else set()).add(rec.get("person"))
    return sorted(test), sorted(val)


def merge_captures(out: str | os.PathLike, test_persons: Iterable[str] = (), val_persons: Iterable[str] = (),
                   captures: Sequence[str] | None = None) -> Manifest:
    """Join ``captures/*.parquet`` (or the named ``captures``; sorted) into ``out/manifest.parquet`` with
    person-level splits (``test_persons`` → test, ``val_persons`` → val, the rest train) and write
    ``prep.json`` with the per-capture counts. Refuses captures left half-done by a killed run."""
    out = Path(out)
    folder = out / CAPTURES_DIR
    done = sorted(p.stem for p in folder.glob("*.parquet")) if folder.is_dir() else []
    names = sorted(captures) if captures is not None else done
    missing = [c for c in names if c not in done]
    if missing:
        raise CaptureError(f"capture(s) {', '.join(missing[:5])} not converted yet; run their part(s) first")
    half = sorted({p.name.split("-shard-")[0] for p in out.glob("*-shard-*.tar")} - set(done))
    if captures is None and half:
        raise CaptureError(f"capture(s) {', '.join(half[:5])} were left half-converted; rerun their part(s)")
    if not names:
        raise CaptureError(f"{out}: no converted capture to merge")
    test, val = set(test_persons), set(val_persons)
    if test & val:
        raise CaptureError(f"person(s) {', '.join(sorted(test & val))} are listed as both test and val")
    parts = [read_manifest(capture_manifest_path(out, c)) for c in names]
    spaces = {(m.expression_space, m.expr_dim) for m in parts}
    if len(spaces) > 1:
        raise CaptureError(f"captures carry different expression spaces {sorted(spaces)}; convert all with the "
                           "same codes")
    cols = {k: np.concatenate([m.columns[k] for m in parts]) for k in parts[0].columns}
    cols["split"] = np.array(["test" if p in test else "val" if p in val else "train"
                              for p in cols["person"].tolist()], dtype=object)
    merged = Manifest(cols, parts[0].expression_space, parts[0].source, parts[0].version, out)
    write_manifest(out / MANIFEST_NAME, merged)
    summary = {"source": parts[0].source, "expression_space": parts[0].expression_space,
               "samples": len(merged), "captures": {}}
    for c in names:
        rec = json.loads((folder / f"{c}.json").read_text())
        rec["split"] = "test" if rec["person"] in test else "val" if rec["person"] in val else "train"
        summary["captures"][c] = rec
    summary["missing_frames"] = sum(r["missing_frames"] for r in summary["captures"].values())
    summary["missing_views"] = sum(r["missing_views"] for r in summary["captures"].values())
    atomic_write_bytes(out / SUMMARY_NAME, json.dumps(summary, indent=1, sort_keys=True).encode())
    return merged
