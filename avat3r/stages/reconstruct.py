"""The reconstruct stage: photos + cams.json → an ``.avt`` avatar (the identity encoded once)."""

from __future__ import annotations

import os
from collections.abc import Callable

import torch

from ..cameras import read_cams_json
from .common import StageError, load_model, resolve_device

PAPER_INPUT_VIEWS = 4  # the paper's model reconstructs from 4 posed views (§4.1)


def checkpoint_space(ck_meta: dict, dim: int, checkpoint) -> tuple[str, list[str], list[float]]:
    """The checkpoint's expression space with its names and neutral code (from the registry if not stored)."""
    from ..expressions import ExpressionError, get_space

    space = ck_meta.get("expression_space")
    if not space:
        raise StageError(f"checkpoint {checkpoint} does not declare its expression_space")
    names, neutral = ck_meta.get("expression_names"), ck_meta.get("neutral")
    if not names or neutral is None:
        try:
            sp = get_space(space)
        except ExpressionError:
            raise StageError(f"checkpoint {checkpoint} lacks expression_names/neutral for its unknown "
                             f"expression space {space!r}") from None
        names, neutral = names or list(sp.names), list(sp.neutral) if neutral is None else neutral
    if len(names) != dim or len(neutral) != dim:
        raise StageError(f"checkpoint {checkpoint}: expression space {space!r} has {len(names)} names and a "
                         f"{len(neutral)}-d neutral code, but the model takes {dim}-d codes")
    return space, [str(n) for n in names], [float(x) for x in neutral]


def check_view_count(cams_json, ck_meta: dict, checkpoint) -> None:
    """Refuse photo counts the model was not trained on. The network would run on any count (every view's
    tokens join one attention sequence and the views share one positional embedding), but it learned to
    fuse exactly data.n_inputs views (the paper's model: 4); with fewer or more, cross-view matching sees
    token sets it never saw and the avatar degrades without any sign. Older checkpoints that do not record
    the count were all trained on PAPER_INPUT_VIEWS."""
    data = ck_meta.get("data")
    want = data.get("n_inputs") if isinstance(data, dict) else None
    if not isinstance(want, int) or want < 1:
        want = PAPER_INPUT_VIEWS
    names, _ = read_cams_json(cams_json)
    if len(names) != want:
        hint = (f"pick {want} that see the head from different sides" if len(names) > want else
                f"add photos from other sides, or make {want} views from one photo with `avat3r lift`")
        raise StageError(f"{cams_json} lists {len(names)} photo(s), but checkpoint {checkpoint} takes exactly "
                         f"{want} views (the number it was trained on); {hint}")


def reconstruct(image_dir: str | os.PathLike, cams_json: str | os.PathLike, checkpoint: str | os.PathLike,
                output: str | os.PathLike, masks_dir: str | os.PathLike | None = None, device: str = "cpu",
                self_contained: bool = False, on_warning: Callable[[str], None] | None = None) -> dict:
    """Photos + cams.json → ``output`` (.avt). Returns the avatar's meta. ``on_warning`` receives notes about
    the inputs (e.g. a camera that does not aim at the head)."""
    from ..avatar import save_avatar
    from ..data.images import load_user_images
    from ..priors import compute_priors

    dev = resolve_device(device)
    model, ck_meta = load_model(checkpoint, dev)
    cfg = model.config
    space, names_e, neutral = checkpoint_space(ck_meta, cfg.expression_dim, checkpoint)
    position = ck_meta.get("position_prior") or "geometric"
    features = (ck_meta.get("feature_prior") or "none") if cfg.use_features else "none"
    if cfg.use_features and features == "none":
        raise StageError(f"checkpoint {checkpoint}: the model uses image features but names no feature prior")
    check_view_count(cams_json, ck_meta, checkpoint)
    rgb, masks, cameras, names = load_user_images(image_dir, cams_json, cfg.input_res, masks=masks_dir,
                                                  on_warning=on_warning)
    rgb, masks = torch.as_tensor(rgb, dtype=torch.float32), torch.as_tensor(masks, dtype=torch.float32)
    pos, conf, feats = compute_priors(rgb, cameras, masks, position=position, features=features)
    with torch.inference_mode():
        state = model.encode(rgb[None].to(dev), cameras.to(dev), pos[None].to(dev), conf[None].to(dev),
                             None if feats is None else feats[None].to(dev))
    meta = {
        "expression_space": space,
        "expression_names": names_e,
        "neutral": neutral,
        "checkpoint_sha256": ck_meta["sha256"],
        "position_prior": position,
        "feature_prior": features,
        "config": cfg.to_dict(),
        "camera_names": list(names),  # the input cameras themselves are stored from the state
    }
    save_avatar(output, state.to("cpu"), meta, model if self_contained else None)
    return meta
