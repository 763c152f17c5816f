"""`avat3r train`: train the Avat3r network from a recipe (one CPU process, or `accelerate launch` for many GPUs)."""

from __future__ import annotations

from pathlib import Path

import typer

from .common import fail, fail_error, info

HELP = """Train the Avat3r network from a recipe (recipes/*.toml).

One process by default (CPU, or one GPU with bf16 autocast). For several GPUs or CPU processes launch the
same command through Accelerate, e.g.

  accelerate launch --multi_gpu --num_processes 8 -m avat3r.cli.main train --recipe recipes/paper.toml -o runs/paper

Writes RUN_DIR/checkpoints/step_XXXXXXXX/ (model.safetensors, config.json, train_state/), TensorBoard logs in
RUN_DIR/logs and PNG previews (inputs | prediction | ground truth) in RUN_DIR/previews.
"""

# what to type for each library parameter an error may name
FLAGS = {"overrides": "--set section.key=value", "resume": "--resume, or another --out",
         "data.manifest": "--set data.manifest=path/to/manifest.parquet", "loss.lpips": "--set loss.lpips=0"}


def register(app: typer.Typer) -> None:
    @app.command("train", help=HELP)
    def train(
        recipe: Path = typer.Option(..., "--recipe", "-r", help="Training recipe (TOML), e.g. recipes/synthheads-tiny.toml."),
        out: Path | None = typer.Option(None, "--out", "-o", help="Run directory (default: runs/<recipe name>)."),
        resume: bool = typer.Option(False, "--resume", help="Continue from the run directory's last complete checkpoint."),
        max_steps: int | None = typer.Option(None, "--max-steps", help="Stop after this many steps in total "
                                                "(the recipe's optim.max_steps otherwise)."),
        time_limit: float | None = typer.Option(None, "--time-limit", help="Stop after this many minutes of "
                                                 "training (at the next step, with a checkpoint); continue with "
                                                 "--resume. For jobs with a wall-clock limit."),
        overrides: list[str] = typer.Option([], "--set", help="Override a recipe value: section.key=value "
                                            "(TOML value), e.g. --set optim.lr=3e-4. Repeatable."),
        quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
    ) -> None:
        from avat3r.errors import user_errors
        from avat3r.train.loop import train as run_training
        from avat3r.train.recipe import load_recipe

        if max_steps is not None and max_steps < 1:
            fail(f"--max-steps must be at least 1, got {max_steps}")
        if time_limit is not None and not time_limit > 0:
            fail(f"--time-limit must be a positive number of minutes, got {time_limit}")
        try:
            parsed = load_recipe(recipe, overrides)
            run_dir = out if out is not None else Path("runs") / recipe.stem
            result = run_training(parsed, run_dir, resume=resume, max_steps=max_steps, progress=not quiet, log=info,
                                  time_limit=None if time_limit is None else time_limit * 60)
        except user_errors() as e:
            fail_error(e, FLAGS)
        if result.main and result.checkpoint is not None:
            info(f"step {result.step}: checkpoint {result.checkpoint}")
