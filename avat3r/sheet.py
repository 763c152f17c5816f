"""Comparison sheets: rows of images (inputs | prediction | ground truth) tiled into one image (written with
``imageio.write_png``)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

GAP = 2  # black pixels between tiles


def _row(images: torch.Tensor, height: int) -> np.ndarray:
    """(N,H,W,3) in [0,1] → one uint8 strip of height ``height`` (each image resized keeping its aspect)."""
    tiles = []
    for img in images.detach().float().cpu():
        h, w = img.shape[:2]
        width = max(1, round(w * height / h))
        if (h, w) != (height, width):
            img = F.interpolate(img.permute(2, 0, 1)[None], size=(height, width), mode="bilinear",
                                align_corners=False)[0].permute(1, 2, 0)
        tiles.append((img.clamp(0, 1).numpy() * 255 + 0.5).astype(np.uint8))
        tiles.append(np.zeros((height, GAP, 3), np.uint8))
    return np.concatenate(tiles[:-1], axis=1)


def comparison_rows(inputs: torch.Tensor, prediction: torch.Tensor, truth: torch.Tensor) -> np.ndarray:
    """One example as three rows: input views, predicted target views, ground-truth target views."""
    return tile_rows([inputs, prediction, truth], height=int(truth.shape[-3]))


def tile_rows(rows: list[torch.Tensor], height: int) -> np.ndarray:
    strips = [_row(r, height) for r in rows]
    width = max(s.shape[1] for s in strips)
    out = []
    for s in strips:
        out.append(np.pad(s, ((0, 0), (0, width - s.shape[1]), (0, 0))))
        out.append(np.zeros((GAP, width, 3), np.uint8))
    return np.concatenate(out[:-1], axis=0)

