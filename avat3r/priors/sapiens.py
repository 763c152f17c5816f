"""The `sapiens` feature prior: the final feature map of a Sapiens backbone exported as TorchScript.

Sapiens ships "lite" TorchScript exports of its pretrained backbones (``sapiens_2b_epoch_660_torchscript.pt2``
etc.; C = 1024/1280/1536/1920 for 0.3B/0.6B/1B/2B). They were traced at 1024×1024, so that is the default
input size; pass ``input_size=(1024, 768)`` for exports traced at the task models' H×W. Preprocessing follows
Sapiens' lite demo: plain bilinear resize, RGB in 0–255, (x − mean)/std with the constants below.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F

from .base import PriorError

ENV_CKPT = "AVAT3R_SAPIENS_CKPT"
SAPIENS_MEAN = (123.5, 116.5, 103.5)  # RGB, 0–255 units (sapiens lite/demo/extract_feature.py)
SAPIENS_STD = (58.5, 57.0, 57.5)
DEFAULT_INPUT_SIZE = (1024, 1024)  # H, W the released pretrain TorchScript files were traced at


def sapiens_preprocess(images: torch.Tensor, input_size=DEFAULT_INPUT_SIZE) -> torch.Tensor:
    """(V,H,W,3) RGB in [0,1] → (V,3,h,w) normalised network input at ``input_size`` (h, w)."""
    x = images.to(torch.float32).permute(0, 3, 1, 2) * 255.0
    x = F.interpolate(x, size=tuple(int(s) for s in input_size), mode="bilinear", align_corners=False)
    mean = torch.tensor(SAPIENS_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(SAPIENS_STD).view(1, 3, 1, 1)
    return (x - mean) / std


class SapiensFeatures:
    """Load a TorchScript Sapiens backbone from ``ckpt`` (or $AVAT3R_SAPIENS_CKPT); call on (V,H,W,3) images."""

    name = "sapiens"

    def __init__(self, ckpt: str | os.PathLike | None = None, input_size=DEFAULT_INPUT_SIZE, device="cpu",
                 batch_size: int = 1, **_unused):
        path = ckpt or os.environ.get(ENV_CKPT)
        if not path:
            raise PriorError("the sapiens feature prior needs a TorchScript backbone: download e.g. "
                             "sapiens_2b_epoch_660_torchscript.pt2 (facebook/sapiens on Hugging Face) and give it "
                             f"as the prior's ckpt option or set {ENV_CKPT}", param="feature_options.ckpt")
        if not Path(path).is_file():
            raise PriorError(f"Sapiens checkpoint {path} does not exist (the prior's ckpt option or {ENV_CKPT})",
                             param="feature_options.ckpt")
        try:
            self.model = torch.jit.load(str(path), map_location=device).eval()
        except (RuntimeError, ValueError) as err:
            raise PriorError(f"{path} is not a TorchScript Sapiens export ({str(err).splitlines()[0]}); "
                             "use the *_torchscript.pt2 file") from None
        self.input_size = tuple(int(s) for s in input_size)
        self.device = torch.device(device)
        self.batch_size = max(1, int(batch_size))

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        if images.ndim != 4 or images.shape[-1] != 3:
            raise PriorError(f"images must be (V,H,W,3), got {tuple(images.shape)}")
        feats = []
        for start in range(0, images.shape[0], self.batch_size):
            x = sapiens_preprocess(images[start:start + self.batch_size], self.input_size).to(self.device)
            out = self.model(x)
            if isinstance(out, (tuple, list)):  # the lite exports return a 1-tuple (featmap,)
                out = out[-1]
            if out.ndim != 4:
                raise PriorError(f"the Sapiens model returned shape {tuple(out.shape)}, expected (B,C,h,w)")
            feats.append(out.to("cpu", torch.float32))
        return torch.cat(feats).contiguous()
