"""The paper's video protocol (§4.2, Table 1): per held-out person, one video of consecutive frames from the
frontal camera, rendered by the avatar built from 4 input views and driven by each frame's code; scored per
frame (PSNR, foreground PSNR) and as a video (JOD, when pyfvvdp is installed).

The frontal camera is never an input (novel view only). Inputs are chosen as in training (paper App. C):
k-farthest viewpoints among the person's other cameras, each at a random timestep of the person, drawn from a
generator seeded by (seed, person), so every checkpoint sees the same inputs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from ..cameras import Cameras, cameras_from_dicts, k_farthest_viewpoints, view_angle_degrees
from ..data.manifest import Manifest
from ..errors import Avat3rError
from ..forward import render_targets
from .metrics import foreground_psnr, pooled_psnr


class VideoEvalError(Avat3rError, ValueError):
    """The manifest cannot give the protocol's video for a person; the message names the person."""


@dataclass
class VideoProtocol:
    frames: int = 100  # paper: 100-frame videos
    cameras: Sequence[str] = field(default_factory=tuple)  # preferred frontal cameras; else the most frontal
    segment: str = ""  # "" = the person's segment with the most frames
    fps: float = 7.5  # the videos' frame rate (Ava-256 4 TB: 7.5 fps), for JOD's temporal model
    persons: int = 0  # 0 = every person of the split
    n_inputs: int = 4


def _camera(m: Manifest, row: int) -> Cameras:
    return cameras_from_dicts([m.read(row, entries=["camera.json"])["camera"]], "camera.json", validate=False)


def frontal_camera(m: Manifest, rows: np.ndarray, preferred: Sequence[str]) -> str:
    """The first preferred camera the person has, else the camera nearest the face direction (+z)."""
    names = sorted(set(m["camera"][rows].tolist()))
    for name in preferred:
        if name in names:
            return name
    first = {c: next(r for r in rows if m["camera"][r] == c) for c in names}
    angles = view_angle_degrees(Cameras.cat([_camera(m, first[c]) for c in names]))
    return names[int(torch.argmin(angles))]


def video_rows(m: Manifest, rows: np.ndarray, camera: str, segment: str, frames: int) -> list[int]:
    """The manifest rows of the video: ``camera`` over consecutive frames of the segment (the longest one
    when ``segment`` is empty), at most ``frames`` of them."""
    at_cam = [r for r in rows if m["camera"][r] == camera]
    by_segment: dict[str, list[int]] = {}
    for r in at_cam:
        by_segment.setdefault(str(m["segment"][r]), []).append(r)
    if segment:
        if segment not in by_segment:
            raise VideoEvalError(f"{m['person'][rows[0]]}: no segment {segment!r} at camera {camera}")
        chosen = by_segment[segment]
    else:
        chosen = max(sorted(by_segment.items()), key=lambda kv: len(kv[1]))[1]
    return sorted(chosen, key=lambda r: int(m["frame"][r]))[:frames]


def pick_inputs(m: Manifest, rows: np.ndarray, exclude: str, n_inputs: int, rng: np.random.Generator) -> list[int]:
    """Input rows: k-farthest viewpoints among the cameras other than ``exclude``, each at a random timestep."""
    eligible = [r for r in rows if m["has_prior"][r] and m["camera"][r] != exclude]
    by_cam: dict[str, list[int]] = {}
    for r in eligible:
        by_cam.setdefault(str(m["camera"][r]), []).append(r)
    names = sorted(by_cam)
    if len(names) < n_inputs:
        raise VideoEvalError(f"{m['person'][rows[0]]}: only {len(names)} cameras besides {exclude} have a prior "
                             f"(run `avat3r prior`); {n_inputs} are needed")
    cams = Cameras.cat([_camera(m, by_cam[c][0]) for c in names])
    gen = torch.Generator().manual_seed(int(rng.integers(2**62)))
    picked = k_farthest_viewpoints(cams, k=n_inputs, generator=gen, exclude_back=True)
    return [by_cam[names[i]][int(rng.integers(len(by_cam[names[i]])))] for i in picked]


def _inputs(m: Manifest, input_rows: list[int], device) -> tuple:
    samples = [m.read(r, entries=("rgb.png", "camera.json", "pos.npy", "conf.npy", "feat.npy")) for r in input_rows]
    rgb = torch.from_numpy(np.stack([s["rgb"] for s in samples]).astype(np.float32) / 255.0)[None]
    cams = cameras_from_dicts([s["camera"] for s in samples], "camera.json", validate=False)
    pos = torch.from_numpy(np.stack([s["pos"] for s in samples]).astype(np.float32))[None]
    conf = torch.from_numpy(np.stack([s["conf"] for s in samples]).astype(np.float32))[None]
    feats = None
    if all("feat" in s for s in samples):
        feats = torch.from_numpy(np.stack([s["feat"] for s in samples]).astype(np.float32))[None].to(device)
    return rgb.to(device), cams.to(device), pos.to(device), conf.to(device), feats


def evaluate_videos(model: torch.nn.Module, m: Manifest, split: str, protocol: VideoProtocol, seed: int = 0,
                    device="cpu", backend: str = "auto", jod: Callable | None = None, batch: int = 8,
                    on_video: Callable[[str, torch.Tensor, torch.Tensor], None] | None = None,
                    progress: Callable[[int], None] | None = None) -> list[dict]:
    """One row per person: ``person, camera, segment, frames, psnr, fg_psnr`` and ``jod`` (None without a
    JOD scorer ``jod(pred (F,H,W,3), target, fps)``). ``on_video(person, pred, truth)`` sees each video."""
    persons = m.persons(split)
    if protocol.persons:
        persons = persons[:protocol.persons]
    if not persons:
        raise VideoEvalError(f"no person in split {split!r} of {m.root}")
    out = []
    for p_index, person in enumerate(persons):
        rows = np.flatnonzero((m["person"] == person) & (m["split"] == split))
        camera = frontal_camera(m, rows, protocol.cameras)
        frames = video_rows(m, rows, camera, protocol.segment, protocol.frames)
        rng = np.random.default_rng([seed, p_index, 0x71DE0])
        input_rows = pick_inputs(m, rows, camera, protocol.n_inputs, rng)
        with torch.no_grad():
            state = model.encode(*_inputs(m, input_rows, device))
            preds, truths, masks = [], [], []
            for k in range(0, len(frames), batch):
                chunk = frames[k:k + batch]
                codes = torch.from_numpy(m["expr"][chunk].astype(np.float32)).to(device)
                samples = [m.read(r, entries=("rgb.png", "mask.png", "camera.json")) for r in chunk]
                cams = [cameras_from_dicts([s["camera"]], "camera.json", validate=False).to(device) for s in samples]
                preds.append(render_targets(model.decode(state, codes), cams, backend)[:, 0].clamp(0, 1).cpu())
                truths += [torch.from_numpy(s["rgb"].astype(np.float32) / 255.0) for s in samples]
                masks += [torch.from_numpy((s["mask"] if "mask" in s else s["rgb"].max(-1) > 0).astype(np.float32)
                                           / (255.0 if "mask" in s else 1.0)) for s in samples]
                if progress is not None:
                    progress(len(chunk))
        pred, truth, mask = torch.cat(preds), torch.stack(truths), torch.stack(masks)
        row = {"person": person, "camera": camera, "segment": str(m["segment"][frames[0]]), "frames": len(frames),
               "psnr": pooled_psnr(pred, truth), "fg_psnr": foreground_psnr(pred, truth, mask),
               "jod": None if jod is None else float(jod(pred, truth, protocol.fps))}
        if row["jod"] is not None and not np.isfinite(row["jod"]):
            raise VideoEvalError(f"{person}: JOD is not finite ({row['jod']})")
        out.append(row)
        if on_video is not None:
            on_video(person, pred, truth)
    return out
