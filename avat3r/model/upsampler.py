"""GRM's transformer upsampler (paper Eq. 10), pixel-shuffled per view.

Each step: Linear(C → 4C') and PixelShuffle(2) on every view's own token grid, then windowed self-attention
blocks at the new resolution. GRM flattens all views into one square before the shuffle, which interleaves
rows of different views; here each view keeps its own 2D layout. Windows are 1-D runs of the row-major token
sequence of one view, and every second block shifts them by half a window (GRM's 1-D Swin-style shift).
"""

from __future__ import annotations

import torch
from torch import nn

from .transformer import SelfAttentionBlock


def pixel_shuffle_tokens(x: torch.Tensor, r: int) -> torch.Tensor:
    """(N, h, w, C·r·r) → (N, h·r, w·r, C), the channels-last form of nn.PixelShuffle(r)."""
    n, h, w, c = x.shape
    c //= r * r
    return x.view(n, h, w, c, r, r).permute(0, 1, 4, 2, 5, 3).reshape(n, h * r, w * r, c)


class WindowedBlock(nn.Module):
    def __init__(self, dim: int, heads: int, window: int, shift: bool, mlp_ratio: float = 4.0):
        super().__init__()
        self.window, self.shift = window, shift
        self.block = SelfAttentionBlock(dim, heads, mlp_ratio)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (N, L, C) per view; attention within windows of ``window`` consecutive tokens."""
        n, length, c = x.shape
        window = min(self.window, length)
        if length % window:
            raise ValueError(f"upsampler window {window} does not divide {length} tokens per view")
        shift = window // 2 if self.shift and window < length else 0
        if shift:
            x = torch.roll(x, -shift, dims=1)
        x = self.block(x.reshape(n * length // window, window, c)).reshape(n, length, c)
        if shift:
            x = torch.roll(x, shift, dims=1)
        return x


class UpsamplerStep(nn.Module):
    def __init__(self, in_width: int, out_width: int, layers: int, head_dim: int, window: int, mlp_ratio: float):
        super().__init__()
        self.expand = nn.Linear(in_width, 4 * out_width)
        heads = max(out_width // head_dim, 1)
        self.blocks = nn.ModuleList([WindowedBlock(out_width, heads, window, shift=i % 2 == 1, mlp_ratio=mlp_ratio)
                                     for i in range(layers)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, h, w, C) per view → (N, 2h, 2w, C')."""
        x = pixel_shuffle_tokens(self.expand(x), 2)
        n, h, w, c = x.shape
        x = x.reshape(n, h * w, c)
        for blk in self.blocks:
            x = blk(x)
        return x.view(n, h, w, c)


class TransformerUpsampler(nn.Module):
    def __init__(self, dim: int, widths: list[int], layers: int, head_dim: int, window: int, mlp_ratio: float):
        super().__init__()
        ins = [dim] + widths[:-1]
        self.steps = nn.ModuleList([UpsamplerStep(i, o, layers, head_dim, window, mlp_ratio)
                                    for i, o in zip(ins, widths)])
        self.norm = nn.LayerNorm(widths[-1] if widths else dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for step in self.steps:
            x = step(x)
        return self.norm(x)
