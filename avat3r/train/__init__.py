"""Training (paper §3.3, §4.1): photometric losses, TOML recipes, the Accelerate loop and crash-safe checkpoints."""

from .checkpointing import latest_checkpoint, list_checkpoints, resolve_checkpoint
from .loop import DataInfo, TrainError, TrainResult, train
from .losses import LossWeights, LpipsWeightsMissing, PhotometricLoss, build_lpips, dssim_loss, l1_loss, ssim
from .recipe import Recipe, RecipeError, load_recipe

__all__ = ["DataInfo", "LossWeights", "LpipsWeightsMissing", "PhotometricLoss", "Recipe", "RecipeError",
           "TrainError", "TrainResult", "build_lpips", "dssim_loss", "l1_loss", "latest_checkpoint",
           "list_checkpoints", "load_recipe", "resolve_checkpoint", "ssim", "train"]
