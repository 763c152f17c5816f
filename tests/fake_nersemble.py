"""Tiny fake NeRSemble downloads in both layouts, in the releases' own file formats, with known truth.

One SynthHeads head is filmed by an 8-camera frontal rig at 1/8 of NeRSemble's 2200×3208 (275×401): upright
cameras on a 1 m arc around a point ("the rig frame": +y up, +z towards the cameras), placed in a release world
that is rotated and shifted away from that frame. Every frame moves the head by a small random pose (a few
degrees, a couple of cm), so the true head-centric cameras differ per frame and are known exactly.

- ``write_v2``: ``{pid:03d}/calibration/camera_params.json`` (one shared K at full resolution),
  ``color_calibration.json`` (a known 3×3 matrix per camera whose inverse was applied to the frames),
  per-camera MP4s of the head over a textured background plate, and the plate as JPEG.
- ``write_benchmark``: ``mono_flame_avatar/{pid}`` (per-camera K, black background, alpha-map videos and a
  FLAME tracking npz whose model→world transform puts FLAME's head centre on the head's) and ``nvs/{pid}``
  (the same without tracking).

Videos are lossless (libx264rgb, -qp 0: decoded pixels equal the written ones), written with the ffmpeg that
``imageio-ffmpeg`` ships.
"""

from __future__ import annotations

import json
import math
import subprocess
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch

SERIALS = ("222200042", "222200044", "222200046", "222200040", "222200036", "222200048", "220700191", "222200041")
SCALE = 8
WIDTH, HEIGHT = 2200 // SCALE, 3208 // SCALE  # 275 × 401, exactly 1/8 of the full frame
FULL_K = np.array([[4800.0, 0, 1092.0], [0, 4800.0, 1580.0], [0, 0, 1]])
N_FRAMES = 3
FLAME_SCALE = 1.03  # the tracking's scale: not 1, so its handling is tested
FLAME_HEAD_CENTRE = np.array([0.0, 0.03, -0.04])  # the converter's documented offset


def rotation(axis, degrees) -> np.ndarray:
    axis = np.asarray(axis, np.float64) / np.linalg.norm(axis)
    a = math.radians(degrees)
    K = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + math.sin(a) * K + (1 - math.cos(a)) * K @ K


def rigid(R, t) -> np.ndarray:
    m = np.eye(4)
    m[:3, :3], m[:3, 3] = R, t
    return m


def euler_angles_xyz(R: np.ndarray) -> np.ndarray:
    """Angles (a, b, c) with R = Rx(a)·Ry(b)·Rz(c) (intrinsic XYZ), valid away from b = ±90°."""
    return np.array([math.atan2(-R[1, 2], R[2, 2]), math.asin(max(-1.0, min(1.0, R[0, 2]))),
                     math.atan2(-R[0, 1], R[0, 0])])


def colour_matrix(k: int) -> np.ndarray:
    """A plausible per-camera correction: the inverse of the camera's mixing (gains below 1 and a little
    cross-talk, rows summing to at most 1), so raw colours never leave [0, 1]; like real colour-correction
    matrices it has negative off-diagonal terms."""
    rng = np.random.default_rng(100 + k)
    mix = np.diag(rng.uniform(0.85, 0.93, 3)) + rng.uniform(0, 0.03, (3, 3)) * (1 - np.eye(3))
    return np.linalg.inv(mix)


def srgb_decode(v):
    return np.where(v <= 0.04045, v / 12.92, ((np.maximum(v, 0.04045) + 0.055) / 1.055) ** 2.4)


def srgb_encode(v):
    return np.where(v <= 0.0031308, v * 12.92, 1.055 * np.maximum(v, 0.0031308) ** (1 / 2.4) - 0.055)


@dataclass
class Take:
    """The rendered truth shared by every fake capture."""

    world_from_rig: np.ndarray  # 4×4
    w2c_world: np.ndarray  # (V,4,4) release world → camera
    head_to_world: np.ndarray  # (T,4,4) canonical head frame → world, per frame
    K: np.ndarray  # (3,3) at the written size
    rgb: np.ndarray  # (T,V,H,W,3) uint8 render on black
    alpha: np.ndarray  # (T,V,H,W) float32 render alpha
    plates: np.ndarray  # (V,H,W,3) uint8 raw background plates

    def true_w2c(self, frame: int) -> np.ndarray:
        """(V,4,4) head-centric world-to-cameras of a frame (what the converter must find)."""
        return self.w2c_world @ self.head_to_world[frame]


def make_take(seed: int = 0, person: int = 1) -> Take:
    from avat3r.cameras import Cameras, look_at
    from avat3r.data.synth.expressions import EXPR_INDEX, neutral_code
    from avat3r.data.synth.identity import make_identity
    from avat3r.data.synth.render import head_gaussians, render_views, single_thread

    rng = np.random.default_rng(seed)
    eyes = [[math.sin(a) * math.cos(e), math.sin(e), math.cos(a) * math.cos(e)]
            for e in np.radians([-8.0, 14.0]) for a in np.radians(np.linspace(-50, 50, 4))]
    w2c_rig = look_at(torch.tensor(eyes, dtype=torch.float64)).double().numpy()
    world_from_rig = rigid(rotation([0.3, 1.0, 0.2], 40.0), [0.2, -0.5, 1.3])
    w2c_world = w2c_rig @ np.linalg.inv(world_from_rig)
    K = np.diag([1 / SCALE, 1 / SCALE, 1.0]) @ FULL_K
    identity = make_identity(seed, person)
    heads, rgbs, alphas = [], [], []
    for f in range(N_FRAMES):
        pose = rigid(rotation(rng.normal(size=3), rng.uniform(1.0, 4.0)), rng.uniform(-0.02, 0.02, 3))
        heads.append(world_from_rig @ pose)
        code = torch.as_tensor(neutral_code(), dtype=torch.float32).clone().reshape(-1)
        code[EXPR_INDEX["jawOpen"]] = 0.3 * f
        cams = Cameras(torch.tensor(K).expand(len(eyes), 3, 3).clone(), torch.tensor(w2c_rig @ pose), WIDTH, HEIGHT)
        with single_thread():
            rgb, alpha, _ = render_views(head_gaussians(identity, code), cams.to(dtype=torch.float32))
        rgbs.append(np.round(rgb.clamp(0, 1).numpy() * 255).astype(np.uint8))
        alphas.append(alpha.clamp(0, 1).numpy())
    plates = [_plate(np.random.default_rng(50 + k)) for k in range(len(eyes))]
    return Take(world_from_rig, w2c_world, np.stack(heads), K, np.stack(rgbs), np.stack(alphas), np.stack(plates))


def _plate(rng) -> np.ndarray:
    """A studio wall as NeRSemble's: light grey with a slight tint, a lighting gradient and blurred texture
    (uint8 RGB)."""
    y, x = np.mgrid[0:HEIGHT, 0:WIDTH].astype(np.float32)
    base = rng.uniform(150, 200) + rng.uniform(-8, 8, 3)
    grad = rng.uniform(-15, 15, 3)
    img = base + grad * (y / HEIGHT)[..., None] + grad[::-1] * (x / WIDTH)[..., None]
    noise = cv2.GaussianBlur(rng.normal(0, 25, (HEIGHT, WIDTH, 3)).astype(np.float32), (0, 0), 6)
    return np.clip(img + noise, 0, 255).astype(np.uint8)


# -- files ---------------------------------------------------------------------------------------
def write_video(path: Path, frames: np.ndarray, fps: float = 73.0) -> None:
    """Lossless H.264 (libx264rgb -qp 0) of uint8 RGB frames (T,H,W,3)."""
    import imageio_ffmpeg

    path.parent.mkdir(parents=True, exist_ok=True)
    t, h, w, _ = frames.shape
    cmd = [imageio_ffmpeg.get_ffmpeg_exe(), "-y", "-loglevel", "error", "-f", "rawvideo", "-pix_fmt", "rgb24",
           "-s", f"{w}x{h}", "-r", str(fps), "-i", "-", "-c:v", "libx264rgb", "-qp", "0", "-pix_fmt", "rgb24",
           str(path)]
    subprocess.run(cmd, input=np.ascontiguousarray(frames).tobytes(), check=True)


def _write_json(path: Path, doc) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc))


def write_v2(root: Path, take: Take, pid: int, sequence: str = "EXP-1-head") -> Path:
    """A nersemble-data v2 participant: raw (uncorrected) frames of the head over the plates."""
    pdir = root / f"{pid:03d}"
    _write_json(pdir / "calibration" / "camera_params.json",
                {"world_2_cam": {s: take.w2c_world[k].tolist() for k, s in enumerate(SERIALS)},
                 "intrinsics": FULL_K.tolist()})
    _write_json(pdir / "calibration" / "color_calibration.json",
                {s: colour_matrix(k).tolist() for k, s in enumerate(SERIALS)})
    for k, s in enumerate(SERIALS):
        plate = take.plates[k]
        bg = pdir / "sequences" / "BACKGROUND" / f"image_{s}.jpg"
        bg.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(bg), plate[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 95])
        inv = np.linalg.inv(colour_matrix(k))
        frames = []
        for f in range(N_FRAMES):
            a = take.alpha[f, k][..., None]
            true = take.rgb[f, k].astype(np.float64) / 255.0
            raw_head = srgb_encode(srgb_decode(true) @ inv.T) * 255.0
            raw = a * raw_head + (1 - a) * plate.astype(np.float64)  # the head's raw colours over the wall
            frames.append(np.round(np.clip(raw, 0, 255)).astype(np.uint8))
        write_video(pdir / "sequences" / sequence / "images" / f"cam_{s}.mp4", np.stack(frames))
    return pdir


def write_benchmark(root: Path, take: Take, pid: int, task: str = "mono_flame_avatar",
                    sequence: str = "EXP-1-head", rng_seed: int = 7) -> Path:
    """A nersemble-benchmark participant (black background, alpha maps; FLAME tracking for
    ``mono_flame_avatar``). Returns the sequence folder."""
    pdir = root / task / f"{pid:03d}"
    _write_json(pdir / "calibration" / "camera_params.json",
                {"world_2_cam": {s: take.w2c_world[k].tolist() for k, s in enumerate(SERIALS)},
                 "intrinsics": {s: take.K.tolist() for s in SERIALS}})
    sdir = pdir / "sequences" / sequence
    for k, s in enumerate(SERIALS):
        a = take.alpha[:, k]
        write_video(sdir / "images" / f"cam_{s}.mp4", take.rgb[:, k])
        alpha8 = np.round(a * 255).astype(np.uint8)
        write_video(sdir / "alpha_maps" / f"cam_{s}.mp4", np.repeat(alpha8[..., None], 3, axis=3))
    if task == "mono_flame_avatar":
        write_tracking(sdir / "tracking" / "flame2023_tracking_v2.npz", take, rng_seed)
    return sdir


def tracking_fields(take: Take, rng_seed: int = 7) -> dict:
    """FLAME tracking whose model→world (Euler XYZ rotation, translation, scale) places FLAME's head centre on
    the head's: head_to_world = [R | t + s·R·centre]."""
    rng = np.random.default_rng(rng_seed)
    T = len(take.head_to_world)
    R = take.head_to_world[:, :3, :3]
    t = take.head_to_world[:, :3, 3] - FLAME_SCALE * np.einsum("tij,j->ti", R, FLAME_HEAD_CENTRE)
    return {"shape": rng.normal(size=(1, 300)).astype(np.float32),
            "expression": rng.normal(0, 0.5, (T, 100)).astype(np.float32),
            "rotation": np.stack([euler_angles_xyz(r) for r in R]).astype(np.float32),
            "rotation_matrices": R.astype(np.float32),
            "translation": t.astype(np.float32),
            "jaw": rng.normal(0, 0.05, (T, 3)).astype(np.float32),
            "frames": np.arange(T, dtype=np.int64),
            "scale": np.array([[FLAME_SCALE]], np.float32),
            "neck": np.zeros((T, 3), np.float32),
            "eyes": np.zeros((T, 6), np.float32)}


def write_tracking(path: Path, take: Take, rng_seed: int = 7, **overrides) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fields = {**tracking_fields(take, rng_seed), **overrides}
    np.savez(path, **{k: v for k, v in fields.items() if v is not None})
