"""The demo's contact sheet: a reconstructed SynthHeads avatar next to the ground truth it never saw.

Rows: the input photos, then one row per expression; columns: ground truth | avatar for a frontal, a
three-quarter and a side view of the rig. And a cross-reenactment video: a driving video of another
SynthHeads person | the avatar's person making the driving video's true expressions (ground truth) | the avatar
driven by the expressions read off the video. Usage (what ``just demo`` runs)::

    python recipes/demo.py sheet head.avt --photos inputs/ -o sheet.png
    python recipes/demo.py reenact head.avt --video driving.mp4 --photos inputs/ -o reenact.mp4
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import typer

from avat3r.cameras import view_angle_degrees
from avat3r.data import synthheads as S
from avat3r.fileio import opencv
from avat3r.imageio import read_image, to_uint8, write_png
from avat3r.sheet import draw_label
from avat3r.stages.animate import load_animatable
from avat3r.stages.render import render_image

cv2 = opencv()

SHEET_EXPRESSIONS = {
    "neutral": {},
    "jawOpen": {"jawOpen": 1.0},
    "smile": {"mouthSmileLeft": 1.0, "mouthSmileRight": 1.0},
    "blink": {"eyeBlinkLeft": 1.0, "eyeBlinkRight": 1.0},
    "tongueOut": {"jawOpen": 0.65, "tongueOut": 1.0},
}
SHEET_VIEWS_DEGREES = (0.0, 40.0, 80.0)


def _code(values: dict) -> torch.Tensor:
    z = S.neutral_code().clone()
    for name, v in values.items():
        z[S.EXPRESSION_NAMES.index(name)] = v
    return z


def _label(img: np.ndarray, text: str) -> np.ndarray:
    return draw_label(img.copy(), text)


def avatar_sheet(avatar_path: str | Path, photos_dir: str | Path, size: int = 128) -> np.ndarray:
    """uint8 RGB sheet comparing the avatar with SynthHeads ground truth (needs photos_dir/truth.json)."""
    truth = json.loads((Path(photos_dir) / "truth.json").read_text())
    seed, person = int(truth["seed"]), int(truth["person"])
    avatar = load_animatable(avatar_path)
    _, rig = S.make_rig(seed, int(truth.get("n_cameras", 12)), size, person if truth.get("person_rig") else None)
    angles = view_angle_degrees(rig)
    views = [int(torch.argmin((angles - a).abs())) for a in SHEET_VIEWS_DEGREES]
    identity = S.make_identity(seed, person)
    rows = []
    photos = [read_image(Path(photos_dir) / v["image"]) for v in truth["views"]]
    photos = [cv2.resize(p, (size, size), interpolation=cv2.INTER_NEAREST) for p in photos]
    photos += [np.zeros_like(photos[0])] * (2 * len(views) - len(photos))
    rows.append(np.concatenate([_label(p, "input") for p in photos[:2 * len(views)]], axis=1))
    for name, values in SHEET_EXPRESSIONS.items():
        z = _code(values)
        with torch.inference_mode():
            pred = avatar.model.decode(avatar.state, z[None])[0].compact()
        gt_rgb, _, _ = S.render_views(S.head_gaussians(identity, z), rig[views])
        cells = []
        for j, v in enumerate(views):
            cells.append(_label(to_uint8(gt_rgb[j]), f"truth {name}"))
            cells.append(_label(to_uint8(render_image(pred, rig[v], (0.0, 0.0, 0.0))), "avatar"))
        rows.append(np.concatenate(cells, axis=1))
    return np.concatenate(rows, axis=0)


def reenactment_frames(avatar_path: str | Path, video: str | Path, photos_dir: str | Path, size: int = 128,
                       extractor_weights: str | Path | None = None):
    """Yield uint8 RGB frames: driving video | ground truth | avatar, the last two seen by a frontal camera
    framed like the rig's (the whole head: the avatar was made from 64² rig views, a face close-up would show
    mostly its blur).
    The expressions come from the shipped regressor (what ``animate --video`` uses); the ground truth renders
    the avatar's SynthHeads person (``photos_dir``/truth.json) at the video's true codes (``.expr.parquet``)."""
    from avat3r.driving import build_extractor, driving_cameras, extract_sequence
    from avat3r.expressions import read_sequence
    from avat3r.video import read_video_frames

    truth = json.loads((Path(photos_dir) / "truth.json").read_text())
    identity = S.make_identity(int(truth["seed"]), int(truth["person"]))
    avatar = load_animatable(avatar_path)
    read = extract_sequence(video, build_extractor("regressor", extractor_weights), avatar.expression_space,
                            smooth=3)
    true_codes = read_sequence(Path(video).with_suffix(".expr.parquet")).codes
    camera = driving_cameras(np.random.default_rng([int(truth["seed"]), 0, 0xD1]), 1, size, yaw_deg=0.0,
                             pitch_deg=0.0, fill=(0.72, 0.72))
    for k, frame in enumerate(read_video_frames(video)):
        with torch.inference_mode():
            pred = avatar.model.decode(avatar.state, read.codes[k][None])[0].compact()
        gt, _, _ = S.render_views(S.head_gaussians(identity, true_codes[k]), camera)
        cells = [_label(cv2.resize(frame, (size, size), interpolation=cv2.INTER_LINEAR), "driving video"),
                 _label(to_uint8(gt[0]), "truth"),
                 _label(to_uint8(render_image(pred, camera, (0.0, 0.0, 0.0))), "avatar")]
        yield np.concatenate(cells, axis=1)


app = typer.Typer(add_completion=False, help="Demo helpers.")


@app.command("sheet")
def sheet(avatar: Path, photos: Path = typer.Option(..., "--photos"), out: Path = typer.Option(..., "-o"),
          size: int = typer.Option(128, "--size")) -> None:
    """Write the truth-vs-avatar contact sheet PNG."""
    write_png(out, avatar_sheet(avatar, photos, size))


@app.command("reenact")
def reenact(avatar: Path, video: Path = typer.Option(..., "--video"), photos: Path = typer.Option(..., "--photos"),
            out: Path = typer.Option(..., "-o"), size: int = typer.Option(128, "--size"),
            extractor_weights: Path | None = typer.Option(None, "--extractor-weights")) -> None:
    """Write the cross-reenactment MP4 (driving video | truth | avatar)."""
    from avat3r.video import VideoWriter, video_info

    with VideoWriter(out, fps=float(video_info(video)["fps"])) as writer:
        for frame in reenactment_frames(avatar, video, photos, size, extractor_weights):
            writer.write(frame)


@app.command("info", hidden=True)
def _info() -> None:
    pass


if __name__ == "__main__":
    app()
