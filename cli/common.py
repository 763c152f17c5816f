"""Shared CLI plumbing: one-line errors and the not-built-yet notice."""

from __future__ import annotations

import sys
from typing import NoReturn

import typer


def fail(message: str, code: int = 1) -> NoReturn:
    """Print one line to stderr and exit non-zero."""
    typer.echo(f"avat3r: error: {message}", err=True)
    raise typer.Exit(code)


def not_built(stage: str) -> NoReturn:
    typer.echo(f"avat3r {stage}: this stage is not built yet.", err=True)
    raise typer.Exit(2)


def info(message: str) -> None:
    """Progress and log lines go to stderr so stdout can carry data (frame streams)."""
    print(message, file=sys.stderr, flush=True)
