"""The `dust3r` position prior: DUSt3R point maps aligned to the known cameras (paper §3.1).

DUSt3R is not a PyPI package: it runs from a checkout of github.com/naver/dust3r (cloned with its croco
submodule) given by ``repo`` / $AVAT3R_DUST3R_REPO, with a local checkpoint ``ckpt`` / $AVAT3R_DUST3R_CKPT
(e.g. DUSt3R_ViTLarge_BaseDecoder_512_dpt.pth). Pairwise inference over all ordered pairs of the input views,
then either DUSt3R's global alignment with the known poses, focals and principal points fixed (``"global"``,
as the paper does) or the closed-form scale alignment below (``"closed-form"``, no optimisation).
Confidences c ≥ 1 map to 1 − 1/c. The checkpoint loads with ``weights_only=True``; its model constructor
string is parsed as literals, never evaluated.
"""

from __future__ import annotations

import argparse
import ast
import os
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from ..cameras import Cameras, camera_directions
from .base import PriorError, check_inputs, dust3r_confidence

ENV_REPO = "AVAT3R_DUST3R_REPO"
ENV_CKPT = "AVAT3R_DUST3R_CKPT"
INSTALL_HINT = (f"clone https://github.com/naver/dust3r --recursive and give it as the prior's repo option (or set "
                f"{ENV_REPO}), and put DUSt3R_ViTLarge_BaseDecoder_512_dpt.pth on disk and give it as its ckpt option "
                f"(or set {ENV_CKPT})")
HINT_PARAM = "position_options"  # the PriorStageConfig field these options are given in


# -- alignment math (pure; no DUSt3R needed) ----------------------------------------------------------------
def camera_to_world(points: torch.Tensor, c2w: torch.Tensor, scale: torch.Tensor | float = 1.0) -> torch.Tensor:
    """Points (..., H, W, 3) in a camera frame (OpenCV axes), scaled by ``scale``, into the world via c2w (..., 4, 4)."""
    s = torch.as_tensor(scale, dtype=points.dtype, device=points.device).reshape(
        torch.as_tensor(scale).shape + (1,) * (points.ndim - torch.as_tensor(scale).ndim))
    R, t = c2w[..., :3, :3], c2w[..., :3, 3]
    return torch.einsum("...ij,...hwj->...hwi", R, s * points) + t[..., None, None, :]


def pair_scale(points_j_in_i: torch.Tensor, w2c_i: torch.Tensor, w2c_j: torch.Tensor, K_j: torch.Tensor,
               weights: torch.Tensor | None = None) -> torch.Tensor:
    """Scale s that makes a DUSt3R pair metric under the known poses.

    DUSt3R predicts view j's points in view i's frame up to a scale. Mapped into j's frame with the known
    relative pose (R, t), the scaled points s·R·p + t must lie on j's pixel rays r: (s·Rp + t) × r = 0, which
    is linear in s; weighted least squares gives s = −Σ w (Rp × r)·(t × r) / Σ w |Rp × r|².
    """
    H, W = points_j_in_i.shape[:2]
    T = w2c_j @ torch.linalg.inv(w2c_i)
    R, t = T[:3, :3], T[:3, 3]
    cam_j = Cameras(K_j[None], w2c_j[None], W, H)
    r = F.normalize(camera_directions(cam_j)[0], dim=-1).to(points_j_in_i.dtype)
    a = torch.cross(points_j_in_i @ R.T, r, dim=-1)
    b = torch.cross(t.expand_as(r), r, dim=-1)
    w = torch.ones(H, W, dtype=a.dtype) if weights is None else weights.to(a.dtype)
    return -(w * (a * b).sum(-1)).sum() / (w * (a * a).sum(-1)).sum().clamp_min(1e-12)


def align_pairs_to_known_poses(pairs, cameras: Cameras):
    """Fuse DUSt3R pair outputs into per-view world point maps using the known cameras.

    ``pairs``: iterable of ``(i, j, pts_i, pts_j, conf_i, conf_j)`` with ``pts_i`` (H,W,3) view i's points and
    ``pts_j`` view j's points, both in view i's camera frame (DUSt3R's convention), and raw confidences ≥ 1.
    Each pair is scaled by :func:`pair_scale`, moved to the world with view i's pose, and every view's point
    map is the confidence-weighted mean over the pairs that predict it. Returns pos (V,H,W,3), conf (V,H,W)
    raw (the best confidence seen, like DUSt3R's ``im_conf``).
    """
    V = len(cameras)
    W, H = cameras.image_size
    c2w = torch.linalg.inv(cameras.w2c.double())
    acc = torch.zeros(V, H, W, 3, dtype=torch.float64)
    wsum = torch.zeros(V, H, W, dtype=torch.float64)
    best = torch.ones(V, H, W, dtype=torch.float64)
    for i, j, pts_i, pts_j, conf_i, conf_j in pairs:
        pts_i, pts_j = pts_i.double(), pts_j.double()
        conf_i, conf_j = conf_i.double(), conf_j.double()
        s = pair_scale(pts_j, cameras.w2c[i].double(), cameras.w2c[j].double(), cameras.K[j].double(),
                       weights=torch.log(conf_j.clamp_min(1.0)) + 1e-3)
        for v, pts, conf in ((i, pts_i, conf_i), (j, pts_j, conf_j)):
            world = camera_to_world(pts, c2w[i], s)
            w = torch.log(conf.clamp_min(1.0)) + 1e-6
            acc[v] += w[..., None] * world
            wsum[v] += w
            best[v] = torch.maximum(best[v], conf)
    pos = acc / wsum.clamp_min(1e-12)[..., None]
    return pos.float(), best.float()


# -- the backend -------------------------------------------------------------------------------------------
def _import_dust3r(repo: str | None):
    repo = repo or os.environ.get(ENV_REPO)
    if repo:
        for p in (Path(repo), Path(repo) / "croco"):
            if str(p) not in sys.path:
                sys.path.insert(0, str(p))
    try:
        import dust3r.cloud_opt
        import dust3r.image_pairs
        import dust3r.inference
        import dust3r.model  # noqa: F401
    except Exception as err:  # noqa: BLE001 — ImportError, or any failure inside the checkout (e.g. hf_hub)
        raise PriorError(f"DUSt3R is not importable ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}); "
                         + INSTALL_HINT, param=HINT_PARAM) from None
    return sys.modules["dust3r"]


def _model_kwargs(spec: str) -> dict:
    """Keyword arguments of the checkpoint's ``AsymmetricCroCo3DStereo(...)`` string, parsed as literals."""
    try:
        call = ast.parse(spec.strip(), mode="eval").body
        if not (isinstance(call, ast.Call) and getattr(call.func, "id", "") == "AsymmetricCroCo3DStereo"):
            raise ValueError("not an AsymmetricCroCo3DStereo(...) call")
        kwargs = {kw.arg: ast.literal_eval(kw.value) for kw in call.keywords}
    except (SyntaxError, ValueError) as err:
        raise PriorError(f"cannot read the DUSt3R model description in the checkpoint ({err})") from None
    # as dust3r's own loader does: the plain patch embedding, any aspect ratio
    if kwargs.get("patch_embed_cls") == "ManyAR_PatchEmbed":
        kwargs["patch_embed_cls"] = "PatchEmbedDust3R"
    kwargs["landscape_only"] = False
    return kwargs


def load_dust3r_model(ckpt: str | os.PathLike, device="cpu"):
    from dust3r.model import AsymmetricCroCo3DStereo

    if not Path(ckpt).is_file():
        raise PriorError(f"DUSt3R checkpoint {ckpt} does not exist; " + INSTALL_HINT, param=HINT_PARAM)
    with torch.serialization.safe_globals([argparse.Namespace]):
        state = torch.load(str(ckpt), map_location="cpu", weights_only=True)
    args = state.get("args")
    spec = getattr(args, "model", None) if args is not None else None
    if not isinstance(spec, str) or "model" not in state:
        raise PriorError(f"{ckpt} is not a DUSt3R checkpoint (no 'args.model' / 'model' entries)")
    model = AsymmetricCroCo3DStereo(**_model_kwargs(spec))
    model.load_state_dict(state["model"], strict=False)
    return model.to(device).eval()


class Dust3rPrior:
    """DUSt3R point maps on the known cameras; see the module docstring for setup."""

    name = "dust3r"

    def __init__(self, repo: str | None = None, ckpt: str | None = None, device: str = "cpu", size: int = 512,
                 alignment: str = "global", niter: int = 300, batch_size: int = 4, **_unused):
        if alignment not in ("global", "closed-form"):
            raise PriorError(f"unknown DUSt3R alignment {alignment!r}; choose global or closed-form")
        _import_dust3r(repo)
        ckpt = ckpt or os.environ.get(ENV_CKPT)
        if not ckpt:
            raise PriorError("no DUSt3R checkpoint given; " + INSTALL_HINT, param=HINT_PARAM)
        self.model = load_dust3r_model(ckpt, device)
        self.device, self.size, self.alignment = device, int(size), alignment
        self.niter, self.batch_size = int(niter), int(batch_size)

    def _views(self, images: torch.Tensor, cameras: Cameras):
        """DUSt3R inputs: long side resized to ``size``, cropped to multiples of 16, RGB in [−1, 1]."""
        import numpy as np

        V, H, W, _ = images.shape
        scale = self.size / max(H, W)
        h, w = round(H * scale), round(W * scale)
        h16, w16 = h - h % 16, w - w % 16
        y0, x0 = (h - h16) // 2, (w - w16) // 2
        x = F.interpolate(images.permute(0, 3, 1, 2).float(), size=(h, w), mode="bicubic", align_corners=False)
        x = x[:, :, y0:y0 + h16, x0:x0 + w16].clamp(0, 1) * 2 - 1
        cams = cameras.resized(w, h).cropped(x0, y0, w16, h16)
        views = [{"img": x[v:v + 1], "true_shape": np.int32([[h16, w16]]), "idx": v, "instance": str(v)} for v in range(V)]
        return views, cams

    @torch.no_grad()
    def _pairs(self, views):
        from dust3r.image_pairs import make_pairs
        from dust3r.inference import inference

        pairs = make_pairs(views, scene_graph="complete", prefilter=None, symmetrize=True)
        return inference(pairs, self.model, self.device, batch_size=self.batch_size, verbose=False)

    def __call__(self, images: torch.Tensor, cameras: Cameras, masks: torch.Tensor | None = None):
        V, H, W = check_inputs(images, cameras, masks)
        if V < 2:
            raise PriorError("DUSt3R needs at least 2 input views")
        views, cams = self._views(images.cpu(), cameras.to("cpu", torch.float32))
        out = self._pairs(views)
        if self.alignment == "closed-form":
            def pairs():
                for n in range(len(out["view1"]["idx"])):
                    yield (int(out["view1"]["idx"][n]), int(out["view2"]["idx"][n]),
                           out["pred1"]["pts3d"][n].cpu(), out["pred2"]["pts3d_in_other_view"][n].cpu(),
                           out["pred1"]["conf"][n].cpu(), out["pred2"]["conf"][n].cpu())
            pos, raw = align_pairs_to_known_poses(pairs(), cams)
        else:
            pos, raw = self._global_alignment(out, cams)
        pos = F.interpolate(pos.permute(0, 3, 1, 2), size=(H, W), mode="bilinear", align_corners=False)
        raw = F.interpolate(raw[:, None], size=(H, W), mode="bilinear", align_corners=False)[:, 0]
        conf = dust3r_confidence(raw)
        if masks is not None:
            conf = conf * masks.to(torch.float32).clamp(0, 1)
        pos = torch.nan_to_num(pos.permute(0, 2, 3, 1), nan=0.0, posinf=0.0, neginf=0.0)
        return pos.to(torch.float32).contiguous(), conf.to(torch.float32).contiguous()

    def _global_alignment(self, out, cams: Cameras):
        """DUSt3R's optimiser with poses, focals and principal points fixed to the known cameras."""
        from dust3r.cloud_opt import GlobalAlignerMode, global_aligner

        with torch.enable_grad():
            scene = global_aligner(out, device=self.device, mode=GlobalAlignerMode.PointCloudOptimizer, verbose=False)
            scene.preset_pose([m for m in cams.c2w])
            scene.preset_focal([float(0.5 * (k[0, 0] + k[1, 1])) for k in cams.K])
            scene.preset_principal_point([k[:2, 2] for k in cams.K])
            scene.compute_global_alignment(init="known_poses", niter=self.niter, schedule="cosine", lr=0.01)
        pos = torch.stack([p.detach().cpu().float() for p in scene.get_pts3d()])
        raw = torch.stack([c.detach().cpu().float() for c in scene.im_conf])
        return pos, raw
