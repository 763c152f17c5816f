"""`avat3r eval`: score a checkpoint (or a baseline) on deterministic held-out examples.

Example i of the evaluation is ``ExampleSampler(manifest, split, seed).example(i)`` — the same 4 inputs and 8
targets on every run and for every model, so rows of two evaluations compare one to one. Targets are never at
an input camera (``novel_targets``), and every example carries its target cameras' images at the reference
timestep (``reference_views``), so the expression metrics of ``avat3r.eval.metrics`` can compare the avatar
decoded with the target code to the same avatar decoded with the inputs' code. Outputs in ``out_dir``:
``metrics.parquet`` (one row per example: person, timesteps, expression group and every available score),
``metrics.md`` (overall, per-expression and per-person tables, plus why any metric is not available) and
``comparison.png`` (per example: inputs | prediction | ground truth rows) and, where the avatar is also decoded
at the inputs' code, ``response.png`` (the first example of each expression group: where the truth changes
beside where the avatar changes, ``avat3r.sheet.response_block``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..cameras import Cameras
from ..data.examples import collate_examples
from ..errors import Avat3rError
from ..fileio import atomic_write_bytes
from ..forward import predict, render_targets, to_device
from ..imageio import write_png
from ..sheet import comparison_rows, response_block
from ..stages.common import resolve_device
from ..train.checkpointing import TRAIN_JSON, resolve_checkpoint
from .metrics import METRICS, REGION_TAU, MetricSet, build_metrics, example_scores, expression_group
from .video import VideoProtocol, evaluate_videos

BASELINES = ("reprojection", "nearest-view")
# every evaluation scores novel views only and needs the reference images for the expression metrics
EVAL_SAMPLER_OPTIONS = {"novel_targets": True, "reference_views": True}
# the columns of metrics.parquet that hold scores, in report order
SCORES = ("psnr", "psnr_fg", "psnr_region", "psnr_region_ref", "expr_gain", "pasted_gain", "response_ratio",
          "aligned_ratio", "leak_ratio", "region_frac", "ssim", "lpips", "jod", "akd", "csim")
LABELS = {"psnr": "PSNR", "psnr_fg": "PSNR fg", "psnr_region": "PSNR region",
          "psnr_region_ref": "PSNR region (ref code)", "expr_gain": "gain (dB)", "pasted_gain": "pasted gain (dB)",
          "response_ratio": "ratio", "aligned_ratio": "aligned ratio", "leak_ratio": "leak ratio",
          "region_frac": "region frac", "ssim": "SSIM",
          "lpips": "LPIPS", "jod": "JOD", "akd": "AKD", "csim": "CSIM"}


class EvalError(Avat3rError, RuntimeError):
    """An evaluation cannot run; one-line message."""


@dataclass(frozen=True)
class Stat:
    """Mean, standard error of the mean (None below two values) and count of the values that exist."""

    mean: float | None
    se: float | None
    n: int


def portable_text(text: str) -> str:
    """Recorded reports are shared: name the torch hub and home folders, not this machine's paths."""
    return text.replace(torch.hub.get_dir(), "$TORCH_HOME/hub").replace(str(Path.home()), "~")


def summarize(values) -> Stat:
    """Stat of the finite values; None (no changing pixels, metric not available) is left out and counted
    out through ``n``."""
    finite = [float(v) for v in values if v is not None and math.isfinite(v)]
    n = len(finite)
    if n == 0:
        return Stat(None, None, 0)
    mean = sum(finite) / n
    se = math.sqrt(sum((v - mean) ** 2 for v in finite) / (n - 1) / n) if n > 1 else None
    return Stat(mean, se, n)


@dataclass
class EvalReport:
    rows: list[dict]
    unavailable: dict[str, str]
    label: str
    out_dir: Path
    files: list[Path] = field(default_factory=list)
    videos: list[dict] = field(default_factory=list)  # the video protocol's rows, one per person

    def overall(self) -> dict[str, Stat]:
        """Every available score over the examples: mean ± standard error (n)."""
        return {m: summarize(r[m] for r in self.rows) for m in SCORES if m not in self.unavailable}


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


def nearest_view(inputs_rgb: torch.Tensor, inputs_cameras: Cameras, target_cameras: Cameras) -> torch.Tensor:
    """The nearest-view baseline: each target view is the input image whose camera's viewing direction (its
    centre's direction from the origin, the head) is nearest in angle to the target camera's. (N,H,W,3) inputs
    → (V,H,W,3), at the targets' resolution."""
    d_in = torch.nn.functional.normalize(inputs_cameras.centers.float(), dim=-1)
    d_tg = torch.nn.functional.normalize(target_cameras.centers.float().to(d_in.device), dim=-1)
    picked = inputs_rgb[(d_tg @ d_in.T).argmax(dim=1).to(inputs_rgb.device)].float()
    width, height = target_cameras.image_size
    if picked.shape[1:3] != (height, width):
        picked = torch.nn.functional.interpolate(picked.permute(0, 3, 1, 2), size=(height, width), mode="bilinear",
                                                 align_corners=False).permute(0, 2, 3, 1)
    return picked


def resolution_note(meta: dict, input_res: int | None, examples) -> str | None:
    """A one-line note when the targets are coarser than the resolution the model's renders were supervised at
    (``input_res`` × its training ``input_downsample``): its splats are sized for finer pixels and spread at
    coarser ones, so whole-frame scores there understate it."""
    factor = int(_data_options(meta).get("input_downsample", 1) or 1)
    manifest = getattr(examples, "manifest", None)
    if input_res is None or factor <= 1 or manifest is None or not len(manifest):
        return None
    supervised, stored = input_res * factor, int(manifest["width"][0])
    if stored >= supervised:
        return None
    return (f"note: this model's renders were supervised at {supervised}², these targets are {stored}²: its splats "
            f"are sized for finer pixels, so whole-frame scores understate it (data at {supervised}² scores it "
            f"as trained)")


def _check_input_side(input_res: int | None, examples) -> None:
    """Refuse, before any example is drawn, a set stored below the model's input side (inputs are only ever
    averaged down to it, never enlarged)."""
    manifest = getattr(examples, "manifest", None)
    if input_res is None or manifest is None or not len(manifest):
        return
    stored = int(manifest["width"][0])
    if stored < input_res:
        raise EvalError(f"this set holds {stored}² images, smaller than the model's {input_res}² inputs; prepare "
                        f"the evaluation set at {input_res}² or more (e.g. prep synth --res {input_res})")


def _data_options(meta: dict) -> dict:
    """Sampler options the model was trained with (input/target resolution etc.), from its checkpoint."""
    data = meta.get("data") or meta.get("train", {}).get("recipe", {}).get("data", {})
    opts = dict(data.get("options", {}))
    for key in ("n_inputs", "n_targets"):
        if key in data:
            opts[key] = data[key]
    return opts


def default_examples(manifest: str | Path, split: str, seed: int, options: dict, input_res: int | None = None):
    """The evaluation's example sampler: ``options`` plus EVAL_SAMPLER_OPTIONS (novel targets, reference
    views), whatever ``options`` say. With the model's ``input_res``, inputs stored at a whole multiple of it
    are block-averaged down to it (``input_downsample``) and targets scored at the stored resolution, whatever
    the model was trained on."""
    from ..data.examples import ExampleSampler
    from ..data.manifest import read_manifest

    if not Path(manifest).is_file():
        raise EvalError(f"manifest {manifest} does not exist")
    m = read_manifest(str(manifest))
    present = set(m["segment"].tolist())
    unknown = sorted(set(options.get("input_segments") or ()) - present)
    if unknown:
        raise EvalError(f"no segment named {', '.join(unknown)} in {manifest} (it has {', '.join(sorted(present))})")
    options = dict(options)
    if input_res is not None and len(m):
        stored = int(m["width"][0])
        options["input_downsample"] = stored // input_res if stored % input_res == 0 and stored > input_res else 1
    return ExampleSampler(m, split, seed, **{**options, **EVAL_SAMPLER_OPTIONS})


def _expression_names(meta: dict, examples, dim: int) -> list[str]:
    """Names of the code's parameters: the checkpoint's, the example source's, its expression space's, or
    e0..eN."""
    names = meta.get("expression_names") or getattr(examples, "expression_names", None)
    if not names:
        space = (getattr(examples, "expression_space", None)
                 or getattr(getattr(examples, "manifest", None), "expression_space", None))
        try:
            from ..expressions import get_space

            names = get_space(space).names if space else None
        except (ImportError, ValueError):  # an unknown space (ExpressionError is a ValueError)
            names = None
    names = list(names or [])
    return names if len(names) == dim else [f"e{i}" for i in range(dim)]


# -- predictions -----------------------------------------------------------------------------------------
Predictor = Callable[[dict], tuple[torch.Tensor, torch.Tensor | None]]


def _encoder_inputs(batch: dict) -> tuple:
    feats = batch.get("inputs_feat")
    return (batch["inputs_rgb"].float(), Cameras.cat(batch["inputs_cameras"]), batch["inputs_pos"].float(),
            batch["inputs_conf"].float(), None if feats is None else feats.float())


def avatar_predictor(model: torch.nn.Module, backend: str = "auto") -> Predictor:
    """Renders of one example's avatar in its target cameras, decoded with the target code and (when the
    example has one) with the reference code: (V,H,W,3) each, the second None without ``ref_expr``."""

    def run(batch: dict) -> tuple[torch.Tensor, torch.Tensor | None]:
        cams = batch["target_cameras"]
        if "ref_expr" not in batch:
            return render_targets(predict(model, batch), cams, backend)[0].clamp(0, 1), None
        codes = torch.cat([batch["expr"], batch["ref_expr"]]).float()
        if callable(getattr(model, "encode", None)) and callable(getattr(model, "decode", None)):
            # encode once, decode both codes as two frames of one avatar: the same identity state for both
            images = render_targets(model.decode(model.encode(*_encoder_inputs(batch)), codes), cams * 2, backend)
        else:  # a model with forward() only: one pass per code
            images = torch.cat([render_targets(predict(model, {**batch, "expr": c[None]}), cams, backend)
                                for c in codes])
        images = images.clamp(0, 1)
        return images[0], images[1]

    return run


def nearest_view_predictor(batch: dict) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The nearest-view baseline has no code: its render at the reference code is the same image (so its gain
    and ratio are 0 by definition)."""
    pred = nearest_view(batch["inputs_rgb"][0], batch["inputs_cameras"][0], batch["target_cameras"][0])
    return pred, (pred if "ref_expr" in batch else None)


# -- the runner --------------------------------------------------------------------------------------------
def evaluate(out_dir: str | Path, *, checkpoint: str | Path | None = None, manifest: str | Path | None = None,
             split: str = "test", n_examples: int = 96, seed: int = 0, baseline: str | None = None,
             model: torch.nn.Module | None = None, meta: dict | None = None, examples=None,
             metrics: MetricSet | None = None, sheet_examples: int = 4, render_backend: str = "auto",
             device: str = "cpu", progress: bool = True, sampler_options: dict | None = None,
             lpips_weights: str | Path | None = None, video: VideoProtocol | None = None,
             log: Callable[[str], None] = lambda message: None) -> EvalReport:
    """Evaluate a checkpoint (``checkpoint``), a baseline (``baseline``: "reprojection", with the checkpoint's
    config when one is given, or "nearest-view"), or a given ``model``; write the report files into
    ``out_dir``. ``sampler_options`` override the example sampler's (e.g. ``random_timesteps=False``: all inputs
    at the target's expression); EVAL_SAMPLER_OPTIONS always apply. ``lpips_weights``: the LPIPS backbone file.
    ``video``: also run the frontal-video protocol (``avat3r.eval.video``) on every person of the split."""
    if baseline is not None and baseline not in BASELINES:
        raise EvalError(f"unknown baseline {baseline!r}; choose one of {', '.join(BASELINES)}")
    if n_examples < 1:
        raise EvalError("n_examples must be at least 1", param="n_examples")
    meta = dict(meta or {})
    device = str(resolve_device(device))
    if Path(out_dir).exists() and not Path(out_dir).is_dir():
        raise EvalError(f"{out_dir}: is a file, not a folder for the report")
    label = "model"
    if model is None and checkpoint is not None:
        model, meta = load_trained(checkpoint, device)
        label = Path(meta["checkpoint"]).name
    if examples is None:
        if manifest is None:
            raise EvalError("a manifest is required", param="manifest")
        config = getattr(model, "config", None)
        examples = default_examples(manifest, split, seed, {**_data_options(meta), **(sampler_options or {})},
                                    input_res=getattr(config, "input_res", None))
        note = resolution_note(meta, getattr(config, "input_res", None), examples)
        if note:
            log(note)
    _check_space(meta, examples)
    _check_input_side(getattr(getattr(model, "config", None), "input_res", None), examples)
    predictor, label, model = _predictor(model, baseline, label, examples, device, render_backend)
    if video is not None and model is None:
        raise EvalError(f"the video protocol needs an avatar model; the {baseline} baseline has none",
                        param="checkpoint")
    metrics = metrics if metrics is not None else build_metrics(lpips_weights=lpips_weights, device=device)
    for name, why in metrics.unavailable.items():
        log(f"{name}: not available ({why})")

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows, sheets, responses, names = [], [], {}, None
    iterator = range(n_examples)
    if progress:
        from tqdm import tqdm

        iterator = tqdm(iterator, desc="eval", unit="example", dynamic_ncols=True)
    with torch.no_grad():
        for i in iterator:
            ex = examples.example(i)
            names = names or _expression_names(meta, examples, int(ex["expr"].shape[-1]))
            batch = to_device(collate_examples([ex]), torch.device(device))
            pred, pred_ref = predictor(batch)
            rows.append(score_example(i, ex, batch, pred, pred_ref, metrics, names))
            if len(sheets) < sheet_examples:
                sheets.append(comparison_rows(batch["inputs_rgb"][0], pred, batch["target_rgb"][0].float()))
            group = rows[-1]["expression"]
            if pred_ref is not None and "target_ref_rgb" in batch and group and group not in responses:
                responses[group] = response_block(_response_title(rows[-1]), batch["target_ref_rgb"][0],
                                                  batch["target_rgb"][0], pred_ref, pred)

    report = EvalReport(rows, {k: portable_text(v) for k, v in metrics.unavailable.items()}, label, out_dir)
    if video is not None:
        report.videos = run_videos(model, examples.manifest, split, video, seed, device, render_backend, metrics,
                                   out_dir, progress)
    report.files = [write_parquet(report, out_dir / "metrics.parquet", meta, split, seed),
                    write_markdown(report, out_dir / "metrics.md", split, seed),
                    write_sheet(sheets, out_dir / "comparison.png")]
    if responses:
        report.files.append(write_sheet([responses[g] for g in sorted(responses)], out_dir / "response.png"))
    if report.videos:
        report.files.append(write_video_parquet(report.videos, out_dir / "video.parquet", label, split, seed))
    return report


def run_videos(model, manifest, split: str, protocol: VideoProtocol, seed: int, device: str, backend: str,
               metrics: MetricSet, out_dir: Path, progress: bool) -> list[dict]:
    """The video protocol, with a side-by-side preview (truth | avatar) of the first person's video."""
    from ..video import VideoWriter

    jod = metrics.functions.get("jod")
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(desc="eval videos", unit="frame", dynamic_ncols=True)
    previews = []

    def preview(person: str, pred: torch.Tensor, truth: torch.Tensor) -> None:
        if previews:
            return
        path = out_dir / f"video_{person}.mp4"
        with VideoWriter(path, fps=protocol.fps) as writer:
            for t, p in zip(truth, pred):
                writer.write(torch.cat([t, p], dim=1))
        previews.append(path)

    try:
        return evaluate_videos(model, manifest, split, protocol, seed, device, backend,
                               jod.video if jod is not None else None, on_video=preview,
                               progress=bar.update if bar is not None else None)
    finally:
        if bar is not None:
            bar.close()


def write_video_parquet(videos: list[dict], path: Path, label: str, split: str, seed: int) -> Path:
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table({
        "person": pa.array([v["person"] for v in videos], pa.string()),
        "camera": pa.array([v["camera"] for v in videos], pa.string()),
        "segment": pa.array([v["segment"] for v in videos], pa.string()),
        "frames": pa.array([v["frames"] for v in videos], pa.int32()),
        **{k: pa.array([_finite(v[k]) for v in videos], pa.float64()) for k in ("psnr", "fg_psnr", "jod")},
    }).replace_schema_metadata({"label": label, "split": split, "seed": str(seed)})
    sink = io.BytesIO()
    pq.write_table(table, sink)
    atomic_write_bytes(path, sink.getvalue())
    return path


def _predictor(model, baseline: str | None, label: str, examples, device: str, backend: str):
    """The prediction function and the report's label for a model or a baseline."""
    if baseline == "nearest-view":
        return nearest_view_predictor, baseline, None
    if baseline == "reprojection":
        config = getattr(model, "config", None) or _tiny_config_for(examples)
        model, label = reprojection_baseline(config), baseline
    if model is None:
        raise EvalError("give a checkpoint, or a baseline: " + " or ".join(BASELINES), param="checkpoint")
    model = model.to(device).eval()
    return avatar_predictor(model, backend), label, model


def _finite(value) -> float | None:
    """Parquet and the tables hold numbers or None, never NaN/inf."""
    return float(value) if value is not None and math.isfinite(value) else None


def score_example(index: int, ex: dict, batch: dict, pred: torch.Tensor, pred_ref: torch.Tensor | None,
                  metrics: MetricSet, names: Sequence[str]) -> dict:
    """One metrics.parquet row: identifiers, the pooled and expression scores, and the mean over the target
    views of every per-image metric (SSIM, LPIPS, JOD, AKD, CSIM)."""
    target = batch["target_rgb"][0].float()
    has_ref = pred_ref is not None and "target_ref_rgb" in batch
    row = {"example": index, "person": str(ex.get("person", "")), "views": int(target.shape[0]),
           "expression": expression_group(ex["expr"], ex["ref_expr"], names) if "ref_expr" in ex else None,
           "target_timestep": ex.get("target_timestep"), "ref_timestep": ex.get("ref_timestep")}
    values = metrics(pred, target)
    for name in METRICS:
        row[name] = _finite(float(values[name].nanmean())) if name in values else None
    mask = batch.get("target_mask")
    # PSNR pooled over the views replaces the per-view mean: one perfect view would make that infinite
    scores = example_scores(pred, target, None if mask is None else mask[0],
                            pred_ref if has_ref else None, batch["target_ref_rgb"][0] if has_ref else None,
                            batch["target_ref_valid"][0] if has_ref else None)
    row.update({k: _finite(v) for k, v in scores.items()})
    return row


def _response_title(row: dict) -> str:
    """The response block's title: the example, its expression group and its expression scores."""
    scores = [f"{label} {row[key]:{fmt}}" for key, label, fmt in
              (("expr_gain", "gain", "+.2f"), ("response_ratio", "ratio", ".2f"), ("aligned_ratio", "aligned", ".2f"),
               ("leak_ratio", "leak", ".2f"))
              if row.get(key) is not None]
    return f"example {row['example']} ({row['person']}): {row['expression']}  " + ", ".join(scores)


def _tiny_config_for(examples):
    """Without a checkpoint the baseline uses the tiny preset sized to the data's expression codes."""
    from ..model import Avat3rConfig

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
    for name in ("expression", "target_timestep", "ref_timestep"):
        columns[name] = pa.array([r[name] for r in report.rows], pa.string())
    for name in SCORES:  # unavailable or undefined scores stay null, never made-up numbers
        columns[name] = pa.array([r[name] for r in report.rows], pa.float64())
    table = pa.table(columns).replace_schema_metadata({
        "label": report.label, "checkpoint": str(meta.get("checkpoint", "")), "split": split, "seed": str(seed),
        "region_tau": str(REGION_TAU), "not_available": json.dumps(report.unavailable, sort_keys=True)})
    sink = io.BytesIO()
    pq.write_table(table, sink)
    atomic_write_bytes(path, sink.getvalue())
    return path


def _fmt(name: str, value) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    if name in ("psnr", "psnr_fg", "psnr_region", "psnr_region_ref", "expr_gain", "pasted_gain", "akd", "jod"):
        return f"{value:.2f}"
    return f"{value:.3f}" if name in ("response_ratio", "aligned_ratio", "leak_ratio") else f"{value:.4f}"


def format_stat(name: str, stat: Stat) -> str:
    """``mean ± standard error (n)``."""
    if stat.n == 0:
        return "n/a (0)"
    se = f" ± {_fmt(name, stat.se)}" if stat.se is not None else ""
    return f"{_fmt(name, stat.mean)}{se} ({stat.n})"


def _mean_cell(name: str, rows: list[dict], unavailable: dict) -> str:
    return "n/a" if name in unavailable else _fmt(name, summarize(r[name] for r in rows).mean)


def write_markdown(report: EvalReport, path: Path, split: str, seed: int) -> Path:
    rows, names = report.rows, [n for n in SCORES if n not in report.unavailable]
    overall = report.overall()
    lines = [f"# Evaluation: {report.label}", "",
             (f"{len(rows)} examples from split `{split}` (seed {seed}), targets at cameras no input uses. PSNR "
              "pools the MSE over an example's target views (fg: weighted by the true foreground mask); the other "
              "metrics average them. The *region* is the pixels where the truth changes between the reference "
              f"timestep (the inputs') and the target's (max over RGB |Δ| > {REGION_TAU}, dilated by one pixel). "
              "Gain = region PSNR with the target code − region PSNR with the reference code (0: the code is "
              "ignored); ratio = mean |Δ| of the avatar between the two codes / mean |Δ| of the truth, in the "
              "region (1: moves as much as the truth); aligned ratio = the part of the avatar's change along the "
              "truth's, ⟨Δavatar, Δtruth⟩ / ⟨Δtruth, Δtruth⟩ (1: the truth's change; 0: none, or unrelated to the "
              "truth's); leak ratio = the avatar's mean |Δ| in the foreground outside the region / the truth's in it "
              "(0: the code moves only the truth's pixels). Pasted gain = the gain of the avatar at the reference code plus the truth's own change "
              "(the truth's change pasted on: a reference, not a bound — on a blurry region a redrawn one can "
              "score above it). Examples without changing pixels have no "
              "region scores (n counts the rest). PSNR/SSIM/CSIM/JOD higher is better, LPIPS/AKD lower is better."), "",
             "## Overall", "", f"| metric | {report.label}: mean ± SE (n) |", "|---|---|"]
    lines += [f"| {LABELS[n]} | {format_stat(n, overall[n])} |" for n in names]
    empty = sum(1 for r in rows if r["expression"] is not None and r["psnr_region"] is None)
    if empty:
        lines += ["", f"{empty} of {len(rows)} examples have no changing pixels and are left out of the region "
                      "scores."]
    lines += _expression_table(rows)
    lines += ["", "## Per person", "", "| person | examples | " + " | ".join(LABELS[n] for n in names) + " |",
              "|---|---|" + "---|" * len(names)]
    for person in sorted({r["person"] for r in rows}):
        mine = [r for r in rows if r["person"] == person]
        lines.append(f"| {person} | {len(mine)} | "
                     + " | ".join(_mean_cell(n, mine, report.unavailable) for n in names) + " |")
    if report.videos:
        lines += ["", "## Frontal videos", "",
                  f"One video per person from its frontal camera (never an input), {report.videos[0]['frames']} "
                  "frames driven by each frame's code; PSNR pooled over the frames; JOD scores the video "
                  "(FovVideoVDP, 10 = identical).", "",
                  "| person | camera | segment | frames | PSNR | fg PSNR | JOD |", "|---|---|---|---|---|---|---|"]
        lines += [f"| {v['person']} | {v['camera']} | {v['segment']} | {v['frames']} | {_fmt('psnr', v['psnr'])} | "
                  f"{_fmt('psnr', v['fg_psnr'])} | {_fmt('jod', v['jod'])} |" for v in report.videos]
        cells = [format_stat("psnr", summarize(v[k] for v in report.videos)) for k in ("psnr", "fg_psnr", "jod")]
        lines.append(f"| **mean ± SE (n)** | | | | {' | '.join(cells)} |")
    if report.unavailable:
        lines += ["", "## Not available", ""]
        lines += [f"- {n.upper()}: {why}" for n, why in sorted(report.unavailable.items())]
    atomic_write_bytes(path, ("\n".join(lines) + "\n").encode())
    return path


def _expression_table(rows: list[dict]) -> list[str]:
    """One row per expression group (the parameter that changes most between reference and target code)."""
    groups = sorted({r["expression"] for r in rows if r["expression"] is not None})
    if not groups:
        return []
    lines = ["", "## Per expression", "",
             "Group = the code parameter that changes most from the reference to the target (Left/Right merged; "
             "`neutral`: no parameter changes by 0.05 or more).", "",
             "| expression | n | PSNR region | gain (dB) | pasted gain (dB) | ratio | aligned ratio | leak ratio | "
             "PSNR fg |", "|---|---|---|---|---|---|---|---|---|"]
    by_size = sorted(groups, key=lambda g: (-sum(r["expression"] == g for r in rows), g))
    for group in by_size:
        mine = [r for r in rows if r["expression"] == group]
        stats = [format_stat(n, summarize(r[n] for r in mine))
                 for n in ("expr_gain", "pasted_gain", "response_ratio", "aligned_ratio", "leak_ratio")]
        lines.append(f"| {group} | {len(mine)} | {_mean_cell('psnr_region', mine, {})} | {' | '.join(stats)} | "
                     f"{_mean_cell('psnr_fg', mine, {})} |")
    return lines


def write_sheet(sheets: list, path: Path) -> Path:
    import numpy as np

    width = max(s.shape[1] for s in sheets)
    padded = [np.pad(s, ((0, 6), (0, width - s.shape[1]), (0, 0))) for s in sheets]
    write_png(path, np.concatenate(padded, axis=0))
    return path
