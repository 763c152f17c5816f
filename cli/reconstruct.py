"""`avat3r reconstruct`: Reconstruct an animatable avatar (.avt) from a folder of posed photos and their cams.json."""

from __future__ import annotations

import typer

from .common import not_built


def register(app: typer.Typer) -> None:
    @app.command("reconstruct", help="Reconstruct an animatable avatar (.avt) from a folder of posed photos and their cams.json.")
    def reconstruct() -> None:
        not_built("reconstruct")
