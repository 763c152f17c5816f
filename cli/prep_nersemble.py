"""`avat3r prep nersemble`: the nersemble release as downloaded → head-centric shards + manifest.parquet."""

from __future__ import annotations

import typer


def register(prep_app: typer.Typer) -> None:
    """Add the `nersemble` command to `avat3r prep`."""
