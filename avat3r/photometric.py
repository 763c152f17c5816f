"""Image comparisons that training losses and evaluation share, so both measure the same thing: SSIM (3D
Gaussian Splatting's implementation: 11×11 Gaussian window, σ = 1.5, zero padding, C1 = 0.01², C2 = 0.03², so
numbers compare with the 3DGS literature), LPIPS from local backbone weights, and the changing region of an
expression; and PSNR.

Images are float (…,H,W,3) in [0,1] at the API, as everywhere in avat3r.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

from .errors import Avat3rError

SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_C1 = 0.01 ** 2
SSIM_C2 = 0.03 ** 2

# torchvision's ImageNet checkpoints of the LPIPS backbones (file names as torchvision's hub cache stores them).
LPIPS_BACKBONE_FILES = {"alex": "alexnet-owt-7be5be79.pth", "vgg": "vgg16-397923af.pth"}


class LpipsWeightsMissing(Avat3rError, FileNotFoundError):
    """The LPIPS backbone checkpoint is not on disk (we never download at run time)."""


def _to_nchw(x: torch.Tensor) -> torch.Tensor:
    if x.shape[-1] != 3:
        raise ValueError(f"images must be (…,H,W,3), got shape {tuple(x.shape)}")
    return x.reshape(-1, *x.shape[-3:]).permute(0, 3, 1, 2)


# a colour change above 5 % of the range counts as moved: above 8-bit noise and resampling
REGION_TAU = 0.05


def changing_region(target: torch.Tensor, reference: torch.Tensor, valid: torch.Tensor | None = None,
                    tau: float = REGION_TAU) -> torch.Tensor:
    """Pixels the expression change moves, from the truth alone: max over RGB |target − reference| > ``tau``,
    dilated by one pixel (3×3), in views whose reference exists (``valid`` (…,) bool). (…,H,W,3) → (…,H,W)
    float 0/1. The training loss weights this region and `avat3r eval` scores it: one definition for both, and
    it needs no part masks, so it works for any data source."""
    moved = ((target.float() - reference.float()).abs().amax(dim=-1) > tau).float()
    lead = moved.shape[:-2]
    flat = moved.reshape(-1, 1, *moved.shape[-2:])
    region = F.max_pool2d(flat, 3, stride=1, padding=1).reshape(*lead, *moved.shape[-2:])
    if valid is not None:
        region = region * valid.reshape(*lead, 1, 1).to(region.dtype)
    return region


def gaussian_window(size: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA, dtype=torch.float32, device=None):
    """Normalised 2-D Gaussian window (size × size), the outer product of a 1-D Gaussian."""
    x = torch.arange(size, dtype=torch.float64, device=device) - (size - 1) / 2
    g = torch.exp(-x ** 2 / (2 * sigma ** 2))
    g = g / g.sum()
    return (g[:, None] * g[None, :]).to(dtype)


def ssim_map(pred: torch.Tensor, target: torch.Tensor, window: int = SSIM_WINDOW,
             sigma: float = SSIM_SIGMA) -> torch.Tensor:
    """Per-pixel, per-channel SSIM (N,3,H,W) of (…,H,W,3) images, 3DGS style (zero padding at borders)."""
    if pred.shape != target.shape:
        raise ValueError(f"SSIM needs equal shapes, got {tuple(pred.shape)} and {tuple(target.shape)}")
    a, b = _to_nchw(pred), _to_nchw(target)
    c = a.shape[1]
    w = gaussian_window(window, sigma, a.dtype, a.device).expand(c, 1, window, window)
    blur = lambda t: F.conv2d(t, w, padding=window // 2, groups=c)
    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a ** 2
    var_b = blur(b * b) - mu_b ** 2
    cov = blur(a * b) - mu_a * mu_b
    return ((2 * mu_a * mu_b + SSIM_C1) * (2 * cov + SSIM_C2)) / (
        (mu_a ** 2 + mu_b ** 2 + SSIM_C1) * (var_a + var_b + SSIM_C2))


def ssim(pred: torch.Tensor, target: torch.Tensor, per_image: bool = False) -> torch.Tensor:
    """Mean SSIM; ``per_image`` gives one value per image of the flattened leading axes."""
    m = ssim_map(pred, target)
    return m.mean(dim=(1, 2, 3)) if per_image else m.mean()


def psnr(pred: torch.Tensor, target: torch.Tensor, per_image: bool = False, max_value: float = 1.0):
    """10·log10(max² / MSE) of (…,H,W,3) images (float32, or float64 when given float64); ``per_image`` over
    the flattened leading axes."""
    f = lambda x: x if x.dtype == torch.float64 else x.float()
    diff = (f(pred) - f(target)) ** 2
    mse = diff.reshape(-1, *diff.shape[-3:]).mean(dim=(1, 2, 3)) if per_image else diff.mean()
    return 10.0 * torch.log10(max_value ** 2 / mse.clamp_min(1e-20))


# -- LPIPS -------------------------------------------------------------------------------------------
def default_backbone_path(net: str) -> Path:
    """Where torchvision caches the backbone: $TORCH_HOME/hub/checkpoints/<file> (torch.hub.get_dir())."""
    if net not in LPIPS_BACKBONE_FILES:
        raise ValueError(f"unknown LPIPS network {net!r}; choose alex or vgg")
    return Path(torch.hub.get_dir()) / "checkpoints" / LPIPS_BACKBONE_FILES[net]


def resolve_backbone(net: str, weights: str | os.PathLike | None = None) -> Path:
    """The backbone checkpoint to load, or LpipsWeightsMissing with a one-line message saying where to put it."""
    path = Path(weights) if weights else default_backbone_path(net)
    if not path.is_file():
        where = ("put it there or pass its path" if path == default_backbone_path(net)
                 else f"fix the path or put the file at {default_backbone_path(net)}")
        raise LpipsWeightsMissing(f"LPIPS needs the torchvision {net} backbone weights "
                                  f"{LPIPS_BACKBONE_FILES[net]}: not found at {path} ({where})")
    return path


def build_lpips(net: str = "alex", weights: str | os.PathLike | None = None,
                allow_random_backbone: bool = False) -> torch.nn.Module:
    """An offline LPIPS module (frozen, eval mode). Its linear calibration layers ship inside the `lpips`
    package; the ImageNet backbone comes from a local torchvision checkpoint. ``allow_random_backbone`` keeps
    the random backbone when the file is missing: meaningless numbers, for tests of the plumbing only."""
    import lpips

    try:
        path = resolve_backbone(net, weights)
    except LpipsWeightsMissing:
        if not allow_random_backbone:
            raise
        path = None
    with warnings.catch_warnings():  # lpips still passes torchvision's deprecated `pretrained=` argument
        warnings.simplefilter("ignore", UserWarning)
        module = lpips.LPIPS(net=net, pnet_rand=True, verbose=False)
    if path is not None:
        state = torch.load(path, map_location="cpu", weights_only=True)
        # lpips splits torchvision's `features` into slices whose children keep their index as their name.
        features = {k[len("features."):]: v for k, v in state.items() if k.startswith("features.")}
        try:
            if not features:
                raise RuntimeError("no features.* tensors")
            for slice_ in module.net.children():
                for name, layer in slice_.named_children():
                    layer.load_state_dict({k.split(".", 1)[1]: v for k, v in features.items()
                                           if k.split(".", 1)[0] == name})
        except RuntimeError as e:
            raise ValueError(f"{path} is not a torchvision {net} checkpoint ({str(e).splitlines()[0]})") from None
    module.eval()
    for p in module.parameters():
        p.requires_grad_(False)
    return module


def lpips_distance(module: torch.nn.Module, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-image LPIPS of (…,H,W,3) images in [0,1] (flattened leading axes)."""
    out = module(_to_nchw(pred), _to_nchw(target), normalize=True)
    return out.reshape(-1)
