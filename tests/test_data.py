"""Shards, manifests and training examples (DESIGN §4), on a tiny fake SynthHeads source."""

from __future__ import annotations

import hashlib
import math
import tarfile
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from avat3r.cameras import Cameras, intrinsics_from_fov, is_back_only, look_at, project

FAKE = "test_data:FakeHeads"  # spawn workers import this module by name (pytest puts tests/ on sys.path)


class FakeHeads:
    """The SynthHeads API in miniature: a coloured disk at the head centre, cameras all around (backs too)."""

    EXPRESSION_SPACE = "fake-v1"
    EXPRESSION_NAMES = ("jaw_open", "smile")
    SEGMENTS = ("EXP_a", "EXP_b")

    @staticmethod
    def segment_codes(segment, n_frames):
        base = 0.1 * FakeHeads.SEGMENTS.index(segment)
        t = np.arange(n_frames, dtype=np.float32)[:, None]
        return (base + t * np.array([0.25, 0.5], np.float32)).astype(np.float32)

    @staticmethod
    def person_name(person):
        return f"id{person:03d}"

    @staticmethod
    def make_rig(seed, n_cameras, res):
        az = torch.arange(n_cameras, dtype=torch.float32) * (2 * math.pi / n_cameras)
        el = torch.tensor([0.3 if i % 2 else -0.1 for i in range(n_cameras)])
        eye = torch.stack([torch.cos(el) * torch.sin(az), torch.sin(el), torch.cos(el) * torch.cos(az)], -1)
        K = intrinsics_from_fov(20.0, res, res).expand(n_cameras, 3, 3).clone()
        return [f"cam{i:02d}" for i in range(n_cameras)], Cameras(K, look_at(eye), res, res)

    @staticmethod
    def render_sample(seed, person, segment, frame, camera, n_frames, n_cameras, res):
        _, cams = FakeHeads.make_rig(seed, n_cameras, res)
        cam = cams[camera]
        uv, z = project(cam, torch.zeros(1, 1, 3))
        yy, xx = np.mgrid[0:res, 0:res] + 0.5
        r = 0.12 * float(cam.K[0, 0, 0]) / float(z[0, 0])
        inside = (xx - float(uv[0, 0, 0])) ** 2 + (yy - float(uv[0, 0, 1])) ** 2 < r * r
        rng = np.random.default_rng([seed, person, FakeHeads.SEGMENTS.index(segment), frame, camera])
        rgb = (rng.integers(0, 256, (res, res, 3)) * inside[..., None]).astype(np.uint8)
        depth = np.where(inside, float(z[0, 0]) - 0.1, 0).astype(np.float32)
        return {"rgb": rgb, "mask": (inside * 255).astype(np.uint8), "depth": depth,
                "camera": {"K": cam.K[0].tolist(), "w2c": cam.w2c[0].tolist(), "width": res, "height": res},
                "expr": FakeHeads.segment_codes(segment, n_frames)[frame]}

    @staticmethod
    def contact_sheet(seed, persons, res, n_cameras):
        n = persons if isinstance(persons, int) else len(persons)
        return np.concatenate([FakeHeads.render_sample(seed, p, "EXP_a", 0, 0, 1, n_cameras, res)["rgb"]
                               for p in range(n)], axis=1)


def tree_hash(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


def angle_deg(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = torch.nn.functional.normalize(a, dim=0), torch.nn.functional.normalize(b, dim=0)
    return math.degrees(math.acos(float((a @ b).clamp(-1, 1))))


@pytest.fixture(scope="module")
def tiny_set(tmp_path_factory) -> Path:
    """3 persons × 2 segments × 2 frames × 8 cameras at 32², in several shards (4 per person: 10+10+10+2)."""
    from avat3r.data.prep import prep_synth

    out = tmp_path_factory.mktemp("tiny") / "set"
    summary = prep_synth(out, persons=3, frames=2, cameras=8, res=32, seed=3, source=FAKE, maxcount=10)
    assert summary.n_samples == 3 * 2 * 2 * 8 and len(summary.shards) == 12
    return out


# -- shards ------------------------------------------------------------------------------------------
def test_keys_reject_dots_and_empty_parts():
    from avat3r.data.shards import make_key

    assert make_key("id001", "EXP_jaw003", 7, "cam12") == "id001/EXP_jaw003/000007/cam12"
    for bad in [("id.1", "s", 0, "c"), ("p", "s", 0, "cam.png"), ("p", "", 0, "c"), ("p", "a/b", 0, "c")]:
        with pytest.raises(ValueError):
            make_key(*bad)


def test_tar_members_have_fixed_metadata(tiny_set):
    with tarfile.open(tiny_set / "shard-000000.tar") as tar:
        members = tar.getmembers()
    assert [m.name for m in members[:4]] == ["id000/EXP_a/000000/cam00.rgb.png", "id000/EXP_a/000000/cam00.mask.png",
                                             "id000/EXP_a/000000/cam00.camera.json", "id000/EXP_a/000000/cam00.expr.npy"]
    assert {(m.mtime, m.uid, m.gid, m.uname, m.gname, m.mode) for m in members} == {(0, 0, 0, "", "", 0o444)}


def test_shards_read_by_plain_webdataset_equal_read_sample(tiny_set):
    from avat3r.data.manifest import read_manifest
    from avat3r.data.shards import iter_shard, read_sample

    m = read_manifest(tiny_set)
    row_of = {k: i for i, k in enumerate(m["key"])}
    seen = []
    for shard in sorted(tiny_set.glob("shard-*.tar")):
        for s in iter_shard(shard):
            r = row_of[s["__key__"]]
            assert m["shard"][r] == shard.name
            t = read_sample(shard, int(m["offset"][r]), int(m["size"][r]), key=s["__key__"])
            assert set(t) == set(s) == {"__key__", "rgb", "mask", "camera", "expr", "depth"}
            for name in ("rgb", "mask", "expr", "depth"):
                assert t[name].dtype == s[name].dtype and np.array_equal(t[name], s[name])
            assert t["camera"] == s["camera"]
            seen.append(s["__key__"])
    assert seen == list(m["key"])  # every sample once, in key order


def test_sample_round_trip_is_bit_exact(tiny_set):
    from avat3r.data.manifest import read_manifest

    m = read_manifest(tiny_set)
    r = 8 * 4 + 8 * 2 + 5  # id001, EXP_b, frame 0, cam05
    assert m["key"][r] == "id001/EXP_b/000000/cam05"
    want = FakeHeads.render_sample(3, 1, "EXP_b", 0, 5, 2, 8, 32)
    got = m.read(r)
    assert np.array_equal(got["rgb"], want["rgb"]) and np.array_equal(got["mask"], want["mask"])
    assert np.array_equal(got["depth"], want["depth"]) and got["depth"].dtype == np.float32
    assert got["expr"].dtype == np.float32 and np.array_equal(got["expr"], want["expr"])
    assert np.allclose(got["camera"]["K"], want["camera"]["K"]) and got["camera"]["width"] == 32
    # only the camera, without decoding the rest
    assert set(m.read(r, entries=["camera.json"])) == {"__key__", "camera"}


def test_corrupted_samples_raise_one_line_errors_naming_shard_and_key(tiny_set, tmp_path):
    from avat3r.data.manifest import read_manifest
    from avat3r.data.shards import ShardError, iter_shard, read_sample

    m = read_manifest(tiny_set)
    r = 3
    key, off, size = m["key"][r], int(m["offset"][r]), int(m["size"][r])
    original = (tiny_set / m["shard"][r]).read_bytes()

    def broken(name, data):
        p = tmp_path / name
        p.write_bytes(data)
        return p

    # damaged PNG data (its CRC no longer matches)
    data = bytearray(original)
    data[off + 512 + 60: off + 512 + 80] = b"\x00" * 20
    cases = [broken("png.tar", bytes(data))]
    # damaged tar header (the checksum fails)
    data = bytearray(original)
    data[off + 10] ^= 0xFF
    cases.append(broken("header.tar", bytes(data)))
    # truncated shard
    cases.append(broken("short.tar", original[: off + size // 2]))
    for path in cases:
        with pytest.raises(ShardError) as err:
            read_sample(path, off, size, key=key)
        msg = str(err.value)
        assert "\n" not in msg and path.name in msg and key in msg, msg
    # the same header damage, found by a full pass with plain webdataset
    with pytest.raises(ShardError) as err:
        list(iter_shard(cases[1]))
    msg = str(err.value)
    assert "\n" not in msg and "header.tar" in msg and m["key"][r - 1] in msg, msg
    # a stale manifest pointing at the wrong span
    with pytest.raises(ShardError, match="another sample|unexpected|corrupt"):
        read_sample(tiny_set / m["shard"][r], off, size + int(m["size"][r + 1]), key=key)


def test_oversized_members_images_and_arrays_are_refused_with_one_line(tmp_path, monkeypatch):
    import io
    import struct

    import avat3r.data.shards as shards
    from avat3r.data.shards import ShardError, ShardWriter, encode_npy, iter_shard, read_sample
    from avat3r.imageio import encode_png

    png = bytearray(encode_png(np.zeros((8, 8, 3), np.uint8)))
    png[16:24] = struct.pack(">II", 100_000, 100_000)  # a header that would make OpenCV allocate 30 GB
    npy = io.BytesIO()
    np.lib.format.write_array_header_1_0(npy, {"descr": "<f4", "fortran_order": False, "shape": (10**10,)})
    cases = {"big_png": {"rgb.png": bytes(png)}, "big_npy": {"expr.npy": npy.getvalue() + bytes(8)}}
    cases["big_member"] = {"depth.npy": encode_npy(np.zeros(4000, np.float32))}
    with ShardWriter(tmp_path) as w:
        records = {name: w.write(f"p/s/000000/{name.replace('_', '')}", entries) for name, entries in cases.items()}
    shard = tmp_path / records["big_png"].shard
    monkeypatch.setattr(shards, "MAX_MEMBER_BYTES", 10_000)
    for name, pattern in (("big_png", "100000x100000 image is larger than"),
                          ("big_npy", "header claims a 10000000000 float32 array, more than the data"),
                          ("big_member", "member depth.npy is 16,128 bytes, more than a sample's member may be")):
        rec = records[name]
        with pytest.raises(ShardError) as err:
            read_sample(shard, rec.offset, rec.size, key=rec.key)
        assert pattern in str(err.value) and "\n" not in str(err.value), str(err.value)
    with pytest.raises(ShardError, match="member depth.npy is 16,128 bytes"):  # before WebDataset reads it
        list(iter_shard(shard))


def test_shard_writer_bounds_size_and_count(tmp_path):
    from avat3r.data.shards import ShardWriter, read_members

    payload = {"rgb.png": b"x" * 1000, "camera.json": b"{}"}
    # each sample: 2 headers + 1024 + 512 data bytes = 2560; two fit under 5200 bytes, three do not
    with ShardWriter(tmp_path, maxsize=5200) as w:
        recs = [w.write(f"p/s/{i:06d}/c", payload) for i in range(7)]
    assert [r.shard[-5] for r in recs] == list("0011223") and all(r.size == 2560 for r in recs)
    with ShardWriter(tmp_path / "b", maxcount=3) as w:
        recs = [w.write(f"p/s/{i:06d}/c", payload) for i in range(7)]
    assert [r.shard[-5] for r in recs] == list("0001112")
    assert [r.offset for r in recs[:3]] == [0, 2560, 5120]
    assert read_members(tmp_path / "b" / recs[4].shard, recs[4].offset, recs[4].size) == payload
    assert not list(tmp_path.glob(".*.tmp"))


# -- manifest ------------------------------------------------------------------------------------
def test_manifest_read_by_plain_pyarrow(tiny_set):
    import pyarrow as pa

    from avat3r.data.manifest import COLUMNS

    t = pq.read_table(tiny_set / "manifest.parquet")
    assert tuple(t.column_names) == COLUMNS and t.num_rows == 96
    assert t.schema.field("expr").type == pa.list_(pa.float32(), 2)
    meta = t.schema.metadata
    assert meta[b"expression_space"] == b"fake-v1" and meta[b"source"] == b"synth" and meta[b"version"] == b"1"
    rows = t.to_pylist()
    r = rows[8 * 2 + 8 + 3]  # id000, EXP_b, frame 1, cam03
    assert (r["person"], r["segment"], r["frame"], r["camera"]) == ("id000", "EXP_b", 1, "cam03")
    assert r["key"] == "id000/EXP_b/000001/cam03" and (r["width"], r["height"]) == (32, 32)
    assert np.array_equal(np.float32(r["expr"]), FakeHeads.segment_codes("EXP_b", 2)[1])
    assert r["has_prior"] is False


def test_person_splits_are_disjoint_and_deterministic(tiny_set):
    from avat3r.data.manifest import assign_splits, default_holdout, read_manifest

    m = read_manifest(tiny_set)
    by_split = {s: set(m["person"][m.rows(s)].tolist()) for s in ("train", "val", "test")}
    assert by_split == {"train": {"id000"}, "val": {"id001"}, "test": {"id002"}}
    persons = [f"p{i}" for i in range(30)]
    assert default_holdout(30) == (3, 3) and default_holdout(2) == (0, 0) and default_holdout(3) == (1, 1)
    s = assign_splits(persons, 3, 3)
    assert [p for p in persons if s[p] == "test"] == ["p27", "p28", "p29"]
    assert [p for p in persons if s[p] == "val"] == ["p24", "p25", "p26"]
    assert sum(v == "train" for v in s.values()) == 24 and s == assign_splits(list(persons), 3, 3)
    with pytest.raises(ValueError, match="none to train"):
        assign_splits(persons[:4], 2, 2)


def test_manifest_write_read_round_trip(tiny_set, tmp_path):
    from avat3r.data.manifest import read_manifest, write_manifest

    m = read_manifest(tiny_set)
    write_manifest(tmp_path / "copy.parquet", m)
    assert (tmp_path / "copy.parquet").read_bytes() == (tiny_set / "manifest.parquet").read_bytes()
    m2 = read_manifest(tmp_path / "copy.parquet")
    for name in m.columns:
        assert np.array_equal(m[name], m2[name]), name


# -- training examples ---------------------------------------------------------------------------
def test_example_contents(tiny_set):
    from avat3r.data.examples import ExampleSampler

    s = ExampleSampler(tiny_set, "train", seed=1, require_prior=False)
    ex = s.example(4)
    plan = s.plan(4)
    m = s.manifest
    assert set(ex) == {"inputs_rgb", "inputs_cameras", "inputs_pos", "inputs_conf", "inputs_expr", "target_rgb",
                       "target_mask", "target_cameras", "expr", "person", "target_timestep"}
    assert ex["person"] == "id000" and ex["inputs_rgb"].shape == (4, 32, 32, 3)
    assert ex["target_rgb"].shape == (8, 32, 32, 3) and ex["target_mask"].shape == (8, 32, 32)
    assert len(ex["inputs_cameras"]) == 4 and len(ex["target_cameras"]) == 8
    assert ex["inputs_pos"].shape == (4, 32, 32, 3) and not ex["inputs_pos"].any() and not ex["inputs_conf"].any()
    for j, r in enumerate(plan.inputs):
        assert torch.equal(ex["inputs_rgb"][j], torch.from_numpy(m.read(r)["rgb"]).float() / 255)
        assert torch.equal(ex["inputs_expr"][j], torch.from_numpy(m["expr"][r]))
    seg, frame = plan.target_timestep
    assert all((m["segment"][r], m["frame"][r]) == (seg, frame) for r in plan.targets)
    assert len(set(plan.targets)) == 8  # all 8 cameras of the timestep, back ones included
    assert torch.equal(ex["expr"], torch.from_numpy(FakeHeads.segment_codes(seg, 2)[frame]))
    assert torch.equal(ex["target_mask"][0], torch.from_numpy(m.read(plan.targets[0])["mask"]).float() / 255)
    with pytest.raises(ValueError, match="prior"):
        ExampleSampler(tiny_set, "train", seed=1)  # no sample has a prior yet


def test_input_downsample_averages_inputs_and_keeps_targets_at_full_resolution(tiny_set):
    from avat3r.cameras import project
    from avat3r.data.examples import ExampleError, ExampleSampler, downsample_inputs

    full = ExampleSampler(tiny_set, "train", seed=1, require_prior=False).example(4)
    half = ExampleSampler(tiny_set, "train", seed=1, require_prior=False, input_downsample=2).example(4)
    assert half["inputs_rgb"].shape == (4, 16, 16, 3) and half["target_rgb"].shape == (8, 32, 32, 3)
    torch.testing.assert_close(half["inputs_rgb"][:, 3, 5], full["inputs_rgb"][:, 6:8, 10:12].mean(dim=(1, 2)))
    assert torch.equal(half["target_rgb"], full["target_rgb"]) and half["inputs_cameras"].image_size == (16, 16)
    # a world point lands at the same place of the picture, in the halved pixel grid
    point = torch.tensor([[[0.01, -0.02, 0.03]]]).expand(4, 1, 3)
    uv_full, _ = project(full["inputs_cameras"], point)
    uv_half, _ = project(half["inputs_cameras"], point)
    torch.testing.assert_close(uv_half, uv_full / 2)
    # positions: a confidence-weighted mean, so a block half off the head keeps the head's point
    ex = {"inputs_rgb": torch.zeros(1, 2, 2, 3), "inputs_cameras": full["inputs_cameras"][:1].resized(2, 2),
          "inputs_pos": torch.tensor([[[[1.0, 2, 3], [0, 0, 0]], [[3.0, 2, 1], [0, 0, 0]]]]),
          "inputs_conf": torch.tensor([[[1.0, 0.0], [1.0, 0.0]]])}
    out = downsample_inputs(ex, 2)
    torch.testing.assert_close(out["inputs_pos"], torch.tensor([[[[2.0, 2, 2]]]]))
    assert out["inputs_conf"].item() == 0.5
    ex["inputs_conf"] = torch.zeros(1, 2, 2)  # no confidence anywhere: a zero position, not a NaN
    assert torch.equal(downsample_inputs(ex, 2)["inputs_pos"], torch.zeros(1, 1, 1, 3))
    with pytest.raises(ExampleError, match="divide"):
        downsample_inputs(ex, 3)
    with pytest.raises(ExampleError, match="input_downsample"):
        ExampleSampler(tiny_set, "train", seed=1, require_prior=False, input_downsample=1.5)


def test_priors_computed_at_the_input_side_are_used_as_they_are(tiny_set, tmp_path):
    """Maps from `prior --downsample 2` reach the model untouched (images still averaged down); maps of a size
    that fits neither the image nor the input side are refused."""
    from avat3r.data.examples import ExampleError, ExampleSampler
    from avat3r.priors.stage import PriorStageConfig, run_prior_stage

    m = run_prior_stage(tiny_set, tmp_path / "half", PriorStageConfig(position="none", downsample=2))
    sampler = ExampleSampler(m, "train", seed=1, input_downsample=2)
    ex, plan = sampler.example(4), sampler.plan(4)
    assert ex["inputs_rgb"].shape == (4, 16, 16, 3) and ex["target_rgb"].shape == (8, 32, 32, 3)
    for j, r in enumerate(plan.inputs):
        stored = m.read(r)
        assert torch.equal(ex["inputs_pos"][j], torch.from_numpy(stored["pos"]))
        assert torch.equal(ex["inputs_conf"][j], torch.from_numpy(stored["conf"].astype(np.float32)))
    with pytest.raises(ExampleError, match="fit neither its 32x32 image nor the input side 32x32"):
        ExampleSampler(m, "train", seed=1).example(4)  # a 32² model cannot take 16² maps
    with pytest.raises(ExampleError, match="fit neither its 32x32 image nor the input side 8x8"):
        ExampleSampler(m, "train", seed=1, input_downsample=4).example(4)


def test_eval_brings_inputs_to_the_models_resolution_whatever_the_checkpoint_says(tiny_set):
    from avat3r.eval.runner import default_examples

    m = tiny_set / "manifest.parquet"  # stored at 32²
    for trained_with in ({}, {"input_downsample": 2}, {"input_downsample": 4}):
        options = {"require_prior": False, **trained_with}
        assert default_examples(m, "train", 0, options, input_res=16).example(0)["inputs_rgb"].shape[1:3] == (16, 16)
        assert default_examples(m, "train", 0, options, input_res=32).example(0)["inputs_rgb"].shape[1:3] == (32, 32)
        ex = default_examples(m, "train", 0, options, input_res=8).example(0)
        assert ex["inputs_rgb"].shape[1:3] == (8, 8) and ex["target_rgb"].shape[1:3] == (32, 32)
    from avat3r.eval.runner import EvalError, _check_input_side

    with pytest.raises(EvalError, match="holds 32² images, smaller than the model's 64² inputs"):
        _check_input_side(64, default_examples(m, "train", 0, {"require_prior": False}, input_res=64))
    _check_input_side(32, default_examples(m, "train", 0, {"require_prior": False}, input_res=32))


def test_inputs_avoid_the_target_timestep_and_targets_are_novel_views(tiny_set):
    from avat3r.data.examples import ExampleSampler

    s = ExampleSampler(tiny_set, "train", seed=2, require_prior=False, avoid_target_timestep=True,
                       novel_targets=True)
    plain = ExampleSampler(tiny_set, "train", seed=2, require_prior=False)
    m, shared, cams_shared = s.manifest, 0, 0
    for i in range(40):
        plan = s.plan(i)
        input_times = {(m["segment"][r], int(m["frame"][r])) for r in plan.inputs}
        assert plan.target_timestep not in input_times
        assert not {m["camera"][r] for r in plan.targets} & {m["camera"][r] for r in plan.inputs}
        p = plain.plan(i)
        shared += p.target_timestep in {(m["segment"][r], int(m["frame"][r])) for r in p.inputs}
        cams_shared += bool({m["camera"][r] for r in p.targets} & {m["camera"][r] for r in p.inputs})
    assert shared > 0 and cams_shared > 0  # without the options both shortcuts occur (the test can fail)


def test_reference_views_are_the_target_cameras_at_input_0s_timestep(tiny_set):
    from avat3r.data.examples import ExampleSampler

    s = ExampleSampler(tiny_set, "train", seed=5, require_prior=False, random_timesteps=False,
                       inputs_elsewhere=True, reference_views=True, input_segments=("EXP_b",))
    m = s.manifest
    for i in range(6):
        plan, ex = s.plan(i), s.example(i)
        t_ref = (m["segment"][plan.inputs[0]], int(m["frame"][plan.inputs[0]]))
        assert t_ref[0] == "EXP_b" and t_ref != plan.target_timestep
        assert ex["ref_timestep"] == f"{t_ref[0]}/{t_ref[1]}" and bool(ex["target_ref_valid"].all())
        assert torch.equal(ex["ref_expr"], torch.from_numpy(m["expr"][plan.inputs[0]]))
        for j, r in enumerate(plan.targets):
            ref_row = next(q for q in range(len(m)) if m["person"][q] == plan.person and m["camera"][q] == m["camera"][r]
                           and (m["segment"][q], int(m["frame"][q])) == t_ref)
            assert torch.equal(ex["target_ref_rgb"][j], torch.from_numpy(m.read(ref_row)["rgb"]).float() / 255)


def test_example_is_a_pure_function_of_seed_and_index(tiny_set):
    from avat3r.data.examples import ExampleSampler

    a = ExampleSampler(tiny_set, "train", seed=7, require_prior=False)
    b = ExampleSampler(tiny_set, "train", seed=7, require_prior=False)
    for i in (11, 0, 11):
        ea, eb = a.example(i), b.example(i)
        for k in ea:
            if isinstance(ea[k], torch.Tensor):
                assert torch.equal(ea[k], eb[k]), k
        assert torch.equal(ea["inputs_cameras"].w2c, eb["inputs_cameras"].w2c)
    plans = {ExampleSampler(tiny_set, "train", seed=s, require_prior=False).plan(0) for s in range(6)}
    assert len(plans) > 1


@pytest.fixture(scope="module")
def ring_set(tmp_path_factory) -> Path:
    """One person, 60 cameras all around (a dense rig, like Ava-256's 80), 6 timesteps."""
    from avat3r.data.prep import prep_synth

    out = tmp_path_factory.mktemp("ring") / "set"
    prep_synth(out, persons=1, frames=3, cameras=60, res=8, seed=0, source=FAKE, n_val=0, n_test=0)
    return out


def test_inputs_are_never_back_only_and_are_spread(ring_set):
    from avat3r.data.examples import ExampleSampler

    s = ExampleSampler(ring_set, "train", seed=0, require_prior=False)
    _, rig = FakeHeads.make_rig(0, 60, 8)
    assert int(is_back_only(rig).sum()) >= 20  # the rig does have back cameras
    cam_index = {f"cam{i:02d}": i for i in range(60)}
    gen = torch.Generator().manual_seed(0)
    front = torch.nonzero(~is_back_only(rig)).flatten()
    min_sampled, min_random = [], []
    for i in range(60):
        plan = s.plan(i)
        idx = [cam_index[s.manifest["camera"][r]] for r in plan.inputs]
        assert len(set(idx)) == 4 and not is_back_only(rig[idx]).any()
        c = rig.centers
        min_sampled.append(min(angle_deg(c[a], c[b]) for a in idx for b in idx if a < b))
        rnd = front[torch.randperm(len(front), generator=gen)[:4]].tolist()
        min_random.append(min(angle_deg(c[a], c[b]) for a in rnd for b in rnd if a < b))
    # 4 of 10 farthest-point candidates among 37 usable cameras 6° apart: never closer than ~24°, while
    # 4 random usable cameras come within 12° of each other in about one draw of ten
    assert min(min_sampled) >= 20.0 and min(min_random) < 15.0
    assert np.mean(min_sampled) > np.mean(min_random) + 5


def test_random_timesteps_flag(ring_set):
    from avat3r.data.examples import ExampleSampler

    m_rand = ExampleSampler(ring_set, "train", seed=0, require_prior=False)
    m_same = ExampleSampler(ring_set, "train", seed=0, require_prior=False, random_timesteps=False)
    mixed = 0
    for i in range(20):
        for s, random in ((m_rand, True), (m_same, False)):
            plan = s.plan(i)
            times = {(s.manifest["segment"][r], int(s.manifest["frame"][r])) for r in plan.inputs}
            if random:
                mixed += len(times) > 1
            else:
                assert times == {plan.target_timestep}
    assert mixed >= 15  # 6 timesteps: 4 independent draws coincide with probability (1/6)^3

    m_other = ExampleSampler(ring_set, "train", seed=0, require_prior=False, random_timesteps=False,
                             inputs_elsewhere=True)
    targets = set()
    for i in range(20):
        plan = m_other.plan(i)
        times = {(m_other.manifest["segment"][r], int(m_other.manifest["frame"][r])) for r in plan.inputs}
        assert len(times) == 1 and plan.target_timestep not in times
        assert all((m_other.manifest["segment"][r], int(m_other.manifest["frame"][r])) == plan.target_timestep
                   for r in plan.targets)
        targets.add(plan.target_timestep)
    assert len(targets) >= 4  # targets still range over the timesteps


def _write_prior_set(folder: Path) -> Path:
    """One person, 6 cameras × 2 frames; only frame 1 of cameras 0–4 and frame 0 of camera 5 have priors."""
    from avat3r.data.manifest import build_manifest, write_manifest
    from avat3r.data.shards import ShardWriter, encode_sample

    names, rig = FakeHeads.make_rig(0, 6, 8)
    rig = Cameras(rig.K, rig.w2c.clone(), 8, 8)
    # keep all six cameras in front of the face so none is back-only
    rig.w2c = look_at(torch.tensor([[math.sin(a), 0.0, math.cos(a)] for a in np.linspace(-1.2, 1.2, 6)]))
    records, rows = [], []
    with ShardWriter(folder) as w:
        for frame in range(2):
            for c in range(6):
                prior = (frame == 1) != (c == 5)
                sample = {"rgb": np.full((8, 8, 3), 10 * c + frame, np.uint8),
                          "camera": {"K": rig.K[c].tolist(), "w2c": rig.w2c[c].tolist(), "width": 8, "height": 8},
                          "expr": np.array([frame, 0], np.float32),
                          "pos": np.full((8, 8, 3), c + 0.5, np.float32) if prior else None,
                          "conf": np.full((8, 8), 0.75, np.float16) if prior else None,
                          "feat": np.full((5, 2, 2), c, np.float16) if prior else None}
                key = f"solo/EXP_a/{frame:06d}/{names[c]}"
                records.append(w.write(key, encode_sample(sample)))
                rows.append({"person": "solo", "segment": "EXP_a", "frame": frame, "camera": names[c], "width": 8,
                             "height": 8, "split": "train", "has_prior": prior})
    exprs = np.array([[r["frame"], 0] for r in rows], np.float32)
    write_manifest(folder / "manifest.parquet", build_manifest(records, rows, exprs, "fake-v1", "test", folder))
    return folder


def test_only_samples_with_a_prior_are_inputs(tmp_path):
    from avat3r.data.examples import ExampleSampler

    s = ExampleSampler(_write_prior_set(tmp_path), "train", seed=2, n_targets=3)
    m = s.manifest
    for i in range(10):
        plan = s.plan(i)
        assert all(m["has_prior"][r] for r in plan.inputs)
        ex = s.example(i)
        cams = [int(m["camera"][r][3:]) for r in plan.inputs]
        assert torch.equal(ex["inputs_pos"][:, 0, 0, 0], torch.tensor(cams, dtype=torch.float32) + 0.5)
        assert torch.all(ex["inputs_conf"] == 0.75) and ex["inputs_feat"].shape == (4, 5, 2, 2)
        assert ex["target_rgb"].shape == (3, 8, 8, 3)


def test_indices_split_across_ranks_and_workers_without_duplicates():
    from avat3r.data.examples import shard_indices

    for world, workers, start, n in ((2, 2, 0, 50), (3, 2, 7, 31), (1, 3, 5, 10)):
        got = [i for r in range(world) for w in range(workers) for i in shard_indices(r, world, w, workers, start,
                                                                                     start + n)]
        assert sorted(got) == list(range(start, start + n))
        # a rank owns the same indices whatever its worker count (resuming with other workers)
        for r in range(world):
            one = sorted(shard_indices(r, world, 0, 1, start, start + n))
            assert one == sorted(i for w in range(workers) for i in shard_indices(r, world, w, workers, start,
                                                                                 start + n))


def test_dataloader_ranks_times_workers_cover_every_example_once(tiny_set):
    from avat3r.data.examples import ExampleDataset, ExampleSampler, collate_examples

    sampler = ExampleSampler(tiny_set, "train", seed=0, require_prior=False)
    seen = []
    for rank in range(2):
        ds = ExampleDataset(sampler, num_examples=16, start=4, rank=rank, world_size=2, shuffle_buffer=3,
                            with_index=True)
        loader = torch.utils.data.DataLoader(ds, batch_size=2, num_workers=2, collate_fn=collate_examples)
        for batch in loader:
            assert batch["inputs_rgb"].shape == (2, 4, 32, 32, 3) and batch["expr"].shape == (2, 2)
            assert len(batch["inputs_cameras"]) == 2 and len(batch["inputs_cameras"][0]) == 4
            assert batch["person"] == ["id000", "id000"]
            for j, i in enumerate(batch["index"]):
                assert i % 2 == rank
                assert torch.equal(batch["target_rgb"][j], sampler.example(i)["target_rgb"])
            seen += batch["index"]
    assert sorted(seen) == list(range(4, 20)) and seen != sorted(seen)
