"""`avat3r animate`: Drive an avatar with an expression sequence; writes a frame stream (tar) to stdout or a file."""

from __future__ import annotations

import typer

from .common import not_built


def register(app: typer.Typer) -> None:
    @app.command("animate", help="Drive an avatar with an expression sequence; writes a frame stream (tar) to stdout or a file.")
    def animate() -> None:
        not_built("animate")
