"""`avat3r eval`: Evaluate a checkpoint on held-out persons: PSNR, SSIM, LPIPS, JOD, AKD, CSIM; writes parquet + markdown."""

from __future__ import annotations

import typer

from .common import not_built


def register(app: typer.Typer) -> None:
    @app.command("eval", help="Evaluate a checkpoint on held-out persons: PSNR, SSIM, LPIPS, JOD, AKD, CSIM; writes parquet + markdown.")
    def eval_stage() -> None:
        not_built("eval")
