"""Lifting backends built on the face tracker: a video, or a folder of unposed photos, → 4 posed views +
``cams.json`` ready for ``reconstruct``.

- ``video``: every frame is tracked (at most ``max_frames``, evenly spaced); the implied camera of a frame is
  the inverse of its head pose. 4 frames are picked by the k-farthest viewpoint rule (paper App. C) on the
  camera directions seen from the head centre: the most frontal frame first, then each time the frame farthest
  (in angle) from those picked; frames within ``TIE_DEGREES`` of the farthest are a tie, broken by sharpness
  (variance of the Laplacian of the face crop).
- ``photos``: every photo is tracked on its own (one camera per photo, each with its own size and intrinsics);
  more than 4 photos with a face are reduced to 4 by the same rule.

Intrinsics: ``fov_degrees`` across the longer image side (default :data:`DEFAULT_FOV_DEGREES`); metric scale
comes from the canonical face model, whose iris centres are 63 mm apart (the average adult interpupillary
distance), so the head of a person with another eye distance is placed nearer or farther in proportion.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from ..cameras import Cameras, write_cams_json
from ..errors import Avat3rError
from ..fileio import StagedFolder, atomic_write_bytes, native_logs_silenced, opencv
from .tracker import DEFAULT_FOV_DEGREES, FaceTrack, NoFaceError, frame_ranges, track_faces

N_VIEWS = 4
TIE_DEGREES = 3.0  # candidate views this close (in angle) to the farthest one are a tie: the sharpest wins
MIN_SPREAD_DEGREES = 10.0  # below this the 4 views barely differ: warn
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")
VIDEO_SUFFIXES = (".mp4", ".mov", ".avi", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg")


class LiftInputError(Avat3rError, ValueError):
    """The video or photos cannot be lifted; one-line message."""


def _is_lift_file(name: str) -> bool:
    import re

    return bool(re.fullmatch(r"view_\d+\.png|mask_\d+\.png|cams\.json|lift\.json|\..*\.tmp", name))


def sharpness(frame: np.ndarray, box: np.ndarray) -> float:
    """Variance of the Laplacian of the face crop (grey, resized to 128²): higher is sharper."""
    cv2 = opencv()
    h, w = frame.shape[:2]
    x0, y0, x1, y1 = box
    x0, y0 = int(max(0, np.floor(x0))), int(max(0, np.floor(y0)))
    x1, y1 = int(min(w, np.ceil(x1))), int(min(h, np.ceil(y1)))
    if x1 - x0 < 4 or y1 - y0 < 4:
        return 0.0
    grey = cv2.cvtColor(np.ascontiguousarray(frame[y0:y1, x0:x1]), cv2.COLOR_RGB2GRAY)
    grey = cv2.resize(grey, (128, 128), interpolation=cv2.INTER_AREA)
    return float(cv2.Laplacian(grey, cv2.CV_64F).var())


def select_views(directions: np.ndarray, sharp: np.ndarray, k: int = N_VIEWS,
                 tie_degrees: float = TIE_DEGREES) -> list[int]:
    """k indices of diverse viewpoints: the most frontal direction (+z) first, then farthest-point sampling in
    angle; near-ties (within ``tie_degrees``) go to the sharpest candidate."""
    n = len(directions)
    if n < k:
        raise ValueError(f"cannot pick {k} of {n} views")
    tie = np.deg2rad(tie_degrees)
    frontal = np.arccos(np.clip(directions[:, 2], -1, 1))
    cand = np.flatnonzero(frontal <= frontal.min() + tie)
    chosen = [int(cand[np.argmax(sharp[cand])])]
    dist = np.arccos(np.clip(directions @ directions[chosen[0]], -1, 1))
    for _ in range(k - 1):
        d = dist.copy()
        d[chosen] = -1.0
        cand = np.flatnonzero(d >= d.max() - tie)
        nxt = int(cand[np.argmax(sharp[cand])])
        chosen.append(nxt)
        dist = np.minimum(dist, np.arccos(np.clip(directions @ directions[nxt], -1, 1)))
    return chosen


def view_spread_degrees(directions: np.ndarray) -> float:
    """Largest angle between two of the given directions."""
    c = np.clip(directions @ directions.T, -1, 1)
    return float(np.rad2deg(np.arccos(c.min())))


def _write_views(out: Path, images: list[np.ndarray], cameras: Cameras, info: dict) -> list[Path]:
    from ..imageio import write_png

    names = [f"view_{i}.png" for i in range(len(images))]
    with StagedFolder(out, _is_lift_file, "lifted views") as stage:
        for name, img in zip(names, images):
            write_png(stage.path / name, img)
        write_cams_json(stage.path / "cams.json", cameras, names)
        atomic_write_bytes(stage.path / "lift.json", (json.dumps(info, indent=1) + "\n").encode())
    return [out / n for n in names]


def _chosen_cameras(track: FaceTrack, idx: list[int]) -> Cameras:
    cams = track.cameras(idx)
    cams.validate([f"frame {i}" for i in idx])
    return cams


def lift_video(video: str | os.PathLike, out_dir: str | os.PathLike, fov_degrees: float = DEFAULT_FOV_DEGREES,
               max_frames: int = 300, warn=None) -> list[Path]:
    """Lift a video of a head turning to ``out_dir``/view_0..3.png + cams.json (+ lift.json: the frames
    picked, their angles, the face-found rate); returns the written image paths."""
    from ..video import count_frames, read_video_frames

    video = Path(video)
    n_total, _ = count_frames(video)
    if n_total < N_VIEWS:
        raise LiftInputError(f"{video}: {n_total} frames; lifting a video needs at least {N_VIEWS}")
    stride = max(1, int(np.ceil(n_total / max(int(max_frames), N_VIEWS))))
    sharp: list[float] = []

    def frames():
        for i, f in enumerate(read_video_frames(video)):
            if i % stride == 0:
                yield f

    with native_logs_silenced():  # mediapipe logs from its own threads too; nothing of ours prints meanwhile
        track = track_faces(frames(), fov_degrees=fov_degrees, video=stride <= 2)
    # sharpness needs the pixels again: a second pass keeps only tracking results in memory
    for j, f in enumerate(frames()):
        sharp.append(sharpness(f, track.boxes[j]) if j < len(track) and track.found[j] else 0.0)
    found = np.flatnonzero(track.found)
    frame_no = lambda j: int(j) * stride  # noqa: E731
    if len(found) < N_VIEWS:
        missing = frame_ranges(frame_no(j) for j in np.flatnonzero(~track.found))
        raise NoFaceError(f"{video}: a face was found in {len(found)} of {len(track)} frames read, {N_VIEWS} are "
                          f"needed; no face in frames {missing}")
    dirs = track.camera_directions()
    pick = [int(found[i]) for i in select_views(dirs[found], np.asarray(sharp)[found])]
    spread = view_spread_degrees(dirs[pick])
    if spread < MIN_SPREAD_DEGREES and warn is not None:
        warn(f"{video}: the 4 views picked are at most {spread:.0f}° apart; turn the head more for a better avatar")
    images = []
    wanted = {frame_no(j): j for j in pick}
    for i, f in enumerate(read_video_frames(video)):
        if i in wanted:
            images.append((wanted[i], f.copy()))
    images = [f for _, f in sorted(images, key=lambda p: pick.index(p[0]))]
    info = {"backend": "video", "source": video.name, "frames": [frame_no(j) for j in pick],
            "fov_degrees": fov_degrees, "face_found_rate": round(track.found_rate, 4), "frames_read": len(track),
            "view_degrees": [round(float(np.rad2deg(np.arccos(np.clip(dirs[j, 2], -1, 1)))), 2) for j in pick],
            "spread_degrees": round(spread, 2), "sharpness": [round(sharp[j], 2) for j in pick]}
    return _write_views(Path(out_dir), images, _chosen_cameras(track, pick), info)


def photo_files(folder: str | os.PathLike) -> list[Path]:
    folder = Path(folder)
    if not folder.is_dir():
        raise LiftInputError(f"{folder}: not a folder of photos")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))
    if len(files) < N_VIEWS:
        raise LiftInputError(f"{folder}: {len(files)} photos ({', '.join(IMAGE_SUFFIXES)}); lifting needs at least "
                             f"{N_VIEWS}")
    return files


def lift_photos(folder: str | os.PathLike, out_dir: str | os.PathLike, fov_degrees: float = DEFAULT_FOV_DEGREES,
                warn=None) -> list[Path]:
    """Lift a folder of unposed photos of one person to ``out_dir``/view_0..3.png + cams.json."""
    from ..imageio import read_image as read_png

    files = photo_files(folder)
    images = [read_png(p) for p in files]
    with native_logs_silenced():
        track = track_faces(images, fov_degrees=fov_degrees, video=False)
    found = np.flatnonzero(track.found)
    if len(found) < N_VIEWS:
        missing = ", ".join(files[i].name for i in np.flatnonzero(~track.found))
        raise NoFaceError(f"{folder}: a face was found in {len(found)} of {len(files)} photos, {N_VIEWS} are needed; "
                          f"no face in {missing}")
    dirs = track.camera_directions()
    sharp = np.array([sharpness(images[i], track.boxes[i]) if track.found[i] else 0.0 for i in range(len(files))])
    pick = [int(found[i]) for i in select_views(dirs[found], sharp[found])]
    spread = view_spread_degrees(dirs[pick])
    if spread < MIN_SPREAD_DEGREES and warn is not None:
        warn(f"{folder}: the 4 photos picked are at most {spread:.0f}° apart; photos from more sides give a better "
             "avatar")
    info = {"backend": "photos", "source": [files[i].name for i in pick], "fov_degrees": fov_degrees,
            "view_degrees": [round(float(np.rad2deg(np.arccos(np.clip(dirs[j, 2], -1, 1)))), 2) for j in pick],
            "spread_degrees": round(spread, 2)}
    return _write_views(Path(out_dir), [images[i] for i in pick], _chosen_cameras(track, pick), info)
