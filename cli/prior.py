"""`avat3r prior`: Add position/confidence maps (geometric, DUSt3R, ground truth) and feature maps (Sapiens) to input samples."""

from __future__ import annotations

import typer

from .common import not_built


def register(app: typer.Typer) -> None:
    @app.command("prior", help="Add position/confidence maps (geometric, DUSt3R, ground truth) and feature maps (Sapiens) to input samples.")
    def prior() -> None:
        not_built("prior")
