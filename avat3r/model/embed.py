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
        n = tokens.shape[0]
        # sample at token centres in normalised [-1, 1] coordinates (align_corners=False semantics)
        c = (torch.arange(self.grid, device=tokens.device, dtype=feats.dtype) + 0.5) / self.grid * 2 - 1
        gy, gx = torch.meshgrid(c, c, indexing="ij")
        grid = torch.stack([gx, gy], dim=-1)[None].expand(n, -1, -1, -1)
        f = F.grid_sample(feats, grid, mode="bilinear", padding_mode="border", align_corners=False)
        f = f.flatten(2).transpose(1, 2).to(tokens.dtype)
        return self.proj(torch.cat([tokens, f], dim=-1))
