"""Evaluation: metric values against hand computations, "not available" reporting, the runner's files."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from test_train import FakeExamples, FakeModel

from avat3r.data.examples import collate_examples
from avat3r.eval import metrics as M
from avat3r.eval.runner import EvalError, evaluate
from avat3r.forward import predict, render_targets


def _ssim_direct(a: np.ndarray, b: np.ndarray) -> float:
    """SSIM straight from its definition: Gaussian-weighted local statistics at every pixel, windows that
    reach past the border see zeros (3DGS), averaged over pixels and channels. Loops, float64, numpy only."""
    x = np.arange(11) - 5.0
    g = np.exp(-x ** 2 / (2 * 1.5 ** 2))
    w = np.outer(g, g) / np.outer(g, g).sum()
    H, W, C = a.shape
    pa = np.pad(a, ((5, 5), (5, 5), (0, 0)))
    pb = np.pad(b, ((5, 5), (5, 5), (0, 0)))
    vals = []
    for c in range(C):
        for i in range(H):
            for j in range(W):
                wa, wb = pa[i:i + 11, j:j + 11, c], pb[i:i + 11, j:j + 11, c]
                ma, mb = (w * wa).sum(), (w * wb).sum()
                va = (w * wa * wa).sum() - ma ** 2
                vb = (w * wb * wb).sum() - mb ** 2
                cov = (w * wa * wb).sum() - ma * mb
                vals.append((2 * ma * mb + 1e-4) * (2 * cov + 9e-4) / ((ma ** 2 + mb ** 2 + 1e-4) * (va + vb + 9e-4)))
    return float(np.mean(vals))


def test_psnr_of_a_known_mse():
    target = torch.full((2, 6, 5, 3), 0.5)
    pred = target.clone()
    pred[0] += 0.1  # MSE 0.01 → 20 dB
    pred[1, ..., 0] += 0.3  # MSE 0.09 / 3 = 0.03 → 10·log10(1/0.03)
    per = M.psnr(pred, target, per_image=True)
    assert per[0].item() == pytest.approx(20.0, abs=1e-4)
    assert per[1].item() == pytest.approx(10 * math.log10(1 / 0.03), abs=1e-4)
    assert M.psnr(pred, target).item() == pytest.approx(10 * math.log10(1 / 0.02), abs=1e-4)


def test_ssim_identical_is_one_and_matches_a_direct_computation():
    rng = np.random.default_rng(0)
    a = rng.random((7, 9, 3))
    b = np.clip(a + 0.2 * rng.standard_normal((7, 9, 3)), 0, 1)
    ta, tb = torch.tensor(a, dtype=torch.float64), torch.tensor(b, dtype=torch.float64)
    assert M.ssim_metric(ta, ta).item() == pytest.approx(1.0, abs=1e-12)
    assert M.ssim_metric(tb, ta).item() == pytest.approx(_ssim_direct(b, a), abs=1e-9)
    assert M.ssim_metric(tb, ta).item() < 0.9


def test_missing_models_are_reported_not_faked(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(M, "KEYPOINT_MODELS", {})
    monkeypatch.setattr(M, "IDENTITY_MODELS", {})
    ms = M.build_metrics()
    assert set(ms.functions) == {"psnr", "ssim"} | ({"jod"} if _has_pyfvvdp() else set())
    assert "alexnet-owt-7be5be79.pth" in ms.unavailable["lpips"]
    assert "keypoint" in ms.unavailable["akd"] and "identity" in ms.unavailable["csim"]
    assert all("\n" not in why for why in ms.unavailable.values())


def _has_pyfvvdp() -> bool:
    try:
        import pyfvvdp  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.mark.skipif(not _has_pyfvvdp(), reason="JOD needs the optional pyfvvdp package")
def test_jod_is_ten_for_identical_images_and_falls_with_distortion():
    jod = M.JodMetric()
    g = torch.Generator().manual_seed(0)
    target = torch.rand(2, 32, 32, 3, generator=g)
    noise = torch.randn(target.shape, generator=g)
    mild, strong = (target + 0.02 * noise).clamp(0, 1), (target + 0.2 * noise).clamp(0, 1)
    same = jod(target, target)
    assert same.shape == (2,) and torch.allclose(same, torch.full((2,), 10.0), atol=1e-4)
    assert (jod(mild, target) < 10.0).all() and (jod(strong, target) < jod(mild, target)).all()


def test_registered_face_models_drive_akd_and_csim(monkeypatch):
    monkeypatch.setattr(M, "KEYPOINT_MODELS", {})
    monkeypatch.setattr(M, "IDENTITY_MODELS", {})

    def brightest_pixel():  # a "keypoint detector": (x, y) of the brightest pixel
        def detect(images):
            n, _, w, _ = images.shape
            idx = images.sum(-1).reshape(n, -1).argmax(-1)
            return torch.stack([(idx % w).float(), (idx // w).float()], -1)[:, None, :]
        return detect

    M.register_keypoint_model("brightest", brightest_pixel)
    M.register_identity_model("mean-colour", lambda: (lambda images: images.mean(dim=(1, 2))))
    ms = M.build_metrics(keypoint_model="brightest", identity_model="mean-colour")
    pred, target = torch.zeros(1, 10, 10, 3), torch.zeros(1, 10, 10, 3)
    pred[0, 2, 3] = 1.0
    target[0, 6, 6] = 1.0
    pred[0, 9, 9, 0] = 0.5
    out = ms(pred, target)
    assert out["akd"].item() == pytest.approx(5.0)  # (3,2) → (6,6): a 3-4-5 triangle
    e_p, e_t = pred.mean(dim=(1, 2))[0], target.mean(dim=(1, 2))[0]
    assert out["csim"].item() == pytest.approx(torch.nn.functional.cosine_similarity(e_p, e_t, dim=0).item())
    monkeypatch.setattr(M, "KEYPOINT_MODELS", {"broken": lambda: (_ for _ in ()).throw(FileNotFoundError("w.pth"))})
    assert "could not start" in M.build_metrics(keypoint_model="broken").unavailable["akd"]


def test_runner_writes_deterministic_per_example_metrics(tmp_path, monkeypatch):
    import cv2
    import pyarrow.parquet as pq

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty"))
    torch.manual_seed(0)
    model, examples = FakeModel(3), FakeExamples(seed=5)
    report = evaluate(tmp_path / "a", model=model, examples=examples, n_examples=3, progress=False,
                      meta={"expression_space": "fake-v1"})
    table = pq.read_table(tmp_path / "a" / "metrics.parquet")
    assert table.column("example").to_pylist() == [0, 1, 2]
    assert table.column("person").to_pylist() == ["p0", "p1", "p0"]
    assert table.column("lpips").null_count == 3  # not available → nulls, never numbers
    assert "lpips" in json.loads(table.schema.metadata[b"not_available"])
    # Example 1 by hand: the same forward + render, the MSE pooled over its target views before the log.
    batch = collate_examples([examples.example(1)])
    with torch.no_grad():
        pred = render_targets(predict(model, batch), batch["target_cameras"])[0].clamp(0, 1)
    mse = ((pred.double() - batch["target_rgb"][0].double()) ** 2).mean().item()
    assert table.column("psnr").to_pylist()[1] == pytest.approx(10 * math.log10(1 / mse), rel=1e-9)
    expected_ssim = M.ssim_metric(pred, batch["target_rgb"][0], per_image=True).mean().item()
    assert table.column("ssim").to_pylist()[1] == pytest.approx(expected_ssim, rel=1e-6)
    # these examples carry no reference views: the expression scores are null, never made up
    assert table.column("expr_gain").null_count == 3 and table.column("expression").null_count == 3
    md = (tmp_path / "a" / "metrics.md").read_text()
    assert "## Per person" in md and "| p1 | 1 |" in md and "LPIPS: " in md and "n/a" in md
    sheet = cv2.imread(str(tmp_path / "a" / "comparison.png"))
    assert sheet is not None and sheet.shape[0] > 3 * 12 and sheet.max() > 0
    again = evaluate(tmp_path / "b", model=model, examples=FakeExamples(seed=5), n_examples=3, progress=False)
    assert [r["psnr"] for r in again.rows] == [r["psnr"] for r in report.rows]
    psnrs = table.column("psnr").to_pylist()
    overall = report.overall()["psnr"]
    assert overall.n == 3 and overall.mean == pytest.approx(np.mean(psnrs))
    assert overall.se == pytest.approx(np.std(psnrs, ddof=1) / math.sqrt(3))
    assert "lpips" not in report.overall() and "n/a (0)" in md  # LPIPS unavailable; region scores undefined


def test_runner_rejects_mismatched_expression_space_and_bad_arguments(tmp_path):
    with pytest.raises(EvalError, match="expression space"):
        evaluate(tmp_path, model=FakeModel(3), examples=FakeExamples(), n_examples=1, progress=False,
                 meta={"expression_space": "synthheads-v1"})
    with pytest.raises(EvalError, match="baseline"):
        evaluate(tmp_path, baseline="nope", examples=FakeExamples(), progress=False)
    with pytest.raises(EvalError, match="give a checkpoint, or a baseline") as err:
        evaluate(tmp_path, examples=FakeExamples(), progress=False)
    assert err.value.param == "checkpoint"  # the CLI names --checkpoint / --baseline


def test_eval_input_modes_override_the_training_recipe():
    # a checkpoint trained without random timesteps is still measured on the mixed-input examples by default
    from avat3r.cli.eval import _input_mode, _sampler_options

    assert _input_mode(None) == "mixed"
    assert _input_mode("other") == "other" and _input_mode(None, other=True) == "other"  # the older flag
    assert _input_mode(None, consistent=True) == "consistent" and _input_mode(None, consistent=False) == "mixed"
    assert _input_mode("consistent", consistent=True) == "consistent"  # agreeing spellings are fine
    base = {"avoid_target_timestep": False, "input_segments": None}
    assert _sampler_options("mixed") == {"random_timesteps": True, "inputs_elsewhere": False, **base}
    assert _sampler_options("consistent") == {"random_timesteps": False, "inputs_elsewhere": False, **base}
    assert _sampler_options("other", ("neutral",)) == {"random_timesteps": False, "inputs_elsewhere": True,
                                                       **base, "input_segments": ("neutral",)}


def test_akd_with_the_shipped_face_tracker_measures_a_known_shift():
    pytest.importorskip("mediapipe")
    data = pytest.importorskip("skimage.data")
    import cv2

    face = cv2.resize(data.astronaut()[:256, 96:352], (192, 192), interpolation=cv2.INTER_AREA)  # a real face
    truth = torch.from_numpy(face).float()[None] / 255
    shifted = torch.roll(truth, shifts=(4, 3), dims=(1, 2))  # 4 px down, 3 px right: 5 px
    ms = M.build_metrics(keypoint_model="face-mesh")
    assert "akd" in ms.functions, ms.unavailable.get("akd")
    akd = ms.functions["akd"]
    assert akd(truth, truth).item() == pytest.approx(0.0, abs=1e-6)
    assert akd(shifted, truth).item() == pytest.approx(5.0, abs=1.0)
    blank = torch.zeros_like(truth)  # no face: no distance invented
    assert torch.isnan(akd(blank, truth)).all()
