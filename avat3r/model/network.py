"""The Avat3r network (paper §3.2), split into an identity encoder (Eq. 4-7, images only) and an expression
decoder (Eq. 8-13, per frame) so that animation reuses the encoded identity."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..cameras import Cameras, plucker
from ..errors import Avat3rError
from ..gaussians import Gaussians
from .config import Avat3rConfig
from .embed import FeatureFusion, InputEmbedding
from .heads import GaussianHeads
from .transformer import CrossAttentionBlock, ExpressionTokens, SelfAttentionBlock
from .upsampler import TransformerUpsampler


class ModelInputError(Avat3rError, ValueError):
    """Inputs to the network have the wrong shape or do not match the model."""


STATE_KEYS = ("tokens", "pos", "rgb", "conf", "valid", "K", "w2c", "size", "R", "G", "config_hash")


@dataclass
class IdentityState:
    """Everything decode() needs from the input images: the output of Eq. 4-7 and the per-pixel skips.

    tokens (B, V·T, D) float32 after self-attention; pos/rgb (B, V, R, R, 3); conf (B, V, R, R);
    valid (B, V, R, R) bool (conf > τ); K (B, V, 3, 3), w2c (B, V, 4, 4), size (2,) = (W, H) of the input
    cameras; R input and G Gaussian-map resolution; config_hash of the model that encoded it.
    """

    tokens: torch.Tensor
    pos: torch.Tensor
    rgb: torch.Tensor
    conf: torch.Tensor
    valid: torch.Tensor
    K: torch.Tensor
    w2c: torch.Tensor
    size: tuple[int, int]
    R: int
    G: int
    config_hash: str

    @property
    def batch(self) -> int:
        return self.tokens.shape[0]

    @property
    def views(self) -> int:
        return self.pos.shape[1]

    def cameras(self, b: int = 0) -> Cameras:
        """The input cameras of example ``b``."""
        return Cameras(self.K[b], self.w2c[b], self.size[0], self.size[1])

    def to(self, device) -> IdentityState:
        t = {k: getattr(self, k).to(device) for k in ("tokens", "pos", "rgb", "conf", "valid", "K", "w2c")}
        return IdentityState(**t, size=self.size, R=self.R, G=self.G, config_hash=self.config_hash)

    def to_tensors(self) -> dict[str, torch.Tensor]:
        """Flat tensor dict for safetensors (ints and the hash as small tensors; contiguous copies)."""
        t = {k: getattr(self, k).detach().contiguous().cpu() for k in ("tokens", "pos", "rgb", "conf", "K", "w2c")}
        t["valid"] = self.valid.detach().cpu().to(torch.uint8).contiguous()
        t["size"] = torch.tensor(self.size, dtype=torch.int64)
        t["R"] = torch.tensor(self.R, dtype=torch.int64)
        t["G"] = torch.tensor(self.G, dtype=torch.int64)
        t["config_hash"] = torch.tensor(list(self.config_hash.encode("ascii")), dtype=torch.uint8)
        return t

    @staticmethod
    def from_tensors(t: dict[str, torch.Tensor]) -> IdentityState:
        missing = [k for k in STATE_KEYS if k not in t]
        if missing:
            raise ModelInputError(f"identity state lacks tensors: {', '.join(missing)}")
        extra = sorted(set(t) - set(STATE_KEYS))
        if extra:
            raise ModelInputError(f"identity state has unexpected tensors: {', '.join(extra)}")
        return IdentityState(tokens=t["tokens"], pos=t["pos"], rgb=t["rgb"], conf=t["conf"],
                             valid=t["valid"].bool(), K=t["K"], w2c=t["w2c"],
                             size=tuple(int(v) for v in t["size"].tolist()), R=int(t["R"]), G=int(t["G"]),
                             config_hash=bytes(t["config_hash"].tolist()).decode("ascii"))


class IdentityEncoder(nn.Module):
    """Eq. 4-7: input maps → patch tokens (+ Sapiens features) → L_s self-attention blocks over all views."""

    def __init__(self, config: Avat3rConfig):
        super().__init__()
        self.embed = InputEmbedding(config)
        self.fusion = FeatureFusion(config) if config.use_features else None
        self.blocks = nn.ModuleList([SelfAttentionBlock(config.dim, config.heads, config.mlp_ratio)
                                     for _ in range(config.self_layers)])

    def forward(self, x: torch.Tensor, feats: torch.Tensor | None, batch: int) -> torch.Tensor:
        """x (B·V, C_in, R, R), feats (B·V, C_s, h, w) | None → tokens (B, V·T, D)."""
        h = self.embed(x)  # Eq. 4
        if self.fusion is not None:
            h = self.fusion(h, feats)  # Eq. 5-6
        h = h.reshape(batch, -1, h.shape[-1])  # all views' tokens in one sequence: cross-view matching
        for blk in self.blocks:  # Eq. 7
            h = blk(h)
        return h


class ExpressionDecoder(nn.Module):
    """Eq. 8-13: expression tokens, L_c cross-attention blocks, GRM upsampler, Gaussian heads."""

    def __init__(self, config: Avat3rConfig):
        super().__init__()
        self.config = config
        if config.use_expression:
            self.expression = ExpressionTokens(config.expression_dim, config.expression_hidden,
                                               config.expression_tokens, config.dim)
            self.blocks = nn.ModuleList([CrossAttentionBlock(config.dim, config.heads, config.mlp_ratio)
                                         for _ in range(config.cross_layers)])
        else:
            self.expression, self.blocks = None, nn.ModuleList()
        self.norm = nn.LayerNorm(config.dim)
        self.upsampler = TransformerUpsampler(config.dim, config.upsampler_widths(), config.upsampler_layers,
                                              config.upsampler_head_dim, config.upsampler_window, config.mlp_ratio)
        self.heads = GaussianHeads(config)

    def forward(self, tokens: torch.Tensor, codes: torch.Tensor, rgb: torch.Tensor, pos: torch.Tensor,
                conf: torch.Tensor, K: torch.Tensor, w2c: torch.Tensor) -> dict[str, torch.Tensor]:
        """tokens (F, V·T, D); codes (F, E); per-view maps (F·V, G, G, ·), cameras (F·V, ·, ·)."""
        cfg = self.config
        x = tokens
        if self.expression is not None:
            if cfg.expression_conditioning == "constant":  # the ablation: the code never reaches the network
                codes = torch.zeros_like(codes)
            e = self.expression(codes)  # Eq. 8
            for blk in self.blocks:  # Eq. 9
                x = blk(x, e)
        x = self.norm(x)
        n = x.shape[0] * (x.shape[1] // cfg.tokens_per_view)
        x = self.upsampler(x.reshape(n, cfg.grid, cfg.grid, cfg.dim))  # Eq. 10, per view
        return self.heads(x, rgb, pos, conf, K, w2c)  # Eq. 10 unpatchify, Eq. 11-13


class Avat3r(nn.Module):
    """Few posed images + position/confidence priors (+ features) + expression code → 3D Gaussians."""

    def __init__(self, config: Avat3rConfig, with_encoder: bool = True):
        super().__init__()
        self.config = config
        # an avatar file carries only the decoder: animation never runs Eq. 4-7
        self.encoder = IdentityEncoder(config) if with_encoder else None
        self.decoder = ExpressionDecoder(config)
        self.config_hash = config.hash()

    @property
    def has_encoder(self) -> bool:
        return self.encoder is not None

    # -- identity --------------------------------------------------------------------------------
    def encode(self, images: torch.Tensor, cameras: Cameras, pos: torch.Tensor | None = None,
               conf: torch.Tensor | None = None, feats: torch.Tensor | None = None) -> IdentityState:
        """images (B,V,R,R,3) in [0,1]; cameras: B·V, b-major; pos (B,V,R,R,3) world metres; conf (B,V,R,R)
        in [0,1]; feats (B,V,C_s,h,w) or (B·V,C_s,h,w) → IdentityState."""
        cfg = self.config
        if not self.has_encoder:
            raise ModelInputError("this model holds only an avatar's decoder weights; encoding needs a checkpoint")
        if images.ndim != 5 or images.shape[-1] != 3:
            raise ModelInputError(f"images must be (B, V, H, W, 3), got {tuple(images.shape)}")
        B, V, H, W, _ = images.shape
        R = cfg.input_res
        if (H, W) != (R, R):
            hint = (f" (training data: data.options.input_downsample = {H // R})" if H == W and H % R == 0 else "")
            raise ModelInputError(f"this model takes {R}x{R} inputs, got {W}x{H}; resize the views first{hint}")
        if len(cameras) != B * V:
            raise ModelInputError(f"{len(cameras)} cameras for {B}x{V} images (cameras are b-major, B·V of them)")
        if cameras.image_size != (W, H):
            raise ModelInputError(f"cameras are for {cameras.image_size[0]}x{cameras.image_size[1]} images, "
                                  f"the images are {W}x{H}")
        if pos is None:
            if cfg.use_position_prior:
                raise ModelInputError("this model uses a position prior: pass pos (B, V, H, W, 3)")
            pos = images.new_zeros(B, V, H, W, 3)
        if conf is None:
            conf = images.new_ones(B, V, H, W)
        if pos.shape != (B, V, H, W, 3) or conf.shape != (B, V, H, W):
            raise ModelInputError(f"pos must be {(B, V, H, W, 3)} and conf {(B, V, H, W)}, got "
                                  f"{tuple(pos.shape)} and {tuple(conf.shape)}")
        if cfg.use_features:
            if feats is None:
                raise ModelInputError("this model uses Sapiens features: pass feats (B, V, C, h, w)")
            feats = feats.reshape(B * V, *feats.shape[-3:])
            if feats.shape[1] != cfg.feature_dim:
                raise ModelInputError(f"features have {feats.shape[1]} channels, the model expects {cfg.feature_dim}")
        cameras = cameras.to(images.device, torch.float32)
        rays = plucker(cameras).to(images.dtype)  # (B·V, H, W, 6)
        x = self.encoder.embed.input_map(images.reshape(B * V, H, W, 3), rays, pos.reshape(B * V, H, W, 3))
        tokens = self.encoder(x, feats, B).float()
        return IdentityState(tokens=tokens, pos=pos.float(), rgb=images.float(), conf=conf.float(),
                             valid=conf > cfg.confidence_threshold,
                             K=cameras.K.reshape(B, V, 3, 3), w2c=cameras.w2c.reshape(B, V, 4, 4),
                             size=(W, H), R=R, G=cfg.gaussian_res, config_hash=self.config_hash)

    # -- expression ------------------------------------------------------------------------------
    def decode(self, state: IdentityState, codes: torch.Tensor) -> Gaussians:
        """codes (F, E) with F = k·B: k frames of each of the B identities, frame-major (code j·B + b is frame
        j of identity b; B codes are one frame each, and a state with B == 1 takes any number) → Gaussians
        batched (F, V·G², …) with ``valid`` (conf > τ)."""
        cfg = self.config
        if state.config_hash != self.config_hash:
            raise ModelInputError(f"identity state was encoded by model config {state.config_hash}, "
                                  f"this model is {self.config_hash}")
        if codes.ndim != 2 or codes.shape[1] != cfg.expression_dim:
            raise ModelInputError(f"expression codes must be (F, {cfg.expression_dim}), got {tuple(codes.shape)}")
        B, V, Fr = state.batch, state.views, codes.shape[0]
        if Fr % B:
            raise ModelInputError(f"{Fr} expression codes for an identity batch of {B}; pass a multiple of {B} "
                                  "codes (k frames of every identity)")

        def frames(t: torch.Tensor) -> torch.Tensor:  # each identity over its k = F / B frames
            if B == 1:
                return t.expand(Fr, *t.shape[1:])
            return t.repeat(Fr // B, *[1] * (t.ndim - 1))

        G = cfg.gaussian_res
        out = self.decoder(frames(state.tokens), codes.to(state.tokens.dtype),
                           rgb=frames(state.rgb).reshape(Fr * V, G, G, 3),
                           pos=frames(state.pos).reshape(Fr * V, G, G, 3),
                           conf=frames(state.conf).reshape(Fr * V, G, G),
                           K=frames(state.K).reshape(Fr * V, 3, 3), w2c=frames(state.w2c).reshape(Fr * V, 4, 4))
        flat = {k: v.reshape(Fr, V * G * G, *v.shape[3:]) for k, v in out.items()}
        flat["opacities"] = flat["opacities"].reshape(Fr, V * G * G)
        flat["valid"] = flat["valid"].reshape(Fr, V * G * G)
        return Gaussians(**flat)

    def forward(self, images: torch.Tensor, cameras: Cameras, pos: torch.Tensor | None,
                conf: torch.Tensor | None, codes: torch.Tensor, feats: torch.Tensor | None = None) -> Gaussians:
        return self.decode(self.encode(images, cameras, pos, conf, feats), codes)

    # -- weights that decode() needs (an avatar file can carry them) ------------------------------
    def decoder_state_dict(self) -> dict[str, torch.Tensor]:
        return {f"decoder.{k}": v for k, v in self.decoder.state_dict().items()}
