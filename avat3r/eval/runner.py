"""`avat3r eval`: score a checkpoint (or the reprojection baseline) on deterministic held-out examples.

Example i of the evaluation is ``ExampleSampler(manifest, split, seed).example(i)`` — the same 4 inputs and 8
targets on every run and for every model, so rows of two evaluations compare one to one. Outputs in ``out_dir``:
``metrics.parquet`` (one row per example: person and the mean over its target views of every available
metric), ``metrics.md`` (overall and per-person tables, plus why any metric is not available) and
``comparison.png`` (per example: inputs | prediction | ground truth rows).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..cameras import atomic_write_bytes
from ..train.checkpointing import TRAIN_JSON, resolve_checkpoint
from ..train.loop import collate_examples, predict, render_targets, to_device
from .metrics import METRICS, MetricSet, build_metrics
from .sheet import comparison_rows, write_png

BASELINES = ("reprojection",)


class EvalError(RuntimeError):
    """An evaluation cannot run; one-line message."""


@dataclass
class EvalReport:
    rows: list[dict]
    unavailable: dict[str, str]
    label: str
    out_dir: Path
    files: list[Path] = field(default_factory=list)

    def overall(self) -> dict[str, float]:
        return {m: _mean([r[m] for r in self.rows]) for m in METRICS if m not in self.unavailable}


def _mean(values) -> float:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return sum(finite) / len(finite) if finite else float("nan")


def _std(values) -> float:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    if len(finite) < 2:
        return 0.0
    m = sum(finite) / len(finite)
    return math.sqrt(sum((v - m) ** 2 for v in finite) / (len(finite) - 1))


# -- models ----------------------------------------------------------------------------------------------
def load_trained(checkpoint: str | Path, device="cpu") -> tuple[torch.nn.Module, dict]:
    """A trained model and its metadata (config.json fields plus train.json when the run wrote one)."""
    from ..model.checkpoint import load_checkpoint

    path = resolve_checkpoint(checkpoint)
    loaded = load_checkpoint(path, device)
    model, meta = loaded if isinstance(loaded, tuple) else (loaded, json.loads((path / "config.json").read_text()))
    meta = dict(meta or {})
    if (path / TRAIN_JSON).is_file():
        meta.setdefault("train", json.loads((path / TRAIN_JSON).read_text()))
    meta["checkpoint"] = str(path)
    return model, meta


def reprojection_baseline(config, seed: int = 0) -> torch.nn.Module:
    """An untrained network: the Δp, Δc heads start at zero, so it splats its inputs' pixels at the prior's
    positions in their own colours (Eq. 11–12 skips only). A fixed seed makes its other heads repeatable."""
    from ..model import Avat3r

    torch.manual_seed(seed)
    return Avat3r(config)


def _data_options(meta: dict) -> dict:
    """Sampler options the model was trained with (input/target resolution etc.), from its checkpoint."""
    data = meta.get("data") or meta.get("train", {}).get("recipe", {}).get("data", {})
    opts = dict(data.get("options", {}))
    for key in ("n_inputs", "n_targets"):
        if key in data:
            opts[key] = data[key]
    return opts


def default_examples(manifest: str | Path, split: str, seed: int, options: dict):
    from ..data.examples import ExampleSampler

    if not Path(manifest).is_file():
        raise EvalError(f"manifest {manifest} does not exist")
    return ExampleSampler(str(manifest), split, seed, **options)


# -- the runner --------------------------------------------------------------------------------------------
def evaluate(out_dir: str | Path, *, checkpoint: str | Path | None = None, manifest: str | Path | None = None,
             split: str = "test", n_examples: int = 16, seed: int = 0, baseline: str | None = None,
             model: torch.nn.Module | None = None, meta: dict | None = None, examples=None,
             metrics: MetricSet | None = None, sheet_examples: int = 4, render_backend: str = "auto",
             device: str = "cpu", progress: bool = True, sampler_options: dict | None = None,
             log: Callable[[str], None] = lambda message: None) -> EvalReport:
    """Evaluate a checkpoint (``checkpoint``), the reprojection baseline (``baseline="reprojection"``, with the
    checkpoint's config when one is given), or a given ``model``; write the report files into ``out_dir``.
    ``sampler_options`` override the example sampler's (e.g. ``random_timesteps=False``: all inputs at the
    target's expression)."""
    if baseline is not None and baseline not in BASELINES:
        raise EvalError(f"unknown baseline {baseline!r}; choose one of {', '.join(BASELINES)}")
    if n_examples < 1:
        raise EvalError("--examples must be at least 1")
    meta = dict(meta or {})
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    label = "model"
    if model is None:
        if checkpoint is not None:
            model, meta = load_trained(checkpoint, device)
            label = Path(meta["checkpoint"]).name
        if baseline == "reprojection":
            config = model.config if model is not None else _tiny_config_for(manifest, split, seed, examples)
            model = reprojection_baseline(config)
            label = "reprojection"
        if model is None:
            raise EvalError("give --checkpoint, or --baseline reprojection")
    model = model.to(device).eval()
    if examples is None:
        if manifest is None:
            raise EvalError("--manifest is required")
        examples = default_examples(manifest, split, seed, {**_data_options(meta), **(sampler_options or {})})
    _check_space(meta, examples)
    metrics = metrics if metrics is not None else build_metrics(device=device)
    for name, why in metrics.unavailable.items():
        log(f"{name}: not available ({why})")

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows, sheets = [], []
    iterator = range(n_examples)
    if progress:
        from tqdm import tqdm

        iterator = tqdm(iterator, desc="eval", unit="example", dynamic_ncols=True)
    with torch.no_grad():
        for i in iterator:
            ex = examples.example(i)
            batch = to_device(collate_examples([ex]), torch.device(device))
            pred = render_targets(predict(model, batch), batch["target_cameras"], render_backend)[0].clamp(0, 1)
            target = batch["target_rgb"][0].float()
            values = metrics(pred, target)
            row = {"example": i, "person": str(ex.get("person", "")), "views": int(target.shape[0])}
            for name in METRICS:
                row[name] = float(values[name].nanmean()) if name in values else None
            rows.append(row)
            if len(sheets) < sheet_examples:
                sheets.append(comparison_rows(batch["inputs_rgb"][0], pred, target))

    report = EvalReport(rows, dict(metrics.unavailable), label, out_dir)
    report.files = [write_parquet(report, out_dir / "metrics.parquet", meta, split, seed),
                    write_markdown(report, out_dir / "metrics.md", split, seed),
                    write_sheet(sheets, out_dir / "comparison.png")]
    return report


def _tiny_config_for(manifest, split, seed, examples):
    """Without a checkpoint the baseline uses the tiny preset sized to the data's expression codes."""
    from ..model import Avat3rConfig

    if examples is None:
        if manifest is None:
            raise EvalError("--manifest is required")
        examples = default_examples(manifest, split, seed, {})
    ex = examples.example(0)
    res = int(ex["inputs_rgb"].shape[-2])
    return Avat3rConfig.preset("tiny", expression_dim=int(ex["expr"].shape[-1]), input_res=res)


def _check_space(meta: dict, examples) -> None:
    trained = meta.get("expression_space")
    data = (getattr(examples, "expression_space", None)
            or getattr(getattr(examples, "manifest", None), "expression_space", None))
    if trained and data and trained != data:
        raise EvalError(f"the checkpoint was trained on expression space {trained!r} but the manifest holds {data!r}")


# -- outputs ------------------------------------------------------------------------------------------------
def write_parquet(report: EvalReport, path: Path, meta: dict, split: str, seed: int) -> Path:
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    columns = {"example": pa.array([r["example"] for r in report.rows], pa.int64()),
               "person": pa.array([r["person"] for r in report.rows], pa.string()),
               "views": pa.array([r["views"] for r in report.rows], pa.int32())}
    for name in METRICS:  # unavailable metrics stay as all-null columns, never as made-up numbers
        columns[name] = pa.array([r[name] for r in report.rows], pa.float64())
    table = pa.table(columns).replace_schema_metadata({
        "label": report.label, "checkpoint": str(meta.get("checkpoint", "")), "split": split, "seed": str(seed),
        "not_available": json.dumps(report.unavailable, sort_keys=True)})
    sink = io.BytesIO()
    pq.write_table(table, sink)
    atomic_write_bytes(path, sink.getvalue())
    return path


def _fmt(name: str, value) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    return f"{value:.2f}" if name in ("psnr", "akd", "jod") else f"{value:.4f}"


def write_markdown(report: EvalReport, path: Path, split: str, seed: int) -> Path:
    names = list(METRICS)
    lines = [f"# Evaluation: {report.label}", "",
             (f"{len(report.rows)} examples from split `{split}` (seed {seed}); each row averages its target "
              "views. PSNR/SSIM/CSIM/JOD higher is better, LPIPS/AKD lower is better."), "",
             "## Overall", "", "| model | examples | " + " | ".join(n.upper() for n in names) + " |",
             "|---|---|" + "---|" * len(names)]
    cells = []
    for n in names:
        if n in report.unavailable:
            cells.append("n/a")
        else:
            vals = [r[n] for r in report.rows]
            cells.append(f"{_fmt(n, _mean(vals))} ± {_fmt(n, _std(vals))}")
    lines.append(f"| {report.label} | {len(report.rows)} | " + " | ".join(cells) + " |")
    lines += ["", "## Per person", "", "| person | examples | " + " | ".join(n.upper() for n in names) + " |",
              "|---|---|" + "---|" * len(names)]
    for person in sorted({r["person"] for r in report.rows}):
        rows = [r for r in report.rows if r["person"] == person]
        lines.append(f"| {person} | {len(rows)} | " + " | ".join(
            "n/a" if n in report.unavailable else _fmt(n, _mean([r[n] for r in rows])) for n in names) + " |")
    if report.unavailable:
        lines += ["", "## Not available", ""]
        lines += [f"- {n.upper()}: {why}" for n, why in sorted(report.unavailable.items())]
    atomic_write_bytes(path, ("\n".join(lines) + "\n").encode())
    return path


def write_sheet(sheets: list, path: Path) -> Path:
    import numpy as np

    width = max(s.shape[1] for s in sheets)
    padded = [np.pad(s, ((0, 6), (0, width - s.shape[1]), (0, 0))) for s in sheets]
    write_png(path, np.concatenate(padded, axis=0))
    return path
