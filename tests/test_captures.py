"""The capture machinery shared by the dataset converters: head-pose folding, head frames from a rig,
triangulation, head crops, per-capture output (resume, parts, merge)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from avat3r.cameras import Cameras, intrinsics, look_at, project
from avat3r.data.captures import (
    CaptureError,
    FrameJob,
    FrameViews,
    View,
    camera_centres_and_ups,
    convert_capture,
    crop_view,
    estimate_head_frame,
    fold_head_pose,
    is_capture_done,
    merge_captures,
    parse_part,
    read_list,
    select_part,
    triangulate,
)
from avat3r.data.manifest import read_manifest


def rotation(axis, degrees):
    axis = np.asarray(axis, np.float64) / np.linalg.norm(axis)
    a = math.radians(degrees)
    K = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + math.sin(a) * K + (1 - math.cos(a)) * K @ K


def rigid(R, t):
    m = np.eye(4)
    m[:3, :3], m[:3, 3] = R, t
    return m


def frontal_rig(n=6, radius=1.0):
    """Upright cameras looking at the origin (canonical head frame, metres) from a frontal grid that is
    symmetric left/right and up/down, as capture rigs are: n/2 azimuths × 2 elevations."""
    azimuths = np.linspace(-1.0, 1.0, max(n // 2, 1)) if n > 1 else [0.0]
    elevations = (-0.25, 0.25) if n > 1 else (0.0,)
    eyes = [[radius * math.sin(a) * math.cos(e), radius * math.sin(e), radius * math.cos(a) * math.cos(e)]
            for a in azimuths for e in elevations][:n]
    return look_at(torch.tensor(eyes, dtype=torch.float64)).double().numpy()


def test_fold_head_pose_matches_projection_in_millimetres():
    rng = np.random.default_rng(0)
    w2c_canon = frontal_rig()[2]  # the truth: canonical head frame, metres
    head_to_world = rigid(rotation(rng.normal(size=3), 23), rng.normal(size=3) * 300)  # mm
    # the same camera in a millimetre world where the head sits at head_to_world
    world_to_head = np.linalg.inv(head_to_world)
    w2c_world_mm = rigid(w2c_canon[:3, :3], w2c_canon[:3, 3] * 1000) @ world_to_head
    folded = fold_head_pose(w2c_world_mm, head_to_world, 1e-3)
    assert np.allclose(folded, w2c_canon, rtol=0, atol=1e-12)


def test_head_frame_from_an_upright_frontal_rig():
    cams = frontal_rig(8)
    truth = rigid(rotation([0.2, 1.0, 0.1], 40), [0.3, -0.2, 1.5])  # canonical → world
    w2c_world = cams @ np.linalg.inv(truth)
    centres, ups = camera_centres_and_ups(w2c_world)
    frame = estimate_head_frame(truth[:3, 3], centres, ups)
    # the rig is symmetric left/right and up/down around the face direction: the axes come back exactly
    assert np.allclose(frame, truth, atol=1e-9)
    with pytest.raises(CaptureError, match="parallel"):
        estimate_head_frame(truth[:3, 3], centres, np.tile(truth[:3, 2], (len(centres), 1)))


def test_triangulate_recovers_a_point_and_refuses_one_view():
    cams = frontal_rig(6)
    K = np.tile(intrinsics(300, 300, 64, 64).double().numpy()[None], (6, 1, 1))
    point = np.array([0.012, -0.03, 0.021])
    c = Cameras(torch.tensor(K), torch.tensor(cams), torch.full((6,), 128), torch.full((6,), 128))
    uv, _ = project(c, torch.tensor(point, dtype=torch.float64)[None, None].expand(6, 1, 3))
    assert np.allclose(triangulate(K, cams, uv[:, 0].numpy()), point, atol=1e-9)
    with pytest.raises(CaptureError, match="two views"):
        triangulate(K[:1], cams[:1], uv[:1, 0].numpy())


def test_crop_view_centres_the_head_and_keeps_projections():
    w2c = frontal_rig(3)[1]
    K = intrinsics(900, 900, 300, 410).numpy()
    rgb = np.random.default_rng(2).integers(0, 255, (800, 600, 3), dtype=np.uint8)
    mask = np.full((800, 600), 255, np.uint8)
    mask[:, :300] = 0
    s = crop_view(View("c0", rgb, mask, K, w2c), res=64)
    cam = s["camera"]
    Kc = np.asarray(cam["K"])
    # the head centre (origin) projects to the crop centre
    x = w2c[:3, 3]
    u, v = Kc[0, 0] * x[0] / x[2] + Kc[0, 2], Kc[1, 1] * x[1] / x[2] + Kc[1, 2]
    assert abs(u - 32) <= 0.02 * 64 and abs(v - 32) <= 0.02 * 64
    # background (mask 0) is black, the masked side keeps colour
    assert s["rgb"][:, :20].max() == 0 and s["rgb"][:, 44:].mean() > 50
    assert s["mask"].shape == (64, 64)
    with pytest.raises(CaptureError, match="mask is"):
        crop_view(View("c0", rgb, mask[:10], K, w2c), res=64)


def _load(job: FrameJob) -> FrameViews | None:
    """A frame of a fake capture: flat colours per camera, frame 2 missing entirely, camera c2 missing at 1."""
    if job.frame == 2:
        return None
    cams = frontal_rig(4)[:3]
    K = intrinsics(120, 120, 40, 40).numpy()
    views = []
    for k, w2c in enumerate(cams):
        if job.frame == 1 and k == 2:
            continue
        rgb = np.full((80, 80, 3), 40 * (k + 1) + job.frame, np.uint8)
        views.append(View(f"c{k}", rgb, None, K, w2c))
    code = np.full(3, job.frame, np.float32)
    return FrameViews(job.segment, job.frame, views, code, missing_views=3 - len(views))


def _convert(out, capture, person, **kw):
    jobs = [FrameJob(capture, "seg", f) for f in range(4)]
    return convert_capture(out, capture, person, jobs, _load, res=16, expression_space="test-space", expr_dim=3,
                           source="fake", **kw)


def test_convert_capture_counts_resumes_and_merges(tmp_path):
    a = _convert(tmp_path / "one", "capA", "P1")
    assert (a.samples, a.frames, a.missing_frames, a.missing_views) == (8, 3, 1, 1)
    assert is_capture_done(tmp_path / "one", "capA")
    again = _convert(tmp_path / "one", "capA", "P1")
    assert again.skipped and again.samples == 8
    _convert(tmp_path / "one", "capB", "P2", workers=2)
    merged = merge_captures(tmp_path / "one", test_persons=["P2"])
    assert len(merged) == 16 and merged.persons("test") == ["P2"] and merged.persons("train") == ["P1"]
    assert np.array_equal(merged["expr"][:3], np.array([[0] * 3, [0] * 3, [0] * 3], np.float32))
    sample = merged.read(0)
    assert sample["rgb"].shape == (16, 16, 3) and int(sample["rgb"][8, 8, 0]) == 40

    # parts converted into another folder in the other order merge to the same bytes
    for capture, person in (("capB", "P2"), ("capA", "P1")):
        _convert(tmp_path / "parts", capture, person)
    merge_captures(tmp_path / "parts", test_persons=["P2"])
    for name in ("manifest.parquet", "capA-shard-000000.tar", "capB-shard-000000.tar"):
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "parts" / name).read_bytes()
    assert read_manifest(tmp_path / "parts").shard_path(0).is_file()


def test_killed_capture_is_redone_and_blocks_merge(tmp_path):
    out = tmp_path / "out"
    _convert(out, "capA", "P1")
    (out / "capZ-shard-000000.tar").write_bytes(b"half")  # a killed run's shard, no manifest
    with pytest.raises(CaptureError, match="half-converted"):
        merge_captures(out)
    _convert(out, "capZ", "P9")
    assert (out / "capZ-shard-000000.tar").read_bytes() != b"half"
    assert len(merge_captures(out)) == 16
    with pytest.raises(CaptureError, match="not converted"):
        merge_captures(out, captures=["capA", "capQ"])
    with pytest.raises(CaptureError, match="both test and val"):
        merge_captures(out, ["P1"], ["P1"])


def test_codes_are_checked(tmp_path):
    jobs = [FrameJob("capA", "seg", 0)]
    with pytest.raises(CaptureError, match="4 finite values"):
        convert_capture(tmp_path, "capA", "P1", jobs, _load, res=16, expression_space="x", expr_dim=4, source="f")
    with pytest.raises(CaptureError, match="capture name"):
        convert_capture(tmp_path, "cap.A", "P1", jobs, _load, res=16, expression_space="x", expr_dim=3, source="f")


def test_parts_are_disjoint_and_cover_all():
    names = [f"c{k:02d}" for k in range(11)]
    parts = [select_part(names, (i, 4)) for i in range(4)]
    assert sorted(sum(parts, [])) == names and sum(map(len, parts)) == 11
    assert parse_part("2/4") == (2, 4) and parse_part(None) == (0, 1)
    for bad in ("4/4", "1", "a/b", "0/0"):
        with pytest.raises(CaptureError, match="--part"):
            parse_part(bad)


def test_read_list_formats(tmp_path):
    (tmp_path / "a.txt").write_text("# held out\nP1\n\nP2  # second\n")
    (tmp_path / "b.csv").write_text("mcd,sid,mct\n20230101,AAA111,0800\n20230102,BBB222,0900\n")
    assert read_list(tmp_path / "a.txt") == ["P1", "P2"]
    assert read_list(tmp_path / "b.csv") == ["AAA111", "BBB222"]
    with pytest.raises(CaptureError, match="cannot read"):
        read_list(tmp_path / "none.txt")


def test_prep_merge_uses_the_recorded_splits(tmp_path):
    import subprocess
    import sys

    from avat3r.data.captures import recorded_holdout

    _convert(tmp_path / "parts", "capA", "P1", info={"participant_split": "train"})
    _convert(tmp_path / "parts", "capB", "P2", info={"participant_split": "test"})
    assert recorded_holdout(tmp_path / "parts") == (["P2"], [])
    run = subprocess.run([sys.executable, "-m", "avat3r.cli.main", "prep", "merge", str(tmp_path / "parts")],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert "persons train/val/test = 1/0/1" in run.stderr
    _convert(tmp_path / "one", "capA", "P1")
    _convert(tmp_path / "one", "capB", "P2")
    merge_captures(tmp_path / "one", test_persons=["P2"])
    assert (tmp_path / "one/manifest.parquet").read_bytes() == (tmp_path / "parts/manifest.parquet").read_bytes()
    (tmp_path / "list.txt").write_text("P1\n")
    run = subprocess.run([sys.executable, "-m", "avat3r.cli.main", "prep", "merge", str(tmp_path / "parts"),
                          "--holdout", str(tmp_path / "list.txt")], capture_output=True, text=True)
    assert run.returncode == 0 and read_manifest(tmp_path / "parts").persons("test") == ["P1"]
    bad = subprocess.run([sys.executable, "-m", "avat3r.cli.main", "prep", "merge", str(tmp_path / "empty")],
                         capture_output=True, text=True)
    assert bad.returncode != 0 and len(bad.stderr.strip().splitlines()) == 1 and "no converted capture" in bad.stderr
