"""The training loop (paper §4.1) on Hugging Face Accelerate.

One step, per process: a batch of examples (4 input views at random timesteps + 8 supervised views at the target
expression), ``model(...) → Gaussians``, each example's Gaussians rendered into its 8 target cameras on black,
Eq. (18) against the target images, Adam, gradient clipping. bf16 autocast only on GPU; the renderer always
runs in float32.

Determinism: example ``(step · world + rank) · batch + j`` is a pure function of the data seed and that index,
and every step reseeds torch from ``(run seed, step, rank)``; together with the optimizer state restored from
the checkpoint, a resumed run continues exactly the example stream and the loss curve of an uninterrupted one.
With ``data.loader = "stream"`` the same holds for batches streamed from WebDataset shards group by group
(``avat3r.data.streaming``): the examples come from a GroupSchedule, a pure function of the step too.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from ..data.examples import collate_examples
from ..errors import Avat3rError
from ..forward import predict, render_targets, to_device
from ..photometric import LpipsWeightsMissing, changing_region, psnr
from .checkpointing import (
    TRAIN_JSON,
    latest_checkpoint,
    prune_checkpoints,
    read_train_json,
    resolve_checkpoint,
    write_checkpoint,
    write_json,
)
from .losses import LossWeights, PhotometricLoss
from .recipe import OptimSection, Recipe
from .scalar_log import ScalarLog

TRAIN_STATE = "train_state"


class TrainError(Avat3rError, RuntimeError):
    """A run cannot start or continue; the message is one line."""


class ExampleSource(Protocol):
    def example(self, i: int) -> dict: ...


@dataclass
class DataInfo:
    """What a checkpoint must record about the data it was trained on (DESIGN §4)."""

    expression_space: str
    expression_names: list[str]
    neutral: list[float]

    @property
    def expression_dim(self) -> int:
        return len(self.neutral)


@dataclass
class TrainResult:
    step: int  # optimisation steps completed
    losses: dict[int, float] = field(default_factory=dict)  # step → loss averaged over processes
    seconds: dict[int, float] = field(default_factory=dict)  # step → wall time of the step (data included)
    baseline: dict | None = None  # the untrained model's step-0 metrics (the reprojection baseline)
    checkpoint: Path | None = None
    main: bool = True  # whether this is the main process (the one that logs)


# -- batches -------------------------------------------------------------------------------------------
def example_index(step: int, rank: int, world: int, batch: int, j: int) -> int:
    """The global example index: disjoint across processes, independent of the process count for a fixed
    global batch (one process with batch 2 sees what two processes with batch 1 see)."""
    return (step * world + rank) * batch + j


class StepBatches(torch.utils.data.Dataset):
    """Item k = this process's batch for step ``start + k``; map-style, so DataLoader workers prefetch it."""

    def __init__(self, source: ExampleSource, start: int, stop: int, rank: int, world: int, batch: int):
        self.source, self.start, self.stop = source, start, stop
        self.rank, self.world, self.batch = rank, world, batch

    def __len__(self) -> int:
        return max(self.stop - self.start, 0)

    def __getitem__(self, k: int) -> dict:
        step = self.start + k
        return collate_examples([self.source.example(example_index(step, self.rank, self.world, self.batch, j))
                                 for j in range(self.batch)])


# -- one step ------------------------------------------------------------------------------------------
def expression_pixel_weight(batch: dict, weight: float, share: float = 0.0) -> torch.Tensor | None:
    """Per-pixel loss weights (…,H,W) from the pixels the expression change moves (None when unweighted).

    ``weight``: 1 + ``weight`` on the region. ``share``: in every target view the region's pixels together get
    ``share`` of the view's weight and the rest 1 − ``share``; views with no region (or all region) stay
    uniform. Each view's weights average 1, so views count equally and the loss keeps its scale."""
    if weight <= 0 and share <= 0:
        return None
    region = changing_region(batch["target_rgb"], batch["target_ref_rgb"], batch["target_ref_valid"])
    if share <= 0:
        return 1.0 + weight * region
    pixels = region.shape[-2] * region.shape[-1]
    inside = region.sum(dim=(-2, -1), keepdim=True)
    w = torch.where(region > 0, share / inside.clamp_min(1), (1 - share) / (pixels - inside).clamp_min(1))
    return torch.where((inside > 0) & (inside < pixels), w, 1.0 / pixels) * pixels


def reference_loss(loss_fn, pred_ref: torch.Tensor, batch: dict, step: int,
                   pixel_weight: torch.Tensor | None) -> torch.Tensor:
    """The paired term: renders of the avatar decoded at the reference code (B,T,H,W,3) against the target
    cameras' images at the reference timestep, views without such an image left out (0 when none has one).
    One encoding must then show both expressions: what the code changes outside the truth's change costs twice."""
    valid = batch["target_ref_valid"].bool()
    if not bool(valid.any()):
        return pred_ref.sum() * 0.0  # keeps every rank's graph the same shape
    weight = None if pixel_weight is None else pixel_weight[valid]
    return loss_fn(pred_ref[valid], batch["target_ref_rgb"][valid].float(), step, weight)[0]


def _past(over: bool, accelerator) -> bool:
    """Whether any process is past the time limit: all of them then stop at the same step (a process that
    stopped alone would leave the others waiting in the next collective)."""
    if accelerator.num_processes == 1:
        return over
    flag = torch.tensor([float(over)], device=accelerator.device)
    return bool(accelerator.reduce(flag, "max").item() > 0)


def step_seed(seed: int, step: int, rank: int) -> int:
    return int(np.random.SeedSequence([seed, step, rank]).generate_state(1)[0])


# -- components ----------------------------------------------------------------------------------------
def default_example_source(recipe: Recipe, schedule=None) -> ExampleSource:
    """The recipe's ExampleSampler; with a GroupSchedule (``data.loader = "stream"``) examples come from groups."""
    from ..data.examples import ExampleSampler

    if not recipe.data.manifest:
        raise TrainError(f"{recipe.source}: data.manifest is empty; point it at a manifest.parquet",
                         param="data.manifest")
    if not Path(recipe.data.manifest).is_file():
        raise TrainError(f"manifest {recipe.data.manifest} does not exist (run `avat3r prep` and `avat3r prior`)")
    return ExampleSampler(recipe.data.manifest, recipe.data.split, recipe.data.seed,
                          n_inputs=recipe.data.n_inputs, n_targets=recipe.data.n_targets, schedule=schedule,
                          **recipe.data.options)


def data_info(source: ExampleSource, first_example: dict) -> DataInfo:
    """Expression space, names and neutral code: from the source if it declares them, else from the known
    expression spaces, else a zero neutral code of the examples' dimension."""
    e = int(first_example["expr"].shape[-1])
    space = (getattr(source, "expression_space", None)
             or getattr(getattr(source, "manifest", None), "expression_space", None) or "unknown")
    names = getattr(source, "expression_names", None)
    neutral = getattr(source, "neutral", None)
    if (names is None or neutral is None) and space != "unknown":
        try:
            from .. import expressions

            spec = expressions.get_space(space)
            names = names if names is not None else list(spec.names)
            neutral = neutral if neutral is not None else spec.neutral
        except (ImportError, AttributeError, KeyError, ValueError):
            pass
    names = list(names) if names is not None else [f"e{i}" for i in range(e)]
    neutral = [float(x) for x in (torch.as_tensor(neutral).reshape(-1).tolist() if neutral is not None
                                  else [0.0] * e)]
    if len(names) != e or len(neutral) != e:
        raise TrainError(f"expression space {space} has {len(names)} names and a {len(neutral)}-d neutral code "
                         f"but the examples carry {e}-d codes")
    return DataInfo(space, names, neutral)


def default_model_factory(recipe: Recipe, info: DataInfo) -> torch.nn.Module:
    from ..model import Avat3r, Avat3rConfig

    overrides = dict(recipe.model.overrides)
    overrides.setdefault("expression_dim", info.expression_dim)
    overrides.setdefault("use_features", recipe.data.feature_prior != "none")
    if not overrides["use_features"]:
        overrides.setdefault("feature_dim", 0)
    try:
        config = Avat3rConfig.preset(recipe.model.preset, **overrides)
    except TypeError as e:  # an unknown override name
        raise TrainError(f"{recipe.source}: model.overrides: {e}") from None
    model = Avat3r(config)
    if recipe.model.init:
        init_from_checkpoint(model, recipe.model.init)
    return model


def init_from_checkpoint(model: torch.nn.Module, path: str) -> None:
    """Copy a trained checkpoint's weights into ``model`` (fine-tuning). Only the architecture must match: a
    config that differs in non-structural fields (e.g. expression_conditioning) is what an ablation changes.
    A recipe whose input_res and patch are both f× the checkpoint's starts from its lifted weights
    (avat3r.model.upres)."""
    from ..model.checkpoint import load_checkpoint
    from ..model.upres import upres_factor, upres_state

    loaded = load_checkpoint(resolve_checkpoint(path), "cpu")
    source = loaded[0] if isinstance(loaded, tuple) else loaded
    theirs, ours = source.state_dict(), model.state_dict()
    factor = upres_factor(source.config, model.config)
    if factor:  # the recipe asks for f× the input side with the same token grid: start from the lifted weights
        theirs = upres_state(theirs, source.config, factor)
        print(f"model.init: {path} lifted from {source.config.input_res}² to {model.config.input_res}² inputs "
              f"(patch {source.config.patch} → {model.config.patch}; the same model on {factor}×{factor} block "
              "averages)", file=sys.stderr)
    if set(theirs) != set(ours) or any(theirs[k].shape != ours[k].shape for k in ours):
        raise TrainError(f"model.init: {path} has another architecture than the recipe's model")
    model.load_state_dict(theirs)


def default_save_model(directory: Path, model: torch.nn.Module, meta: dict) -> None:
    from ..model.checkpoint import save_checkpoint

    save_checkpoint(directory, model, meta)


def model_meta(recipe: Recipe, info: DataInfo, step: int) -> dict:
    """Recorded with every checkpoint, so `reconstruct`, `animate` and `eval` know what the model expects."""
    return {"step": step, "recipe": recipe.to_dict(), "data": {
        "manifest": recipe.data.manifest, "split": recipe.data.split, "seed": recipe.data.seed,
        "n_inputs": recipe.data.n_inputs, "n_targets": recipe.data.n_targets, "options": recipe.data.options},
        "expression_space": info.expression_space, "expression_names": info.expression_names,
        "neutral": info.neutral, "position_prior": recipe.data.position_prior,
        "feature_prior": recipe.data.feature_prior}


# -- the loop ------------------------------------------------------------------------------------------
def _mixed_precision(recipe: Recipe) -> str:
    if recipe.run.mixed_precision == "auto":
        return "bf16" if torch.cuda.is_available() else "no"
    if recipe.run.mixed_precision == "bf16" and not torch.cuda.is_available():
        return "no"  # bf16 autocast on CPU is slow and not what the recipe is tuned for
    return recipe.run.mixed_precision


def _make_optimizer(recipe: Recipe, model: torch.nn.Module) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    cls = torch.optim.Adam if recipe.optim.optimizer == "adam" else torch.optim.AdamW
    return cls(params, lr=recipe.optim.lr, betas=tuple(recipe.optim.betas), weight_decay=recipe.optim.weight_decay)


def learning_rate(optim: OptimSection, step: int) -> float:
    """The learning rate of update ``step`` (0-based): a linear warm-up over ``warmup_steps``, then constant or a
    cosine decay that reaches ``min_lr`` at ``max_steps``. The recipe's ``max_steps`` is the horizon, so legs
    stopped early with ``--max-steps`` and resumed follow the same curve."""
    if step < optim.warmup_steps:
        return optim.lr * (step + 1) / optim.warmup_steps
    if optim.schedule == "constant":
        return optim.lr
    span = max(1, optim.max_steps - optim.warmup_steps)
    t = min(1.0, (step - optim.warmup_steps) / span)
    return optim.min_lr + 0.5 * (optim.lr - optim.min_lr) * (1.0 + math.cos(math.pi * t))


def train(recipe: Recipe, run_dir: str | Path, *, resume: bool = False, max_steps: int | None = None,
          examples: ExampleSource | None = None,
          model_factory: Callable[[Recipe, DataInfo], torch.nn.Module] = default_model_factory,
          save_model: Callable[[Path, torch.nn.Module, dict], None] = default_save_model,
          allow_random_lpips: bool = False, progress: bool = True, time_limit: float | None = None,
          log: Callable[[str], None] = lambda message: None) -> TrainResult:
    """Train ``recipe`` into ``run_dir`` (checkpoints, TensorBoard logs, previews).

    ``max_steps`` stops early (the recipe's ``optim.max_steps`` otherwise); ``resume`` continues from the last
    complete checkpoint. ``time_limit`` (seconds) ends the run after the first step past it, with a complete
    checkpoint at that step, so a wall-clock-limited job always leaves something to ``resume``.
    ``examples``/``model_factory``/``save_model`` replace the data, the network and its serialisation (tests);
    ``log`` receives one-line progress messages (the CLI prints them to stderr).
    """
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs

    run_dir = Path(run_dir)
    stop = min(max_steps, recipe.optim.max_steps) if max_steps is not None else recipe.optim.max_steps
    # Build the loss first: missing LPIPS weights stop the run before anything else happens.
    try:
        loss_fn = PhotometricLoss(LossWeights(recipe.loss.l1, recipe.loss.ssim, recipe.loss.lpips,
                                              recipe.loss.lpips_start_step),
                                  recipe.loss.lpips_net, recipe.loss.lpips_weights or None, allow_random_lpips)
    except LpipsWeightsMissing as e:
        raise LpipsWeightsMissing(f"{e}; or train without LPIPS: loss.lpips = 0", param="loss.lpips") from None

    accelerator = Accelerator(mixed_precision=_mixed_precision(recipe), cpu=not torch.cuda.is_available(),
                              kwargs_handlers=[DistributedDataParallelKwargs(
                                  find_unused_parameters=recipe.run.find_unused_parameters)])
    rank, world, main = accelerator.process_index, accelerator.num_processes, accelerator.is_main_process
    device = accelerator.device
    loss_fn.to(device)

    streaming = recipe.data.loader == "stream"
    if streaming:
        from ..data.examples import ExampleSampler, GroupSchedule

        schedule = GroupSchedule(world * recipe.optim.batch_size, recipe.data.stream_lanes, recipe.data.stream_block)
        if examples is not None and not (isinstance(examples, ExampleSampler) and examples.schedule == schedule):
            raise TrainError("data.loader = 'stream' needs an ExampleSampler with the recipe's group schedule",
                             param="data.loader")
        source = examples if examples is not None else default_example_source(recipe, schedule)
        # the shards may live elsewhere (data.shard_url): the expression size comes from the manifest instead
        info = data_info(source, {"expr": torch.from_numpy(source.manifest["expr"][0])})
    else:
        source = examples if examples is not None else default_example_source(recipe)
        info = data_info(source, source.example(0))

    torch.manual_seed(recipe.run.seed)  # identical initial weights on every process
    model = model_factory(recipe, info)
    optimizer = _make_optimizer(recipe, model)
    # The learning rate is a pure function of the step (set before each update), so it needs no scheduler
    # state in checkpoints (Accelerate would also step a prepared scheduler once per process).
    model, optimizer = accelerator.prepare(model, optimizer)

    start = 0
    result = TrainResult(step=0, main=main)
    if resume:
        checkpoint = latest_checkpoint(run_dir)
        if checkpoint is None:
            raise TrainError(f"{run_dir} has no complete checkpoint to resume from")
        state = read_train_json(checkpoint)
        accelerator.load_state(str(checkpoint / TRAIN_STATE))
        start = int(state["step"])
        result.baseline = state.get("baseline")
        if main:
            log(f"resuming {run_dir} from step {start} ({checkpoint.name})")
    elif latest_checkpoint(run_dir) is not None:
        raise TrainError(f"{run_dir} already holds checkpoints; resume it or choose another run folder",
                         param="resume")
    result.step = start
    if start >= stop:
        if main:
            log(f"nothing to do: the run is at step {start} and stops at {stop}")
        return result

    writer = None
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_json(run_dir / "recipe.json", recipe.to_dict())
        writer = ScalarLog(run_dir / "logs", start)

    if streaming:
        from ..data.streaming import StreamingExamples, raise_failures

        batches = StreamingExamples(source, start, stop, rank, world, recipe.optim.batch_size,
                                    recipe.data.shard_url)
        batches.check_workers(recipe.data.num_workers)
    else:
        batches = StepBatches(source, start, stop, rank, world, recipe.optim.batch_size)
    loader = torch.utils.data.DataLoader(
        batches, batch_size=None, shuffle=False, num_workers=recipe.data.num_workers, collate_fn=lambda item: item,
        persistent_workers=False, prefetch_factor=2 if recipe.data.num_workers > 0 else None)
    if streaming:
        loader = raise_failures(loader)  # a worker's error as its one line

    bar = None
    if progress and main:
        from tqdm import tqdm

        bar = tqdm(total=stop, initial=start, desc="train", unit="step", dynamic_ncols=True)

    def save(step: int) -> Path:
        meta = model_meta(recipe, info, step)

        def fill(tmp: Path) -> None:
            if main:
                save_model(tmp, accelerator.unwrap_model(model), meta)
                write_json(tmp / TRAIN_JSON, {"step": step, "world_size": world, "recipe": recipe.to_dict(),
                                              "baseline": result.baseline})
            accelerator.save_state(str(tmp / TRAIN_STATE), safe_serialization=True)

        path = write_checkpoint(run_dir, step, fill, is_main=main, barrier=accelerator.wait_for_everyone)
        if main:
            prune_checkpoints(run_dir, recipe.run.keep_checkpoints)
        return path

    model.train()
    paired = recipe.loss.reference_weight > 0  # two decodes per example (loss.reference_weight)
    t_begin = time.perf_counter()
    t_last, t_step, steps_since = t_begin, t_begin, 0
    step = start
    for step, batch in zip(range(start, stop), loader):
        torch.manual_seed(step_seed(recipe.run.seed, step, rank))
        batch = to_device(batch, device)
        with accelerator.autocast():  # paired: one encoding, decoded at the target and the reference code
            gaussians = (predict(model, batch, torch.cat([batch["expr"], batch["ref_expr"]])) if paired
                         else predict(model, batch))
        cams = batch["target_cameras"]
        pred = render_targets(gaussians, cams * 2 if paired else cams, recipe.run.render_backend)
        pred, pred_ref = pred.split(len(cams)) if paired else (pred, None)
        target = batch["target_rgb"].float()
        pixel_weight = expression_pixel_weight(batch, recipe.loss.expression_weight, recipe.loss.expression_share)
        loss, parts = loss_fn(pred, target, step, pixel_weight)
        if paired:
            ref = reference_loss(loss_fn, pred_ref, batch, step, pixel_weight)
            loss, parts["reference"] = loss + recipe.loss.reference_weight * ref, ref.detach()
        if not torch.isfinite(loss):
            raise TrainError(f"the loss became {loss.item()} at step {step}; lower optim.lr or check the data")
        accelerator.backward(loss)
        lr = learning_rate(recipe.optim, step)
        for group in optimizer.param_groups:
            group["lr"] = lr
        grad_norm = (accelerator.clip_grad_norm_(model.parameters(), recipe.optim.grad_clip)
                     if recipe.optim.grad_clip > 0 else None)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

        parts["psnr"] = psnr(pred.detach(), target)
        names = sorted(parts)
        mean = accelerator.reduce(torch.stack([loss.detach(), *[parts[k] for k in names]]).float(), "mean")
        scalars = {"loss": float(mean[0]), **{k: float(v) for k, v in zip(names, mean[1:])}}
        result.losses[step] = scalars["loss"]
        if step == 0:
            # The untrained model reprojects its inputs (zero-initialised Δp, Δc heads): the reference to beat
            # (a fine-tuning run's step 0 is its initial checkpoint instead).
            result.baseline = {k: scalars[k] for k in ("loss", "l1", "dssim", "psnr") if k in scalars}
            if main:
                write_json(run_dir / "baseline.json", {"step": 0, **result.baseline})
                what = "initial checkpoint" if recipe.model.init else "reprojection baseline"
                log(f"step-0 {what}: " + ", ".join(f"{k} {v:.4f}" for k, v in result.baseline.items()))
        done = step + 1
        steps_since += 1
        if main:
            if done % recipe.run.log_every == 0 or step == start:
                now = time.perf_counter()
                logged = {**scalars, "lr": lr, "steps_per_s": steps_since / max(now - t_last, 1e-9)}
                if grad_norm is not None:
                    logged["grad_norm"] = float(grad_norm)
                writer.log(done, {f"train/{k}": v for k, v in logged.items()})
                t_last, steps_since = now, 0
            if done % recipe.run.preview_every == 0 or done == stop:
                write_preview(run_dir / "previews" / f"step_{done:08d}.png", batch, pred)
            if bar is not None:
                bar.set_postfix(loss=f"{scalars['loss']:.4f}", psnr=f"{scalars['psnr']:.2f}", refresh=False)
                bar.update(1)
        out_of_time = time_limit is not None and _past(time.perf_counter() - t_begin > time_limit, accelerator)
        if done % recipe.run.checkpoint_every == 0 or done == stop or out_of_time:
            result.checkpoint = save(done)
        result.step = done
        now = time.perf_counter()
        result.seconds[step], t_step = now - t_step, now
        if out_of_time:
            if main:
                log(f"time limit reached at step {done}; continue with --resume")
            break

    if bar is not None:
        bar.close()
    if writer is not None:
        writer.close()
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return result


def write_preview(path: Path, batch: dict, pred: torch.Tensor) -> None:
    """inputs | prediction | ground truth of the batch's first example, as one PNG."""
    from ..imageio import write_png
    from ..sheet import comparison_rows

    write_png(path, comparison_rows(batch["inputs_rgb"][0], pred[0].detach(), batch["target_rgb"][0]))

