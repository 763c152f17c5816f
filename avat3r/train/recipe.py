"""Training recipes: a TOML file of five sections, parsed into dataclasses that reject unknown keys.

A recipe fixes everything a run needs except where it writes (the run directory) and whether it resumes::

    [model]  preset = "tiny", overrides = {...}     # Avat3rConfig.preset(preset, **overrides)
    [data]   manifest, split, seed, n_inputs, n_targets, priors, loader (random or streamed) and its workers
    [optim]  Adam(W), learning rate, batch size per process, steps, gradient clipping
    [loss]   λ's of Eq. (18) and when LPIPS starts
    [run]    checkpoint / preview / log cadence, mixed precision, render backend

``--set section.key=value`` overrides any field; values are parsed as TOML (``--set optim.lr=3e-4``,
``--set data.manifest='"x.parquet"'`` or simply ``--set data.manifest=x.parquet``: a value that is not valid
TOML is taken as a string).
"""

from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import tomllib

from ..errors import Avat3rError
from ..typed_values import table_to_dataclass

MAX_VIEWS = 64  # input or target views per example: the paper uses 4 and 8; more only exhausts memory


class RecipeError(Avat3rError, ValueError):
    """A recipe is malformed; the message is one line naming the offending key."""


@dataclass
class ModelSection:
    preset: str = "tiny"
    # Keyword overrides for Avat3rConfig.preset(); the expression dimension is taken from the data.
    overrides: dict = field(default_factory=dict)
    # Start from this checkpoint's weights (fine-tuning; same architecture) instead of a fresh initialisation.
    init: str = ""


@dataclass
class DataSection:
    manifest: str = ""  # manifest.parquet written by `avat3r prep` (+ `avat3r prior`)
    split: str = "train"
    seed: int = 0  # examples are a pure function of (seed, step, rank)
    n_inputs: int = 4  # paper §4.1: 4 input views at random timesteps
    n_targets: int = 8  # paper §4.1: 8 supervised views at the target expression
    position_prior: str = "geometric"  # recorded in the checkpoint; must match what `prior` wrote
    feature_prior: str = "none"  # "sapiens" for the paper model
    num_workers: int = 0  # DataLoader workers per process (example decoding/rendering)
    options: dict = field(default_factory=dict)  # extra keyword arguments for ExampleSampler
    # "random": read each sample by byte span (shards on a local disk); "stream": read shards front to back
    # with WebDataset, one group (a person's samples in one shard) per stream at a time (avat3r.data.streaming)
    loader: str = "random"
    stream_lanes: int = 4  # steps interleaved over lanes; num_workers must divide it
    stream_block: int = 64  # steps a lane stays with one group
    shard_url: str = ""  # "" = shards beside the manifest; else a template with {shard}, e.g. "pipe:cat /x/{shard}"


@dataclass
class OptimSection:
    optimizer: str = "adam"  # "adam" (paper §4.1) or "adamw"
    # The paper's learning rate did not survive in our copy of the text (§4.1 "a learning rate of ."); 1e-4 is
    # the usual value for ViT-base LRMs trained at small global batch sizes.
    lr: float = 1e-4
    betas: tuple = (0.9, 0.999)
    weight_decay: float = 0.0
    warmup_steps: int = 0  # linear warm-up, then the schedule (the paper names none)
    schedule: str = "constant"  # after warm-up: "constant", or "cosine" decay to min_lr at max_steps
    min_lr: float = 0.0  # the cosine schedule's final learning rate
    batch_size: int = 1  # examples per process and step (paper: 1 per GPU on 8 GPUs)
    max_steps: int = 1000
    grad_clip: float = 1.0  # global gradient-norm clip; 0 disables


@dataclass
class LossSection:
    # Eq. (18). The λ values did not survive in our copy of the paper (§3.3 "with , and ."); L1/D-SSIM use the
    # 3DGS weights 0.8/0.2 that Eq. (15)–(16) follow. λ_lpips is our choice (LPIPS ≈ 0.1–0.4, L1 ≈ 0.02–0.05).
    l1: float = 0.8
    ssim: float = 0.2
    lpips: float = 0.1
    lpips_start_step: int = 0  # paper: LPIPS only after 3M of 3.5M steps
    lpips_net: str = "alex"  # "alex" or "vgg"
    lpips_weights: str = ""  # torchvision backbone file; "" = $TORCH_HOME/hub/checkpoints/<standard name>
    # Extra L1/D-SSIM weight on the pixels an expression change moves (truth at the target vs the target
    # cameras' images at the reference timestep; needs data.options.reference_views): at 64² those are ~2 %
    # of a frame, too few for an unweighted loss to notice. 0 = unweighted (Eq. 18 as printed).
    expression_weight: float = 0.0
    # Instead of a per-pixel weight: the share of every target view's L1/D-SSIM that its changing region gets,
    # however few pixels it has (a blink's 1 % of a frame then counts as much as an open jaw's 8 %).
    # 0 = off; use one of expression_weight and expression_share.
    expression_share: float = 0.0
    # Weight of a second, paired term: the same reconstruction decoded at the reference code (input 0's) and
    # rendered into the target cameras, against their images at the reference timestep (same pixel weights).
    # Both expressions from one encoding: a change of code pays only where the truth changes. Needs
    # data.options.reference_views; 0 = off (one decode per example).
    reference_weight: float = 0.0


@dataclass
class RunSection:
    checkpoint_every: int = 500
    keep_checkpoints: int = 3  # most recent complete checkpoints kept (0 = keep all)
    preview_every: int = 500  # PNG previews (inputs | prediction | ground truth)
    log_every: int = 10  # TensorBoard scalars
    mixed_precision: str = "auto"  # "auto" = bf16 autocast on GPU, none on CPU; or "no" / "bf16"
    render_backend: str = "auto"  # rasterize() backend: gsplat on CUDA, torch otherwise
    seed: int = 0  # parameter initialisation and per-step randomness (dropout)
    find_unused_parameters: bool = False  # DDP: only for ablations that leave some parameters out of the graph


SECTIONS = {"model": ModelSection, "data": DataSection, "optim": OptimSection, "loss": LossSection,
            "run": RunSection}


@dataclass
class Recipe:
    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    optim: OptimSection = field(default_factory=OptimSection)
    loss: LossSection = field(default_factory=LossSection)
    run: RunSection = field(default_factory=RunSection)
    source: str = "<defaults>"

    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("source")
        d["optim"]["betas"] = list(d["optim"]["betas"])
        return d

    def validate(self) -> Recipe:
        problems = []
        nonfinite = [f"{name}.{f.name}" for name in SECTIONS for f in fields(SECTIONS[name])
                     if isinstance(v := getattr(getattr(self, name), f.name), float) and not math.isfinite(v)]
        if nonfinite:  # nan compares false with every bound below, so it would pass them all
            problems.append(f"{', '.join(nonfinite)} must be finite")
        if not 1 <= self.data.n_inputs <= MAX_VIEWS or not 1 <= self.data.n_targets <= MAX_VIEWS:
            problems.append(f"data.n_inputs and data.n_targets must lie between 1 and {MAX_VIEWS}, got "
                            f"{self.data.n_inputs} and {self.data.n_targets}")
        if self.data.num_workers < 0:
            problems.append("data.num_workers must be ≥ 0")
        problems += self._stream_problems()
        if self.optim.optimizer not in ("adam", "adamw"):
            problems.append(f"optim.optimizer must be 'adam' or 'adamw', not {self.optim.optimizer!r}")
        if not self.optim.lr > 0 or not 0 <= self.optim.min_lr <= self.optim.lr:
            problems.append("optim.lr must be positive and optim.min_lr between 0 and optim.lr")
        if self.optim.schedule not in ("constant", "cosine"):
            problems.append(f"optim.schedule must be 'constant' or 'cosine', not {self.optim.schedule!r}")
        if self.optim.batch_size < 1 or self.optim.max_steps < 1:
            problems.append("optim.batch_size and optim.max_steps must be ≥ 1")
        betas = self.optim.betas
        if len(betas) != 2 or not all(isinstance(b, (int, float)) and 0 <= b < 1 for b in betas):
            problems.append("optim.betas must be two values in [0, 1)")
        if min(self.loss.l1, self.loss.ssim, self.loss.lpips, self.loss.expression_weight,
               self.loss.reference_weight) < 0:
            problems.append("loss weights must be ≥ 0")
        if not 0 <= self.loss.expression_share < 1:
            problems.append(f"loss.expression_share must lie in [0, 1), got {self.loss.expression_share}")
        if self.loss.expression_weight > 0 and self.loss.expression_share > 0:
            problems.append("set one of loss.expression_weight and loss.expression_share, not both")
        if (self.loss.expression_weight > 0 or self.loss.expression_share > 0 or self.loss.reference_weight > 0) \
                and not self.data.options.get("reference_views", False):
            problems.append("loss.expression_weight, loss.expression_share and loss.reference_weight need "
                            "data.options.reference_views = true")
        if self.loss.lpips_net not in ("alex", "vgg"):
            problems.append(f"loss.lpips_net must be 'alex' or 'vgg', not {self.loss.lpips_net!r}")
        if self.run.mixed_precision not in ("auto", "no", "bf16"):
            problems.append(f"run.mixed_precision must be auto, no or bf16, not {self.run.mixed_precision!r}")
        if min(self.run.checkpoint_every, self.run.preview_every, self.run.log_every) < 1:
            problems.append("run.checkpoint_every, run.preview_every and run.log_every must be ≥ 1")
        if not problems:
            problems += self._model_config_problems()
        if problems:
            raise RecipeError(f"{self.source}: " + "; ".join(problems))
        return self

    def _stream_problems(self) -> list[str]:
        d = self.data
        if d.loader not in ("random", "stream"):
            return [f"data.loader must be 'random' or 'stream', not {d.loader!r}"]
        problems = []
        if d.stream_lanes < 1 or d.stream_block < 1:
            problems.append(f"data.stream_lanes and data.stream_block must be ≥ 1, got {d.stream_lanes} and "
                            f"{d.stream_block}")
        elif d.loader == "stream" and d.num_workers > 1 and d.stream_lanes % d.num_workers:
            problems.append(f"data.num_workers ({d.num_workers}) must divide data.stream_lanes ({d.stream_lanes})")
        if d.shard_url and "{shard}" not in d.shard_url:
            problems.append(f"data.shard_url {d.shard_url!r} must contain {{shard}} (or be empty)")
        return problems

    def _model_config_problems(self) -> list[str]:
        """Build the model config the run would (the expression size comes from the data later; the preset's
        stands in), so a bad model.overrides fails here rather than after the data has loaded."""
        from ..model.config import Avat3rConfig, ConfigError

        overrides = dict(self.model.overrides)
        overrides.setdefault("use_features", self.data.feature_prior != "none")
        if not overrides["use_features"]:
            overrides.setdefault("feature_dim", 0)
        try:
            Avat3rConfig.preset(self.model.preset, **overrides)
        except (ConfigError, TypeError) as err:
            return [f"model: {err}"]
        return []


def _section(name: str, cls, values: dict, source: str):
    return table_to_dataclass(cls, values, name, source, RecipeError)


def recipe_from_dict(doc: dict, source: str = "<recipe>") -> Recipe:
    unknown = sorted(set(doc) - set(SECTIONS))
    if unknown:
        raise RecipeError(f"{source}: unknown section [{unknown[0]}] (known: {', '.join(SECTIONS)})")
    parts = {name: _section(name, cls, doc.get(name, {}), source) for name, cls in SECTIONS.items()}
    return Recipe(**parts, source=source).validate()


def parse_override(text: str) -> tuple[list[str], Any]:
    """``a.b=value`` → (["a", "b"], value parsed as TOML, or the raw string if it is not TOML)."""
    if "=" not in text:
        raise RecipeError(f"override {text!r}: expected section.key=value", param="overrides")
    key, raw = text.split("=", 1)
    path = [p for p in key.strip().split(".") if p]
    if len(path) < 2:
        raise RecipeError(f"override {text!r}: the key needs a section, e.g. optim.lr=1e-4", param="overrides")
    try:
        value = tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()
    return path, value


def apply_overrides(doc: dict, overrides: list[str]) -> dict:
    doc = copy.deepcopy(doc)
    for text in overrides:
        path, value = parse_override(text)
        node = doc
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise RecipeError(f"override {text!r}: {part} is not a table", param="overrides")
        node[path[-1]] = value
    return doc


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> Recipe:
    path = Path(path)
    if not path.is_file():
        raise RecipeError(f"recipe {path} does not exist")
    try:
        doc = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise RecipeError(f"{path}: not valid TOML ({e})") from None
    # Relative data paths are taken relative to the working directory, as on the command line.
    return recipe_from_dict(apply_overrides(doc, overrides or []), source=str(path))
