"""Image files: PNG bytes and image files through OpenCV, RGB at the API (OpenCV's own order is BGR).

Every PNG the project writes or reads (rendered frames, sheets, shard entries, photos) goes through here, so
they share one channel order, one uint8 conversion and one error; and the one block average that brings an
image down by a whole factor (what an area resize of a photo does).
"""

from __future__ import annotations

import os
import struct

import numpy as np
import torch

from .errors import Avat3rError
from .fileio import atomic_write_bytes, opencv


class ImageError(Avat3rError, ValueError):
    """An image cannot be read, decoded or encoded; the message says which and why."""


def block_mean(images: torch.Tensor, factor: int) -> torch.Tensor:
    """(V,H,W) or (V,H,W,C) images averaged over factor×factor blocks → (V,H/f,W/f[,C])."""
    x = images[..., None] if images.ndim == 3 else images
    out = torch.nn.functional.avg_pool2d(x.permute(0, 3, 1, 2), factor).permute(0, 2, 3, 1).contiguous()
    return out[..., 0] if images.ndim == 3 else out


def to_uint8(image: torch.Tensor | np.ndarray) -> np.ndarray:
    """(H, W, 3) float in [0, 1] (clipped) or uint8 → contiguous uint8 RGB."""
    if isinstance(image, torch.Tensor):
        image = image.detach().cpu()
        image = image.numpy() if image.dtype == torch.uint8 else image.float().numpy()
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ImageError(f"an image must be (H, W, 3) RGB, got shape {image.shape}")
    if image.dtype != np.uint8:
        image = np.round(np.clip(image, 0.0, 1.0) * 255.0).astype(np.uint8)
    return np.ascontiguousarray(image)


def encode_png(image: torch.Tensor | np.ndarray, compression: int | None = None) -> bytes:
    """PNG bytes of a uint8 H×W (gray) or H×W×3 (RGB) image; anything else goes through ``to_uint8``.
    ``compression`` is zlib's level 0–9; None keeps OpenCV's default. Equal pixels give equal bytes (for one
    OpenCV build)."""
    cv2 = opencv()
    if not (isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.ndim in (2, 3)):
        image = to_uint8(image)
    if image.ndim == 3:
        if image.shape[2] != 3:
            raise ImageError(f"an RGB image must be H×W×3, got {image.shape}")
        image = image[..., ::-1]
    params = [] if compression is None else [cv2.IMWRITE_PNG_COMPRESSION, int(compression)]
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(image), params)
    if not ok:
        raise ImageError("PNG encoding failed")
    return buf.tobytes()


def png_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a PNG's header, or None when ``data`` does not start like a PNG."""
    if data[12:16] != b"IHDR":
        return None
    return struct.unpack(">II", data[16:24])


def decode_png(data: bytes, max_pixels: int | None = None) -> np.ndarray:
    """uint8 H×W or H×W×3 RGB (as stored) from PNG bytes. With ``max_pixels`` a larger image is refused from its
    header, before OpenCV allocates it."""
    cv2 = opencv()
    size = png_size(data)
    if max_pixels is not None and size is not None and size[0] * size[1] > max_pixels:
        raise ImageError(f"a {size[0]}x{size[1]} image is larger than {max_pixels:,} pixels")
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise ImageError("not a readable PNG")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB) if img.ndim == 3 else img


def write_png(path: str | os.PathLike, image: torch.Tensor | np.ndarray, compression: int | None = None) -> None:
    """``encode_png`` written all or nothing."""
    atomic_write_bytes(path, encode_png(image, compression))


def read_image(path: str | os.PathLike, gray: bool = False) -> np.ndarray:
    """An image file of any format OpenCV reads: (H, W, 3) uint8 RGB, or (H, W) with ``gray``."""
    cv2 = opencv()
    img = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE if gray else cv2.IMREAD_COLOR)
    if img is None:
        raise ImageError(f"{path}: not a readable image")
    return img if gray else np.ascontiguousarray(img[..., ::-1])
