"""The face tracker, the video/photos lifting backends and the landmarks expression extractor, on SynthHeads
renders with known cameras and codes (and scikit-image's astronaut, a real photo)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

pytest.importorskip("mediapipe")

from avat3r.cameras import Cameras, intrinsics, look_at, read_cams_json  # noqa: E402
from avat3r.face.tracker import NoFaceError, frame_ranges, require_faces, track_faces  # noqa: E402

RES = 256
FILL = 0.8  # head extent (0.27 m) over the image height at 1 m
FOV = math.degrees(2 * math.atan(0.5 * RES / (FILL * RES / 0.27)))
# measured on these renders (docs: README "Your own video"): the tracker's camera directions vs the truth
MAX_DIRECTION_ERROR = 12.0  # degrees, views within 45° of the front (measured: median 4.2°, max 7.0°)
MAX_EXPR_ERROR = 0.15  # mean absolute error of jawOpen / eyeBlink* over a driving video (measured: ≤ 0.07)


def cameras_at(yaw_pitch, res: int = RES, dist: float = 1.0) -> Cameras:
    eyes = [[dist * math.cos(math.radians(p)) * math.sin(math.radians(y)), dist * math.sin(math.radians(p)),
             dist * math.cos(math.radians(p)) * math.cos(math.radians(y))] for y, p in yaw_pitch]
    f = FILL * res * dist / 0.27
    K = intrinsics(f, f, res / 2, res / 2).expand(len(eyes), 3, 3).clone()
    return Cameras(K, look_at(torch.tensor(eyes, dtype=torch.float32)), res, res)


def render(person: int, cams: Cameras, codes=None, seed: int = 3) -> list[np.ndarray]:
    from avat3r.data.synth.expressions import neutral_code
    from avat3r.data.synth.identity import make_identity
    from avat3r.data.synth.render import head_gaussians, render_views, single_thread

    identity = make_identity(seed, person)
    frames = []
    with single_thread():
        if codes is None:
            rgb, _, _ = render_views(head_gaussians(identity, neutral_code()), cams)
            return [(im.numpy() * 255 + 0.5).astype(np.uint8) for im in rgb]
        for code, i in zip(codes, range(len(codes))):
            rgb, _, _ = render_views(head_gaussians(identity, code), cams[i % len(cams)])
            frames.append((rgb[0].numpy() * 255 + 0.5).astype(np.uint8))
    return frames


def angles(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.rad2deg(np.arccos(np.clip((a * b).sum(-1), -1, 1)))


TURN = [(-40, 5), (-25, -5), (-10, 0), (0, 8), (12, -4), (28, 0), (40, 6), (20, 12)]


@pytest.fixture(scope="module")
def turning_head():
    cams = cameras_at(TURN)
    return cams, render(1, cams)


def test_camera_directions_match_the_truth(turning_head):
    cams, frames = turning_head
    track = track_faces(frames, K=cams.K.double().numpy(), video=False)
    assert track.found.all()
    truth = torch.nn.functional.normalize(cams.centers, dim=-1).double().numpy()
    err = angles(track.camera_directions(), truth)
    assert err.max() < MAX_DIRECTION_ERROR, err.round(1)
    # the head centre lies where the rig aims (the origin): camera distance within 10 %
    dist = np.linalg.norm(np.einsum("nji,nj->ni", track.rotation, track.translation), axis=-1)
    assert np.abs(dist - 1.0).max() < 0.1, dist.round(3)
    assert (track.boxes[:, 2] > track.boxes[:, 0]).all() and track.landmarks.shape == (len(frames), 478, 2)


def test_astronaut_is_near_frontal():
    data = pytest.importorskip("skimage.data")
    track = track_faces([data.astronaut()], video=False)
    assert track.found.all()
    assert angles(track.camera_directions(), np.array([[0.0, 0.0, 1.0]]))[0] < 15.0  # measured 2.2°


def test_no_face_is_one_line_naming_the_frames():
    frames = [np.zeros((96, 96, 3), np.uint8)] * 3 + [np.full((96, 96, 3), 128, np.uint8)] * 2
    track = track_faces(frames, video=True)
    assert not track.found.any() and track.missing() == "0-4"
    with pytest.raises(NoFaceError) as err:
        require_faces(track, "blank.mp4")
    msg = str(err.value)
    assert "\n" not in msg and "blank.mp4" in msg and "0-4" in msg
    assert frame_ranges([1, 2, 3, 7, 9, 10]) == "1-3, 7, 9-10"


def test_lift_video_picks_diverse_views_and_reconstruct_reads_them(turning_head, tmp_path):
    from typer.testing import CliRunner

    from avat3r.cli.main import app
    from avat3r.video import VideoWriter

    cams, frames = turning_head
    with VideoWriter(tmp_path / "turn.mp4", fps=10.0) as v:
        for f in frames:
            v.write(f)
    res = CliRunner().invoke(app, ["lift", str(tmp_path / "turn.mp4"), "-o", str(tmp_path / "views"), "--fov",
                                   f"{FOV:.4f}"])
    assert res.exit_code == 0, res.stderr
    info = json.loads((tmp_path / "views" / "lift.json").read_text())
    names, lifted = read_cams_json(tmp_path / "views" / "cams.json")
    assert names == [f"view_{i}.png" for i in range(4)] and len(set(info["frames"])) == 4
    truth = torch.nn.functional.normalize(cams.centers[info["frames"]], dim=-1).double().numpy()
    got = torch.nn.functional.normalize(lifted.centers, dim=-1).double().numpy()
    assert angles(got, truth).max() < MAX_DIRECTION_ERROR
    assert info["spread_degrees"] > 50  # the two extremes of a ±40° turn, not four near-frontal frames
    assert min(info["view_degrees"]) < 12  # the most frontal frame comes first
    res = CliRunner().invoke(app, ["reconstruct", str(tmp_path / "views"), "--cams",
                                   str(tmp_path / "views" / "cams.json"), "-o", str(tmp_path / "head.avt"),
                                   "--device", "cpu"])
    assert res.exit_code == 0, res.stderr
    assert (tmp_path / "head.avt").stat().st_size > 0
    # the rest of the chain, offline: drive the lifted avatar by the same video's landmarks and render it
    res = CliRunner().invoke(app, ["animate", str(tmp_path / "head.avt"), "--video", str(tmp_path / "turn.mp4"),
                                   "-o", str(tmp_path / "stream.tar"), "--checkpoint", "synthheads-tiny",
                                   "--device", "cpu", "--quiet"])
    assert res.exit_code == 0, res.stderr
    res = CliRunner().invoke(app, ["render", str(tmp_path / "stream.tar"), "--path", "frontal", "--size", "64",
                                   "--video", str(tmp_path / "out.mp4"), "--quiet"])
    assert res.exit_code == 0, res.stderr
    from avat3r.video import count_frames

    assert count_frames(tmp_path / "out.mp4")[0] == len(frames)


def test_lift_photos_one_camera_per_photo(turning_head, tmp_path):
    from avat3r.imageio import write_png
    from avat3r.lift import lift

    cams, frames = turning_head
    (tmp_path / "photos").mkdir()
    for i in (0, 2, 3, 5, 6):
        write_png(tmp_path / "photos" / f"p{i}.png", frames[i])
    write_png(tmp_path / "photos" / "blank.png", np.zeros((64, 80, 3), np.uint8))
    lift(tmp_path / "photos", tmp_path / "views", fov_degrees=FOV)
    info = json.loads((tmp_path / "views" / "lift.json").read_text())
    _, lifted = read_cams_json(tmp_path / "views" / "cams.json")
    idx = [int(n[1:-4]) for n in info["source"]]
    truth = torch.nn.functional.normalize(cams.centers[idx], dim=-1).double().numpy()
    assert angles(torch.nn.functional.normalize(lifted.centers, dim=-1).double().numpy(), truth).max() \
        < MAX_DIRECTION_ERROR
    # too few photos with a face: one line naming those without
    for name in ("p0.png", "p2.png"):
        (tmp_path / "photos" / name).unlink()
    with pytest.raises(NoFaceError, match=r"3 of 4 photos.*no face in blank\.png$"):
        lift(tmp_path / "photos", tmp_path / "views2", fov_degrees=FOV)


def test_landmarks_extractor_tracks_jaw_and_blinks(tmp_path):
    from avat3r.data.synth.expressions import EXPR_INDEX, segment_codes
    from avat3r.driving import build_extractor, extract_sequence
    from avat3r.video import VideoWriter

    codes = torch.cat([segment_codes("neutral", 2), segment_codes("EXP_jaw003", 8), segment_codes("EXP_blink", 6),
                       segment_codes("EXP_smile", 6)])
    cams = cameras_at([(0, 4), (8, 2), (-8, 6)])
    frames = render(5, cams, codes)
    with VideoWriter(tmp_path / "drive.mp4", fps=10.0) as v:
        for f in frames:
            v.write(f)
    ex = build_extractor(None, space="synthheads-v1")
    assert ex.name == "landmarks"
    seq = extract_sequence(tmp_path / "drive.mp4", ex, expected_space="synthheads-v1")
    assert ex.face_found_rate == 1.0 and seq.codes.shape == codes.shape
    for name in ("jawOpen", "eyeBlinkLeft", "eyeBlinkRight"):
        j = EXPR_INDEX[name]
        err = (seq.codes[:, j] - codes[:, j]).abs().mean()
        assert err < MAX_EXPR_ERROR, (name, float(err), seq.codes[:, j].numpy().round(2))
    jaw = seq.codes[:, EXPR_INDEX["jawOpen"]]
    assert jaw[codes[:, EXPR_INDEX["jawOpen"]] > 0.9].min() > 0.5 and jaw[:2].max() < 0.2


def test_landmarks_extractor_refuses_a_space_without_names():
    from avat3r.driving import DrivingError, build_extractor

    with pytest.raises(DrivingError) as err:
        build_extractor("landmarks", space="ava256")
    assert "\n" not in str(err.value) and "ARKit" in str(err.value)
