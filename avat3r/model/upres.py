"""Lift trained weights to a larger input side with the same token grid (input_res and patch both × f).

The lifted model is the original one run on f×f block averages of its inputs: each patchify kernel tap is
spread over the f×f input pixels it now covers (weight / f²), and each Gaussian of the original attribute map
becomes f×f Gaussians with its raw attributes (the unpatchify rows repeated). Tokens, attention and the
upsampler are untouched, so fine-tuning starts from the trained model's behaviour, while the colour and
position skips (Eq. 11-12) and the Gaussians already see the finer pixels.
"""

from __future__ import annotations

import torch

from .config import Avat3rConfig


def upres_factor(source: Avat3rConfig, target: Avat3rConfig) -> int | None:
    """f when ``target``'s input_res and patch are both ``source``'s times a whole f ≥ 2, else None. Other
    differences are not checked here: lifted weights that still do not fit fail the caller's shape check."""
    if target.input_res % source.input_res:
        return None
    f = target.input_res // source.input_res
    return f if f >= 2 and target.patch == source.patch * f else None


def upres_state(state: dict[str, torch.Tensor], source: Avat3rConfig, factor: int) -> dict[str, torch.Tensor]:
    """The state dict of ``source``'s model lifted to input_res·f and patch·f (see the module docstring)."""
    out = dict(state)
    w = state["encoder.embed.patchify.weight"]  # (D, C_in, p, p) → (D, C_in, p·f, p·f)
    out["encoder.embed.patchify.weight"] = w.repeat_interleave(factor, 2).repeat_interleave(factor, 3) / factor ** 2
    # unpatchify rows are ordered (channel, row r, column r) within each token (pixel_shuffle_tokens)
    r = source.unpatch
    for name in ("decoder.heads.unpatchify.weight", "decoder.heads.unpatchify.bias"):
        t = state[name]
        grid = t.reshape(-1, r, r, *t.shape[1:])
        out[name] = grid.repeat_interleave(factor, 1).repeat_interleave(factor, 2).reshape(-1, *t.shape[1:])
    return out


# -- a wider upsampler ------------------------------------------------------------------------------------
def widen_factor(source: Avat3rConfig, target: Avat3rConfig) -> bool:
    """True when ``target``'s upsampler is ``source``'s at twice the width in every step, the rest alike."""
    ws, wt = source.upsampler_widths(), target.upsampler_widths()
    same = source.replace(upsampler_min_width=target.upsampler_min_width,
                          expression_conditioning=target.expression_conditioning) == target
    return bool(ws) and len(ws) == len(wt) and all(b == 2 * a for a, b in zip(ws, wt)) and same and \
        all(w // target.upsampler_head_dim == 2 * max(a // source.upsampler_head_dim, 1) for a, w in zip(ws, wt))


def _dup(t: torch.Tensor, groups: int = 1) -> torch.Tensor:
    """Each of ``groups`` equal row blocks repeated once: [a, b] → [a, a, b, b] (outputs made twice)."""
    blocks = t.reshape(groups, -1, *t.shape[1:])
    return torch.cat([blocks, blocks], dim=1).reshape(-1, *t.shape[1:])


def _halves(w: torch.Tensor, gen: torch.Generator, std: float) -> torch.Tensor:
    """A weight that reads a duplicated input [x, x]: columns [W/2 + N, W/2 − N] give W·x for any N; the random
    N makes the two copies' gradients differ, so they do not stay equal through training."""
    n = torch.randn(w.shape, generator=gen, dtype=w.dtype) * std
    return torch.cat([w / 2 + n, w / 2 - n], dim=1)


def widen_state(state: dict[str, torch.Tensor], source: Avat3rConfig, seed: int = 0,
                std: float = 0.02) -> dict[str, torch.Tensor]:
    """``source``'s state dict with every upsampler channel carried twice (``widen_factor``): each step's
    features become [x, x], each attention head has a twin on the copy, and the model computes the same
    function (to float rounding) while its read-out has twice the width per token to learn finer detail."""
    gen = torch.Generator().manual_seed(seed)
    out = dict(state)
    for i in range(source.upsample_steps):
        p = f"decoder.upsampler.steps.{i}."
        w, b = state[p + "expand.weight"], state[p + "expand.bias"]  # rows ordered (channel, 2×2 position)
        w = _dup(w.reshape(-1, 4 * w.shape[1]), 1).reshape(-1, w.shape[1])
        out[p + "expand.weight"] = w if i == 0 else _halves(w, gen, std)
        out[p + "expand.bias"] = _dup(b.reshape(-1, 4)).reshape(-1)
        blocks = sorted({k[len(p):].split(".")[1] for k in state if k.startswith(p + "blocks.")}, key=int)
        for j in blocks:
            q = f"{p}blocks.{j}.block."
            for norm in ("norm1", "norm2"):
                out[q + norm + ".weight"], out[q + norm + ".bias"] = (_dup(state[q + norm + s])
                                                                      for s in (".weight", ".bias"))
            # (linear, output groups): qkv's rows are [q, k, v], each made twice
            for name, groups in (("attn.qkv", 3), ("attn.proj", 1), ("mlp.0", 1), ("mlp.2", 1)):
                out[q + name + ".weight"] = _halves(_dup(state[q + name + ".weight"], groups), gen, std)
                out[q + name + ".bias"] = _dup(state[q + name + ".bias"], groups)
    for s in (".weight", ".bias"):
        out["decoder.upsampler.norm" + s] = _dup(state["decoder.upsampler.norm" + s])
    out["decoder.heads.unpatchify.weight"] = _halves(state["decoder.heads.unpatchify.weight"], gen, std)
    return out
