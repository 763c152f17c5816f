"""`avat3r eval`: evaluate a checkpoint on held-out persons: PSNR, SSIM, LPIPS, JOD, AKD, CSIM and expression
metrics; parquet + markdown."""

from __future__ import annotations

from pathlib import Path

import typer

from .common import fail, fail_error, info

HELP = """Evaluate a checkpoint on held-out persons of a manifest.

Example i is the same for every model (a pure function of --seed and i), so two evaluations compare row by row;
targets are never at an input camera. Writes OUT/metrics.parquet (one row per example), OUT/metrics.md (overall,
per-expression and per-person tables, each metric as mean ± standard error (n)), OUT/comparison.png (inputs |
prediction | ground truth) and, for an avatar model, OUT/response.png (one example per expression: truth and
avatar at the inputs' and at the target's code, and where each one changes). Metrics whose models or weights are missing (LPIPS backbone, pyfvvdp for JOD,
keypoint/identity models for AKD/CSIM) are reported as not available.

Expression metrics work in the region where the truth changes between the inputs' (reference) timestep and the
target's: max over RGB |Δ| > tau = 0.05, dilated by one pixel. Gain (dB) = region PSNR of the avatar driven by
the target code − region PSNR of the same avatar at the reference code (0: the code is ignored); ratio = the
avatar's mean change between the two codes / the truth's mean change in the region (1: as much as the truth);
aligned ratio = the part of that change along the truth's, <Δavatar, Δtruth> / <Δtruth, Δtruth> (0 for a change
unrelated to the truth's, which the ratio still counts);
pasted gain = the gain of the avatar's reference-code render plus the truth's own change (the truth's change
pasted on: a reference for the gain, not a bound; on a blurry region a redrawn one can score above it); leak
ratio = the avatar's mean change in the foreground outside the region / the truth's in it (0: the code moves
only the truth's pixels).
"""

# the flag of each library parameter an error may name
FLAGS = {"n_examples": "--examples", "manifest": "--manifest", "checkpoint": "--checkpoint or --baseline",
         "device": "--device"}
# sampler options of each input mode (--inputs)
INPUT_MODES = {"mixed": {"random_timesteps": True, "inputs_elsewhere": False},
               "consistent": {"random_timesteps": False, "inputs_elsewhere": False},
               "other": {"random_timesteps": False, "inputs_elsewhere": True}}


def _input_mode(inputs: str | None, consistent: bool | None = None, other: bool = False) -> str:
    """The input mode from --inputs or the older flags (--consistent-inputs/--mixed-inputs,
    --other-expression-inputs), which name one mode each and must agree with each other and with --inputs."""
    if inputs is not None and inputs not in INPUT_MODES:
        fail(f"--inputs must be one of {', '.join(INPUT_MODES)}, not {inputs!r}")
    named = {inputs} - {None}
    if consistent is not None:
        named.add("consistent" if consistent else "mixed")
    if other:
        named.add("other")
    if len(named) > 1:
        fail(f"the input modes {', '.join(sorted(named))} exclude each other; give one --inputs")
    return named.pop() if named else "mixed"


def _segments(value: str | None) -> tuple[str, ...] | None:
    if value is None:
        return None
    segments = tuple(s.strip() for s in value.split(",") if s.strip())
    if not segments:
        fail("--input-segments needs at least one segment name (e.g. neutral)")
    return segments


def _sampler_options(mode: str = "mixed", segments: tuple[str, ...] | None = None) -> dict:
    """Always explicit, so that every checkpoint is measured on the same examples whatever its training
    recipe's sampler options were."""
    return {**INPUT_MODES[mode], "avoid_target_timestep": False, "input_segments": segments}


def register(app: typer.Typer) -> None:
    @app.command("eval", help=HELP)
    def eval_stage(
        checkpoint: Path | None = typer.Option(None, "--checkpoint", "-c", help="Checkpoint folder, or a run "
                                                  "directory (its latest complete checkpoint)."),
        manifest: Path | None = typer.Option(None, "--manifest", "-m", help="manifest.parquet with the held-out "
                                             "split (or the recipe's eval.manifest)."),
        recipe: Path | None = typer.Option(None, "--recipe", help="Evaluation protocol (TOML: [eval] and an "
                                           "optional [video]; e.g. recipes/eval-ava256.toml). Flags override it."),
        overrides: list[str] | None = typer.Option(None, "--set", help="Override a recipe value, e.g. "
                                                   "--set eval.manifest=/data/ava256/manifest.parquet."),
        split: str | None = typer.Option(None, "--split", help="Manifest split to evaluate (default test)."),
        examples: int | None = typer.Option(None, "--examples", "-n", help="Number of examples (4 inputs + "
                                            "targets each; default 96)."),
        seed: int | None = typer.Option(None, "--seed", help="Example seed (same seed → same examples; default 0)."),
        baseline: str | None = typer.Option(None, "--baseline", help="Evaluate a reference instead: "
                                               "'reprojection' (the untrained network: inputs splatted at the "
                                               "prior's positions; uses the checkpoint's config if given) or "
                                               "'nearest-view' (each target is the input image whose camera "
                                               "direction is nearest; gain and ratio 0 by definition)."),
        inputs: str | None = typer.Option(None, "--inputs", help="Input views: 'mixed' (default, as in training: "
                                          "random timesteps), 'consistent' (at the target's timestep) or 'other' "
                                          "(all at one other timestep: the animation case)."),
        consistent: bool | None = typer.Option(None, "--consistent-inputs/--mixed-inputs",
                                               help="Same as --inputs consistent / --inputs mixed."),
        other: bool = typer.Option(False, "--other-expression-inputs", help="Same as --inputs other."),
        input_segments: str | None = typer.Option(None, "--input-segments", help="Comma-separated segments the "
                                                  "input views come from (e.g. 'neutral': neutral photos driven "
                                                  "to every expression)."),
        lpips_weights: Path | None = typer.Option(None, "--lpips-weights", help="torchvision backbone file for "
                                                  "LPIPS (default: $TORCH_HOME/hub/checkpoints/<standard name>)."),
        out: Path = typer.Option(Path("eval_out"), "--out", "-o", help="Output folder."),
        device: str = typer.Option("auto", "--device", help="cpu, cuda, cuda:N or auto (CUDA when available)."),
        quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
    ) -> None:
        from avat3r.errors import user_errors
        from avat3r.eval.recipe import EvalRecipe, load_eval_recipe
        from avat3r.eval.runner import LABELS, evaluate, format_stat

        try:
            plan = load_eval_recipe(recipe, overrides) if recipe is not None else EvalRecipe()
        except user_errors() as e:
            fail_error(e, {**FLAGS, "recipe": "--recipe", "overrides": "--set"})
        if overrides and recipe is None:
            fail("--set changes a recipe's values; give --recipe too")
        ev = plan.eval
        manifest = manifest if manifest is not None else (Path(ev.manifest) if ev.manifest else None)
        if manifest is None:
            fail("give --manifest (or a recipe with eval.manifest)")
        mode = _input_mode(inputs if inputs is not None or consistent is not None or other else ev.inputs,
                           consistent, other)
        segments = _segments(input_segments) if input_segments is not None else (tuple(ev.input_segments) or None)
        options = _sampler_options(mode, segments)
        weights = lpips_weights if lpips_weights is not None else (Path(ev.lpips_weights) if ev.lpips_weights
                                                                   else None)
        try:
            report = evaluate(out, checkpoint=checkpoint, manifest=manifest, split=split or ev.split,
                              n_examples=examples if examples is not None else ev.examples,
                              seed=seed if seed is not None else ev.seed, baseline=baseline, device=device,
                              progress=not quiet, log=info, sampler_options=options, lpips_weights=weights,
                              video=plan.video.protocol() if plan.video is not None else None)
        except user_errors() as e:
            fail_error(e, FLAGS)
        info(f"{report.label}: " + ", ".join(f"{LABELS[k]} {format_stat(k, s)}" for k, s in report.overall().items()))
        if report.videos:
            info(f"{report.label}: frontal videos of {len(report.videos)} persons written to {out}/video.parquet")
        for path in report.files:
            info(f"wrote {path}")
