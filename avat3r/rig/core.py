"""The linear Gaussian rig: neutral Gaussians plus one delta per expression parameter.

The network decodes every frame with a transformer; a rig replaces it by ``base + Σ_k (code_k − neutral_k) ·
delta_k`` in a parameter space where that is a good approximation, so any viewer can animate an avatar at
display rate. Each Gaussian carries 14 rig parameters (``COLUMNS``): position, colour as stored (RGB in [0, 1]),
opacity as a logit, scales as logs and the wxyz quaternion (linear, renormalised after applying).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..cameras import Cameras
from ..errors import Avat3rError
from ..gaussians import OPACITY_EPS, Gaussians

COLUMNS = ("x", "y", "z", "r", "g", "b", "opacity_logit", "log_scale_0", "log_scale_1", "log_scale_2",
           "qw", "qx", "qy", "qz")
N_PARAMS = len(COLUMNS)
# the attribute groups of the columns (pruning, error reports)
GROUPS = {"means": slice(0, 3), "colors": slice(3, 6), "opacity_logits": slice(6, 7),
          "log_scales": slice(7, 10), "quats": slice(10, 14)}


class RigError(Avat3rError, ValueError):
    """A rig cannot be built, read or applied; the message says why in one line."""


def gaussians_to_params(g: Gaussians, reference_quats: torch.Tensor | None = None) -> torch.Tensor:
    """(…, N, 14) rig parameters of (…, N) Gaussians. Quaternions q and −q are one rotation: with
    ``reference_quats`` (N, 4) each is flipped to the reference's hemisphere, so a linear fit never averages a
    rotation with its own negative."""
    q = torch.nn.functional.normalize(g.quats, dim=-1)
    if reference_quats is not None:
        q = torch.where(((q * reference_quats).sum(-1, keepdim=True) < 0), -q, q)
    o = g.opacities.clamp(OPACITY_EPS, 1 - OPACITY_EPS)
    logit = (torch.log(o) - torch.log1p(-o))[..., None]
    return torch.cat([g.means, g.colors, logit, torch.log(g.scales), q], dim=-1)


def params_to_gaussians(p: torch.Tensor) -> Gaussians:
    """(…, N, 14) rig parameters → activated Gaussians: colours clamped to [0, 1] (a linear colour can overshoot),
    sigmoid opacities, exp scales, unit quaternions."""
    return Gaussians(means=p[..., 0:3].contiguous(), quats=torch.nn.functional.normalize(p[..., 10:14], dim=-1),
                     scales=torch.exp(p[..., 7:10]), opacities=torch.sigmoid(p[..., 6]),
                     colors=p[..., 3:6].clamp(0, 1))


@dataclass
class Rig:
    """``base`` (N, 14) float32 and ``deltas`` (E, N, 14) float32 in the rig parameters; ``neutral`` (E,) the code
    at which the rig equals ``base``; ``ranges`` (E, 2) each parameter's [low, high] (viewer sliders, sampling).
    ``meta`` keeps the rest of the file's metadata (source, fit report, input cameras)."""

    base: torch.Tensor
    deltas: torch.Tensor
    space: str
    names: tuple[str, ...]
    neutral: torch.Tensor
    ranges: torch.Tensor
    meta: dict = field(default_factory=dict)
    source: str = "<memory>"

    def __post_init__(self):
        E = len(self.names)
        if self.base.ndim != 2 or self.base.shape[1] != N_PARAMS:
            raise RigError(f"rig base must be (N, {N_PARAMS}), got {tuple(self.base.shape)}")
        if tuple(self.deltas.shape) != (E, self.base.shape[0], N_PARAMS):
            raise RigError(f"rig deltas must be ({E}, {self.base.shape[0]}, {N_PARAMS}), got "
                           f"{tuple(self.deltas.shape)}")
        if tuple(self.neutral.shape) != (E,) or tuple(self.ranges.shape) != (E, 2):
            raise RigError(f"rig neutral must be ({E},) and ranges ({E}, 2)")

    def __len__(self) -> int:
        return self.base.shape[0]

    @property
    def dim(self) -> int:
        return len(self.names)

    @property
    def expression_space(self) -> str:
        return self.space

    @property
    def cameras(self) -> Cameras | None:
        """The avatar's input cameras (``render --path inputs``), when the file recorded them."""
        from ..cameras import cameras_from_json

        if not self.meta.get("cameras"):
            return None
        return cameras_from_json(self.meta["cameras"], self.source)[1]

    def params(self, codes: torch.Tensor) -> torch.Tensor:
        """(F, E) codes → (F, N, 14) rig parameters (before activation)."""
        codes = torch.as_tensor(codes, dtype=torch.float32)
        if codes.ndim != 2 or codes.shape[1] != self.dim:
            raise RigError(f"{self.source}: expression codes must be (F, {self.dim}), got {tuple(codes.shape)}")
        w = codes - self.neutral
        return self.base + torch.einsum("fe,enp->fnp", w, self.deltas)

    def __call__(self, code: torch.Tensor) -> Gaussians:
        """One code (E,) → its Gaussians (N); a batch (F, E) → (F, N, …)."""
        code = torch.as_tensor(code, dtype=torch.float32)
        p = self.params(code.reshape(-1, self.dim))
        return params_to_gaussians(p[0] if code.ndim == 1 else p)
