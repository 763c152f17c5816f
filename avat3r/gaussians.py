"""3D Gaussians (activated parameters) and the INRIA 3D Gaussian Splatting PLY format.

Fields follow DESIGN §2: ``means`` (…,N,3) metres; ``quats`` (…,N,4) **wxyz**, unit; ``scales`` (…,N,3)
linear standard deviations; ``opacities`` (…,N) in (0,1); ``colors`` (…,N,3) RGB (the SH DC colour; in
[0,1] for our own Gaussians, possibly slightly outside for files from other software); optional ``sh_rest``
(…,N,K,3) higher SH bands carried verbatim; optional ``valid`` (…,N) bool where batched counts differ.
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from dataclasses import dataclass, fields, replace

import numpy as np
import torch

from .errors import Avat3rError
from .fileio import atomic_write_bytes

SH_C0 = 0.28209479177387814
OPACITY_EPS = 1e-7
REQUIRED_PLY_PROPERTIES = ("x", "y", "z", "f_dc_0", "f_dc_1", "f_dc_2", "opacity",
                           "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3")


FIELDS = ("means", "quats", "scales", "opacities", "colors", "sh_rest")  # the numeric fields, in file order
# what each field is called in an INRIA PLY (for error messages that name the properties a user can look at)
PLY_NAMES = {"means": "position (x, y, z)", "quats": "rotation (rot_*)", "scales": "scale (scale_*)",
             "opacities": "opacity", "colors": "colour (f_dc_*)", "sh_rest": "SH bands (f_rest_*)"}


class PlyError(Avat3rError, ValueError):
    """A PLY file is not a readable 3D Gaussian Splatting file."""


@dataclass
class Gaussians:
    means: torch.Tensor
    quats: torch.Tensor
    scales: torch.Tensor
    opacities: torch.Tensor
    colors: torch.Tensor
    sh_rest: torch.Tensor | None = None
    valid: torch.Tensor | None = None

    def __post_init__(self):
        lead = self.means.shape[:-1]
        checks = {"quats": (self.quats, lead + (4,)), "scales": (self.scales, lead + (3,)),
                  "opacities": (self.opacities, lead), "colors": (self.colors, lead + (3,))}
        if self.valid is not None:
            checks["valid"] = (self.valid, lead)
        for name, (t, shape) in checks.items():
            if tuple(t.shape) != tuple(shape):
                raise ValueError(f"Gaussians.{name} has shape {tuple(t.shape)}, expected {tuple(shape)}")
        if self.sh_rest is not None and (self.sh_rest.shape[:-2] != lead or self.sh_rest.shape[-1] != 3):
            raise ValueError(f"Gaussians.sh_rest has shape {tuple(self.sh_rest.shape)}, expected {lead}+(K,3)")

    # -- shape and batching ---------------------------------------------------------------------
    def __len__(self) -> int:
        return self.means.shape[-2]

    @property
    def batch_shape(self) -> torch.Size:
        return self.means.shape[:-2]

    @property
    def device(self) -> torch.device:
        return self.means.device

    @property
    def sh_degree(self) -> int:
        k = 0 if self.sh_rest is None else self.sh_rest.shape[-2]
        return int(round((k + 1) ** 0.5)) - 1

    def _map(self, fn) -> Gaussians:
        return Gaussians(**{f.name: (None if getattr(self, f.name) is None else fn(getattr(self, f.name)))
                            for f in fields(self)})

    def to(self, device=None, dtype=None) -> Gaussians:
        return self._map(lambda t: t.to(device=device, dtype=dtype if t.is_floating_point() else None))

    def detach(self) -> Gaussians:
        return self._map(lambda t: t.detach())

    def select(self, index) -> Gaussians:
        """Index the Gaussian axis (indices, a slice or a bool mask) of an unbatched set."""
        if self.means.ndim != 2:
            raise ValueError("select() works on an unbatched set; index the batch axis first")
        return self._map(lambda t: t[index])

    def mask(self, keep: torch.Tensor) -> Gaussians:
        return self.select(keep.bool())

    def compact(self) -> Gaussians:
        """Drop invalid Gaussians of an unbatched set (and the ``valid`` field)."""
        g = self if self.valid is None else self.mask(self.valid)
        return replace(g, valid=None)

    def __getitem__(self, b) -> Gaussians:
        """Index the batch axis of a batched set."""
        if self.means.ndim < 3:
            raise ValueError("indexing needs a batched (B,N,…) set; use select() for Gaussians")
        return self._map(lambda t: t[b])

    @staticmethod
    def concat(parts: Sequence[Gaussians]) -> Gaussians:
        """Concatenate along the Gaussian axis. SH bands are kept only if every part has the same degree."""
        degrees = {p.sh_degree for p in parts}
        sh = None
        if len(degrees) == 1 and parts[0].sh_rest is not None:
            sh = torch.cat([p.sh_rest for p in parts], dim=-3)
        valid = None
        if any(p.valid is not None for p in parts):
            valid = torch.cat([p.valid if p.valid is not None else torch.ones_like(p.opacities, dtype=torch.bool)
                               for p in parts], dim=-1)
        cat = lambda name, dim: torch.cat([getattr(p, name) for p in parts], dim=dim)  # noqa: E731
        return Gaussians(cat("means", -2), cat("quats", -2), cat("scales", -2), cat("opacities", -1),
                         cat("colors", -2), sh, valid)

    def nonfinite_field(self) -> str | None:
        """The first field holding NaN or ±inf, or None when every value is finite."""
        for name in FIELDS:
            t = getattr(self, name)
            if t is not None and t.is_floating_point() and not bool(torch.isfinite(t).all()):
                return name
        return None

    def normalized(self) -> Gaussians:
        return replace(self, quats=torch.nn.functional.normalize(self.quats, dim=-1))

    # -- raw (pre-activation) 3DGS parameters ---------------------------------------------------
    def raw(self) -> dict[str, torch.Tensor]:
        """INRIA storage parameters: log scales, logit opacities (clamped), SH DC, wxyz rotation."""
        o = self.opacities.clamp(OPACITY_EPS, 1 - OPACITY_EPS)
        return {"means": self.means, "scales": torch.log(self.scales), "opacities": torch.log(o) - torch.log1p(-o),
                "sh0": ((self.colors - 0.5) / SH_C0)[..., None, :], "quats": self.quats,
                "shN": self.sh_rest if self.sh_rest is not None
                else self.means.new_zeros(self.means.shape[:-1] + (0, 3))}

    @staticmethod
    def from_raw(means, log_scales, logit_opacities, sh0, quats, sh_rest=None) -> Gaussians:
        return Gaussians(means, torch.nn.functional.normalize(quats, dim=-1), torch.exp(log_scales),
                         torch.sigmoid(logit_opacities), sh0.reshape(sh0.shape[:-2] + (3,)) * SH_C0 + 0.5,
                         sh_rest if sh_rest is not None and sh_rest.shape[-2] > 0 else None)


# -- PLY -----------------------------------------------------------------------------------------
def ply_bytes(g: Gaussians) -> bytes:
    """The INRIA 3DGS binary PLY of an unbatched set (invalid Gaussians dropped)."""
    from plyfile import PlyData, PlyElement

    g = g.compact().detach().to("cpu", torch.float64)
    raw = {k: v.numpy() for k, v in g.raw().items()}
    n = len(g)
    k_rest = raw["shN"].shape[1]
    names = ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
    names += [f"f_rest_{i}" for i in range(3 * k_rest)]
    names += ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]
    # f_rest is channel-major: all R coefficients, then G, then B
    rest = raw["shN"].transpose(0, 2, 1).reshape(n, -1)
    cols = np.concatenate([raw["means"], np.zeros((n, 3)), raw["sh0"][:, 0, :], rest,
                           raw["opacities"][:, None], raw["scales"], raw["quats"]], axis=1).astype(np.float32)
    arr = np.empty(n, dtype=[(name, "f4") for name in names])
    for i, name in enumerate(names):
        arr[name] = cols[:, i]
    buf = io.BytesIO()
    PlyData([PlyElement.describe(arr, "vertex")], byte_order="<").write(buf)
    return buf.getvalue()


def write_ply(path: str | os.PathLike, g: Gaussians) -> None:
    atomic_write_bytes(path, ply_bytes(g))


def read_ply(path: str | os.PathLike) -> Gaussians:
    """Read an INRIA-layout 3DGS PLY from any software (any SH degree). Quaternions are normalised."""
    from plyfile import PlyData

    try:
        ply = PlyData.read(str(path))
    except Exception as err:  # plyfile raises several types for malformed headers
        raise PlyError(f"{path}: not a readable PLY file ({err})") from None
    if "vertex" not in ply:
        raise PlyError(f"{path}: no 'vertex' element; not a 3D Gaussian Splatting PLY")
    v = ply["vertex"].data
    have = set(v.dtype.names)
    missing = [p for p in REQUIRED_PLY_PROPERTIES if p not in have]
    if missing:
        raise PlyError(f"{path}: missing 3DGS properties: {', '.join(missing)}")
    col = lambda names: np.stack([np.asarray(v[n], dtype=np.float32) for n in names], axis=1)  # noqa: E731
    rest_names = sorted((n for n in have if n.startswith("f_rest_")), key=lambda n: int(n.split("_")[-1]))
    n = len(v)
    if len(rest_names) % 3:
        raise PlyError(f"{path}: {len(rest_names)} f_rest_* properties is not a multiple of 3")
    k_rest = len(rest_names) // 3
    if int(round((k_rest + 1) ** 0.5)) ** 2 != k_rest + 1:
        raise PlyError(f"{path}: {len(rest_names)} f_rest_* properties do not form complete SH bands")
    sh_rest = None
    if k_rest:
        sh_rest = torch.from_numpy(col(rest_names).reshape(n, 3, k_rest).transpose(0, 2, 1).copy())
    if n == 0:  # an empty scene renders as background only: almost surely a failed export
        raise PlyError(f"{path}: holds no Gaussians (0 vertices)")
    quats = torch.from_numpy(col(["rot_0", "rot_1", "rot_2", "rot_3"]))
    zero = quats.norm(dim=-1) == 0  # normalising a zero quaternion gives no rotation at all, not an error
    if bool(zero.any()):
        raise PlyError(f"{path}: {int(zero.sum())} Gaussian(s) have a zero rotation quaternion (rot_* all 0)")
    g = Gaussians.from_raw(torch.from_numpy(col(["x", "y", "z"])), torch.from_numpy(col(["scale_0", "scale_1", "scale_2"])),
                           torch.from_numpy(col(["opacity"])[:, 0]),
                           torch.from_numpy(col(["f_dc_0", "f_dc_1", "f_dc_2"]))[:, None, :], quats, sh_rest)
    # every activated value must be finite (exp() of a large log scale overflows to inf, NaNs pass through)
    bad = g.nonfinite_field()
    if bad is not None:
        t = getattr(g, bad)
        count = int((~torch.isfinite(t)).reshape(n, -1).any(-1).sum())
        raise PlyError(f"{path}: {count} Gaussian(s) have a non-finite {PLY_NAMES[bad]} (NaN, inf, or a log "
                       "scale too large)")
    return g


def export_splats(path: str | os.PathLike, g: Gaussians, fmt: str | None = None) -> None:
    """Write ``.ply`` (INRIA layout), ``.splat`` (web viewers) or ``.compressed.ply`` (SuperSplat) by extension."""
    path = str(path)
    if fmt is None:
        fmt = "splat" if path.endswith(".splat") else "ply_compressed" if path.endswith(".compressed.ply") else "ply"
    if fmt == "ply":
        return write_ply(path, g)
    from gsplat import export_splats as gs_export

    g = g.compact().detach().to("cpu", torch.float32)
    raw = g.raw()
    data = gs_export(raw["means"], raw["scales"], raw["quats"], raw["opacities"], raw["sh0"], raw["shN"],
                     format=fmt)
    atomic_write_bytes(path, data)
