"""recipes/gpu_leg.sh, the one-job GPU training leg, in its CPU dry run: every command it runs (data, priors,
training from the shipped model, both held-out evaluations) and what it leaves in OUT. RES=128 (the default) and
the shipped model's input side: inputs block-averaged down to it when it is smaller, priors computed at it,
targets at 128²."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from avat3r.model.checkpoint import read_checkpoint_config

ROOT = Path(__file__).parents[1]


@pytest.mark.slow
def test_gpu_leg_dry_run_leaves_a_loadable_model_and_both_evaluations(tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "DRY_RUN": "1", "OUT": str(out), "DATA": str(tmp_path / "data"),
           "RUN": str(tmp_path / "run"), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(["bash", str(ROOT / "recipes" / "gpu_leg.sh")], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    train = json.loads((out / "model" / "train.json").read_text())
    assert train["step"] == 3 and train["recipe"]["model"]["init"] == "models/synthheads-tiny"
    side = read_checkpoint_config(ROOT / "models" / "synthheads-tiny")[0].input_res  # INPUT defaults to INIT's
    assert train["recipe"]["data"]["options"]["input_downsample"] == 128 // side
    assert train["recipe"]["model"]["overrides"] == {"input_res": side, "patch": side // 8}
    assert (out / "model" / "model.safetensors").stat().st_size > 1_000_000 and (out / "model" / "train_state").is_dir()
    for mode in ("other", "mixed"):
        rows = pq.read_table(out / f"eval-{mode}" / "metrics.parquet").to_pylist()
        assert len(rows) == 2 and all(r["psnr"] > 10 for r in rows)
    log = (out / "leg.log").read_text()
    for name in ("prep-train", "prior-train", "prep-heldout", "prior-heldout", "train", "eval-other", "eval-mixed"):
        assert f"[{name}] done in" in log
    assert not (out / "run").exists()  # the run folder stays out of what is carried back
    for name in (f"rand-128-prior{side}", f"heldout-128-prior{side}"):  # priors at the model's input side
        prior = json.loads((tmp_path / "data" / name / "prior.json").read_text())
        assert prior.get("downsample", 1) == 128 // side, prior


def test_gpu_leg_refuses_a_width_for_a_checkpoint(tmp_path):
    """DIM widens a model trained from scratch only: with INIT set it stops at once, before any data or training."""
    env = {**os.environ, "DRY_RUN": "1", "OUT": str(tmp_path / "out"), "DATA": str(tmp_path / "data"), "DIM": "256"}
    proc = subprocess.run(["bash", str(ROOT / "recipes" / "gpu_leg.sh")], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 2 and "set INIT= (empty)" in proc.stderr
    assert not (tmp_path / "out").exists() and not (tmp_path / "data").exists()
