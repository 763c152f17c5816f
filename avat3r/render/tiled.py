"""Tiled pure-PyTorch rasterizer (placeholder: delegates to the dense reference until the tiled one lands)."""
from .dense import rasterize_dense as rasterize_tiled  # noqa: F401
