"""Linear Gaussian rigs: an avatar as neutral Gaussians plus one delta per expression parameter, fitted to the
network's decoder, so a viewer animates it without the network (``core``: the rig and how it applies, ``fit``:
least squares against a decoder and the fit report, ``npz``: the ``.rig.npz`` file)."""

from .core import COLUMNS, GROUPS, Rig, RigError, gaussians_to_params, params_to_gaussians
from .fit import (
    code_ranges,
    compare,
    eval_cameras,
    fit_linear,
    fit_rig,
    prune_deltas,
    rig_from_avatar,
    sample_codes,
)
from .npz import RIG_FORMAT, RIG_VERSION, load_rig, rig_bytes, save_rig

RIG_SUFFIX = ".rig.npz"


def is_rig_path(path) -> bool:
    """A rig is named ``*.rig.npz`` (any ``.npz`` is accepted where a rig is expected)."""
    return str(path).lower().endswith(".npz")


__all__ = ["COLUMNS", "GROUPS", "RIG_FORMAT", "RIG_SUFFIX", "RIG_VERSION", "Rig", "RigError", "code_ranges",
           "compare", "eval_cameras", "fit_linear", "fit_rig", "gaussians_to_params", "is_rig_path", "load_rig",
           "params_to_gaussians", "prune_deltas", "rig_bytes", "rig_from_avatar", "sample_codes", "save_rig"]
