"""Driving-video expressions: frame preparation, the regressor's files and fit, video → sequence."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from avat3r import driving as D
from avat3r.video import VideoWriter

REPO = Path(__file__).resolve().parents[1]


def _regressor_recipe():
    """recipes/train_expression_regressor.py as a module (the regressor's training lives with the recipes)."""
    spec = importlib.util.spec_from_file_location("train_expression_regressor",
                                                  REPO / "recipes" / "train_expression_regressor.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_prepare_frames_centre_crops_and_resizes():
    frames = np.zeros((2, 8, 16, 3), np.uint8)
    frames[:, :, 4:12] = 255  # the centre square is white, the side bars black
    x = D.prepare_frames(frames, 4)
    assert x.shape == (2, 3, 4, 4) and torch.allclose(x, torch.ones_like(x))
    y = D.prepare_frames(torch.full((1, 6, 6, 3), 0.25), 6)
    assert torch.equal(y, torch.full((1, 3, 6, 6), 0.25))
    with pytest.raises(D.DrivingError, match="RGB"):
        D.prepare_frames(np.zeros((8, 8, 3)), 4)


def test_smoothing_is_a_centred_moving_average():
    codes = torch.tensor([[0.0], [3.0], [0.0], [0.0], [6.0]])
    s = D.smooth_codes(codes, 3)
    assert torch.allclose(s[:, 0], torch.tensor([1.0, 1.0, 1.0, 2.0, 4.0]))  # edges repeat the end value
    assert torch.equal(D.smooth_codes(codes, 1), codes)
    with pytest.raises(D.DrivingError, match="odd"):
        D.smooth_codes(codes, 4)


def _tiny_config(space="synthheads-v1", dim=13) -> D.RegressorConfig:
    return D.RegressorConfig(space=space, dim=dim, input_size=16, width=8)


def test_regressor_files_round_trip_exactly_and_bad_folders_are_named(tmp_path):
    torch.manual_seed(0)
    model = D.ExpressionRegressor(_tiny_config())
    D.save_regressor(tmp_path / "r", model, {"note": "test"})
    back = D.load_regressor(tmp_path / "r")
    assert back.config == model.config
    for (k, v), (k2, v2) in zip(model.state_dict().items(), back.state_dict().items()):
        assert k == k2 and torch.equal(v, v2)
    x = torch.rand(3, 3, 16, 16)
    assert torch.equal(model.eval()(x), back.eval()(x))
    assert json.loads((tmp_path / "r" / "config.json").read_text())["info"] == {"note": "test"}

    with pytest.raises(D.DrivingError, match="config.json and model.safetensors"):
        D.load_regressor(tmp_path)
    cfg = json.loads((tmp_path / "r" / "config.json").read_text())
    cfg["format"] = "something-else"
    (tmp_path / "r" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(D.DrivingError, match="format"):
        D.load_regressor(tmp_path / "r")
    with pytest.raises(D.DrivingError, match="not found: give its folder") as err:
        D.build_extractor("regressor", tmp_path / "missing")
    assert err.value.param == "extractor_weights"  # the CLI adds its flag, --extractor-weights
    with pytest.raises(D.DrivingError, match="unknown expression extractor"):
        D.build_extractor("nope")


def test_fit_regressor_learns_a_mapping_it_can_generalise():
    # images whose left half brightness is code 0 and right half code 1: a linear map the CNN must find
    rng = np.random.default_rng(0)

    def make(n):
        codes = rng.random((n, 2)).astype(np.float32)
        img = np.zeros((n, 16, 16, 3), np.float32)
        img[:, :, :8] = codes[:, 0, None, None, None]
        img[:, :, 8:] = codes[:, 1, None, None, None]
        return np.round(img * 255).astype(np.uint8), codes

    train, test = make(256), make(64)
    model = _regressor_recipe().fit_regressor(*train, _tiny_config("toy", 2), steps=300, batch=32, lr=3e-3)
    pred = D.RegressorExtractor(model)(test[0])
    mae = float((pred - torch.from_numpy(test[1])).abs().mean())
    baseline = float(np.abs(test[1] - train[1].mean(0)).mean())  # ≈ 0.25 for uniform codes
    assert mae < 0.1 * baseline, (mae, baseline)  # ≈ 0.006 against ≈ 0.23


class _MeanColour:
    """A stand-in extractor: code = the frame's mean colour (3 values)."""

    space = "toy"

    def __call__(self, frames):
        return torch.as_tensor(np.asarray(frames), dtype=torch.float32).mean((1, 2)) / 255.0


def test_extract_sequence_reads_every_frame_at_the_video_rate(tmp_path):
    levels = np.linspace(0.1, 0.9, 7)
    with VideoWriter(tmp_path / "v.mp4", fps=10.0) as v:
        for a in levels:
            v.write(np.full((16, 16, 3), a, np.float32))
    seen = []
    seq = D.extract_sequence(tmp_path / "v.mp4", _MeanColour(), batch=3, progress=seen.append)
    assert seq.space == "toy" and seq.fps == 10.0 and len(seq) == 7 and seen == [3, 3, 1]
    assert torch.allclose(seq.codes, torch.tensor(levels, dtype=torch.float32)[:, None].expand(7, 3), atol=0.02)
    with pytest.raises(D.DrivingError, match="'toy'.*'synthheads-v1'"):
        D.extract_sequence(tmp_path / "v.mp4", _MeanColour(), expected_space="synthheads-v1")


@pytest.mark.slow
def test_synth_video_regressor_chunk_is_deterministic():
    recipe = _regressor_recipe()
    a = recipe.render_training_chunk(0, [1, 2], 2, 2, 16, chunk_seed=5)
    b = recipe.render_training_chunk(0, [1, 2], 2, 2, 16, chunk_seed=5)
    assert a[0].shape == (4, 16, 16, 3) and a[1].shape == (4, 13)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert np.array_equal(a[1][0], a[1][1])  # two views of one expression


def test_prep_synth_video_films_the_sequence_and_keeps_its_codes(tmp_path):
    from typer.testing import CliRunner

    from avat3r.cli.main import app
    from avat3r.expressions import builtin_sequence, read_sequence
    from avat3r.video import count_frames, video_info

    out = tmp_path / "drive.mp4"
    res = CliRunner().invoke(app, ["prep", "synth-video", "--person", "3", "--frames", "3", "--fps", "5", "--res",
                                   "16", "-o", str(out), "-q"])
    assert res.exit_code == 0, res.output
    assert count_frames(out)[0] == 3 and tuple(video_info(out)["size"]) == (16, 16)
    seq = read_sequence(tmp_path / "drive.expr.parquet")
    want = builtin_sequence("demo", "synthheads-v1", fps=5.0, n_frames=3)
    assert seq.fps == 5.0 and torch.equal(seq.codes, want.codes)
    res = CliRunner().invoke(app, ["prep", "synth-video", "--person", "3", "--sequence", "nope", "-o", str(out)])
    assert res.exit_code != 0 and "nope" in res.output
