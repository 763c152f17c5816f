"""The installed layout: one avat3r namespace holding the CLI and the shipped models."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from avat3r import shipped
from avat3r.train.checkpointing import resolve_checkpoint

REPO = Path(__file__).resolve().parents[1]


def test_shipped_models_are_found_by_name_from_any_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # not the checkout: models/ is not in the working directory
    monkeypatch.delenv(shipped.ENV_MODELS, raising=False)
    assert resolve_checkpoint("synthheads-tiny") == REPO / "models" / "synthheads-tiny"
    assert shipped.shipped_model("synthheads-expr") == REPO / "models" / "synthheads-expr"
    # $AVAT3R_MODELS comes first
    (tmp_path / "mine" / "synthheads-tiny").mkdir(parents=True)
    for name in ("config.json", "model.safetensors"):
        (tmp_path / "mine" / "synthheads-tiny" / name).write_bytes(b"{}")
    monkeypatch.setenv(shipped.ENV_MODELS, str(tmp_path / "mine"))
    assert resolve_checkpoint("synthheads-tiny") == tmp_path / "mine" / "synthheads-tiny"
    # a folder of that name in the working directory wins over the shipped one
    (tmp_path / "synthheads-tiny").mkdir()
    assert shipped.resolve_model_path("synthheads-tiny") == Path("synthheads-tiny")
    assert shipped.resolve_model_path("not-a-model") == Path("not-a-model")


def test_the_cli_is_avat3r_cli():

    out = subprocess.run([sys.executable, "-m", "avat3r.cli.main", "--help"], capture_output=True, text=True,
                         cwd="/", check=True).stdout
    assert "reconstruct" in out and "animate" in out


@pytest.mark.slow
def test_the_wheel_carries_the_cli_and_the_shipped_models(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp_path), str(REPO)], check=True, capture_output=True)
    names = set(zipfile.ZipFile(next(tmp_path.glob("avat3r-*.whl"))).namelist())
    assert {"avat3r/cli/main.py", "avat3r/shipped/synthheads-tiny/model.safetensors",
            "avat3r/shipped/synthheads-expr/config.json"} <= names
    assert not any(n.startswith("cli/") for n in names)  # no top-level package named cli
