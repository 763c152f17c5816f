"""Linear unpatchify to per-pixel Gaussian attribute maps (end of Eq. 10), the skips (Eq. 11-12), the
activations and the confidence mask (Eq. 13). Runs in float32 outside autocast: positions are metres around
a head at ~1 m and colours go through a logit, both too fine for bf16."""

from __future__ import annotations

import torch
from torch import nn

from ..cameras import Cameras, unproject
from .config import Avat3rConfig
from .upsampler import pixel_shuffle_tokens


class GaussianHeads(nn.Module):
    def __init__(self, config: Avat3rConfig):
        super().__init__()
        self.config = config
        # channel groups of the attribute map; GRM-style depth (1 channel) replaces Δp without the prior
        self.layout = {"position": 3 if config.use_position_prior else 1, "color": 3, "scale": 3,
                       "rotation": 4, "opacity": 1}
        self.channels = sum(self.layout.values())
        r = config.unpatch
        self.unpatchify = nn.Linear(config.out_width, self.channels * r * r)  # a 1x1 conv, then PixelShuffle(r)
        nn.init.normal_(self.unpatchify.weight, std=0.02)  # GRM's head init
        nn.init.zeros_(self.unpatchify.bias)
        # the Δ heads start at zero, so an untrained model reprojects its inputs (Eq. 11-12 at step 0)
        w = self.unpatchify.weight.data.view(self.channels, r * r, -1)
        start = 0
        for name, k in self.layout.items():
            if (name == "position" and config.use_position_prior and config.use_position_skip) or \
                    (name == "color" and config.use_color_skip):
                w[start:start + k].zero_()
            start += k
        # GRM: depth = raw + |camera origin|; the learned offset (metres) lets training move that anchor
        self.depth_offset = None if config.use_position_prior else nn.Parameter(torch.zeros(()))

    def split(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """(N, g, g, C') → attribute maps {name: (N, G, G, k)}."""
        maps = pixel_shuffle_tokens(self.unpatchify(x), self.config.unpatch)
        return dict(zip(self.layout, maps.split(list(self.layout.values()), dim=-1)))

    def forward(self, x: torch.Tensor, rgb: torch.Tensor, pos: torch.Tensor | None, conf: torch.Tensor,
                K: torch.Tensor, w2c: torch.Tensor) -> dict[str, torch.Tensor]:
        """x (N, g, g, C') upsampled tokens; rgb/pos (N, G, G, 3); conf (N, G, G); K, w2c (N, ·, ·) cameras
        of the G×G maps → activated per-pixel Gaussians {means, quats, scales, opacities, colors, valid}."""
        cfg = self.config
        device_type = x.device.type if torch.amp.is_autocast_available(x.device.type) else "cpu"  # meta: cpu
        with torch.autocast(device_type=device_type, enabled=False):
            raw = self.split(x.float())
            G = cfg.gaussian_res
            # Eq. 11: position = P_v + Δp (Δp in units of position_scale)
            delta = raw["position"] * cfg.position_scale
            if not cfg.use_position_prior:
                cams = Cameras(K, w2c, G, G)
                depth = cams.centers.norm(dim=-1)[:, None, None] + self.depth_offset + delta[..., 0]
                means = unproject(cams, depth)
            elif cfg.use_position_skip:
                means = pos + delta
            else:
                means = delta
            # Eq. 12: colour = sigmoid(logit(RGB_v) + Δc), kept in [0, 1]
            if cfg.use_color_skip:
                c = rgb.clamp(cfg.color_eps, 1 - cfg.color_eps)
                colors = torch.sigmoid(torch.log(c) - torch.log1p(-c) + raw["color"])
            else:
                colors = torch.sigmoid(raw["color"])
            # scales in metres around one pixel's footprint z/f at the Gaussian's depth (detached: the
            # footprint is a unit, not a path for position gradients)
            z = (torch.einsum("nij,nhwj->nhwi", w2c[:, :3, :3], means.detach())[..., 2]
                 + w2c[:, None, None, 2, 3]).clamp_min(1e-3)
            f = torch.sqrt(K[:, 0, 0] * K[:, 1, 1])[:, None, None]
            log_rel = (raw["scale"] + cfg.scale_offset).clamp(cfg.scale_log_min, cfg.scale_log_max)
            scales = (z / f)[..., None] * torch.exp(log_rel)
            # wxyz, centred on the identity rotation so small raw outputs stay well-defined
            identity = torch.tensor([1.0, 0.0, 0.0, 0.0], device=x.device)
            quats = torch.nn.functional.normalize(raw["rotation"] + identity, dim=-1)
            opacities = torch.sigmoid(raw["opacity"][..., 0] + cfg.opacity_bias)
            # Eq. 13: a pixel spawns a Gaussian iff its confidence exceeds τ
            valid = conf > cfg.confidence_threshold
        return {"means": means, "quats": quats, "scales": scales, "opacities": opacities, "colors": colors,
                "valid": valid}
