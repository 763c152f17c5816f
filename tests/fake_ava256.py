"""A tiny fake Ava-256 release with the real file formats and a known truth, for the converter's tests.

Each capture films a SynthHeads person with a small rig. The truth is built forwards, the way a capture
happens: cameras are placed around the canonical head (metres, +y up, +z out of the face); the rig sits in an
arbitrary world frame (mm); the tracking template's frame ("head-pose frame") differs from the canonical one by
a known rigid transform ``template`` (canonical → head-pose, mm); the head moves a little from frame to frame.
The release then stores what a capture stores: the world calibration (K and T transposed, K at the full
2668 × 4096 resolution while the AVIF images on disk are 1/32 of that), per-frame head poses (head-pose frame
→ world), label maps, a "tracked mesh" in the head-pose frame (an ellipsoid head with a neck whose jaw region
drops with the expression, so mesh offsets carry the expression), and a frame list. At the reference frame
(the first neutral one) the head faces the frontal cameras upright, as the converter's estimate assumes.
"""

from __future__ import annotations

import io
import json
import math
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from plyfile import PlyData, PlyElement

from avat3r.cameras import Cameras, intrinsics, look_at
from avat3r.data.synth.expressions import neutral_code, segment_codes
from avat3r.data.synth.identity import make_identity
from avat3r.data.synth.render import head_gaussians, render_views

FULL_W, FULL_H = 2668, 4096
DISK_W, DISK_H = 83, 128  # 1/32 of the full resolution (2668 / 32 = 83.4)
FRONT = ("401168", "401875", "402040", "401031")
# (camera id, yaw°, pitch°): the four frontal cameras symmetric about the face, then sides and one from above
RIG = (("401168", 12, 8), ("401875", -12, 8), ("402040", 12, -8), ("401031", -12, -8),
       ("400943", 50, 4), ("401029", -55, -2), ("400263", 0, 35))
SEGMENTS = (("EXP_neutral_peak", (100, 101)), ("EXP_jaw003", (240, 243)))
HEAD = np.array([75.0, 95.0, 95.0])  # mesh ellipsoid half-axes (mm); top = depth / 2, so its centre is the origin


def _rot(ax: float, ay: float, az: float) -> np.ndarray:
    """Rotation from x, y, z angles in degrees."""
    a, b, c = np.deg2rad([ax, ay, az])
    rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    ry = np.array([[np.cos(b), 0, np.sin(b)], [0, 1, 0], [-np.sin(b), 0, np.cos(b)]])
    rz = np.array([[np.cos(c), -np.sin(c), 0], [np.sin(c), np.cos(c), 0], [0, 0, 1]])
    return rz @ ry @ rx


def rigid(R: np.ndarray, t) -> np.ndarray:
    m = np.eye(4)
    m[:3, :3], m[:3, 3] = R, t
    return m


def mesh_vertices(jaw: float) -> np.ndarray:
    """Canonical mesh (mm): an ellipsoid head plus a neck below it; the region below the mouth drops with
    ``jaw`` (its x/z extent and the top stay put, so the head centre does not move)."""
    u = np.linspace(0, np.pi, 24)
    v = np.linspace(0, 2 * np.pi, 36, endpoint=False)
    uu, vv = np.meshgrid(u, v)
    head = np.stack([HEAD[0] * np.sin(uu) * np.cos(vv), HEAD[1] * np.cos(uu), HEAD[2] * np.sin(uu) * np.sin(vv)],
                    -1).reshape(-1, 3)
    h = np.linspace(-200, -60, 8)
    hh, vv2 = np.meshgrid(h, v)
    neck = np.stack([45 * np.cos(vv2), hh, 45 * np.sin(vv2)], -1).reshape(-1, 3)
    verts = np.concatenate([head, neck])
    low = (verts[:, 1] < -40) & (verts[:, 1] > -120) & (verts[:, 2] > 20)
    verts[low, 1] -= 12.0 * jaw
    return verts


@dataclass
class FakeCapture:
    name: str
    person: str  # subject id
    synth_person: int
    template: np.ndarray  # canonical → head-pose frame (mm)
    K_disk: dict[str, np.ndarray] = field(default_factory=dict)  # intrinsics of the images on disk
    w2c: dict[tuple[int, str], np.ndarray] = field(default_factory=dict)  # true head-centric (m) per frame, cam
    codes: dict[int, torch.Tensor] = field(default_factory=dict)  # SynthHeads code per frame
    frames: list[tuple[str, int]] = field(default_factory=list)
    missing_frames: set[int] = field(default_factory=set)
    missing_views: set[tuple[int, str]] = field(default_factory=set)

    def cameras(self, frame: int, cams) -> Cameras:
        K = torch.tensor(np.stack([self.K_disk[c] for c in cams]), dtype=torch.float64)
        w2c = torch.tensor(np.stack([self.w2c[(frame, c)] for c in cams]), dtype=torch.float64)
        return Cameras(K, w2c, DISK_W, DISK_H)


def _zip(path: Path, members: dict[str, bytes]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)


def _png(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG")
    return buf.getvalue()


def _avif(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="AVIF", quality=100, speed=10)
    return buf.getvalue()


def _ply(verts: np.ndarray) -> bytes:
    el = PlyElement.describe(np.array([tuple(p) for p in verts], dtype=[("x", "f4"), ("y", "f4"), ("z", "f4")]),
                             "vertex")
    buf = io.BytesIO()
    PlyData([el]).write(buf)
    return buf.getvalue()


# canonical → head-pose frame (mm): one for the whole release, as every capture is tracked with one template
TEMPLATE = rigid(_rot(6.0, -7.0, 3.0), [4.0, 28.0, -35.0])


def build_capture(root: Path, mcd: str, mct: str, sid: str, synth_person: int, seed: int,
                  missing_frames=(), missing_views=()) -> FakeCapture:
    rng = np.random.default_rng(seed)
    name = f"{mcd}--{mct}--{sid}"
    template = TEMPLATE
    world = rigid(_rot(*rng.uniform(-40, 40, 3)), rng.uniform(-1500, 1500, 3))  # rig (canonical, mm) → world
    cap = FakeCapture(name, sid, synth_person, template, missing_frames=set(missing_frames),
                      missing_views=set(missing_views))
    ids = [c for c, _, _ in RIG]
    # the rig in canonical metres: frontal cameras aim at the head centre, the others a little off it
    eyes, targets = [], []
    for k, (cid, yaw, pitch) in enumerate(RIG):
        y, p = math.radians(yaw), math.radians(pitch)
        d = 1.0 + 0.05 * rng.uniform(-1, 1) if cid not in FRONT else 1.0
        eyes.append([d * math.cos(p) * math.sin(y), d * math.sin(p), d * math.cos(p) * math.cos(y)])
        targets.append([0, 0, 0] if cid in FRONT else rng.normal(0, 0.01, 3))
    w2c_rig = look_at(torch.tensor(eyes, dtype=torch.float32), torch.tensor(np.array(targets), dtype=torch.float32))
    w2c_rig = w2c_rig.double().numpy()
    for k, cid in enumerate(ids):
        f = 10350 * DISK_H / FULL_H * rng.uniform(0.97, 1.03)
        cap.K_disk[cid] = intrinsics(f, f, DISK_W / 2 + rng.uniform(-2, 2), DISK_H / 2 + rng.uniform(-3, 3)).double().numpy()
    # calibration: K at full resolution, T = world-to-camera (mm), both stored transposed
    krt = []
    for k, cid in enumerate(ids):
        K_full = cap.K_disk[cid].copy()
        K_full[0] *= FULL_W / DISK_W
        K_full[1] *= FULL_H / DISK_H
        m = w2c_rig[k].copy()
        m[:3, 3] *= 1000.0
        w2c_world = m @ np.linalg.inv(world)
        krt.append({"cameraId": cid, "projectionModel": "Pinhole", "distortionModel": "RadialAndTangential",
                    "K": K_full.T.tolist(), "distortion": [0.01, -0.002, 0.0, 0.0], "T": w2c_world.T.tolist()})
    dec = root / name / "decoder"
    dec.mkdir(parents=True)
    (dec / "camera_calibration.json").write_text(json.dumps({"KRT": krt}))
    identity = make_identity(0, synth_person)
    images = {c: {} for c in ids}
    labels = {c: {} for c in ids}
    poses, meshes, rows = {}, {}, []
    for seg, frames in SEGMENTS:
        codes = segment_codes(seg, 8)[2:] if seg != "EXP_neutral_peak" else None
        for i, fr in enumerate(frames):
            rows.append(f"{seg},{fr}")
            cap.frames.append((seg, fr))
            code = neutral_code() if codes is None else codes[i]
            cap.codes[fr] = code
            first = seg == "EXP_neutral_peak" and i == 0
            move = np.eye(4) if first else rigid(_rot(*rng.uniform(-8, 8, 3)), rng.uniform(-15, 15, 3))
            poses[fr] = world @ move @ np.linalg.inv(template)  # head-pose frame → world (mm)
            jaw = float(code[0])
            meshes[fr] = (template[:3, :3] @ mesh_vertices(jaw).T).T + template[:3, 3]
            move_m = move.copy()
            move_m[:3, 3] /= 1000.0
            for k, cid in enumerate(ids):
                cap.w2c[(fr, cid)] = w2c_rig[k] @ move_m
            cams = cap.cameras(fr, ids).to(dtype=torch.float32)
            rgb, alpha, _ = render_views(head_gaussians(identity, code), cams)
            for k, cid in enumerate(ids):
                if fr in cap.missing_frames or (fr, cid) in cap.missing_views:
                    continue
                a = alpha[k].numpy()
                bg = np.full((DISK_H, DISK_W, 3), 0.45, np.float32)
                chair = np.zeros((DISK_H, DISK_W), bool)
                chair[DISK_H * 3 // 4:, : DISK_W // 5] = True
                bg[chair] = (0.30, 0.20, 0.10)
                img = rgb[k].numpy() + (1 - a[..., None]) * bg
                images[cid][f"cam{cid}/{fr:06d}.avif"] = _avif(np.clip(img * 255 + 0.5, 0, 255).astype(np.uint8))
                lab = np.zeros((DISK_H, DISK_W), np.uint8)
                lab[chair] = 3
                lab[a > 0.5] = 1
                lab[(a > 0.5) & (np.arange(DISK_H)[:, None] > DISK_H * 0.8)] = 2
                labels[cid][f"cam{cid}/{fr:06d}.png"] = _png(lab)
    (dec / "frame_list.csv").write_text("seg_id,frame_id\n" + "\n".join(rows) + "\n")
    for cid in ids:
        _zip(dec / "image" / f"cam{cid}.zip", images[cid])
        _zip(dec / "segmentation_parts" / f"cam{cid}.zip", labels[cid])
    pose_txt = {}
    for fr, m in poses.items():
        buf = io.StringIO()
        np.savetxt(buf, m[:3], fmt="%.10f")
        pose_txt[f"{fr:06d}.txt"] = buf.getvalue().encode()
    _zip(dec / "head_pose" / "head_pose.zip", pose_txt)
    _zip(dec / "kinematic_tracking" / "registration_vertices.zip", {f"{fr:06d}.ply": _ply(v) for fr, v in meshes.items()})
    return cap


def build_release(root: Path) -> dict[str, FakeCapture]:
    """Two captures: a held-out person (ZEL435, SynthHeads person 215) with one frame and one view missing,
    and a training person (AAN112, SynthHeads person 219) with one view missing."""
    a = build_capture(root, "20230512", "1009", "ZEL435", 215, seed=1, missing_frames={243},
                      missing_views={(101, "400943")})
    b = build_capture(root, "20230405", "1635", "AAN112", 219, seed=2, missing_views={(240, "401029")})
    return {a.name: a, b.name: b}
