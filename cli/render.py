"""`avat3r render`: Render a frame stream, an .avt or a .ply along a camera path to MP4, PNG frames or PLY files."""

from __future__ import annotations

import typer

from .common import not_built


def register(app: typer.Typer) -> None:
    @app.command("render", help="Render a frame stream, an .avt or a .ply along a camera path to MP4, PNG frames or PLY files.")
    def render() -> None:
        not_built("render")
