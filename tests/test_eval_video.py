"""The frontal-video protocol (paper §4.2: one video per held-out person from the frontal camera) and the
evaluation recipes that run it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from avat3r.cameras import cameras_from_dicts, view_angle_degrees
from avat3r.data.manifest import read_manifest
from avat3r.eval.recipe import EvalRecipeError, eval_recipe_from_dict, load_eval_recipe
from avat3r.eval.runner import EvalError, evaluate
from avat3r.eval.video import VideoEvalError, VideoProtocol, frontal_camera, pick_inputs, video_rows
from avat3r.video import count_frames

RECIPES = Path(__file__).resolve().parents[1] / "recipes"


@pytest.fixture(scope="module")
def held_out(tmp_path_factory):
    """One held-out SynthHeads person (own rig), 2 segments × 3 frames × 8 cameras at 24², with ground-truth
    position priors."""
    from avat3r.data.prep import prep_synth
    from avat3r.priors.stage import PriorStageConfig, run_prior_stage

    root = tmp_path_factory.mktemp("video")
    prep_synth(root / "raw", persons=1, frames=3, cameras=8, res=24, seed=3, segments=["neutral", "EXP_jaw003"],
               n_val=0, n_test=1, person_rig=True)
    run_prior_stage(root / "raw", root / "set", PriorStageConfig(position="ground-truth", partners=2))
    return read_manifest(root / "set")


def _cam(m, row):
    return cameras_from_dicts([m.read(row, entries=["camera.json"])["camera"]], "camera.json", validate=False)


def test_frontal_camera_and_video_rows(held_out):
    m = held_out
    rows = m.rows("test")
    cam = frontal_camera(m, rows, ())
    names = sorted(set(m["camera"][rows].tolist()))
    angles = {n: float(view_angle_degrees(_cam(m, next(r for r in rows if m["camera"][r] == n)))[0]) for n in names}
    assert cam == min(angles, key=angles.get)
    assert frontal_camera(m, rows, ("nope", names[3])) == names[3]  # the first preferred one present
    video = video_rows(m, rows, cam, "", 10)
    assert [int(m["frame"][r]) for r in video] == [0, 1, 2] and {m["camera"][r] for r in video} == {cam}
    assert len(video_rows(m, rows, cam, "neutral", 2)) == 2
    with pytest.raises(VideoEvalError, match="no segment"):
        video_rows(m, rows, cam, "smile", 2)


def test_inputs_never_use_the_video_camera(held_out):
    m = held_out
    rows = m.rows("test")
    cam = frontal_camera(m, rows, ())
    for seed in range(6):
        inputs = pick_inputs(m, rows, cam, 4, np.random.default_rng(seed))
        assert len(set(m["camera"][inputs].tolist())) == 4 and cam not in m["camera"][inputs].tolist()
    with pytest.raises(VideoEvalError, match="are needed"):
        pick_inputs(m, rows, cam, 8, np.random.default_rng(0))


def test_video_protocol_scores_each_person_and_writes_a_preview(held_out, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty"))
    protocol = VideoProtocol(frames=3, cameras=("nope",), fps=5.0)
    report = evaluate(tmp_path / "out", manifest=held_out.root / "manifest.parquet", baseline="reprojection",
                      n_examples=1, progress=False, video=protocol)
    (row,) = report.videos
    assert row["frames"] == 3 and row["camera"] == frontal_camera(held_out, held_out.rows("test"), ())
    assert 3.0 < row["psnr"] < 100.0 and 0.0 < row["fg_psnr"] < 100.0
    assert row["fg_psnr"] < row["psnr"]  # the black background is easy; the head is not
    table = pq.read_table(tmp_path / "out" / "video.parquet")
    assert table.column("psnr").to_pylist() == [row["psnr"]]
    md = (tmp_path / "out" / "metrics.md").read_text()
    assert "## Frontal videos" in md and f"| {row['person']} | {row['camera']} |" in md
    frames, seconds = count_frames(tmp_path / "out" / f"video_{row['person']}.mp4")
    assert frames == 3 and seconds == pytest.approx(3 / 5.0, abs=0.01)
    # the same inputs and frames again: the same numbers
    again = evaluate(tmp_path / "again", manifest=held_out.root / "manifest.parquet", baseline="reprojection",
                     n_examples=1, progress=False, video=protocol)
    assert again.videos == report.videos
    with pytest.raises(EvalError, match="video protocol needs an avatar model"):
        evaluate(tmp_path / "nv", manifest=held_out.root / "manifest.parquet", baseline="nearest-view",
                 n_examples=1, progress=False, video=protocol)


def test_shipped_recipes_parse_and_bad_ones_fail_with_one_line(tmp_path):
    ava = load_eval_recipe(RECIPES / "eval-ava256.toml")
    assert (ava.eval.examples, ava.video.frames, ava.video.fps) == (1000, 100, 7.5)
    assert ava.video.protocol().cameras[0] == "401168"
    ner = load_eval_recipe(RECIPES / "eval-nersemble.toml", ["eval.examples=20", "video.persons=2"])
    assert (ner.eval.examples, ner.video.persons) == (20, 2)
    for doc, message in (({"eval": {"exampels": 3}}, "unknown key eval.exampels"),
                         ({"evaluation": {}}, "unknown section"),
                         ({"eval": {"inputs": "all"}}, "eval.inputs must be one of"),
                         ({"video": {"frames": 0}}, "video.frames must be at least 1"),
                         ({"video": {"fps": "fast"}}, "video.fps must be a number")):
        with pytest.raises(EvalRecipeError, match=message):
            eval_recipe_from_dict(doc)
    assert eval_recipe_from_dict({}).video is None


def test_eval_cli_runs_a_recipe(held_out, tmp_path):
    import subprocess
    import sys

    recipe = tmp_path / "r.toml"
    recipe.write_text(f'[eval]\nmanifest = "{held_out.root / "manifest.parquet"}"\nexamples = 1\n'
                      '[video]\nframes = 2\nfps = 4.0\n')
    run = subprocess.run([sys.executable, "-m", "avat3r.cli.main", "eval", "--recipe", str(recipe), "--baseline",
                          "reprojection", "-o", str(tmp_path / "o"), "-q", "--set", "video.frames=3"],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert pq.read_table(tmp_path / "o" / "video.parquet").column("frames").to_pylist() == [3]
    bad = subprocess.run([sys.executable, "-m", "avat3r.cli.main", "eval", "--recipe", str(tmp_path / "none.toml"),
                          "--baseline", "reprojection"], capture_output=True, text=True)
    assert bad.returncode != 0 and len(bad.stderr.strip().splitlines()) == 1 and "does not exist" in bad.stderr
    assert torch.get_num_threads() >= 1
