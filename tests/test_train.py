"""Training: losses, recipes, the Accelerate loop (overfit, resume, crash-safe checkpoints, 2 processes)."""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from avat3r.cameras import Cameras, intrinsics_from_fov, look_at, unproject
from avat3r.gaussians import Gaussians
from avat3r.photometric import LpipsWeightsMissing, build_lpips, gaussian_window, ssim_map
from avat3r.render import rasterize
from avat3r.train import checkpointing
from avat3r.train.loop import DataInfo, example_index, learning_rate, train
from avat3r.train.losses import LossWeights, PhotometricLoss, dssim_loss, l1_loss
from avat3r.train.recipe import RecipeError, load_recipe, recipe_from_dict

REPO = Path(__file__).resolve().parents[1]
RES = 12  # tiny images keep every loop test to a few seconds on 2 cores


# -- small fakes: a fixed Gaussian "head" seen from random cameras, and a pixel-aligned splat model ------
def _scene(seed: int = 0, n: int = 120) -> Gaussians:
    g = torch.Generator().manual_seed(seed)
    d = torch.nn.functional.normalize(torch.randn(n, 3, generator=g), dim=-1)
    return Gaussians(means=0.1 * d, quats=torch.tensor([[1.0, 0, 0, 0]]).repeat(n, 1),
                     scales=torch.full((n, 3), 0.03), opacities=torch.full((n,), 0.9),
                     colors=0.5 + 0.4 * d)


class FakeExamples:
    """Example i: input and target views of one fixed scene from cameras drawn from (seed, i); cached, since
    examples are pure functions of their index (2 inputs + 2 targets keep the loop tests fast)."""

    expression_space = "fake-v1"
    expression_names = ("a", "b", "c")
    neutral = (0.0, 0.0, 0.0)

    def __init__(self, seed: int = 0, fixed: bool = False, n_inputs: int = 2, n_targets: int = 2, res: int = RES):
        self.seed, self.fixed, self.scene, self.res = seed, fixed, _scene(), res
        self.n_inputs, self.n_targets, self._cache = n_inputs, n_targets, {}

    def _cams(self, g: torch.Generator, n: int) -> Cameras:
        yaw = (torch.rand(n, generator=g) - 0.5) * 2.0
        pitch = (torch.rand(n, generator=g) - 0.5) * 0.6
        eye = 0.5 * torch.stack([torch.sin(yaw) * torch.cos(pitch), torch.sin(pitch),
                                 torch.cos(yaw) * torch.cos(pitch)], -1)
        return Cameras(intrinsics_from_fov(40.0, self.res, self.res).expand(n, 3, 3), look_at(eye), self.res, self.res)

    def example(self, i: int) -> dict:
        key = 0 if self.fixed else i
        if key not in self._cache:
            self._cache[key] = self._make(key)
        return dict(self._cache[key], person=f"p{i % 2}")

    def _make(self, key: int) -> dict:
        g = torch.Generator().manual_seed(self.seed * 100_003 + key)
        cin, cout = self._cams(g, self.n_inputs), self._cams(g, self.n_targets)
        rgb, alpha, depth = rasterize(self.scene, Cameras.cat([cin, cout]))
        n = self.n_inputs
        expr = torch.rand(3, generator=g)
        return {"inputs_rgb": rgb[:n], "inputs_cameras": cin, "inputs_pos": unproject(cin, depth[:n]),
                "inputs_conf": alpha[:n], "inputs_expr": expr.expand(n, 3).clone(), "target_rgb": rgb[n:],
                "target_mask": alpha[n:], "target_cameras": cout, "expr": expr}


class FakeModel(torch.nn.Module):
    """One Gaussian per input pixel at the prior's position with the pixel's colour through learnable
    colour/scale/opacity heads (a skip-connected model, as Eq. 11–12, small enough for unit tests)."""

    def __init__(self, expression_dim: int = 3):
        super().__init__()
        self.color = torch.nn.Linear(expression_dim, 3)
        self.log_scale = torch.nn.Parameter(torch.tensor(-3.0))
        self.opacity = torch.nn.Parameter(torch.tensor(0.0))
        torch.nn.init.normal_(self.color.weight, std=0.5)

    def forward(self, images, cameras, pos, conf, codes, feats=None):
        b = images.shape[0]
        rgb = images.reshape(b, -1, 3).clamp(1e-3, 1 - 1e-3)
        n = rgb.shape[1]
        colors = torch.sigmoid(torch.logit(rgb) + self.color(codes)[:, None, :])
        return Gaussians(means=pos.reshape(b, n, 3), quats=pos.new_tensor([1.0, 0, 0, 0]).expand(b, n, 4),
                         scales=torch.exp(self.log_scale).expand(b, n, 3),
                         opacities=torch.sigmoid(self.opacity).expand(b, n), colors=colors,
                         valid=conf.reshape(b, n) > 0.5)


def fake_model_factory(recipe, info: DataInfo):
    return FakeModel(info.expression_dim)


def fake_save(directory: Path, model: torch.nn.Module, meta: dict) -> None:
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(directory / "model.safetensors"))
    (directory / "config.json").write_text(json.dumps({"meta": meta}))


def tiny_recipe(**sections):
    doc = {"model": {"preset": "tiny"}, "data": {"seed": 3},
           "optim": {"lr": 0.05, "batch_size": 1, "max_steps": 6, "grad_clip": 1.0},
           "loss": {"lpips": 0.0},
           "run": {"checkpoint_every": 3, "preview_every": 3, "log_every": 1, "keep_checkpoints": 0}}
    for name, values in sections.items():
        doc.setdefault(name, {}).update(values)
    return recipe_from_dict(doc, source="test")


def run(recipe, run_dir, examples=None, **kw):
    return train(recipe, run_dir, examples=examples or FakeExamples(seed=recipe.data.seed),
                 model_factory=fake_model_factory, save_model=fake_save, progress=False, **kw)


# -- losses ------------------------------------------------------------------------------------------
def test_gaussian_window_matches_3dgs():
    w = gaussian_window()
    assert w.shape == (11, 11)
    assert w.sum().item() == pytest.approx(1.0, abs=1e-6)
    x = torch.arange(11.0) - 5
    g = torch.exp(-x ** 2 / (2 * 1.5 ** 2))
    g = g / g.sum()
    torch.testing.assert_close(w, g[:, None] * g[None, :])


def test_l1_and_dssim_values():
    a = torch.zeros(2, 8, 8, 3)
    b = torch.full((2, 8, 8, 3), 0.25)
    assert l1_loss(a, b).item() == pytest.approx(0.25)
    x = torch.rand(2, 12, 12, 3, generator=torch.Generator().manual_seed(0))
    assert dssim_loss(x, x).item() == pytest.approx(0.0, abs=1e-6)
    # Constant images c1, c2 inside the zero-padded interior: SSIM = (2 c1 c2 + C1) / (c1² + c2² + C1).
    c1, c2 = 0.2, 0.6
    m = ssim_map(torch.full((1, 40, 40, 3), c1), torch.full((1, 40, 40, 3), c2))
    centre = (2 * c1 * c2 + 1e-4) / (c1 ** 2 + c2 ** 2 + 1e-4)  # zero variances: the contrast term is 1
    torch.testing.assert_close(m[..., 5:-5, 5:-5], torch.full_like(m[..., 5:-5, 5:-5], centre))
    assert (m[..., 0, 0] != m[..., 20, 20]).all()  # border windows see the zero padding (as 3DGS)


def test_pixel_weighted_losses_and_the_changing_region():
    from avat3r.photometric import changing_region
    from avat3r.train.losses import dssim_loss, l1_loss

    g = torch.Generator().manual_seed(0)
    pred, target = torch.rand(2, 16, 16, 3, generator=g), torch.rand(2, 16, 16, 3, generator=g)
    ones = torch.ones(2, 16, 16)
    assert torch.allclose(l1_loss(pred, target, ones), l1_loss(pred, target))
    assert torch.allclose(dssim_loss(pred, target, 3 * ones), dssim_loss(pred, target))
    w = torch.zeros(2, 16, 16)
    w[1, 4, 5] = 1.0  # all weight on one pixel: the loss is that pixel's error
    assert torch.allclose(l1_loss(pred, target, w), (pred[1, 4, 5] - target[1, 4, 5]).abs().mean())
    ref = torch.zeros(2, 8, 8, 3)
    img = ref.clone()
    img[0, 3, 3, 1] = 0.06  # above tau = 0.05 → the pixel and its 8 neighbours
    img[0, 6, 6, 0] = 0.04  # below tau → nothing
    img[1, 0, 0, 2] = 0.5  # in a view without a reference → nothing
    region = changing_region(img, ref, torch.tensor([True, False]))
    assert region[0].sum() == 9 and region[0, 2:5, 2:5].all() and region[1].sum() == 0


def test_expression_share_gives_every_views_region_the_same_share():
    from avat3r.train.loop import expression_pixel_weight

    ref = torch.zeros(4, 16, 16, 3)
    img = ref.clone()
    img[0, 8, 8] = 1.0  # a blink-sized change: 9 pixels after dilation
    img[1, :, :5] = 1.0  # a jaw-sized change: 16 × 6 = 96 pixels
    img[3] = 1.0  # everything changes: no outside to balance against
    batch = {"target_rgb": img, "target_ref_rgb": ref, "target_ref_valid": torch.ones(4, dtype=torch.bool)}
    w = expression_pixel_weight(batch, weight=0.0, share=0.3)
    region = (img - ref).abs().amax(-1) > 0
    region[0, 7:10, 7:10] = True
    region[1, :, 5] = True
    torch.testing.assert_close(w.mean(dim=(-2, -1)), torch.ones(4))  # views count equally, scale kept
    for v in (0, 1):  # the region's share of the view's weight is 0.3 whatever its size
        assert (w[v] * region[v]).sum().item() / w[v].sum().item() == pytest.approx(0.3, rel=1e-6)
        assert w[v][region[v]].unique().numel() == 1 and w[v][~region[v]].unique().numel() == 1
    torch.testing.assert_close(w[2:], torch.ones(2, 16, 16))  # no region (view 2) / all region (view 3): uniform
    per_pixel = expression_pixel_weight(batch, weight=15.0)
    torch.testing.assert_close(per_pixel[0], 1 + 15 * region[0].float())
    assert expression_pixel_weight(batch, 0.0, 0.0) is None


def test_the_reference_term_scores_valid_reference_views_only():
    from avat3r.train.loop import reference_loss

    loss = PhotometricLoss(LossWeights(l1=0.8, ssim=0.2, lpips=0.0))
    gen = torch.Generator().manual_seed(7)
    truth_ref = torch.rand(1, 3, 16, 16, 3, generator=gen)
    batch = {"target_ref_rgb": truth_ref, "target_ref_valid": torch.tensor([[True, False, True]])}
    pred_ref = truth_ref.clone()
    pred_ref[0, 1] = 1.0  # wrong, but in a view without a reference image: not scored
    assert reference_loss(loss, pred_ref, batch, 0, None).item() == pytest.approx(0.0, abs=1e-6)
    pred_ref[0, 2] = torch.rand(16, 16, 3, generator=gen)
    weight = 1 + 15 * (torch.rand(1, 3, 16, 16, generator=gen) > 0.9).float()
    expected, _ = loss(pred_ref[0, [0, 2]], truth_ref[0, [0, 2]], 0, weight[0, [0, 2]])
    assert reference_loss(loss, pred_ref, batch, 0, weight).item() == pytest.approx(expected.item(), rel=1e-6)
    none = {**batch, "target_ref_valid": torch.zeros(1, 3, dtype=torch.bool)}
    pred_ref.requires_grad_(True)
    zero = reference_loss(loss, pred_ref, none, 0, weight)
    zero.backward()
    assert zero.item() == 0.0 and pred_ref.grad is not None and pred_ref.grad.abs().max() == 0


def test_paired_training_adds_the_reference_term_to_the_loss(tmp_path):
    """loss.reference_weight = w: the step-0 loss is the unpaired loss + w × the logged reference term."""
    from test_bad_inputs import write_tiny_set

    write_tiny_set(tmp_path / "set", res=16)
    small = {"dim": 32, "heads": 2, "self_layers": 1, "cross_layers": 1, "input_res": 16, "patch": 8,
             "expression_hidden": 16, "upsampler_window": 16}

    def run(weight, name):
        recipe = recipe_from_dict({"model": {"preset": "tiny", "overrides": small},
                                   "data": {"manifest": str(tmp_path / "set" / "manifest.parquet"), "n_targets": 2,
                                            "options": {"reference_views": True}},
                                   "optim": {"max_steps": 2}, "loss": {"lpips": 0.0, "reference_weight": weight},
                                   "run": {"checkpoint_every": 2, "preview_every": 2, "log_every": 1}},
                                  source="test")
        return train(recipe, tmp_path / name, progress=False)

    plain, paired = run(0.0, "plain"), run(0.5, "paired")
    logged = [json.loads(line) for line in (tmp_path / "paired" / "logs" / "scalars.jsonl").read_text().splitlines()]
    reference = logged[0]["train/reference"]
    assert reference > 0 and all(math.isfinite(r["train/reference"]) for r in logged)
    assert paired.losses[0] == pytest.approx(plain.losses[0] + 0.5 * reference, rel=1e-5)
    with pytest.raises(RecipeError, match="reference_weight need data.options.reference_views"):
        recipe_from_dict({"loss": {"reference_weight": 1.0}, "data": {"options": {}}}, source="test")


def test_photometric_loss_weights_and_lpips_schedule():
    a = torch.rand(1, 32, 32, 3, generator=torch.Generator().manual_seed(1))
    b = torch.rand(1, 32, 32, 3, generator=torch.Generator().manual_seed(2))
    loss = PhotometricLoss(LossWeights(l1=0.8, ssim=0.2, lpips=0.5, lpips_start_step=10),
                           allow_random_backbone=True)
    before, parts = loss(a, b, step=9)
    assert "lpips" not in parts
    assert before.item() == pytest.approx(0.8 * l1_loss(a, b).item() + 0.2 * dssim_loss(a, b).item(), rel=1e-6)
    after, parts = loss(a, b, step=10)
    assert after.item() == pytest.approx(before.item() + 0.5 * parts["lpips"].item(), rel=1e-6)
    assert parts["lpips"].item() > 0


def test_lpips_missing_weights_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    with pytest.raises(LpipsWeightsMissing) as err:
        build_lpips("alex")
    msg = str(err.value)
    assert "\n" not in msg and "alexnet-owt-7be5be79.pth" in msg and str(tmp_path / "torch_home") in msg
    # ...and a run with an LPIPS weight stops before its first step with the same message.
    with pytest.raises(LpipsWeightsMissing):
        run(tiny_recipe(loss={"lpips": 0.1, "lpips_start_step": 1000}), tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_lpips_loads_a_local_backbone_file(tmp_path):
    import torchvision

    torch.manual_seed(0)
    reference = torchvision.models.alexnet(weights=None)
    path = tmp_path / "alexnet.pth"
    torch.save(reference.state_dict(), path)
    module = build_lpips("alex", weights=path)
    torch.testing.assert_close(module.net.slice1[0].weight, reference.features[0].weight)
    torch.testing.assert_close(getattr(module.net.slice5, "10").weight, reference.features[10].weight)
    bad = tmp_path / "bad.pth"
    torch.save({"x": torch.zeros(1)}, bad)
    with pytest.raises(ValueError, match="not a torchvision alex checkpoint"):
        build_lpips("alex", weights=bad)


# -- recipes -------------------------------------------------------------------------------------------
def test_recipe_rejects_unknown_keys_with_one_line(tmp_path):
    p = tmp_path / "r.toml"
    p.write_text('[optim]\nlr = 1e-3\nlearning_rate = 2\n')
    with pytest.raises(RecipeError) as err:
        load_recipe(p)
    assert "\n" not in str(err.value) and "optim.learning_rate" in str(err.value)
    p.write_text('[optimizer]\nlr = 1e-3\n')
    with pytest.raises(RecipeError, match=r"unknown section \[optimizer\]"):
        load_recipe(p)
    p.write_text('[optim]\nlr = "fast"\n')
    with pytest.raises(RecipeError, match="optim.lr must be a number"):
        load_recipe(p)
    p.write_text("")
    with pytest.raises(RecipeError, match="unknown key optim.nope"):
        load_recipe(p, ["optim.nope=1"])


def test_scalar_log_without_tensorboard_and_after_a_resume(tmp_path, monkeypatch):
    from avat3r.train.scalar_log import ScalarLog

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # as if tensorboard were not installed
    log = ScalarLog(tmp_path / "logs", start=0)
    assert log.tensorboard is None
    for step in (10, 20, 30):
        log.log(step, {"train/loss": step / 100})
    log.close()
    with (tmp_path / "logs/scalars.jsonl").open("a") as f:
        f.write('{"step": 40, "train/lo')  # cut short by a kill
    log = ScalarLog(tmp_path / "logs", start=20)  # resumed from the step-20 checkpoint
    log.log(30, {"train/loss": 0.5})
    log.close()
    rows = [json.loads(line) for line in (tmp_path / "logs/scalars.jsonl").read_text().splitlines()]
    assert rows == [{"step": 10, "train/loss": 0.1}, {"step": 20, "train/loss": 0.2}, {"step": 30, "train/loss": 0.5}]


def test_learning_rate_schedules():
    r = load_recipe(REPO / "recipes" / "synthheads-tiny.toml",
                    ["optim.lr=1e-3", "optim.warmup_steps=10", "optim.max_steps=110", 'optim.schedule="constant"'])
    assert [learning_rate(r.optim, s) for s in (0, 4, 9, 10, 500)] == pytest.approx([1e-4, 5e-4, 1e-3, 1e-3, 1e-3])
    r = load_recipe(REPO / "recipes" / "synthheads-tiny.toml", ["optim.lr=1e-3", "optim.warmup_steps=10",
                    "optim.max_steps=110", "optim.schedule=\"cosine\"", "optim.min_lr=1e-5"])
    # cos(π t) from the end of warm-up to max_steps: halfway is the mean of lr and min_lr; it then stays at min_lr
    assert learning_rate(r.optim, 10) == pytest.approx(1e-3)
    assert learning_rate(r.optim, 60) == pytest.approx((1e-3 + 1e-5) / 2)
    assert learning_rate(r.optim, 35) == pytest.approx(1e-5 + (1e-3 - 1e-5) * (1 + 2 ** -0.5) / 2)
    assert learning_rate(r.optim, 110) == learning_rate(r.optim, 10_000) == pytest.approx(1e-5)
    lrs = [learning_rate(r.optim, s) for s in range(10, 111)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))
    for bad in (["optim.schedule=\"step\""], ["optim.min_lr=1.0"], ["optim.lr=nan"]):
        with pytest.raises(RecipeError, match="optim"):
            load_recipe(REPO / "recipes" / "synthheads-tiny.toml", bad)


def test_recipe_overrides_and_shipped_recipes():
    r = load_recipe(REPO / "recipes" / "synthheads-tiny.toml",
                    ["optim.lr=3e-4", "data.manifest=some/path.parquet", "model.overrides.dim=64"])
    assert r.optim.lr == 3e-4 and r.data.manifest == "some/path.parquet" and r.model.overrides["dim"] == 64
    assert r.model.preset == "tiny" and r.data.position_prior == "geometric"
    paper = load_recipe(REPO / "recipes" / "paper.toml")
    assert paper.model.preset == "paper" and paper.optim.optimizer == "adam"
    assert paper.optim.max_steps == 3_500_000 and paper.loss.lpips_start_step == 3_000_000
    assert paper.data.n_inputs == 4 and paper.data.n_targets == 8 and paper.optim.batch_size == 1
    assert paper.data.position_prior == "dust3r" and paper.data.feature_prior == "sapiens"


def test_example_indices_are_disjoint_and_process_count_invariant():
    one = {example_index(s, 0, 1, 4, j) for s in range(5) for j in range(4)}
    four = {example_index(s, r, 4, 1, 0) for s in range(5) for r in range(4)}
    assert one == four == set(range(20))


# -- the loop --------------------------------------------------------------------------------------------
def test_training_overfits_a_fixed_example(tmp_path):
    recipe = tiny_recipe(optim={"max_steps": 15, "lr": 0.1}, run={"checkpoint_every": 15, "preview_every": 15})
    result = run(recipe, tmp_path / "run", examples=FakeExamples(seed=3, fixed=True))
    losses = [result.losses[s] for s in range(15)]
    assert result.step == 15
    assert losses[-1] < 0.7 * losses[0], losses
    assert result.baseline["loss"] == pytest.approx(losses[0])
    assert json.loads((tmp_path / "run" / "baseline.json").read_text())["psnr"] == pytest.approx(
        result.baseline["psnr"])
    ck = checkpointing.latest_checkpoint(tmp_path / "run")
    assert ck.name == "step_00000015"
    meta = json.loads((ck / "config.json").read_text())["meta"]
    assert meta["step"] == 15 and meta["expression_space"] == "fake-v1" and meta["neutral"] == [0.0] * 3
    assert meta["position_prior"] == "geometric" and meta["recipe"]["optim"]["lr"] == 0.1
    assert (ck / "train_state").is_dir() and (tmp_path / "run" / "previews" / "step_00000015.png").is_file()
    assert any((tmp_path / "run" / "logs").iterdir())


def test_resume_reproduces_the_uninterrupted_loss_curve(tmp_path):
    recipe = tiny_recipe()
    full = run(recipe, tmp_path / "full")
    first = run(recipe, tmp_path / "split", max_steps=3)
    assert first.step == 3 and checkpointing.latest_checkpoint(tmp_path / "split").name == "step_00000003"
    with pytest.raises(RuntimeError, match="already holds checkpoints; resume it"):
        run(recipe, tmp_path / "split")
    second = run(recipe, tmp_path / "split", resume=True)
    assert second.step == 6 and sorted(second.losses) == [3, 4, 5]
    for s in range(3):
        assert first.losses[s] == pytest.approx(full.losses[s], rel=1e-6, abs=1e-7)
    for s in range(3, 6):
        assert second.losses[s] == pytest.approx(full.losses[s], rel=1e-5, abs=1e-6)
    # the resumed run's scalar log holds one curve: the same logged steps as the uninterrupted run's
    curves = [[json.loads(line) for line in (tmp_path / d / "logs/scalars.jsonl").read_text().splitlines()]
              for d in ("full", "split")]
    assert [r["step"] for r in curves[0]] == [r["step"] for r in curves[1]] and len(curves[0]) >= 2
    for x, y in zip(*curves):
        assert x["train/loss"] == pytest.approx(y["train/loss"], rel=1e-5)
    a = load_file(str(tmp_path / "full/checkpoints/step_00000006/model.safetensors"))
    b = load_file(str(tmp_path / "split/checkpoints/step_00000006/model.safetensors"))
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)


def test_a_time_limit_stops_with_a_checkpoint_that_resumes_the_same_curve(tmp_path):
    recipe = tiny_recipe()  # checkpoints every 3 steps: the limit's checkpoint is one of its own
    full = run(recipe, tmp_path / "full")
    cut = run(recipe, tmp_path / "cut", time_limit=0.0)  # past the limit after the first step
    assert cut.step == 1 and sorted(cut.losses) == [0]
    assert checkpointing.latest_checkpoint(tmp_path / "cut").name == "step_00000001"
    rest = run(recipe, tmp_path / "cut", resume=True)
    assert rest.step == 6 and sorted(rest.losses) == [1, 2, 3, 4, 5]
    for s in range(1, 6):
        assert rest.losses[s] == pytest.approx(full.losses[s], rel=1e-5, abs=1e-6)
    assert run(recipe, tmp_path / "long", time_limit=3600.0).step == 6  # a limit not reached changes nothing


def test_a_failed_save_keeps_the_previous_checkpoint(tmp_path):
    recipe = tiny_recipe(optim={"max_steps": 6})
    calls = {"n": 0}

    def dying_save(directory, model, meta):
        calls["n"] += 1
        if calls["n"] == 2:  # second checkpoint: weights half-written, then the process "dies"
            (directory / "model.safetensors").write_bytes(b"\x00" * 10)
            raise KeyboardInterrupt
        fake_save(directory, model, meta)

    with pytest.raises(KeyboardInterrupt):
        train(recipe, tmp_path / "run", examples=FakeExamples(seed=3), model_factory=fake_model_factory,
              save_model=dying_save, progress=False)
    found = checkpointing.list_checkpoints(tmp_path / "run")
    assert [s for s, _ in found] == [3]
    assert not [p for p in (tmp_path / "run" / "checkpoints").iterdir() if p.name.startswith(".tmp")]
    state = load_file(str(found[0][1] / "model.safetensors"))
    assert set(state) == {"color.weight", "color.bias", "log_scale", "opacity"}
    resumed = run(recipe, tmp_path / "run", resume=True)  # and the run continues from it
    assert resumed.step == 6 and min(resumed.losses) == 3


def test_write_checkpoint_replaces_a_stale_temp_folder(tmp_path):
    stale = tmp_path / "checkpoints" / ".tmp-step_00000007"
    stale.mkdir(parents=True)
    (stale / "junk").write_text("x")
    out = checkpointing.write_checkpoint(tmp_path, 7, lambda d: (d / "a.txt").write_text("ok"))
    assert out.name == "step_00000007" and sorted(p.name for p in out.iterdir()) == ["a.txt"]
    assert checkpointing.resolve_checkpoint(tmp_path) == out or not (out / "model.safetensors").exists()
    checkpointing.write_checkpoint(tmp_path, 9, lambda d: None)
    checkpointing.prune_checkpoints(tmp_path, keep=1)
    assert [s for s, _ in checkpointing.list_checkpoints(tmp_path)] == [9]


# -- two processes (gloo) -----------------------------------------------------------------------------------
def _ddp_worker(rank: int, world: int, port: int, run_dir: str, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world))
    torch.set_num_threads(1)
    result = run(tiny_recipe(optim={"max_steps": 4}), run_dir)
    if rank == 0:
        Path(out).write_text(json.dumps({str(k): v for k, v in result.losses.items()}))


@pytest.mark.slow
def test_two_cpu_processes_match_one_process_with_twice_the_batch(tmp_path):
    """DDP averages the two processes' gradients; the global batch (examples 2s, 2s+1) is the same as one
    process with batch 2, so the loss curves agree."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_ddp_worker, args=(2, port, str(tmp_path / "ddp"), str(tmp_path / "ddp.json")), nprocs=2)
    ddp = {int(k): v for k, v in json.loads((tmp_path / "ddp.json").read_text()).items()}
    single = run(tiny_recipe(optim={"max_steps": 4, "batch_size": 2}), tmp_path / "single")
    assert sorted(ddp) == [0, 1, 2, 3]
    for s in range(4):
        assert ddp[s] == pytest.approx(single.losses[s], rel=1e-4, abs=1e-6)
    ck = checkpointing.latest_checkpoint(tmp_path / "ddp")
    assert ck.name == "step_00000004" and (ck / "train_state").is_dir()


# -- the real network ---------------------------------------------------------------------------------------
@pytest.mark.slow
def test_the_real_network_trains_checkpoints_and_evaluates(tmp_path, monkeypatch):
    """The Avat3r network (a very small tiny-preset variant) through the loop, save_checkpoint, load_checkpoint
    and the evaluation runner, on 16² fake examples."""
    from avat3r.eval.runner import evaluate
    from avat3r.model.checkpoint import load_checkpoint

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty"))
    recipe = tiny_recipe(model={"overrides": {"dim": 32, "heads": 2, "self_layers": 1, "cross_layers": 1,
                                              "input_res": 16, "patch": 8, "upsampler_window": 16}},
                         optim={"max_steps": 8, "lr": 3e-3}, run={"checkpoint_every": 8, "preview_every": 8})
    examples = FakeExamples(seed=3, fixed=True, res=16)
    result = train(recipe, tmp_path / "run", examples=examples, progress=False)
    assert result.losses[7] < result.losses[0], result.losses
    model, meta = load_checkpoint(result.checkpoint)
    assert meta["step"] == 8 and meta["expression_space"] == "fake-v1"
    assert meta["expression_names"] == ["a", "b", "c"] and meta["position_prior"] == "geometric"
    assert model.config.expression_dim == 3 and model.config.dim == 32
    trained = evaluate(tmp_path / "ev", checkpoint=tmp_path / "run", examples=examples, n_examples=1,
                       progress=False)
    base = evaluate(tmp_path / "base", checkpoint=tmp_path / "run", baseline="reprojection", examples=examples,
                    n_examples=1, progress=False)
    assert trained.label == "step_00000008" and base.label == "reprojection"
    # fine-tuning starts from the checkpoint's weights exactly, also for the same network fed a constant code
    from avat3r.train.loop import DataInfo, TrainError, default_model_factory

    info = DataInfo("fake-v1", ["a", "b", "c"], [0.0, 0.0, 0.0])
    for overrides in ({}, {"expression_conditioning": "constant"}):
        again = tiny_recipe(model={"overrides": {**recipe.model.overrides, **overrides},
                                   "init": str(result.checkpoint)})
        start = default_model_factory(again, info)
        assert start.config.expression_conditioning == overrides.get("expression_conditioning", "code")
        assert all(torch.equal(a, b) for a, b in zip(start.state_dict().values(), model.state_dict().values()))
    with pytest.raises(TrainError, match="another architecture"):
        default_model_factory(tiny_recipe(model={"overrides": {**recipe.model.overrides, "dim": 64},
                                                 "init": str(result.checkpoint)}), info)
    # twice the input side with the same token grid starts from the lifted weights (avat3r.model.upres)
    from avat3r.model.upres import upres_state

    side, patch = model.config.input_res, model.config.patch
    want = upres_state(model.state_dict(), model.config, 2)
    for conditioning in ("code", "constant"):  # the ablation's constant arm lifts alike
        lifted = default_model_factory(tiny_recipe(model={
            "overrides": {**recipe.model.overrides, "input_res": 2 * side, "patch": 2 * patch,
                          "expression_conditioning": conditioning},
            "init": str(result.checkpoint)}), info)
        assert lifted.config.expression_conditioning == conditioning
        assert all(torch.equal(v, want[k]) for k, v in lifted.state_dict().items())
    with pytest.raises(TrainError, match="another architecture"):  # a finer token grid is not a lift
        default_model_factory(tiny_recipe(model={"overrides": {**recipe.model.overrides, "input_res": 2 * side},
                                                 "init": str(result.checkpoint)}), info)
    # The fixed example was trained on: the network beats its untrained (reprojection) self on it.
    assert trained.rows[0]["psnr"] > base.rows[0]["psnr"]


def test_training_supervises_at_twice_the_input_resolution(tmp_path):
    """data.options.input_downsample = 2: a 16² model trains on 32² data, its targets rendered and scored at 32²."""
    from test_bad_inputs import write_tiny_set

    from avat3r.model.network import ModelInputError

    write_tiny_set(tmp_path / "set", res=32)
    small = {"dim": 32, "heads": 2, "self_layers": 1, "cross_layers": 1, "input_res": 16, "patch": 8,
             "expression_hidden": 16, "upsampler_window": 16}

    def recipe(options):
        return recipe_from_dict({"model": {"preset": "tiny", "overrides": small},
                                 "data": {"manifest": str(tmp_path / "set" / "manifest.parquet"), "n_targets": 2,
                                          "options": options},
                                 "optim": {"max_steps": 2}, "loss": {"lpips": 0.0},
                                 "run": {"checkpoint_every": 2, "preview_every": 2}}, source="test")

    result = train(recipe({"input_downsample": 2}), tmp_path / "run", progress=False)
    assert result.step == 2 and all(torch.isfinite(torch.tensor(v)) for v in result.losses.values())
    from avat3r.imageio import read_image

    preview = read_image(tmp_path / "run" / "previews" / "step_00000002.png")
    assert preview.shape[0] > 3 * 32  # rows at the targets' 32² (inputs scaled up to match)
    with pytest.raises(ModelInputError, match="16x16 inputs, got 32x32.*input_downsample = 2"):
        train(recipe({}), tmp_path / "run-full", progress=False)

    # scored on targets coarser than it was supervised at, eval says so; at its supervision size, not
    from avat3r.eval.runner import evaluate

    write_tiny_set(tmp_path / "set16", res=16)
    for data, expect_note in (("set16", True), ("set", False)):
        said = []
        evaluate(tmp_path / f"eval-{data}", checkpoint=result.checkpoint, manifest=tmp_path / data / "manifest.parquet",
                 split="train", n_examples=1, progress=False, log=said.append)
        notes = [m for m in said if m.startswith("note:")]
        assert notes == (["note: this model's renders were supervised at 32², these targets are 16²: its splats are "
                          "sized for finer pixels, so whole-frame scores understate it (data at 32² scores it as "
                          "trained)"] if expect_note else []), said
