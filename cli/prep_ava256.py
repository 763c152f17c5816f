"""`avat3r prep ava256`: the ava256 release as downloaded → head-centric shards + manifest.parquet."""

from __future__ import annotations

import typer


def register(prep_app: typer.Typer) -> None:
    """Add the `ava256` command to `avat3r prep`."""
