"""`avat3r train`: Train the Avat3r network from a recipe (one CPU process, or `accelerate launch` for many GPUs)."""

from __future__ import annotations

import typer

from .common import not_built


def register(app: typer.Typer) -> None:
    @app.command("train", help="Train the Avat3r network from a recipe (one CPU process, or `accelerate launch` for many GPUs).")
    def train() -> None:
        not_built("train")
