"""Training (paper §3.3, §4.1): photometric losses, TOML recipes, the Accelerate loop and crash-safe checkpoints."""

from .checkpointing import latest_checkpoint, list_checkpoints, resolve_checkpoint
from .loop import DataInfo, TrainError, TrainResult, train
from .losses import LossWeights, PhotometricLoss, dssim_loss, l1_loss
from .recipe import Recipe, RecipeError, load_recipe

__all__ = ["DataInfo", "LossWeights", "PhotometricLoss", "Recipe", "RecipeError", "TrainError", "TrainResult",
           "dssim_loss", "l1_loss", "latest_checkpoint", "list_checkpoints", "load_recipe", "resolve_checkpoint",
           "train"]
