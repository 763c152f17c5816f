"""The GPU throughput script: its CPU dry run runs every CPU-meaningful row, and the padding that lets one
batched gsplat call render examples with different Gaussian counts keeps exactly the valid Gaussians."""

import math
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import gpu_throughput  # noqa: E402

from avat3r.gaussians import Gaussians  # noqa: E402


def test_dry_run_measures_every_cpu_row(capsys):
    rows = gpu_throughput.main(["--dry-run", "--presets", "tiny,paper"])
    assert [r["variant"].split(" ")[0] for r in rows[:4]] == ["baseline", "+", "+", "+"]
    assert len(rows) == 8 and {r["preset"] for r in rows} == {"tiny", "paper"}
    assert all(math.isfinite(r["steps_per_s"]) and r["steps_per_s"] > 0 for r in rows)
    assert rows[3]["batch"] == 2 and rows[3]["tflop_per_step"] > 1.5 * rows[0]["tflop_per_step"]
    assert "| preset | variant |" in capsys.readouterr().out


def test_padding_keeps_the_valid_gaussians_of_each_example():
    B, N = 2, 6
    g = torch.Generator().manual_seed(0)
    valid = torch.tensor([[True, False, True, False, False, False], [True, True, False, True, True, False]])
    gs = Gaussians(torch.randn(B, N, 3, generator=g), torch.randn(B, N, 4, generator=g),
                   torch.rand(B, N, 3, generator=g), torch.rand(B, N, generator=g) + 0.1,
                   torch.rand(B, N, 3, generator=g), valid=valid)
    p = gpu_throughput.padded(gs)
    assert p.means.shape == (B, 4, 3)  # the largest valid count
    for b in range(B):
        n = int(valid[b].sum())
        assert torch.equal(p.means[b, :n], gs.means[b][valid[b]])
        assert torch.equal(p.opacities[b, :n], gs.opacities[b][valid[b]])
        assert (p.opacities[b, n:] == 0).all()
