"""Evaluation (paper §4.2): PSNR, SSIM, LPIPS, JOD, AKD, CSIM and the runner behind `avat3r eval`."""

from .metrics import (
                      METRICS,
                      MetricSet,
                      build_metrics,
                      psnr,
                      register_identity_model,
                      register_keypoint_model,
                      ssim_metric,
)
from .runner import EvalError, EvalReport, evaluate

__all__ = [
                      "METRICS",
                      "EvalError",
                      "EvalReport",
                      "MetricSet",
                      "build_metrics",
                      "evaluate",
                      "psnr",
                      "register_identity_model",
                      "register_keypoint_model",
                      "ssim_metric",
]
