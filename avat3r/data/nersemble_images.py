"""NeRSemble pixels: video frames, the v2 colour correction and foreground masks.

- **Frames** come from one MP4 per camera whose frame index is the timestep, decoded with OpenCV as the
  release's own loader does (seek to the index, read, BGR → RGB). Open videos are kept per process, so reading
  a sequence frame after frame does not reopen or re-seek them.
- **Colour correction** (v2 only): ``color_calibration.json`` holds one matrix per camera serial, shaped
  (3, terms), applied as the release applies it: sRGB decode (IEC 61966-2-1) → Cheung et al. (2004) augmented
  RGB terms → the matrix → sRGB encode. The release's matrices are fitted in linear RGB, which is why the
  correction sits between the decode and the encode.
- **Masks**: the benchmark ships alpha maps as videos (channel 0). The raw v2 release has no alpha, only an
  empty-background plate per camera, so its masks come from background differencing: a pixel is foreground
  when some channel differs from the plate by more than ``BACKGROUND_THRESHOLD`` (on lightly blurred images,
  so sensor and JPEG noise do not count); then a morphological opening removes speckles, a closing bridges
  thin gaps, the largest connected component is kept (the person) and holes inside it are filled (skin or
  clothes that happen to match the wall behind them).
"""

from __future__ import annotations

import functools
import json
import os
from collections import OrderedDict
from functools import lru_cache
from pathlib import Path

import numpy as np

from ..fileio import native_logs_silenced, opencv
from .captures import CaptureError

BACKGROUND_THRESHOLD = 25  # uint8 levels (≈10 %): above video + JPEG noise, below a face against a wall
BLUR_FRACTION = 0.002  # Gaussian blur sigma before differencing, as a fraction of the shorter image side
MORPH_FRACTION = 0.005  # radius of the opening/closing element, as a fraction of the shorter image side
OPEN_VIDEOS = 32  # videos kept open per process (16 cameras + their alpha maps)
SKIP_FORWARD = 32  # frames decoded and dropped rather than seeking (a seek decodes from the last keyframe)

# Cheung et al. (2004) augmented RGB terms, by term count, as products of powers of (R, G, B); (0, 0, 0) is
# the constant term. The order matters: it is the column order of the release's matrices.
_T = {"R": (1, 0, 0), "G": (0, 1, 0), "B": (0, 0, 1), "RG": (1, 1, 0), "RB": (1, 0, 1), "GB": (0, 1, 1),
      "RGB": (1, 1, 1), "R2": (2, 0, 0), "G2": (0, 2, 0), "B2": (0, 0, 2), "1": (0, 0, 0), "R2G": (2, 1, 0),
      "G2B": (0, 2, 1), "B2R": (1, 0, 2), "R2B": (2, 0, 1), "G2R": (1, 2, 0), "B2G": (0, 1, 2), "R3": (3, 0, 0),
      "G3": (0, 3, 0), "B3": (0, 0, 3), "R2GB": (2, 1, 1), "RG2B": (1, 2, 1), "RGB2": (1, 1, 2)}
_QUAD = "R G B RG RB GB R2 G2 B2".split()
_CUBIC = "R2G G2B B2R".split()
_CUBIC6 = "R2G G2B B2R R2B G2R B2G".split()
CHEUNG_TERMS: dict[int, tuple[tuple[int, int, int], ...]] = {
    n: tuple(_T[t] for t in names) for n, names in {
        3: ["R", "G", "B"],
        4: ["R", "G", "B", "1"],
        5: ["R", "G", "B", "RGB", "1"],
        7: ["R", "G", "B", "RG", "RB", "GB", "1"],
        8: ["R", "G", "B", "RG", "RB", "GB", "RGB", "1"],
        10: _QUAD + ["1"],
        11: _QUAD + ["RGB", "1"],
        14: _QUAD + ["RGB", "R3", "G3", "B3", "1"],
        16: _QUAD + ["RGB"] + _CUBIC + ["R3", "G3", "B3"],
        17: _QUAD + ["RGB"] + _CUBIC + ["R3", "G3", "B3", "1"],
        19: _QUAD + ["RGB"] + _CUBIC6 + ["R3", "G3", "B3"],
        20: _QUAD + ["RGB"] + _CUBIC6 + ["R3", "G3", "B3", "1"],
        22: _QUAD + ["RGB"] + _CUBIC6 + ["R3", "G3", "B3", "R2GB", "RG2B", "RGB2"],
    }.items()}


def file_cache(maxsize: int):
    """``lru_cache`` for readers of one file, keyed by the file's modification time and size too, so a file
    rewritten while the process runs is read again."""
    def wrap(fn):
        cached = lru_cache(maxsize)(lambda path, signature, *args: fn(path, *args))

        @functools.wraps(fn)
        def call(path, *args):
            try:
                st = os.stat(path)
                signature = (st.st_mtime_ns, st.st_size)
            except OSError:
                signature = None
            return cached(str(path), signature, *args)
        return call
    return wrap


# -- video frames --------------------------------------------------------------------------------
class _OpenVideos:
    """Per-process cache of open videos with the index of the frame each would read next."""

    def __init__(self, size: int):
        self.size = size
        self.items: OrderedDict[tuple, list] = OrderedDict()

    def get(self, path: str):
        cv2 = opencv()
        st = os.stat(path)
        key = (path, st.st_mtime_ns, st.st_size)  # a file replaced on disk is opened afresh
        if key in self.items:
            self.items.move_to_end(key)
            return self.items[key]
        with native_logs_silenced():  # FFmpeg's own lines about a damaged file ("moov atom not found")
            cap = cv2.VideoCapture(path)
        if not cap.isOpened():
            raise CaptureError(f"{path}: cannot be decoded as a video")
        entry = [cap, 0, int(cap.get(cv2.CAP_PROP_FRAME_COUNT))]
        self.items[key] = entry
        while len(self.items) > self.size:
            self.items.popitem(last=False)[1][0].release()
        return entry


_VIDEOS = _OpenVideos(OPEN_VIDEOS)


def video_frame_count(path: str | Path) -> int | None:
    """Frames in a video as its container states them; None when the file does not exist."""
    path = str(path)
    if not Path(path).is_file():
        return None
    return _VIDEOS.get(path)[2]


def read_video_frame(path: str | Path, index: int) -> np.ndarray | None:
    """Frame ``index`` of a video as uint8 RGB H×W×3; None when the video or that frame does not exist."""
    cv2 = opencv()
    path = str(path)
    if not Path(path).is_file():
        return None
    entry = _VIDEOS.get(path)
    cap, position, count = entry
    if index < 0 or index >= count:
        return None
    if 0 < index - position <= SKIP_FORWARD:  # a few frames ahead (--every): decoding on beats a seek
        for _ in range(index - position):
            cap.grab()
    elif position != index:
        cap.set(cv2.CAP_PROP_POS_FRAMES, index)
    ok, bgr = cap.read()
    if not ok or bgr is None:
        entry[1] = -1  # position unknown: seek next time
        return None
    entry[1] = index + 1
    if bgr.ndim != 3 or bgr.shape[2] != 3:
        raise CaptureError(f"{path}: frame {index} is not a colour image")
    return np.ascontiguousarray(bgr[..., ::-1])


# -- colour correction ---------------------------------------------------------------------------
def srgb_decode(v: np.ndarray) -> np.ndarray:
    """sRGB-encoded values in [0, 1] → linear light (the IEC 61966-2-1 curve)."""
    v = np.asarray(v, np.float64)
    return np.where(v <= 0.04045, v / 12.92, ((np.maximum(v, 0.04045) + 0.055) / 1.055) ** 2.4)


def srgb_encode(v: np.ndarray) -> np.ndarray:
    """Linear light → sRGB-encoded values (the inverse of ``srgb_decode``; linear below 0.0031308)."""
    v = np.asarray(v, np.float64)
    return np.where(v <= 0.0031308, v * 12.92, 1.055 * np.maximum(v, 0.0031308) ** (1 / 2.4) - 0.055)


def cheung_terms(rgb: np.ndarray, terms: int) -> np.ndarray:
    """(..., 3) linear RGB → (..., terms) augmented terms of Cheung et al. (2004)."""
    if terms not in CHEUNG_TERMS:
        raise ValueError(f"no Cheung (2004) expansion with {terms} terms; known: {sorted(CHEUNG_TERMS)}")
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    return np.stack([r ** i * g ** j * b ** k for i, j, k in CHEUNG_TERMS[terms]], axis=-1)


_DECODE_LUT = srgb_decode(np.arange(256) / 255.0).astype(np.float32)  # uint8 level → linear
# linear values where the rounded uint8 encoding steps from level n−1 to n (n = 1..255)
_ENCODE_STEPS = srgb_decode((np.arange(1, 256) - 0.5) / 255.0).astype(np.float32)


def correct_colour(rgb: np.ndarray, ccm: np.ndarray) -> np.ndarray:
    """Apply a release colour-correction matrix (3, terms) to uint8 RGB → uint8 RGB: the sRGB encoding of the
    corrected linear colour, rounded to the nearest level and clipped. Decoding and the rounded encoding go
    through tables (the input has 256 levels, the output too): a 7-megapixel frame then costs 2 s on one
    core instead of 6."""
    linear = _DECODE_LUT[np.asarray(rgb)]
    corrected = cheung_terms(linear, ccm.shape[1]) @ np.asarray(ccm, np.float32).T
    return np.searchsorted(_ENCODE_STEPS, corrected, side="right").astype(np.uint8)


@file_cache(maxsize=8)
def read_colour_calibration(path: str) -> dict[str, np.ndarray]:
    """``color_calibration.json``: {serial: (3, terms) matrix}; refused with the file named when malformed."""
    try:
        doc = json.loads(Path(path).read_text())
    except OSError as err:
        raise CaptureError(f"{path}: cannot read the colour calibration ({err.strerror})") from None
    except ValueError as err:
        raise CaptureError(f"{path}: not JSON ({err})") from None
    if not isinstance(doc, dict) or not doc:
        raise CaptureError(f"{path}: expected an object of per-camera colour-correction matrices")
    out = {}
    for serial, matrix in doc.items():
        try:
            m = np.asarray(matrix, np.float64)
        except (TypeError, ValueError):
            m = np.zeros(0)
        if m.ndim != 2 or m.shape[0] != 3 or m.shape[1] not in CHEUNG_TERMS or not np.isfinite(m).all():
            raise CaptureError(f"{path}: camera {serial}: a colour-correction matrix must be 3 rows of "
                               f"{'/'.join(map(str, sorted(CHEUNG_TERMS)))} finite numbers")
        out[str(serial)] = m
    return out


# -- masks ---------------------------------------------------------------------------------------
@file_cache(maxsize=32)
def _read_plate(path: str) -> np.ndarray:
    cv2 = opencv()
    bgr = cv2.imread(path, cv2.IMREAD_COLOR)
    if bgr is None:
        raise CaptureError(f"{path}: cannot be read as a background image")
    return np.ascontiguousarray(bgr[..., ::-1])


def read_background(path: str | Path, width: int, height: int) -> np.ndarray:
    """The background plate resized (if needed) to the frame's size, uint8 RGB."""
    path = str(path)
    if not Path(path).is_file():
        raise CaptureError(f"{path}: background plate missing (the v2 masks are made against it)")
    plate = _read_plate(path)
    if plate.shape[:2] != (height, width):
        plate = opencv().resize(plate, (width, height), interpolation=opencv().INTER_AREA)
    return plate


def _odd(n: float) -> int:
    return max(3, int(round(n)) // 2 * 2 + 1)


def background_mask(rgb: np.ndarray, plate: np.ndarray, threshold: float = BACKGROUND_THRESHOLD) -> np.ndarray:
    """uint8 {0, 255} foreground mask of a frame against its empty-background plate (see the module notes)."""
    cv2 = opencv()
    side = min(rgb.shape[:2])
    sigma = max(0.5, BLUR_FRACTION * side)
    a = cv2.GaussianBlur(rgb.astype(np.float32), (0, 0), sigma)
    b = cv2.GaussianBlur(plate.astype(np.float32), (0, 0), sigma)
    fg = (np.abs(a - b).max(axis=2) > threshold).astype(np.uint8)
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (_odd(2 * MORPH_FRACTION * side),) * 2)
    fg = cv2.morphologyEx(fg, cv2.MORPH_OPEN, kernel)
    fg = cv2.morphologyEx(fg, cv2.MORPH_CLOSE, kernel)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(fg, connectivity=8)
    if n <= 1:
        return np.zeros(fg.shape, np.uint8)
    keep = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    fg = (labels == keep).astype(np.uint8)
    # fill holes: background is what a flood fill from the border reaches
    padded = np.pad(fg, 1)
    reach = np.zeros((padded.shape[0] + 2, padded.shape[1] + 2), np.uint8)
    filled = padded.copy()
    cv2.floodFill(filled, reach, (0, 0), 2)
    holes = filled[1:-1, 1:-1] == 0
    fg[holes] = 1
    return fg * np.uint8(255)


def alpha_mask(frame: np.ndarray, width: int, height: int) -> np.ndarray:
    """The benchmark's alpha-map frame (channel 0, as its loader reads it) at the image's size, uint8."""
    alpha = np.ascontiguousarray(frame[..., 0])
    if alpha.shape != (height, width):
        alpha = opencv().resize(alpha, (width, height), interpolation=opencv().INTER_LINEAR)
    return alpha
