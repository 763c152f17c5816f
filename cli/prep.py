"""`avat3r prep`: Prepare data as WebDataset shards + manifest.parquet: `synth` (procedural SynthHeads), `images` (your photos + cams.json)."""

from __future__ import annotations

import typer

from .common import not_built


def register(app: typer.Typer) -> None:
    @app.command("prep", help="Prepare data as WebDataset shards + manifest.parquet: `synth` (procedural SynthHeads), `images` (your photos + cams.json).")
    def prep() -> None:
        not_built("prep")
