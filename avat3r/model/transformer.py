"""Pre-norm transformer blocks: self-attention over all views' tokens (Eq. 7), expression tokens and
cross-attention from image tokens to them (Eq. 8-9)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    b, n, c = x.shape
    return x.view(b, n, heads, c // heads).transpose(1, 2)


def _merge_heads(x: torch.Tensor) -> torch.Tensor:
    b, h, n, d = x.shape
    return x.transpose(1, 2).reshape(b, n, h * d)


class MLP(nn.Sequential):
    def __init__(self, dim: int, ratio: float):
        hidden = int(dim * ratio)
        super().__init__(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))


class SelfAttention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        out = F.scaled_dot_product_attention(*(_split_heads(t, self.heads) for t in (q, k, v)))
        return self.proj(_merge_heads(out))


class CrossAttention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        k, v = self.kv(context).chunk(2, dim=-1)
        out = F.scaled_dot_product_attention(*(_split_heads(t, self.heads) for t in (self.q(x), k, v)))
        return self.proj(_merge_heads(out))


class SelfAttentionBlock(nn.Module):
    """x ← x + Attn(LN(x)); x ← x + MLP(LN(x))."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = SelfAttention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = MLP(dim, mlp_ratio)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class CrossAttentionBlock(nn.Module):
    """x ← x + CrossAttn(LN(x), LN(e)); x ← x + MLP(LN(x)): image tokens query the expression tokens e.

    The cross-attention's output projection starts at zero (as adaLN-zero does for its conditioning), so an
    untrained block passes the identity tokens through unchanged instead of adding code-dependent noise; its
    gradient is not zero, so the path opens as soon as the code explains something.
    """

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.norm_q = nn.LayerNorm(dim)
        self.norm_kv = nn.LayerNorm(dim)
        self.attn = CrossAttention(dim, heads)
        nn.init.zeros_(self.attn.proj.weight)
        nn.init.zeros_(self.attn.proj.bias)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = MLP(dim, mlp_ratio)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm_q(x), self.norm_kv(context))
        return x + self.mlp(self.norm2(x))


class ExpressionTokens(nn.Module):
    """Eq. 8: MLP(z) = Linear(E, 256) – ReLU – Linear(256, S·D), one code → S expression tokens."""

    def __init__(self, expression_dim: int, hidden: int, tokens: int, dim: int):
        super().__init__()
        self.tokens, self.dim = tokens, dim
        self.mlp = nn.Sequential(nn.Linear(expression_dim, hidden), nn.ReLU(), nn.Linear(hidden, tokens * dim))

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        """(F, E) → (F, S, D)."""
        return self.mlp(codes).view(codes.shape[0], self.tokens, self.dim)
