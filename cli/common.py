"""Shared CLI plumbing: one-line errors (library errors with the flag of the parameter at fault), progress
bars and the not-built-yet notice."""

from __future__ import annotations

import sys
from typing import NoReturn

import typer


def fail(message: str, code: int = 1) -> NoReturn:
    """Print one line to stderr and exit non-zero."""
    typer.echo(f"avat3r: error: {message}", err=True)
    raise typer.Exit(code)


def fail_error(err: BaseException, flags: dict[str, str] | None = None) -> NoReturn:
    """Report a library error as its one line. The library names its own parameters, never flags; where the
    error names one (``err.param``) that ``flags`` maps to this command's flag (or a short hint), it is added."""
    from avat3r.errors import error_line

    line = error_line(err)
    hint = (flags or {}).get(getattr(err, "param", None) or "")
    fail(f"{line} ({hint})" if hint else line)


def check_fps(fps: float | None) -> None:
    """A frame rate must be a finite positive number (0, nan or inf would write a video nobody can play)."""
    import math

    if fps is not None and not (math.isfinite(fps) and fps > 0):
        fail(f"--fps must be a positive number, got {fps:g}")


def not_built(stage: str) -> NoReturn:
    typer.echo(f"avat3r {stage}: this stage is not built yet.", err=True)
    raise typer.Exit(2)


def info(message: str) -> None:
    """Progress and log lines go to stderr so stdout can carry data (frame streams)."""
    print(message, file=sys.stderr, flush=True)


class LazyBar:
    """A tqdm progress bar (on stderr) that appears with the first finished item, so an error raised before
    any work was done prints only its one line; ``announce`` (the plan of the work) is printed just before it."""

    def __init__(self, total: int | None = None, desc: str = "", unit: str = "frame", disable: bool = False,
                 announce: str | None = None):
        self._kw = {"total": total, "desc": desc, "unit": unit, "file": sys.stderr, "disable": disable}
        self._bar = None
        self._announce = announce

    def update(self, n: int = 1) -> None:
        if self._bar is None:
            from tqdm import tqdm

            if self._announce:
                info(self._announce)
            self._bar = tqdm(**self._kw)
        self._bar.update(n)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
