"""`avat3r prep nersemble`: fake downloads in both layouts (tests/fake_nersemble.py) with known cameras, head
poses, masks, colour matrices and FLAME tracking → head-centric shards that match the truth."""

from __future__ import annotations

import hashlib
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
from fake_nersemble import (
    FLAME_HEAD_CENTRE,
    FULL_K,
    N_FRAMES,
    SERIALS,
    colour_matrix,
    srgb_decode,
    srgb_encode,
    write_benchmark,
    write_tracking,
    write_v2,
    write_video,
)
from typer.testing import CliRunner

from avat3r.cli.main import app
from avat3r.data import nersemble
from avat3r.data.captures import FrameJob, merge_captures
from avat3r.data.manifest import read_manifest
from avat3r.data.nersemble import find_captures, load_frame, prep_nersemble
from avat3r.data.nersemble_images import cheung_terms, correct_colour

runner = CliRunner()
RES = 48
CENTRE_TOLERANCE_M = 0.008  # silhouettes place the head centre within 8 mm (measured 4–6 mm)
AXES_TOLERANCE_DEG = 8.0  # the rig's axes vs the head's: its own tilt (≤ 4°) + the rig's 3° asymmetry
V2_MASK_IOU = 0.95  # background differencing vs the render's alpha (measured 0.967–0.981)


# -- fixtures ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def take():
    from fake_nersemble import make_take

    return make_take()


@pytest.fixture(scope="module")
def v2_root(take, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("nersemble_v2")
    write_v2(root, take, 17, "EXP-1-head")
    write_v2(root, take, 18, "EXP-3-cheeks+nose")
    return root


@pytest.fixture(scope="module")
def bench_root(take, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("nersemble_benchmark")
    write_benchmark(root, take, 393, "mono_flame_avatar")
    write_benchmark(root, take, 388, "nvs", sequence="GLASSES")
    return root


def tree_hash(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def samples(out: Path):
    m = read_manifest(out / "manifest.parquet")
    for r in range(len(m)):
        yield m, r, m.read(r)


def head_pose_from(w2c_head: np.ndarray, w2c_world: np.ndarray) -> np.ndarray:
    """The head→world transform a converted camera implies."""
    return np.linalg.inv(w2c_world) @ w2c_head


def angle_deg(Ra: np.ndarray, Rb: np.ndarray) -> float:
    return math.degrees(math.acos(min(1.0, max(-1.0, (np.trace(Ra.T @ Rb) - 1) / 2))))


def crop_centre_offset(sample) -> float:
    """Distance of the projected head centre from the crop centre, as a fraction of the crop side."""
    K, w2c = np.asarray(sample["camera"]["K"]), np.asarray(sample["camera"]["w2c"])
    p = K @ w2c[:3, 3]
    return float(np.abs(p[:2] / p[2] - RES / 2).max() / RES)


def one_line_error(result) -> str:
    lines = result.output.strip().splitlines()
    assert result.exit_code != 0 and len(lines) == 1 and lines[0].startswith("avat3r: error: "), result.output
    return lines[0]


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


# -- FLAME tracking (benchmark) ------------------------------------------------------------------
def test_tracked_cameras_codes_and_crops_equal_the_truth(take, bench_root, tmp_path):
    out = tmp_path / "out"
    result = prep_nersemble(bench_root / "mono_flame_avatar", "benchmark", out, res=RES)
    assert [s.samples for s in result.captures] == [N_FRAMES * len(SERIALS)]
    tracking = np.load(bench_root / "mono_flame_avatar/393/sequences/EXP-1-head/tracking/flame2023_tracking_v2.npz")
    m = None
    for m, r, s in samples(out):
        f, cam = int(m["frame"][r]), SERIALS.index(m["camera"][r])
        true = take.true_w2c(f)[cam]
        w2c = np.asarray(s["camera"]["w2c"], np.float64)
        assert np.linalg.norm(w2c - true) / np.linalg.norm(true) <= 1e-5
        code = np.concatenate([tracking["expression"][f], tracking["jaw"][f]])
        np.testing.assert_array_equal(s["expr"], code.astype(np.float32))
        np.testing.assert_array_equal(np.asarray(m["expr"][r], np.float32), code.astype(np.float32))
        assert crop_centre_offset(s) <= 0.02
    assert m.expression_space == "flame2023" and m.expr_dim == 103 and m.source == "nersemble"
    assert set(m["split"].tolist()) == {"test"} and set(m["person"].tolist()) == {"p393"}
    assert set(m["segment"].tolist()) == {"EXP-1-head"}
    info = json.loads((out / "prep.json").read_text())["captures"]["p393_EXP-1-head"]["info"]
    assert info["head_frame"] == "flame" and info["flame_head_centre"] == list(FLAME_HEAD_CENTRE)
    assert info["rotation_matrices_vs_euler_degrees"] < 0.01


def test_flame2023_space_is_registered():
    from avat3r.expressions import get_space

    space = get_space("flame2023")
    assert space.dim == 103 and space.names[0] == "expr000" and space.names[99] == "expr099"
    assert space.names[100:] == ("jaw_x", "jaw_y", "jaw_z") and not any(space.neutral)


def test_euler_convention_is_scipys_intrinsic_xyz():
    Rotation = pytest.importorskip("scipy.spatial.transform").Rotation
    angles = np.array([0.3, -0.7, 1.1])
    np.testing.assert_allclose(nersemble.euler_xyz(angles), Rotation.from_euler("XYZ", angles).as_matrix(),
                               atol=1e-12)


def test_alpha_maps_are_the_masks(take, bench_root):
    capture = find_captures(bench_root, "benchmark", participants=[393])[0]
    for f in range(N_FRAMES):
        frame = load_frame(FrameJob(capture.name, capture.sequence, f, (capture.source,)))
        for view in frame.views:
            alpha = take.alpha[f, SERIALS.index(view.camera)]
            assert iou(view.mask >= 128, alpha >= 0.5) >= 0.97
            np.testing.assert_allclose(view.K, take.K)  # benchmark K: as delivered


# -- no tracking: silhouettes and the rig ---------------------------------------------------------
@pytest.mark.parametrize("layout", ["benchmark", "v2"])
def test_untracked_head_frame_from_silhouettes(take, bench_root, v2_root, tmp_path, layout):
    root, pid = (bench_root / "nvs", 388) if layout == "benchmark" else (v2_root, 17)
    out = tmp_path / "out"
    prep_nersemble(root, layout, out, participants=[pid], res=RES)
    m = None
    for m, r, s in samples(out):
        f, cam = int(m["frame"][r]), SERIALS.index(m["camera"][r])
        est = head_pose_from(np.asarray(s["camera"]["w2c"], np.float64), take.w2c_world[cam])
        true = take.head_to_world[f]
        assert np.linalg.norm(est[:3, 3] - true[:3, 3]) <= CENTRE_TOLERANCE_M
        assert angle_deg(est[:3, :3], true[:3, :3]) <= AXES_TOLERANCE_DEG
        assert crop_centre_offset(s) <= 0.02
    assert m.expression_space == "none" and len(m) == N_FRAMES * len(SERIALS)


def test_v2_masks_colours_and_intrinsics(take, v2_root):
    """Background differencing finds the head; the colour calibration undoes the camera's matrix; the shared
    full-resolution K is scaled to the decoded size."""
    import cv2

    capture = find_captures(v2_root, "v2", participants=[17])[0]
    frame = load_frame(FrameJob(capture.name, capture.sequence, 1, (capture.source,)))
    assert len(frame.views) == len(SERIALS) and frame.expr is None
    for view in frame.views:
        k = SERIALS.index(view.camera)
        alpha = take.alpha[1, k]
        assert iou(view.mask >= 128, alpha >= 0.5) >= V2_MASK_IOU
        np.testing.assert_allclose(view.K, np.diag([1 / 8, 1 / 8, 1]) @ FULL_K)
        inside = cv2.erode((alpha > 0.999).astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
        diff = np.abs(view.rgb.astype(int) - take.rgb[1, k].astype(int))[inside]
        assert diff.mean() <= 0.5 and diff.max() <= 2  # uint8 rounding of the raw and corrected values


def test_colour_correction_inverts_a_known_matrix():
    rng = np.random.default_rng(0)
    true = rng.uniform(0.05, 0.95, (64, 3))
    for ccm in (colour_matrix(0), np.hstack([colour_matrix(1), [[0.01], [-0.02], [0.0]]])):  # 3 and 4 terms
        M, offset = ccm[:, :3], ccm[:, 3] if ccm.shape[1] == 4 else 0.0
        raw_linear = (srgb_decode(true) - offset) @ np.linalg.inv(M).T
        corrected = srgb_encode(cheung_terms(raw_linear, ccm.shape[1]) @ ccm.T)
        np.testing.assert_allclose(corrected, true, atol=1e-9)
    raw = np.round(srgb_encode(srgb_decode(true) @ np.linalg.inv(colour_matrix(2)).T) * 255).astype(np.uint8)
    back = correct_colour(raw[None], colour_matrix(2))[0].astype(int)
    assert np.abs(back - np.round(true * 255)).max() <= 2
    # the term order is the release's (Cheung 2004): R, G, B, RG, RB, GB, R², G², B², 1 for 10 terms
    np.testing.assert_allclose(cheung_terms(np.array([2.0, 3.0, 5.0]), 10), [2, 3, 5, 6, 10, 15, 4, 9, 25, 1])


# -- counting, parts, CLI ------------------------------------------------------------------------
def test_missing_video_frame_and_tracking_are_counted(take, tmp_path):
    root = tmp_path / "bench"
    sdir = write_benchmark(root, take, 404, "mono_flame_avatar")
    (sdir / "images" / f"cam_{SERIALS[0]}.mp4").unlink()  # a camera without its video
    write_video(sdir / "images" / f"cam_{SERIALS[1]}.mp4", take.rgb[:2, 1])  # a video one frame short
    fields = np.load(sdir / "tracking" / "flame2023_tracking_v2.npz")
    keep = np.array([0, 2])  # frame 1 untracked: 1 missing frame
    write_tracking(sdir / "tracking" / "flame2023_tracking_v2.npz", take,
                   **{k: fields[k][keep] for k in ("expression", "rotation", "rotation_matrices", "translation",
                                                   "jaw", "frames", "neck", "eyes")})
    result = prep_nersemble(root, "benchmark", tmp_path / "out", res=RES)
    summary = result.captures[0]
    # converted frames 0 and 2: camera 0 has no video (2 views), camera 1 lacks frame 2 (1 view)
    assert (summary.frames, summary.missing_frames, summary.missing_views) == (2, 1, 3)
    record = json.loads((tmp_path / "out" / "prep.json").read_text())
    assert record["missing_frames"] == 1 and record["missing_views"] == 3
    assert summary.samples == 2 * len(SERIALS) - 3


def test_short_video_is_a_missing_view(take, tmp_path):
    root = tmp_path / "bench"
    sdir = write_benchmark(root, take, 404, "nvs")
    write_video(sdir / "images" / f"cam_{SERIALS[1]}.mp4", take.rgb[:2, 1])
    summary = prep_nersemble(root, "benchmark", tmp_path / "out", res=RES).captures[0]
    assert (summary.frames, summary.missing_frames, summary.missing_views) == (N_FRAMES, 0, 1)


def test_parts_then_merge_equal_one_run(v2_root, tmp_path):
    one, parts = tmp_path / "one", tmp_path / "parts"
    r = runner.invoke(app, ["prep", "nersemble", str(v2_root), "--layout", "v2", "-o", str(one), "--res", str(RES),
                            "--every", "2"])
    assert r.exit_code == 0, r.output
    assert "every person in 'test'" in r.output
    for i in range(2):
        r = runner.invoke(app, ["prep", "nersemble", str(v2_root), "--layout", "v2", "-o", str(parts), "--res",
                                str(RES), "--every", "2", "--part", f"{i}/2"])
        assert r.exit_code == 0, r.output
        assert f"avat3r prep merge {parts}" in r.output
    assert not (parts / "manifest.parquet").exists()
    merge_captures(parts, test_persons=["p017", "p018"])
    assert tree_hash(one) == tree_hash(parts)
    m = read_manifest(one / "manifest.parquet")
    assert sorted(set(m["frame"].tolist())) == [0, 2] and set(m["person"].tolist()) == {"p017", "p018"}
    assert set(m["segment"].tolist()) == {"EXP-1-head", "EXP-3-cheeks+nose"}


def test_cli_selection_and_train_split(v2_root, tmp_path):
    out = tmp_path / "out"
    r = runner.invoke(app, ["prep", "nersemble", str(v2_root), "--layout", "v2", "-o", str(out), "--res", str(RES),
                            "--participants", "18", "--cameras", SERIALS[2], "--cameras", SERIALS[5],
                            "--frames", "1", "--split", "train"])
    assert r.exit_code == 0, r.output
    m = read_manifest(out / "manifest.parquet")
    assert sorted(m["camera"].tolist()) == sorted([SERIALS[2], SERIALS[5]]) and set(m["split"].tolist()) == {"train"}
    assert m["key"].tolist()[0].startswith("p018/EXP-3-cheeks+nose/000000/")


# -- bad inputs ----------------------------------------------------------------------------------
def _copy_v2(v2_root: Path, tmp_path: Path) -> Path:
    root = tmp_path / "v2"
    shutil.copytree(v2_root / "017", root / "017")
    return root


def _cli(root: Path, out: Path, layout: str = "v2", *extra: str):
    return runner.invoke(app, ["prep", "nersemble", str(root), "--layout", layout, "-o", str(out), "--res",
                               str(RES), "--frames", "1", *extra])


def test_bad_v2_inputs_name_the_file(v2_root, tmp_path):
    root = _copy_v2(v2_root, tmp_path)
    calib = root / "017" / "calibration" / "camera_params.json"
    good = calib.read_text()
    shutil.copytree(root / "017", tmp_path / "as_benchmark" / "nvs" / "017")  # a v2 download read as benchmark
    assert "--layout v2" in one_line_error(_cli(tmp_path / "as_benchmark", tmp_path / "o1", "benchmark"))
    calib.write_text("{not json")
    assert str(calib) in one_line_error(_cli(root, tmp_path / "o2"))
    doc = json.loads(good)
    doc["world_2_cam"][SERIALS[0]][0][0] = 3.0
    calib.write_text(json.dumps(doc))
    assert "not a rigid transform" in one_line_error(_cli(root, tmp_path / "o3"))
    calib.write_text(good)
    colour = root / "017" / "calibration" / "color_calibration.json"
    colour.write_text(json.dumps({SERIALS[0]: [[1, 0], [0, 1]]}))
    line = one_line_error(_cli(root, tmp_path / "o4"))
    assert str(colour) in line and SERIALS[0] in line
    colour.unlink()  # no colour calibration: converted uncorrected
    plate = root / "017" / "sequences" / "BACKGROUND" / f"image_{SERIALS[3]}.jpg"
    plate.rename(plate.with_suffix(".bak"))
    assert str(plate) in one_line_error(_cli(root, tmp_path / "o5"))
    plate.with_suffix(".bak").rename(plate)
    video = root / "017" / "sequences" / "EXP-1-head" / "images" / f"cam_{SERIALS[0]}.mp4"
    video.write_bytes(b"not a video")
    assert str(video) in one_line_error(_cli(root, tmp_path / "o6"))
    line = one_line_error(_cli(root, tmp_path / "o7", "v2", "--cameras", "123"))
    assert str(calib) in line and "--cameras" in line
    assert "--participants" in one_line_error(_cli(root, tmp_path / "o8", "v2", "--participants", "99"))
    assert "--sequences" in one_line_error(_cli(root, tmp_path / "o9", "v2", "--sequences", "FREE"))
    assert "--part" in one_line_error(_cli(root, tmp_path / "o10", "v2", "--part", "2/2"))
    assert "--every" in one_line_error(_cli(root, tmp_path / "o11", "v2", "--every", "0"))
    assert "--split" in one_line_error(_cli(root, tmp_path / "o12", "v2", "--split", "val"))
    assert "--layout" in one_line_error(_cli(root, tmp_path / "o13", "v3"))
    (tmp_path / "empty").mkdir()
    assert "no NeRSemble v2 capture" in one_line_error(_cli(tmp_path / "empty", tmp_path / "o14"))


def test_bad_tracking_names_the_file(take, tmp_path):
    root = tmp_path / "bench"
    sdir = write_benchmark(root, take, 404, "mono_flame_avatar")
    npz = sdir / "tracking" / "flame2023_tracking_v2.npz"
    write_tracking(npz, take, jaw=None)
    line = one_line_error(_cli(root, tmp_path / "o1", "benchmark"))
    assert str(npz) in line and "jaw" in line
    write_tracking(npz, take, expression=np.zeros((N_FRAMES, 50), np.float32))
    line = one_line_error(_cli(root, tmp_path / "o2", "benchmark"))
    assert str(npz) in line and "expression" in line
    shutil.copytree(root / "mono_flame_avatar" / "404", tmp_path / "as_v2" / "404")  # benchmark read as v2
    assert "--layout benchmark" in one_line_error(_cli(tmp_path / "as_v2", tmp_path / "o5"))
    npz.write_bytes(b"garbage")
    assert str(npz) in one_line_error(_cli(root, tmp_path / "o3", "benchmark"))
    write_benchmark(root, take, 405, "nvs")  # tracked and untracked captures cannot share one manifest
    npz.unlink()
    write_tracking(npz, take)
    assert "separate output folders" in one_line_error(_cli(root, tmp_path / "o4", "benchmark"))
