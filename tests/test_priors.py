"""Priors: geometric accuracy on a scene with known geometry, DUSt3R alignment math, backends' contracts, and
the resumable `prior` stage."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from avat3r.cameras import Cameras, intrinsics_from_fov, look_at, unproject
from avat3r.priors import PriorError, dust3r_confidence, get_feature_prior, get_position_prior
from avat3r.priors.synthetic import hemisphere_rig, raycast_head, scene_views


def _errors(pos, conf, alpha, depth, cams):
    fg = alpha > 0.5
    err_mm = (pos - unproject(cams, depth)).norm(dim=-1)[fg] * 1000
    pred = conf > 0.5
    iou = float((pred & fg).sum() / (pred | fg).sum())
    return float(err_mm.median()), iou


def _check_geometric(res, max_median_mm):
    rgb, alpha, depth, cams = scene_views(4, res, seed=1)
    pos, conf = get_position_prior("geometric", hull_samples=96)(rgb, cams, None)  # masks from the background
    assert pos.dtype == torch.float32 and conf.dtype == torch.float32
    assert pos.shape == (4, res, res, 3) and torch.isfinite(pos).all()
    assert float(conf.min()) >= 0 and float(conf.max()) <= 1
    median, iou = _errors(pos, conf, alpha, depth, cams)
    base_median, _ = _errors(*get_position_prior("none")(rgb, cams, None), alpha, depth, cams)
    assert median < max_median_mm, median
    assert median < 0.3 * base_median
    assert iou > 0.9, iou
    assert float(conf[alpha < 0.01].max()) < 0.5  # off the head the confidence is low


def test_geometric_prior_recovers_known_geometry():
    _check_geometric(48, 7.0)  # mm, ~1.2 px at 5.8 mm per pixel on a ~150 mm wide head


@pytest.mark.slow
def test_geometric_prior_recovers_known_geometry_at_64():
    _check_geometric(64, 6.0)  # 4.4 mm per pixel


def test_geometric_window_means_match_avg_pool():
    from avat3r.priors.geometric import _box

    for shape in [(2, 6, 3, 9, 7), (1, 3, 1, 2, 5), (1, 1, 1, 1, 1)]:  # also windows wider than the image
        x = torch.rand(shape)
        flat = x.reshape(-1, 1, *shape[-2:])
        want = torch.nn.functional.avg_pool2d(flat, 5, stride=1, padding=2, count_include_pad=False)
        assert torch.allclose(_box(x, 5), want.reshape(shape), atol=1e-6)


def test_geometric_best_views_mean_matches_topk():
    from avat3r.priors.geometric import _best_views_mean

    g = torch.Generator().manual_seed(0)
    cost = torch.rand(3, 4, 50, generator=g)
    vis = torch.rand(3, 4, 50, generator=g) > 0.4  # 0, 1, 2 and 3 visible views all occur
    n_vis = vis.sum(0, dtype=torch.float32)
    c = torch.where(vis, cost, torch.full_like(cost, float("inf")))
    low = torch.topk(c, 2, dim=0, largest=False).values
    ok = torch.isfinite(low)
    n = ok.sum(0)
    want = torch.where(n > 0, torch.where(ok, low, 0).sum(0) / n.clamp_min(1), torch.full_like(low[0], 0.5))
    assert torch.equal(_best_views_mean(cost.clone(), vis, n_vis, 2), want)
    assert set(n_vis.unique().tolist()) == {0.0, 1.0, 2.0, 3.0}


def test_none_prior_meets_the_head_ellipsoid():
    cams = hemisphere_rig(3, 16)
    pos, conf = get_position_prior("none")(torch.zeros(3, 16, 16, 3), cams, None)
    from avat3r.priors.base import HEAD_RADII, ellipsoid_positions
    _, hit = ellipsoid_positions(cams)
    q = ((pos / torch.tensor(HEAD_RADII)) ** 2).sum(-1)
    assert torch.allclose(q[hit], torch.ones_like(q[hit]), atol=1e-4)
    assert torch.isfinite(pos).all() and torch.equal(conf, torch.ones(3, 16, 16))


def test_ground_truth_prior_unprojects_depth():
    cams = hemisphere_rig(2, 24)
    rgb, alpha, depth = raycast_head(cams)
    pos, conf = get_position_prior("ground-truth", depth=depth)(rgb, cams, alpha)
    fg = depth > 0
    assert torch.allclose(pos[fg], unproject(cams, depth)[fg], atol=1e-6)
    assert torch.isfinite(pos).all()
    assert torch.allclose(conf, alpha * fg)
    with pytest.raises(PriorError):
        get_position_prior("ground-truth")(rgb, cams, alpha)


def test_dust3r_confidence_mapping():
    c = torch.tensor([1.0, 2.0, 4.0, 1e9, 0.5])
    assert torch.allclose(dust3r_confidence(c), torch.tensor([0.0, 0.5, 0.75, 1.0, 0.0]))


def test_dust3r_alignment_from_camera_frame_point_maps():
    from avat3r.priors.dust3r import align_pairs_to_known_poses, camera_to_world, pair_scale

    cams = hemisphere_rig(3, 20, seed=3).to(dtype=torch.float64)
    _, _, depth = raycast_head(cams.to(dtype=torch.float32))
    depth = torch.where(depth > 0, depth.double(), torch.full_like(depth, 1.1, dtype=torch.float64))
    world = unproject(cams, depth)
    w2c = cams.w2c

    def in_frame(i, pts):
        return torch.einsum("ij,hwj->hwi", w2c[i, :3, :3], pts) + w2c[i, :3, 3]

    # single frame: camera points → world with the known pose
    assert torch.allclose(camera_to_world(in_frame(1, world[1]), cams.c2w[1]), world[1], atol=1e-9)
    pairs = []
    for i in range(3):
        for j in range(3):
            if i != j:
                s = 0.4 + 0.3 * i + 0.1 * j  # DUSt3R's unknown per-pair scale
                pairs.append((i, j, in_frame(i, world[i]) / s, in_frame(i, world[j]) / s,
                              torch.full((20, 20), 3.0), torch.full((20, 20), 2.0)))
    s_est = pair_scale(pairs[0][3], w2c[0], w2c[1], cams.K[1])
    assert abs(float(s_est) - (0.4 + 0.1)) < 1e-6
    pos, raw = align_pairs_to_known_poses(pairs, cams)
    assert (pos.double() - world).abs().max() < 1e-5
    assert torch.allclose(raw, torch.full_like(raw, 3.0))


def test_dust3r_backend_without_package_gives_one_line(monkeypatch, tmp_path):
    monkeypatch.delenv("AVAT3R_DUST3R_REPO", raising=False)
    with pytest.raises(PriorError) as err:
        get_position_prior("dust3r", repo=str(tmp_path))
    msg = str(err.value)
    assert "\n" not in msg and "dust3r" in msg and "AVAT3R_DUST3R_CKPT" in msg and "ckpt option" in msg
    assert "--dust3r" not in msg and err.value.param == "position_options"  # the CLI adds its flags


def test_dust3r_cli_error_is_one_line(tmp_path):
    from typer.testing import CliRunner

    from avat3r.cli.main import app

    env = {k: v for k, v in os.environ.items() if not k.startswith("AVAT3R_DUST3R")}
    res = CliRunner().invoke(app, ["prior", str(tmp_path), "-o", str(tmp_path / "o"), "--position", "dust3r"], env=env)
    assert res.exit_code != 0
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("avat3r: error: DUSt3R is not importable")
    assert lines[0].endswith("(--dust3r-repo, --dust3r-ckpt)")


class _StandIn(torch.nn.Module):
    """A Sapiens-shaped stand-in: 16×16 patches → C channels, each the patch mean of one input channel."""

    def __init__(self, c: int = 6):
        super().__init__()
        self.proj = torch.nn.Conv2d(3, c, 16, stride=16, bias=False)
        with torch.no_grad():
            self.proj.weight.zero_()
            for k in range(c):
                self.proj.weight[k, k % 3] = 1.0 / 256

    def forward(self, x):
        return (self.proj(x),)


def test_sapiens_standin_shapes_and_normalisation(tmp_path, monkeypatch):
    from avat3r.priors.sapiens import SAPIENS_MEAN, SAPIENS_STD

    path = tmp_path / "standin_torchscript.pt2"
    torch.jit.script(_StandIn()).save(str(path))
    monkeypatch.setenv("AVAT3R_SAPIENS_CKPT", str(path))
    feats_prior = get_feature_prior("sapiens", input_size=(64, 48))
    images = torch.zeros(2, 30, 20, 3)
    images[0] = 0.5
    images[1, ..., 0], images[1, ..., 1], images[1, ..., 2] = 1.0, 0.2, 0.0
    feats = feats_prior(images)
    assert feats.shape == (2, 6, 4, 3) and feats.dtype == torch.float32
    for v in range(2):
        rgb = images[v, 0, 0] * 255
        expect = (rgb - torch.tensor(SAPIENS_MEAN)) / torch.tensor(SAPIENS_STD)
        for k in range(6):
            assert torch.allclose(feats[v, k], expect[k % 3].expand(4, 3), atol=1e-4)
    assert get_feature_prior("none")(images) is None
    with pytest.raises(PriorError):
        get_feature_prior("sapiens", ckpt=str(tmp_path / "missing.pt2"))


# -- the stage ---------------------------------------------------------------------------------------------
def _tiny_dataset(folder, res=24):
    """1 person × 2 frames × (5 frontal cameras + 1 back-only camera), one shard per frame."""
    from avat3r.data.manifest import build_manifest, write_manifest
    from avat3r.data.shards import ShardWriter, encode_sample

    front = hemisphere_rig(5, res, seed=5)
    back = Cameras(intrinsics_from_fov(16, res, res), look_at(torch.tensor([[0.1, 0.2, -1.0]])), res, res)
    cams = Cameras.cat([front, back])
    names = [f"cam{i:02d}" for i in range(6)]
    rgb, alpha, depth = raycast_head(cams)
    records, rows = [], []
    for frame in range(2):
        with ShardWriter(folder, pattern=f"shard-{frame:06d}.tar") as w:
            for c in range(6):
                sample = {"rgb": (rgb[c].numpy() * 255).round().astype(np.uint8),
                          "mask": (alpha[c].numpy() * 255).round().astype(np.uint8),
                          "camera": {"K": cams.K[c].tolist(), "w2c": cams.w2c[c].tolist(), "width": res,
                                     "height": res},
                          "expr": np.zeros(3, np.float32), "depth": depth[c].numpy()}
                key = f"p000/EXP_a/{frame:06d}/{names[c]}"
                records.append(w.write(key, encode_sample(sample)))
                rows.append({"person": "p000", "segment": "EXP_a", "frame": frame, "camera": names[c], "width": res,
                                 "height": res, "split": "train", "has_prior": False})
    write_manifest(folder / "manifest.parquet",
                   build_manifest(records, rows, np.zeros((12, 3)), "synthheads-v1", "test", folder))
    return cams


def _tree_bytes(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if not p.name.startswith(".")}


def test_prior_stage_adds_entries_and_resumes_bit_exactly(tmp_path):
    from avat3r.data.manifest import read_manifest
    from avat3r.priors.stage import PriorStageConfig, run_prior_stage

    src = tmp_path / "src"
    src.mkdir()
    cams = _tiny_dataset(src)
    cfg = PriorStageConfig(position="ground-truth", partners=3)
    full = tmp_path / "full"
    m = run_prior_stage(src, full, cfg)
    assert m["has_prior"].tolist() == [True] * 5 + [False] + [True] * 5 + [False]
    s = m.read(0)
    assert s["pos"].dtype == np.float32 and s["conf"].dtype == np.float16 and s["pos"].shape == (24, 24, 3)
    expect = unproject(cams[0], torch.from_numpy(s["depth"])[None])[0].numpy()
    fg = s["depth"] > 0
    assert np.abs(s["pos"][fg] - expect[fg]).max() < 1e-6
    partners = s["partners"]["partners"]
    assert len(partners) == 3 and "cam05" not in partners and "cam00" not in partners
    assert "pos" not in m.read(5)  # the back-only camera is never an input

    # a run killed after its first shard (its work waits in .resumed.partial), then restarted, ends with the
    # same bytes
    resumed = tmp_path / "resumed"
    with pytest.raises(KeyboardInterrupt):
        run_prior_stage(src, resumed, cfg, progress=_interrupt_at(7))
    partial = tmp_path / ".resumed.partial"
    assert not resumed.exists() and sorted(p.name for p in partial.iterdir()) == ["prior.json", "shard-000000.tar"]
    (partial / ".shard-000001.tar.tmp").write_bytes(b"half-written")  # debris of the kill
    done = (partial / "shard-000000.tar").stat().st_mtime_ns
    run_prior_stage(src, resumed, cfg)
    assert _tree_bytes(resumed) == _tree_bytes(full) and not partial.exists()
    assert (resumed / "shard-000000.tar").stat().st_mtime_ns == done  # resumed, not redone
    assert len(read_manifest(resumed)) == 12


def _interrupt_at(n_samples):
    seen = []

    def progress(n):
        seen.append(n)
        if sum(seen) >= n_samples:
            raise KeyboardInterrupt
    return progress


def test_prior_rerun_with_other_options_never_keeps_stale_results(tmp_path):
    from avat3r.priors.stage import PriorStageConfig, run_prior_stage

    src = tmp_path / "src"
    src.mkdir()
    _tiny_dataset(src)
    out = tmp_path / "out"
    none = run_prior_stage(src, out, PriorStageConfig(position="none"))
    gt_cfg = PriorStageConfig(position="ground-truth")
    gt = run_prior_stage(src, tmp_path / "gt", gt_cfg)
    pos = {name: m.read(0)["pos"] for name, m in (("none", none), ("gt", gt))}
    assert not np.array_equal(pos["none"], pos["gt"])

    # into the finished folder with another position prior: redone, not reported over the old shards
    again = run_prior_stage(src, out, gt_cfg)
    assert np.array_equal(again.read(0)["pos"], pos["gt"]) and _tree_bytes(out) == _tree_bytes(tmp_path / "gt")

    # a killed run's work is continued only with the same options
    with pytest.raises(KeyboardInterrupt):
        run_prior_stage(src, tmp_path / "k", PriorStageConfig(position="none"), progress=_interrupt_at(7))
    run_prior_stage(src, tmp_path / "k", gt_cfg)
    assert _tree_bytes(tmp_path / "k") == _tree_bytes(tmp_path / "gt")

    # the same options again: nothing to redo; another source manifest: redone
    stamp = (out / "shard-000000.tar").stat().st_mtime_ns
    run_prior_stage(src, out, gt_cfg)
    assert (out / "shard-000000.tar").stat().st_mtime_ns == stamp
    src2 = tmp_path / "src2"
    src2.mkdir()
    _tiny_dataset(src2, res=16)
    assert run_prior_stage(src2, out, gt_cfg).read(0)["pos"].shape == (16, 16, 3)


def test_prior_stage_downsample_computes_the_maps_reconstruct_would_at_the_input_side(tmp_path):
    """`prior --downsample 2`: maps equal to the prior run on the views averaged over 2×2 blocks (with their
    partners, cameras resized), stored at half size; refused where it cannot be right."""
    from avat3r.priors.stage import PriorStageConfig, run_prior_stage

    src = tmp_path / "src"
    src.mkdir()
    cams = _tiny_dataset(src)
    cfg = PriorStageConfig(position="geometric", partners=3, downsample=2,
                           position_options={"hull_samples": 32})
    m = run_prior_stage(src, tmp_path / "half", cfg)
    s = m.read(0)
    assert s["pos"].shape == (12, 12, 3) and s["conf"].shape == (12, 12) and s["rgb"].shape == (24, 24, 3)
    rows = [0] + [int(c[3:]) for c in s["partners"]["partners"]]  # frame 0: row r is camera r
    views = [m.read(r) for r in rows]

    def pool(x):  # (V,H,W,C) → (V,H/2,W/2,C), the block average a user's downscaled photo has
        return torch.nn.functional.avg_pool2d(x.permute(0, 3, 1, 2), 2).permute(0, 2, 3, 1)

    images = pool(torch.stack([torch.from_numpy(v["rgb"]).float() / 255 for v in views]))
    masks = pool(torch.stack([torch.from_numpy(v["mask"]).float()[..., None] / 255 for v in views]))[..., 0]
    pos, conf = get_position_prior("geometric", hull_samples=32)(images, cams[rows].resized(12, 12), masks)
    assert np.array_equal(s["pos"], pos[0].numpy()) and np.array_equal(s["conf"], conf[0].numpy().astype(np.float16))
    assert m.read(1)["pos"].shape == (12, 12, 3)  # partners' maps too
    # the record names the option, so a rerun without it redoes the work
    full = run_prior_stage(src, tmp_path / "half", PriorStageConfig(position="geometric", partners=3,
                                                                     position_options={"hull_samples": 32}))
    assert full.read(0)["pos"].shape == (24, 24, 3)

    with pytest.raises(PriorError, match="do not divide by --downsample 5"):
        run_prior_stage(src, tmp_path / "x", PriorStageConfig(position="none", downsample=5))
    with pytest.raises(PriorError, match="ground-truth.*no --downsample"):
        run_prior_stage(src, tmp_path / "x", PriorStageConfig(position="ground-truth", downsample=2))
    assert not (tmp_path / "x").exists()
