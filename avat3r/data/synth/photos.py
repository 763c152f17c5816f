"""Posed "photos" of one SynthHeads person: PNGs + cams.json, the input `reconstruct` expects from users."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import torch

from ...cameras import k_farthest_viewpoints, write_cams_json
from ...fileio import StagedFolder, atomic_write_bytes
from ...imageio import write_png
from .expressions import SEGMENTS
from .render import render_frame_samples
from .rig import make_rig

# expressive segments to draw input timesteps from (paper App. C draws inputs from these three)
INPUT_SEGMENTS = ("EXP_jaw003", "EXP_eye_wide", "EXP_tongue001")


def _is_photo_file(name: str) -> bool:
    """Files ``write_synth_photos`` writes: a rerun replaces these (no view of an older run is left over)."""
    return bool(re.fullmatch(r"view_\d+\.png|cams\.json|truth\.json|\..*\.tmp", name))


def write_synth_photos(out_dir: str | os.PathLike, person: int, seed: int = 0, res: int = 64, n_cameras: int = 12,
                       n_views: int = 4, n_frames: int = 2, mixed_expressions: bool = True,
                       view_seed: int = 0, person_rig: bool = False, supersample: int = 1) -> list[str]:
    """Render ``n_views`` k-farthest rig views of ``person`` (each at a random frame of an expressive segment
    when ``mixed_expressions``, else all neutral) to ``out_dir``/view_i.png + cams.json; returns the names.
    ``truth.json`` records the segment/frame of each view and whether the person's own rig filmed them;
    ``supersample``: see :func:`avat3r.data.synth.render.render_views`."""
    with StagedFolder(out_dir, _is_photo_file, "synth photos") as stage:
        return _write_photos(stage.path, person, seed, res, n_cameras, n_views, n_frames, mixed_expressions,
                             view_seed, person_rig, supersample)


def _write_photos(out: Path, person, seed, res, n_cameras, n_views, n_frames, mixed_expressions, view_seed,
                  person_rig, supersample) -> list[str]:
    _, cams = make_rig(seed, n_cameras, res, person if person_rig else None)
    g = torch.Generator().manual_seed(view_seed * 1_000_003 + person)
    views = k_farthest_viewpoints(cams, n_views, generator=g)
    names, truth = [], []
    for i, cam in enumerate(views):
        if mixed_expressions:
            segment = INPUT_SEGMENTS[int(torch.randint(len(INPUT_SEGMENTS), (1,), generator=g))]
            frame = int(torch.randint(n_frames, (1,), generator=g))
        else:
            segment, frame = SEGMENTS[0], 0
        s = render_frame_samples(seed, person, segment, frame, [cam], n_frames, n_cameras, res, person_rig,
                                 supersample)[0]
        name = f"view_{i}.png"
        write_png(out / name, s["rgb"])
        names.append(name)
        truth.append({"image": name, "camera": int(cam), "segment": segment, "frame": frame})
    write_cams_json(out / "cams.json", cams[views], names)
    atomic_write_bytes(out / "truth.json", (json.dumps({"person": person, "seed": seed, "person_rig": bool(person_rig),
                                                       "n_cameras": n_cameras, "supersample": supersample,
                                                       "views": truth},
                                                      indent=1) + "\n").encode())
    return names


def synth_video_camera(seed: int = 0, res: int = 96, camera_seed: int = 0):
    """The fixed frontal camera :func:`write_synth_video` films with, framed on the face."""
    import numpy as np

    from ...driving import DRIVING_FILL, driving_cameras

    mid = sum(DRIVING_FILL) / 2
    return driving_cameras(np.random.default_rng([int(seed), int(camera_seed), 0xD1]), 1, res, yaw_deg=0.0,
                           pitch_deg=0.0, fill=(mid, mid))


def write_synth_video(out: str | os.PathLike, person: int, codes: torch.Tensor, fps: float = 25.0,
                      seed: int = 0, res: int = 96, camera_seed: int = 0, progress=None) -> Path:
    """A driving video: ``person`` making the expressions ``codes`` (T, E), filmed by one fixed frontal
    camera framed on the face; written as MP4 to ``out`` with the codes beside it (``out`` with suffix
    ``.expr.parquet``) as ground truth."""
    from ...expressions import write_sequence
    from ...video import VideoWriter
    from .expressions import EXPRESSION_SPACE
    from .identity import make_identity
    from .render import head_gaussians, render_views, single_thread

    out = Path(out)
    codes = torch.as_tensor(codes, dtype=torch.float32)
    camera = synth_video_camera(seed, res, camera_seed)
    identity = make_identity(seed, person)
    with VideoWriter(out, fps=fps) as video:
        for code in codes:
            with single_thread():
                rgb, _, _ = render_views(head_gaussians(identity, code), camera)
            video.write(rgb[0])
            if progress is not None:
                progress(1)
    write_sequence(out.with_suffix(".expr.parquet"), codes, fps=fps, space=EXPRESSION_SPACE)
    return out
