"""Avat3r network configuration: the paper's hyper-parameters (App. D, Tab. 4) and a CPU-trainable preset.

Values the paper states are marked "paper"; values lost from our copy of the paper or never published are
fields whose comment says where the default comes from. Every checkpoint stores its config (``to_dict``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass, fields

from ..errors import Avat3rError
from ..typed_values import coerce_like


class ConfigError(Avat3rError, ValueError):
    """An Avat3r configuration is inconsistent or unknown."""


# sizes that must be > 0 and counts that may be 0 (a block-free ablation); checked by Avat3rConfig
_POSITIVE = ("dim", "heads", "mlp_ratio", "input_res", "patch", "expression_dim", "expression_hidden",
             "expression_tokens", "upsampler_window", "upsampler_head_dim", "upsampler_min_width",
             "position_scale")
_NON_NEGATIVE = ("self_layers", "cross_layers", "feature_dim", "upsample_steps", "upsampler_layers")
MAX_INPUT_RES = 4096  # pixels a side; beyond any GPU's memory for V·R² Gaussians


@dataclass(frozen=True)
class Avat3rConfig:
    # -- ViT backbone (Eq. 4, 7) --------------------------------------------------------------------
    dim: int = 768  # paper: hidden dimension D
    heads: int = 12  # ViT-B convention for D=768 (GRM: heads = width // 64)
    self_layers: int = 8  # paper: #self-attention layers L_s
    cross_layers: int = 8  # paper: #cross-attention layers L_c
    mlp_ratio: float = 4.0  # standard ViT / GRM transformer MLP width
    input_res: int = 512  # paper: input image resolution R (square)
    patch: int = 16  # lost from our copy; GRM's tokenizer uses kernel = stride = 16
    # -- Sapiens features (Eq. 5-6) -------------------------------------------------------------------
    use_features: bool = True
    feature_dim: int = 1920  # paper: Sapiens-2B feature dimension C_s
    # -- expression (Eq. 8-9) -------------------------------------------------------------------------
    use_expression: bool = True
    expression_dim: int = 256  # paper: dimension of the expression code E (set from the expression space)
    expression_hidden: int = 256  # paper: width of the 2-layer expression MLP
    expression_tokens: int = 8  # S: lost from our copy; 8 is our choice (a short sequence as in [26, 53])
    # "code": Eq. 8 reads the expression code; "constant": the same network is fed the neutral (zero) code
    # whatever is asked, the clean "no expression" ablation (same blocks, same parameter count)
    expression_conditioning: str = "code"
    # -- GRM transformer upsampler (Eq. 10) ------------------------------------------------------------
    upsample_steps: int = 1  # paper: #GRM transformer upsampler steps
    upsampler_layers: int = 2  # GRM: a 2-layer windowed transformer after each pixel shuffle
    upsampler_window: int = 256  # tokens per 1-D attention window (GRM's value is only in its checkpoints)
    upsampler_head_dim: int = 64  # GRM: heads = width // 64
    upsampler_min_width: int = 64  # GRM: channel schedule halves per step with a floor of 64
    # -- heads and skips (Eq. 11-13) -------------------------------------------------------------------
    use_position_prior: bool = True  # off: GRM-style depth along each pixel ray (no P_v input, no Eq. 11)
    use_position_skip: bool = True  # Eq. 11: position = P_v + Δp
    use_color_skip: bool = True  # Eq. 12: colour = sigmoid(logit(RGB_v) + Δc)
    confidence_threshold: float = 2.0 / 3.0  # τ (Eq. 13), lost from our copy: DUSt3R's demo default
    # confidence 3, mapped to our [0,1] confidence by 1 - 1/c (DESIGN §4)
    position_scale: float = 0.1  # metres per input unit for P_v in X_v, so a head (±0.15 m) is ~unit range
    scale_offset: float = -0.69  # log multiple of the pixel footprint at init: σ ≈ 0.5 px (our choice:
    # with gsplat's 0.3 px² low-pass neighbouring splats overlap without blurring the reprojected image)
    scale_log_min: float = -4.0  # clamp of log(σ / pixel footprint): 0.02 px ...
    scale_log_max: float = 5.0  # ... 150 px, so exp() never overflows and splats never cover the frame
    opacity_bias: float = 0.0  # added before the sigmoid (GRM uses -2; 0 keeps step-0 renders opaque)
    color_eps: float = 1e-4  # RGB clamp before the logit of Eq. 12 (black background → logit finite)

    def __post_init__(self):
        # types and signs first, so a bad value is named here and not met as a traceback deep in torch
        for f in fields(self):
            v, default = getattr(self, f.name), f.default
            if isinstance(default, bool):
                ok = isinstance(v, bool)
            elif isinstance(default, int):
                ok = isinstance(v, int) and not isinstance(v, bool)
            elif isinstance(default, float):
                ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
            else:
                ok = isinstance(v, type(default))
            if not ok:
                raise ConfigError(f"model config field {f.name!r} must be a finite {type(default).__name__}, "
                                  f"got {v!r}")
        for name in _POSITIVE:
            if not getattr(self, name) > 0:
                raise ConfigError(f"model config field {name!r} must be positive, got {getattr(self, name)!r}")
        for name in _NON_NEGATIVE:
            if getattr(self, name) < 0:
                raise ConfigError(f"model config field {name!r} must be ≥ 0, got {getattr(self, name)!r}")
        if self.input_res > MAX_INPUT_RES:
            raise ConfigError(f"model config field 'input_res' must be at most {MAX_INPUT_RES}, got "
                              f"{self.input_res}")
        if not 0.0 < self.color_eps < 0.5 or not self.scale_log_min < self.scale_log_max:
            raise ConfigError("model config needs 0 < color_eps < 0.5 and scale_log_min < scale_log_max")
        if self.input_res % self.patch:
            raise ConfigError(f"input_res {self.input_res} must be a multiple of patch {self.patch}")
        if self.patch % (2 ** self.upsample_steps):
            raise ConfigError(f"patch {self.patch} must be divisible by 2^upsample_steps = {2 ** self.upsample_steps}")
        if self.dim % self.heads:
            raise ConfigError(f"dim {self.dim} must be divisible by heads {self.heads}")
        if self.use_features and self.feature_dim <= 0:
            raise ConfigError("use_features needs feature_dim > 0")
        if self.expression_dim <= 0 or self.expression_tokens <= 0:
            raise ConfigError("expression_dim and expression_tokens must be positive")
        if self.expression_conditioning not in ("code", "constant"):
            raise ConfigError(f"expression_conditioning must be 'code' or 'constant', got {self.expression_conditioning!r}")
        if not 0.0 <= self.confidence_threshold < 1.0:
            raise ConfigError(f"confidence_threshold must lie in [0, 1), got {self.confidence_threshold}")
        # the upsampler's attention (checked here: it would only fail at the first decode)
        side = self.grid
        for width in self.upsampler_widths():
            side *= 2
            heads = max(width // self.upsampler_head_dim, 1)
            if width % heads:
                raise ConfigError(f"upsampler width {width} is not divisible into {heads} heads of "
                                  f"upsampler_head_dim {self.upsampler_head_dim}")
            if (side * side) % min(self.upsampler_window, side * side):
                raise ConfigError(f"upsampler_window {self.upsampler_window} must divide the {side * side} "
                                  f"tokens per view after an upsampler step (or exceed them)")

    # -- derived sizes ---------------------------------------------------------------------------
    @property
    def grid(self) -> int:
        """Token grid side per view (R / patch)."""
        return self.input_res // self.patch

    @property
    def tokens_per_view(self) -> int:
        return self.grid ** 2

    @property
    def gaussian_res(self) -> int:
        """G: the Gaussian-map side, equal to R (Eq. 10 upsamples back to the input resolution)."""
        return self.input_res

    @property
    def unpatch(self) -> int:
        """Pixel-shuffle factor of the final linear unpatchify: patch / 2^steps."""
        return self.patch // (2 ** self.upsample_steps)

    @property
    def input_channels(self) -> int:
        """X_v = [RGB (3), Plücker (6), position map (3, only with the position prior)]."""
        return 9 + (3 if self.use_position_prior else 0)

    def upsampler_widths(self) -> list[int]:
        """Channel width after each upsampler step: halve, round down to a multiple of 64, floor 64 (GRM)."""
        widths, w = [], self.dim
        for _ in range(self.upsample_steps):
            w = max(w // 2 // self.upsampler_min_width * self.upsampler_min_width, self.upsampler_min_width)
            widths.append(w)
        return widths

    @property
    def out_width(self) -> int:
        return self.upsampler_widths()[-1] if self.upsample_steps else self.dim

    # -- presets and serialisation ---------------------------------------------------------------
    @staticmethod
    def preset(name: str, **overrides) -> Avat3rConfig:
        if name not in PRESETS:
            raise ConfigError(f"unknown model preset {name!r}; choose one of {', '.join(PRESETS)}")
        unknown = sorted(set(overrides) - {f.name for f in fields(Avat3rConfig)})
        if unknown:
            raise ConfigError(f"model config has unknown fields: {', '.join(unknown)}")
        return dataclasses.replace(PRESETS[name], **overrides)

    def replace(self, **overrides) -> Avat3rConfig:
        return dataclasses.replace(self, **overrides)

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @staticmethod
    def from_dict(d: dict) -> Avat3rConfig:
        if not isinstance(d, dict):
            raise ConfigError("model config must be a JSON object")
        known = {f.name: f for f in fields(Avat3rConfig)}
        unknown = sorted(set(d) - set(known))
        if unknown:
            raise ConfigError(f"model config has unknown fields: {', '.join(unknown)}")
        values = {}
        for k, v in d.items():
            try:
                values[k] = coerce_like(v, getattr(PRESETS["paper"], k))
            except TypeError as err:
                raise ConfigError(f"model config field {k!r} {err}") from None
        return Avat3rConfig(**values)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @staticmethod
    def from_json(text: str) -> Avat3rConfig:
        return Avat3rConfig.from_dict(json.loads(text))

    def hash(self) -> str:
        """Short content hash, stored with every IdentityState so a state is only decoded by its model."""
        return hashlib.sha256(self.to_json().encode()).hexdigest()[:16]


PRESETS: dict[str, Avat3rConfig] = {
    "paper": Avat3rConfig(),
    # CPU-trainable: 64² inputs, 8×8 tokens per view; E = 13 matches the synthheads-v1 expression space.
    "tiny": Avat3rConfig(dim=128, heads=4, self_layers=4, cross_layers=4, input_res=64, patch=8,
                         use_features=False, feature_dim=0, expression_dim=13, expression_hidden=256,
                         upsampler_window=64),
}
