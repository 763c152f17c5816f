"""User photos + cams.json → square, head-centred, background-free views (``prep images``, ``reconstruct``).

Each photo is cropped to a square around the projected head centre (the world origin, DESIGN §2) whose side
covers ``HEAD_FRAME_RADIUS`` metres at the head's depth, padded with black where the square leaves the photo,
and resized to ``res``; intrinsics follow the same crop and resize, so a 3D point still lands on the same
image content. The background is blacked out with the given masks, or else with OpenCV GrabCut seeded by the
projected head box (weights-free; the result says which was used).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..cameras import Cameras, camera_dict, project, read_cams_json
from ..errors import Avat3rError
from ..fileio import StagedFolder, opencv
from ..imageio import ImageError, read_image
from .manifest import MANIFEST_NAME, build_manifest, is_dataset_file, write_manifest
from .shards import ShardWriter, encode_sample, make_key

cv2 = opencv()

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
HEAD_FRAME_RADIUS = 0.16  # metres of world half-extent the square crop spans at the head centre's depth
AIM_WARN_DEGREES = 15.0  # warn when the head centre is this far off a camera's optical axis
# Head + neck box (metres, head-centric axes) that seeds GrabCut: outside it is surely background. The neck
# runs down to the crop's lower edge, as in the training renders.
HEAD_BOX = ((-0.13, 0.13), (-0.40, 0.17), (-0.14, 0.14))
GRABCUT_ITERATIONS = 5
SURE_FACE_RADIUS = 0.05  # metres around the head centre that GrabCut must keep


class ImagePrepError(Avat3rError, ValueError):
    """A user image or its camera is unusable; the message names the image."""


@dataclass
class PreparedImages:
    rgb: np.ndarray  # (V, res, res, 3) float32 in [0, 1], background black
    masks: np.ndarray  # (V, res, res) float32 in [0, 1]
    cameras: Cameras  # adjusted to the crop and resize
    names: list[str]  # image file names, in cams.json order
    mask_source: str  # "given" or "grabcut"
    warnings: list[str] = field(default_factory=list)


def _read_image(path: Path, gray: bool = False) -> np.ndarray:
    try:
        return read_image(path, gray)
    except ImageError:
        raise ImagePrepError(f"{path.name}: cannot read the image") from None


def _find_mask(mask_dir: Path, name: str) -> Path:
    stem = Path(name).stem
    for candidate in [mask_dir / name] + [mask_dir / f"{stem}{ext}" for ext in IMAGE_EXTENSIONS]:
        if candidate.is_file():
            return candidate
    raise ImagePrepError(f"{name}: no mask for this image in {mask_dir} (expected {stem}.png)")


def head_crop_box(camera: Cameras, radius: float = HEAD_FRAME_RADIUS) -> tuple[int, int, int]:
    """(x0, y0, side) of the square crop centred on the projected origin covering ``radius`` metres."""
    uv, z = project(camera, torch.zeros(1, 1, 3, dtype=camera.K.dtype))
    u, v, depth = float(uv[0, 0, 0]), float(uv[0, 0, 1]), float(z[0, 0])
    f = 0.5 * float(camera.K[0, 0, 0] + camera.K[0, 1, 1])
    side = max(8, round(2 * radius * f / depth))
    return round(u - side / 2), round(v - side / 2), side


def crop_square(image: np.ndarray, x0: int, y0: int, side: int) -> np.ndarray:
    """The ``side``² window at (x0, y0); parts outside the image are black (zero)."""
    h, w = image.shape[:2]
    out = np.zeros((side, side) + image.shape[2:], dtype=image.dtype)
    sx0, sy0, sx1, sy1 = max(x0, 0), max(y0, 0), min(x0 + side, w), min(y0 + side, h)
    if sx1 > sx0 and sy1 > sy0:
        out[sy0 - y0:sy1 - y0, sx0 - x0:sx1 - x0] = image[sy0:sy1, sx0:sx1]
    return out


def resize_square(image: np.ndarray, res: int) -> np.ndarray:
    side = image.shape[0]
    interp = cv2.INTER_AREA if side > res else cv2.INTER_LINEAR
    return cv2.resize(image, (res, res), interpolation=interp)


def as_resized_photos(rgb: torch.Tensor, mask: torch.Tensor, res: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Rendered views (V,H,W,3) in [0,1] and masks (V,H,W) as `reconstruct` gets them from photo files of that
    size: rgb through 8 bits, both resized to ``res`` by :func:`resize_square` (an area average when shrinking)."""
    rgb8 = (rgb.clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
    small = np.stack([resize_square(im, res) for im in rgb8]).astype(np.float32) / 255
    masks = np.stack([resize_square(m, res) for m in mask.float().cpu().numpy()])
    return torch.from_numpy(small), torch.from_numpy(masks)


def head_box_rect(camera: Cameras, width: int, height: int) -> tuple[int, int, int, int]:
    """(x, y, w, h) bounding box of the projected head-and-neck box, clipped to the image."""
    corners = torch.tensor([[x, y, z] for x in HEAD_BOX[0] for y in HEAD_BOX[1] for z in HEAD_BOX[2]],
                           dtype=camera.K.dtype)
    uv, _ = project(camera, corners[None])
    x0, y0 = uv[0].min(0).values.floor().int().tolist()
    x1, y1 = uv[0].max(0).values.ceil().int().tolist()
    x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, width), min(y1, height)
    return x0, y0, max(x1 - x0, 1), max(y1 - y0, 1)


def grabcut_mask(rgb_u8: np.ndarray, camera: Cameras) -> np.ndarray:
    """uint8 {0, 255} foreground mask from GrabCut seeded by the head box: outside it is background, a small
    disk around the head centre is surely foreground (deterministic: fixed RNG seed)."""
    h, w = rgb_u8.shape[:2]
    x, y, bw, bh = head_box_rect(camera, w, h)
    mask = np.full((h, w), cv2.GC_BGD, np.uint8)
    mask[y:y + bh, x:x + bw] = cv2.GC_PR_FGD
    if (mask == cv2.GC_BGD).sum() < 4 * (w + h):  # the box fills the crop: take the top and side edges as
        mask[0, :] = mask[:, 0] = mask[:, -1] = cv2.GC_BGD  # background, not the bottom one (the neck runs there)
    uv, z = project(camera, torch.zeros(1, 1, 3, dtype=camera.K.dtype))
    r = max(1, int(SURE_FACE_RADIUS * float(camera.K[0, 0, 0]) / float(z[0, 0])))
    cv2.circle(mask, (int(uv[0, 0, 0]), int(uv[0, 0, 1])), r, int(cv2.GC_FGD), -1)
    bgd, fgd = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
    cv2.setRNGSeed(0)
    try:
        cv2.grabCut(cv2.cvtColor(rgb_u8, cv2.COLOR_RGB2BGR), mask, None, bgd, fgd, GRABCUT_ITERATIONS,
                    cv2.GC_INIT_WITH_MASK)
    except cv2.error:  # a uniform image has no colour model to fit: keep the box
        pass
    return np.where((mask == cv2.GC_FGD) | (mask == cv2.GC_PR_FGD), 255, 0).astype(np.uint8)


def prepare_user_images(image_dir: str | os.PathLike, cams_json: str | os.PathLike, res: int = 512,
                        masks: str | os.PathLike | None = None) -> PreparedImages:
    """Check, crop, resize and mask every image named in ``cams_json``; see the module docstring."""
    image_dir, cams_json = Path(image_dir), Path(cams_json)
    if res < 8:
        raise ImagePrepError(f"resolution {res} is too small")
    if not image_dir.is_dir():
        raise ImagePrepError(f"{image_dir}: not a folder of images")
    names, cams = read_cams_json(cams_json)
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise ImagePrepError(f"{dup}: listed twice in {cams_json.name}")
    present = sorted(p.name for p in image_dir.iterdir()
                     if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and p.resolve() != cams_json.resolve())
    for name in present:
        if name not in names:
            raise ImagePrepError(f"{name}: no camera for this image in {cams_json.name}")
    for name in names:
        if name not in present:
            raise ImagePrepError(f"{name}: listed in {cams_json.name} but not found in {image_dir}")
    mask_dir = Path(masks) if masks is not None else None
    if mask_dir is not None and not mask_dir.is_dir():
        raise ImagePrepError(f"{mask_dir}: mask folder not found")

    out_rgb, out_mask, out_cams, warnings = [], [], [], []
    for i, name in enumerate(names):
        cam = cams[i]
        rgb = _read_image(image_dir / name)
        h, w = rgb.shape[:2]
        cw, ch = int(cam.width[0]), int(cam.height[0])
        if (w, h) != (cw, ch):
            raise ImagePrepError(f"{name}: image is {w}x{h} but its camera says {cw}x{ch}")
        _, z = project(cam, torch.zeros(1, 1, 3))
        if float(z[0, 0]) <= 0:
            raise ImagePrepError(f"{name}: the head centre (world origin) is behind this camera")
        to_origin = torch.nn.functional.normalize(-cam.centers[0], dim=0)
        off_axis = math.degrees(math.acos(max(-1.0, min(1.0, float(to_origin @ cam.forward[0])))))
        if off_axis > AIM_WARN_DEGREES:
            warnings.append(f"{name}: camera aims {off_axis:.0f}° away from the head centre (world origin); "
                            "check the cams.json convention (OpenCV, world-to-camera, metres)")
        x0, y0, side = head_crop_box(cam)
        crop_cam = cam.cropped(x0, y0, side, side).resized(res, res)
        rgb_res = resize_square(crop_square(rgb, x0, y0, side), res)
        if mask_dir is not None:
            m = _read_image(_find_mask(mask_dir, name), gray=True)
            if m.shape != (h, w):
                raise ImagePrepError(f"{name}: mask is {m.shape[1]}x{m.shape[0]} but the image is {w}x{h}")
            m_res = resize_square(crop_square(m, x0, y0, side), res)
        else:
            m_res = grabcut_mask(rgb_res, crop_cam)
        m_f = m_res.astype(np.float32) / 255.0
        out_rgb.append(rgb_res.astype(np.float32) / 255.0 * m_f[..., None])
        out_mask.append(m_f)
        out_cams.append(crop_cam)
    return PreparedImages(np.stack(out_rgb), np.stack(out_mask), Cameras.cat(out_cams), list(names),
                          "given" if mask_dir is not None else "grabcut", warnings)


def load_user_images(image_dir: str | os.PathLike, cams_json: str | os.PathLike, res: int = 512,
                     masks: str | os.PathLike | None = None, on_warning: Callable[[str], None] | None = None
                     ) -> tuple[np.ndarray, np.ndarray, Cameras, list[str]]:
    """In-memory form for ``reconstruct``: (rgb (V,res,res,3) float32, masks (V,res,res), Cameras, names)."""
    prepared = prepare_user_images(image_dir, cams_json, res, masks)
    if on_warning is not None:
        for w in prepared.warnings:
            on_warning(w)
    return prepared.rgb, prepared.masks, prepared.cameras, prepared.names


def camera_key_part(name: str) -> str:
    """An image file name as the camera part of a sample key (no dots or spaces)."""
    stem = Path(name).stem
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in stem) or "image"


def write_user_images(prepared: PreparedImages, out: str | os.PathLike, expression_space: str = "none",
                      expr: np.ndarray | None = None) -> list[str]:
    """Write prepared views as samples (person ``user``, segment ``input``, frame 0) + manifest.parquet.
    User photos carry no known expression code: without ``expr`` the manifest's space is ``none`` and its
    ``expr`` column a one-wide zero placeholder (Parquet cannot store zero-width lists); no expr.npy is written."""
    out = Path(out)
    code = None if expr is None else np.asarray(expr, np.float32).reshape(-1)
    keys = [make_key("user", "input", 0, camera_key_part(n)) for n in prepared.names]
    if len(set(keys)) != len(keys):
        raise ImagePrepError("two image names map to the same sample key; rename them to differ before the "
                             "extension")
    records, rows = [], []
    res = prepared.rgb.shape[1]
    # built aside and swapped in whole (see prep_synth): no older shard survives beside the new ones
    with StagedFolder(out, is_dataset_file, "dataset") as stage, ShardWriter(stage.path) as writer:
        for i, key in enumerate(keys):
            cam = prepared.cameras[i]
            sample = {"rgb": (prepared.rgb[i] * 255 + 0.5).astype(np.uint8),
                      "mask": (prepared.masks[i] * 255 + 0.5).astype(np.uint8),
                      "camera": camera_dict(cam.K[0], cam.w2c[0], res, res),
                      "expr": code}
            records.append(writer.write(key, encode_sample(sample)))
            rows.append({"person": "user", "segment": "input", "frame": 0, "camera": key.rsplit("/", 1)[1],
                         "width": res, "height": res, "split": "test", "has_prior": False})
        writer.close()
        codes = np.zeros((len(rows), 1), np.float32) if code is None else np.tile(code, (len(rows), 1))
        manifest = build_manifest(records, rows, codes, expression_space, "images", stage.path)
        write_manifest(stage.path / MANIFEST_NAME, manifest)
    return keys


def prep_images(image_dir, cams_json, out, res: int = 512, masks=None) -> PreparedImages:
    """``prep images``: prepare and write; returns the PreparedImages (mask source, warnings)."""
    prepared = prepare_user_images(image_dir, cams_json, res, masks)
    write_user_images(prepared, out)
    return prepared
