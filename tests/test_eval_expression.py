"""Expression metrics of `avat3r eval` (changing region, region PSNR, gain, response ratio, pooled PSNRs), the
runner's sampling and columns, the nearest-view baseline, --lpips-weights and the CLI's input options."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from test_data import FAKE
from test_train import FakeModel

from avat3r.cameras import Cameras, intrinsics_from_fov, look_at
from avat3r.data.examples import collate_examples
from avat3r.eval import metrics as M
from avat3r.eval.runner import (
    EVAL_SAMPLER_OPTIONS,
    SCORES,
    EvalError,
    default_examples,
    evaluate,
    nearest_view,
)
from avat3r.forward import predict, render_targets


def _pair(views: int = 2, size: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """Truth at the target and at the reference timestep, in quarters (exact in binary floating point): a
    4×4 block in the middle of each view changes from 0.25 to 0.75 (red) / 0.5 (green)."""
    ref = torch.full((views, size, size, 3), 0.25, dtype=torch.float64)
    target = ref.clone()
    target[:, 2:6, 2:6, 0] = 0.75
    target[:, 2:6, 2:6, 1] = 0.5
    return target, ref


# -- the metrics ----------------------------------------------------------------------------------------
def test_an_avatar_that_ignores_its_code_scores_gain_zero_and_ratio_zero():
    target, ref = _pair()
    region = M.changing_region(target, ref)
    pred = torch.full_like(target, 0.5)
    assert M.expression_gain(pred, pred.clone(), target, region) == 0.0
    assert M.response_ratio(pred, pred.clone(), target, ref, region) == 0.0
    assert M.aligned_ratio(pred, pred.clone(), target, ref, region) == 0.0


def test_the_aligned_ratio_counts_only_change_along_the_truths():
    target, ref = _pair()
    region = M.changing_region(target, ref)
    assert M.aligned_ratio(target, ref, target, ref, region) == 1.0
    assert M.aligned_ratio((target + ref) / 2, ref, target, ref, region) == 0.5
    assert M.aligned_ratio(ref, target, target, ref, region) == -1.0  # the opposite change
    # a change as large as the truth's but in the blue channel, which the truth leaves alone: the ratio counts
    # it, the aligned ratio does not
    wrong = ref.clone()
    wrong[:, 2:6, 2:6, 2] += 0.75
    assert M.response_ratio(wrong, ref, target, ref, region) == 1.0
    assert M.aligned_ratio(wrong, ref, target, ref, region) == 0.0
    assert M.aligned_ratio(target, ref, target, ref, torch.zeros_like(region)) is None


def test_the_leak_ratio_counts_change_in_the_foreground_outside_the_region():
    target, ref = _pair()
    region = M.changing_region(target, ref)  # the 4×4 block dilated: rows/cols 1..6
    mask = torch.ones(2, 8, 8)
    mask[:, :, 7] = 0.0  # the last column is background
    outside = M.outside_region(region, mask, torch.tensor([True, True]))
    assert M.leak_ratio(target, ref, target, ref, region, outside) == 0.0  # the truth's change stays inside
    shimmer = target.clone()
    shimmer[..., 2] += 0.0625 * (~region.bool()).double()  # blue moves by 1/16 everywhere outside the region
    truth_change = float(((target - ref).abs().mean(-1) * region).sum() / region.sum())
    assert M.leak_ratio(shimmer, ref, target, ref, region, outside) == pytest.approx(0.0625 / 3 / truth_change)
    background_only = target.clone()
    background_only[:, :, 7] = 1.0  # a change on the background does not count
    assert M.leak_ratio(background_only, ref, target, ref, region, outside) == 0.0
    one_view = M.outside_region(region, mask, torch.tensor([False, True]))
    assert one_view[0].sum() == 0 and one_view[1].sum() == outside[1].sum()
    scores = M.example_scores(shimmer, target, mask, ref, ref, torch.tensor([True, True]))
    assert scores["leak_ratio"] == pytest.approx(0.0625 / 3 / truth_change)


def test_the_truth_scores_ratio_one_and_a_positive_gain():
    target, ref = _pair()
    region = M.changing_region(target, ref)
    assert M.response_ratio(target, ref, target, ref, region) == 1.0
    # region (6×6 after dilation): the reference image is wrong by (0.5, 0.25, 0) on 16 of the 36 pixels
    mse_ref = 16 / 36 * (0.5 ** 2 + 0.25 ** 2) / 3
    gain = M.expression_gain(target, ref, target, region)
    assert gain == pytest.approx(100.0 - 10 * math.log10(1 / mse_ref), abs=1e-12)  # 100 dB: the PSNR cap
    assert gain > 0


def test_a_half_way_avatar_scores_ratio_one_half():
    target, ref = _pair()
    region = M.changing_region(target, ref)
    halfway = (target + ref) / 2
    assert M.response_ratio(halfway, ref, target, ref, region) == 0.5
    # and half the error left: the gain is 10·log10(4) dB (MSE ÷ 4), wherever the region ends
    assert M.expression_gain(halfway, ref, target, region) == pytest.approx(10 * math.log10(4), abs=1e-12)


def test_pasted_gain_is_the_gain_of_the_truths_change_added_to_the_reference_render():
    target, ref = _pair()
    region = M.changing_region(target, ref)
    # an avatar that reconstructs the reference exactly: adding the truth's change makes it perfect (PSNR cap)
    assert M.pasted_gain(ref, target, ref, region) == M.expression_gain(target, ref, target, region)
    # an avatar off by a constant 1/8 at the reference code keeps that error whatever it does: MSE (1/8)² both
    # ways on the unchanged pixels, so the pasted gain is the gain from removing the change alone
    off = ref + 0.125
    pasted = M.pasted_gain(off, target, ref, region)
    mse_with = 0.125 ** 2  # the perfect response leaves only the offset (no clipping: values stay in [0.375, 0.875])
    mse_without = (16 * ((0.5 - 0.125) ** 2 + (0.25 - 0.125) ** 2 + 0.125 ** 2) / 3 + 20 * 0.125 ** 2) / 36
    assert pasted == pytest.approx(10 * math.log10(mse_without / mse_with), abs=1e-12)
    # a model whose change is the truth's scores exactly the pasted gain, whatever its base error
    assert M.expression_gain(off + target - ref, off, target, region) == pytest.approx(pasted, abs=1e-12)
    # an avatar that already shows the target at the reference code: the truth's change can only overshoot
    assert M.pasted_gain(target, target, ref, region) < 0


def test_the_response_block_shows_each_change_where_it_happens():
    from avat3r.sheet import CHANGE_GAIN, GAP, RESPONSE_COLUMNS, response_block

    target, ref = _pair(views=2, size=16)
    target[:, :, :, 2] = 0.25 + 0.0625  # a faint change everywhere in blue: 1/16 × 4 = 0.25 of white
    block = response_block("t", ref.float(), target.float(), ref.float(), ref.float(), height=16)
    assert block.shape == (14 + 2 * 16 + GAP, 6 * 16 + 5 * GAP, 3)
    view1 = block[14 + 16 + GAP:]  # the second target view: no labels drawn over it

    def tile(j):
        return view1[:, j * (16 + GAP):j * (16 + GAP) + 16].astype(int)

    truth_change, avatar_change = tile(RESPONSE_COLUMNS.index("|d| truth x4")), tile(5)
    # the block (red moves by 0.5: ×4 clips to white) and the faint blue change elsewhere (0.0625 × 4 = 0.25)
    assert (truth_change[2:6, 2:6] == 255).all()
    assert (truth_change[8:, 8:] == round(0.0625 * CHANGE_GAIN * 255)).all()
    assert (avatar_change == 0).all()  # an avatar that ignores its code shows no change
    assert tile(1)[3, 3].tolist() == [191, 128, 80]  # the truth at the target code, as it is


def test_region_obeys_tau_and_the_one_pixel_dilation():
    assert M.REGION_TAU == 0.05
    ref = torch.zeros(2, 6, 7, 3)
    target = ref.clone()
    target[0, 2, 3, 1] = 0.0625  # > tau in one channel: moves
    target[0, 5, 0, 2] = 0.25  # moves, in a corner: the dilation stops at the border
    target[0, 0, 6, :] = 0.046875  # ≤ tau in every channel: does not move
    target[1] = 0.5  # view 1 changes everywhere, but has no reference image
    region = M.changing_region(target, ref, torch.tensor([True, False]))
    expected = torch.zeros(2, 6, 7)
    expected[0, 1:4, 2:5] = 1
    expected[0, 4:6, 0:2] = 1
    assert torch.equal(region, expected)
    assert M.changing_region(target, ref, torch.tensor([True, True]))[1].sum() == 42


def test_an_empty_region_gives_none_and_no_nan():
    target = torch.rand(2, 5, 5, 3, generator=torch.Generator().manual_seed(0))
    scores = M.example_scores(torch.zeros_like(target), target, torch.ones(2, 5, 5), torch.ones_like(target),
                              target.clone(), torch.tensor([True, True]))
    assert scores["region_frac"] == 0.0
    assert all(scores[k] is None for k in ("psnr_region", "psnr_region_ref", "expr_gain", "pasted_gain",
                                           "response_ratio", "aligned_ratio", "leak_ratio"))
    assert all(math.isfinite(v) for v in scores.values() if v is not None)


def test_pooled_psnr_is_finite_when_one_view_is_perfect():
    target = torch.full((2, 4, 4, 3), 0.5)
    pred = target.clone()
    pred[1] += 0.25  # view 0 perfect (its own PSNR would be infinite), view 1 off by 1/4: MSE 1/16 over half
    assert M.pooled_psnr(pred, target) == 10 * math.log10(32)
    assert M.pooled_psnr(target, target) == 100.0  # even a perfect example stays finite


def test_foreground_psnr_ignores_background_errors():
    target = torch.full((2, 4, 4, 3), 0.5)
    mask = torch.zeros(2, 4, 4)
    mask[:, 1:3, 1:3] = 1.0
    pred = target.clone()
    pred[mask == 0] = 1.0  # wrong everywhere on the background
    assert M.foreground_psnr(pred, target, mask) == 100.0
    pred[mask == 1] -= 0.25
    assert M.foreground_psnr(pred, target, mask) == 10 * math.log10(16)
    soft = mask * 0.5  # a soft mask weights, it does not rescale: same pixels, same PSNR
    assert M.foreground_psnr(pred, target, soft) == 10 * math.log10(16)


def test_expression_groups_merge_sides_and_name_neutral():
    names = ["jawOpen", "mouthSmileLeft", "eyeBlinkRight"]
    ref = torch.tensor([0.1, 0.0, 0.0])
    assert M.expression_group(torch.tensor([0.1, 0.8, 0.2]), ref, names) == "mouthSmile"
    assert M.expression_group(torch.tensor([0.0, 0.0, -0.3]), ref, names) == "eyeBlink"
    assert M.expression_group(torch.tensor([0.6, 0.0, 0.0]), ref, names) == "jawOpen"
    assert M.expression_group(torch.tensor([0.14, 0.04, -0.04]), ref, names) == "neutral"


# -- baseline and LPIPS -------------------------------------------------------------------------------------
def _ring(angles_deg, res: int = 8) -> Cameras:
    eye = torch.tensor([[math.sin(math.radians(a)), 0.1, math.cos(math.radians(a))] for a in angles_deg])
    return Cameras(intrinsics_from_fov(30.0, res, res).expand(len(angles_deg), 3, 3), look_at(eye), res, res)


def test_nearest_view_returns_the_input_at_the_same_pose():
    inputs = torch.rand(3, 8, 8, 3, generator=torch.Generator().manual_seed(1))
    pred = nearest_view(inputs, _ring([-60, 0, 60]), _ring([60, -50, 10]))
    assert torch.equal(pred[0], inputs[2])  # same pose as input 2: exactly its image
    assert torch.equal(pred[1], inputs[0]) and torch.equal(pred[2], inputs[1])


def test_a_missing_lpips_weights_path_is_named(tmp_path):
    path = tmp_path / "nowhere" / "alexnet.pth"
    metrics = M.build_metrics(lpips_weights=str(path))
    assert "lpips" not in metrics.functions and str(path) in metrics.unavailable["lpips"]


def test_recorded_reasons_name_no_machine_paths(tmp_path, monkeypatch):
    from avat3r.eval.runner import portable_text

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "th"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    text = f"not found at {tmp_path / 'th' / 'hub' / 'checkpoints' / 'a.pth'}; also {tmp_path / 'home' / 'w.pth'}"
    assert portable_text(text) == "not found at $TORCH_HOME/hub/checkpoints/a.pth; also ~/w.pth"


# -- the runner on a small manifest -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def small_set(tmp_path_factory) -> Path:
    """One person × 2 segments × 2 frames × 8 cameras at 16², no prior: every example's targets can change."""
    from avat3r.data.prep import prep_synth

    out = tmp_path_factory.mktemp("evalset") / "set"
    prep_synth(out, persons=1, frames=2, cameras=8, res=16, seed=3, source=FAKE, n_val=0, n_test=0)
    return out / "manifest.parquet"


OPTIONS = {"require_prior": False, "random_timesteps": False, "inputs_elsewhere": True}  # the animation case


class Confident:
    """The set's examples with full input confidence (it has no prior), so every input pixel is a Gaussian."""

    def __init__(self, manifest: Path):
        self.sampler = default_examples(manifest, "train", 0, OPTIONS)
        self.manifest = self.sampler.manifest

    def example(self, i: int) -> dict:
        ex = self.sampler.example(i)
        return {**ex, "inputs_conf": torch.ones_like(ex["inputs_conf"])}


def test_eval_examples_score_novel_views_with_reference_images(small_set):
    examples = default_examples(small_set, "train", 0, {"require_prior": False, "novel_targets": False})
    assert examples.novel_targets and examples.reference_views  # whatever the options say
    assert EVAL_SAMPLER_OPTIONS == {"novel_targets": True, "reference_views": True}
    for i in range(12):
        ex = examples.example(i)
        same = (ex["target_cameras"].w2c[:, None] - ex["inputs_cameras"].w2c[None]).abs().amax(dim=(-2, -1))
        assert same.min() > 1e-4, f"example {i}: a target at an input camera"
        assert ex["target_ref_rgb"].shape == ex["target_rgb"].shape and ex["ref_expr"].shape == ex["expr"].shape
    with pytest.raises(EvalError, match="no segment named neutral"):
        default_examples(small_set, "train", 0, {"require_prior": False, "input_segments": ("neutral",)})


def test_nearest_view_evaluation_writes_the_expression_columns(small_set, tmp_path, monkeypatch):
    import pyarrow.parquet as pq

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty"))
    report = evaluate(tmp_path / "nv", manifest=small_set, split="train", n_examples=6, baseline="nearest-view",
                      sampler_options=OPTIONS, progress=False)
    table = pq.read_table(tmp_path / "nv" / "metrics.parquet")
    assert set(SCORES) | {"expression", "target_timestep", "ref_timestep"} <= set(table.column_names)
    rows = table.to_pylist()
    assert all(r["target_timestep"] != r["ref_timestep"] for r in rows)  # "other" inputs: another timestep
    assert all(r["expression"] in ("e0", "e1", "neutral") for r in rows)  # fake-v1 has no named parameters
    scored = [r for r in rows if r["region_frac"]]
    assert scored and all(r["expr_gain"] == 0.0 and r["response_ratio"] == 0.0 for r in scored)  # no code
    assert all(r["psnr_region"] == r["psnr_region_ref"] for r in scored)
    assert all(math.isfinite(r[k]) for r in rows for k in SCORES if r[k] is not None)
    md = (tmp_path / "nv" / "metrics.md").read_text()
    assert report.label == "nearest-view" and "## Per expression" in md and "## Per person" in md
    n = report.overall()["expr_gain"].n
    assert f"| gain (dB) | 0.00 ± 0.00 ({n}) |" in md


def _small_avat3r(expression_dim: int):
    from avat3r.model import Avat3r, Avat3rConfig

    torch.manual_seed(0)
    config = Avat3rConfig.preset("tiny", expression_dim=expression_dim, dim=32, heads=2, self_layers=1,
                                 cross_layers=1, input_res=16, patch=8, upsampler_window=16,
                                 use_position_prior=False)
    model = Avat3r(config).eval()
    with torch.no_grad():  # open the zero-initialised code path, as training would
        model.decoder.heads.unpatchify.weight.normal_(0, 0.05)
        for blk in model.decoder.blocks:
            blk.attn.proj.weight.normal_(0, 0.5)
    return model


def test_the_avatar_is_encoded_once_and_decoded_with_both_codes(small_set, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty"))
    model = _small_avat3r(2)
    examples = Confident(small_set)
    report = evaluate(tmp_path / "av", model=model, examples=examples, n_examples=2, progress=False)
    for i, row in enumerate(report.rows):
        batch = collate_examples([examples.example(i)])
        with torch.no_grad():  # the plain forward pass at each code
            at = {c: render_targets(predict(model, {**batch, "expr": batch[c]}), batch["target_cameras"])[0]
                  for c in ("expr", "ref_expr")}
        target = batch["target_rgb"][0]
        assert row["psnr"] == pytest.approx(M.pooled_psnr(at["expr"].clamp(0, 1), target), abs=1e-3)
        region = M.changing_region(target, batch["target_ref_rgb"][0], batch["target_ref_valid"][0])
        assert row["psnr_region_ref"] == pytest.approx(M.region_psnr(at["ref_expr"].clamp(0, 1), target, region),
                                                       abs=1e-3)
        assert row["response_ratio"] > 0 and row["expr_gain"] != 0.0  # this avatar does follow its code


def test_a_code_ignoring_model_scores_zero_through_the_runner(small_set, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty"))
    model = FakeModel(2)
    with torch.no_grad():
        model.color.weight.zero_()  # its colours no longer read the code
    report = evaluate(tmp_path / "fm", model=model, examples=Confident(small_set), n_examples=3, progress=False)
    scored = [r for r in report.rows if r["region_frac"]]
    assert scored and all(r["expr_gain"] == 0.0 and r["response_ratio"] == 0.0 for r in scored)
    assert all(r["psnr_region"] is not None and r["psnr_region"] < 100 for r in scored)  # it renders something
    from avat3r.imageio import read_image

    response = read_image(tmp_path / "fm" / "response.png")  # one block per expression group seen
    assert response.shape[0] > 14 + 96 and response.max() > 0


# -- the CLI ----------------------------------------------------------------------------------------------
def _cli(args: list[str]):
    from typer.testing import CliRunner

    from avat3r.cli.main import app

    return CliRunner().invoke(app, ["eval", *args])


@pytest.mark.parametrize("args, message", [
    (["--inputs", "sideways"], "--inputs must be one of mixed, consistent, other"),
    (["--inputs", "other", "--consistent-inputs"], "exclude each other"),
    (["--other-expression-inputs", "--mixed-inputs"], "exclude each other"),
    (["--input-segments", " , "], "--input-segments needs at least one segment"),
    (["--baseline", "mirror"], "unknown baseline 'mirror'"),
])
def test_bad_eval_options_give_one_line_errors(small_set, tmp_path, args, message):
    res = _cli(["-m", str(small_set), "-o", str(tmp_path / "o"), "-q", *args])
    assert res.exit_code == 1
    assert res.stderr.startswith("avat3r: error: ") and message in res.stderr and res.stderr.count("\n") == 1


def test_eval_help_defines_the_expression_metrics():
    res = _cli(["--help"])
    text = " ".join(res.stdout.split())
    assert res.exit_code == 0
    assert "tau = 0.05" in text and "Gain (dB)" in text and "ratio" in text
    for option in ("--inputs", "--input-segments", "--lpips-weights", "nearest-view", "--consistent-inputs"):
        assert option in text
