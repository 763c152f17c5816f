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
