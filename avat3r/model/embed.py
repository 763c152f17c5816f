"""Input embedding (paper Eq. 4) and Sapiens feature fusion (Eq. 5-6)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import Avat3rConfig


class InputEmbedding(nn.Module):
    """X_v = [RGB, Plücker, P_v] → conv patchify (kernel = stride = patch) + learned positional embedding.

    The positional embedding is shared by all views (as in GRM); views differ through their Plücker rays.
    """

    def __init__(self, config: Avat3rConfig):
        super().__init__()
        self.config = config
        self.patchify = nn.Conv2d(config.input_channels, config.dim, config.patch, stride=config.patch, bias=False)
        self.pos_embed = nn.Parameter(torch.zeros(1, config.tokens_per_view, config.dim))
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        self.norm = nn.LayerNorm(config.dim)

    def input_map(self, rgb: torch.Tensor, plucker: torch.Tensor, pos: torch.Tensor | None) -> torch.Tensor:
        """(N,H,W,3) RGB in [0,1], (N,H,W,6) rays, (N,H,W,3) positions in metres → (N, C_in, H, W)."""
        parts = [rgb * 2 - 1, plucker]
        if self.config.use_position_prior:
            parts.append(pos / self.config.position_scale)
        return torch.cat(parts, dim=-1).permute(0, 3, 1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C_in, R, R) → tokens h_v (N, T, D)."""
        h = self.patchify(x).flatten(2).transpose(1, 2)
        return self.norm(h + self.pos_embed)


class FeatureFusion(nn.Module):
    """Eq. 5-6: grid-sample Sapiens features F_v to the token grid, concatenate, squash back to D."""

    def __init__(self, config: Avat3rConfig):
        super().__init__()
        self.grid = config.grid
        self.proj = nn.Linear(config.dim + config.feature_dim, config.dim)

    def forward(self, tokens: torch.Tensor, feats: torch.Tensor) -> torch.Tensor:
        """tokens (N, T, D), feats (N, C_s, h, w) → (N, T, D)."""
        f = sample_to_grid(feats, self.grid).flatten(2).transpose(1, 2).to(tokens.dtype)
        return self.proj(torch.cat([tokens, f], dim=-1))


def sample_to_grid(feats: torch.Tensor, grid: int) -> torch.Tensor:
    """Bilinearly sample (N, C, h, w) feature maps at the centres of a grid×grid token grid → (N, C, grid, grid).

    Both maps cover the same image, so token centre (i + 0.5) / grid maps to normalised coordinates with
    align_corners=False semantics; equal resolutions return the features unchanged.
    """
    feats = feats.float()  # stored as float16 (DESIGN §4); grid_sample on CPU needs float32
    c = (torch.arange(grid, device=feats.device, dtype=feats.dtype) + 0.5) / grid * 2 - 1
    gy, gx = torch.meshgrid(c, c, indexing="ij")
    xy = torch.stack([gx, gy], dim=-1)[None].expand(feats.shape[0], -1, -1, -1)
    return F.grid_sample(feats, xy, mode="bilinear", padding_mode="border", align_corners=False)
