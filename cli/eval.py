"""`avat3r eval`: evaluate a checkpoint on held-out persons: PSNR, SSIM, LPIPS, JOD, AKD, CSIM; parquet + markdown."""

from __future__ import annotations

from pathlib import Path

import typer

from .common import fail, info

HELP = """Evaluate a checkpoint on held-out persons of a manifest.

Example i is the same for every model (a pure function of --seed and i), so two evaluations compare row by row.
Writes OUT/metrics.parquet (one row per example), OUT/metrics.md (overall and per-person tables) and
OUT/comparison.png (inputs | prediction | ground truth). Metrics whose models or weights are missing (LPIPS
backbone, pyfvvdp for JOD, keypoint/identity models for AKD/CSIM) are reported as not available.
"""


def _sampler_options(consistent: bool, other: bool) -> dict:
    """Always explicit, so that every checkpoint is measured on the same examples whatever its training
    recipe's sampler options were."""
    if consistent and other:
        fail("--consistent-inputs and --other-expression-inputs exclude each other")
    if other:
        return {"random_timesteps": False, "inputs_elsewhere": True}
    return {"random_timesteps": not consistent, "inputs_elsewhere": False}


def register(app: typer.Typer) -> None:
    @app.command("eval", help=HELP)
    def eval_stage(
        checkpoint: Path | None = typer.Option(None, "--checkpoint", "-c", help="Checkpoint folder, or a run "
                                                  "directory (its latest complete checkpoint)."),
        manifest: Path = typer.Option(..., "--manifest", "-m", help="manifest.parquet with the held-out split."),
        split: str = typer.Option("test", "--split", help="Manifest split to evaluate."),
        examples: int = typer.Option(16, "--examples", "-n", help="Number of examples (4 inputs + targets each)."),
        seed: int = typer.Option(0, "--seed", help="Example seed (same seed → same examples)."),
        baseline: str | None = typer.Option(None, "--baseline", help="Evaluate a reference instead: "
                                               "'reprojection' (the untrained network: inputs splatted at the "
                                               "prior's positions; uses the checkpoint's config if given)."),
        consistent: bool = typer.Option(False, "--consistent-inputs/--mixed-inputs", help="Input views at the "
                                        "target's expression, or (default, as in training) at random timesteps."),
        other: bool = typer.Option(False, "--other-expression-inputs", help="All input views at one expression "
                                   "other than the target's: the animation case (photos at one expression, "
                                   "the avatar driven to another)."),
        out: Path = typer.Option(Path("eval_out"), "--out", "-o", help="Output folder."),
        device: str = typer.Option("auto", "--device", help="cpu, cuda, cuda:N or auto (CUDA when available)."),
        quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
    ) -> None:
        from avat3r.eval.runner import EvalError, evaluate
        from avat3r.model.checkpoint import CheckpointError as ModelCheckpointError
        from avat3r.train.checkpointing import CheckpointError

        try:
            report = evaluate(out, checkpoint=checkpoint, manifest=manifest, split=split, n_examples=examples,
                              seed=seed, baseline=baseline, device=device, progress=not quiet, log=info,
                              sampler_options=_sampler_options(consistent, other))
        except (EvalError, CheckpointError, ModelCheckpointError, FileNotFoundError, ValueError) as e:
            fail(str(e).splitlines()[0] if str(e) else type(e).__name__)
        overall = report.overall()
        info(f"{report.label}: " + ", ".join(f"{k.upper()} {v:.4f}" for k, v in overall.items()))
        for path in report.files:
            info(f"wrote {path}")
