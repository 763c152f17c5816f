"""Comparison sheets: rows of images (inputs | prediction | ground truth) tiled into one image, and expression
response blocks (where the truth changes beside where the avatar changes); written with ``imageio.write_png``."""

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


def draw_label(img: np.ndarray, text: str, x: int = 2, scale: float = 0.3) -> np.ndarray:
    """Write ``text`` in white at the top of uint8 ``img`` (in place, from column ``x``); returns ``img``."""
    from .fileio import opencv

    cv2 = opencv()
    cv2.putText(img, text, (x, 10), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), 1, cv2.LINE_AA)
    return img


CHANGE_GAIN = 4.0  # |Δ| of 0.25 shows white: the changes worth seeing are small next to the image range
RESPONSE_COLUMNS = ("truth ref", "truth", "|d| truth x4", "avatar ref", "avatar", "|d| avatar x4")


def change_map(a: torch.Tensor, b: torch.Tensor, gain: float = CHANGE_GAIN) -> torch.Tensor:
    """(N,H,W,3) grey heat of the largest per-channel |a − b|, times ``gain``, clipped to [0, 1]."""
    d = ((a.float() - b.float()).abs().amax(-1, keepdim=True) * gain).clamp(0, 1)
    return d.expand(*d.shape[:-1], 3)


def response_block(title: str, truth_ref: torch.Tensor, truth: torch.Tensor, pred_ref: torch.Tensor,
                   pred: torch.Tensor, height: int = 96, views: int = 4) -> np.ndarray:
    """One example's expression response: a title line, then a row for each of its first ``views`` target
    views with the columns of RESPONSE_COLUMNS (truth and avatar at the reference code and at the target
    code, and each one's change). An avatar that animates right shows its change in the same pixels as the
    truth's, about as bright."""
    columns = [truth_ref, truth, change_map(truth, truth_ref), pred_ref, pred, change_map(pred, pred_ref)]
    grid = tile_rows([torch.stack([c[v].float().cpu() for c in columns]) for v in range(min(views, truth.shape[0]))],
                     height)
    tile = (grid.shape[1] - GAP * (len(columns) - 1)) // len(columns)
    for j, name in enumerate(RESPONSE_COLUMNS):
        draw_label(grid, name, x=j * (tile + GAP) + 2)
    header = draw_label(np.zeros((14, grid.shape[1], 3), np.uint8), title, scale=0.35)
    return np.concatenate([header, grid], axis=0)
