"""Where the shipped models live, for a checkout and for an installed package alike.

A model name such as ``synthheads-tiny`` is looked up, in order, in ``$AVAT3R_MODELS/<name>``, in the installed
package (``avat3r/shipped/<name>``: a wheel carries the repository's ``models/`` there) and in the ``models/``
folder of the checkout an editable install points to.
"""

from __future__ import annotations

import os
from pathlib import Path

ENV_MODELS = "AVAT3R_MODELS"
SHIPPED = ("synthheads-tiny", "synthheads-expr")  # the avatar model and the expression regressor


def shipped_model_dirs() -> list[Path]:
    here = Path(__file__).resolve().parent
    dirs = [Path(os.environ[ENV_MODELS])] if os.environ.get(ENV_MODELS) else []
    return dirs + [here / "shipped", here.parent / "models"]


def shipped_model(name: str) -> Path | None:
    """The folder of the shipped model ``name``, or None when no location holds it."""
    for d in shipped_model_dirs():
        if (d / name / "config.json").is_file():
            return d / name
    return None


def resolve_model_path(path: str | os.PathLike) -> Path:
    """``path`` itself when it exists, else the shipped model of that name (when it is one), else ``path``."""
    p = Path(path)
    if not p.exists() and str(path) in SHIPPED:
        return shipped_model(str(path)) or p
    return p
