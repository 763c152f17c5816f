"""`avat3r lift`: Turn one photo into 4 posed views + cams.json with a pluggable 3D lifting backend."""

from __future__ import annotations

import typer

from .common import not_built


def register(app: typer.Typer) -> None:
    @app.command("lift", help="Turn one photo into 4 posed views + cams.json with a pluggable 3D lifting backend.")
    def lift() -> None:
        not_built("lift")
