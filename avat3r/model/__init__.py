"""The Avat3r network (paper §3): config presets, encode()/decode(), checkpoints."""

from .config import PRESETS, Avat3rConfig, ConfigError
from .network import Avat3r, IdentityState, ModelInputError

__all__ = ["PRESETS", "Avat3r", "Avat3rConfig", "ConfigError", "IdentityState", "ModelInputError"]
