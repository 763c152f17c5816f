"""The face tracker's 478 landmarks as AKD's keypoint detector (``eval``: average keypoint distance between
prediction and truth, in pixels at the evaluation resolution). Registered under the name ``face-mesh``."""

from __future__ import annotations

import torch

from .tracker import N_LANDMARKS, FaceTracker


def face_mesh_keypoints():
    """A keypoint model: (N, H, W, 3) float images in [0, 1] → (N, 478, 2) pixels, NaN where no face is found
    (AKD then leaves that image out rather than inventing a distance)."""
    tracker = FaceTracker(static=True)  # every image on its own: targets are not a video

    def detect(images: torch.Tensor) -> torch.Tensor:
        out = torch.full((len(images), N_LANDMARKS, 2), float("nan"))
        frames = (images.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
        for i, frame in enumerate(frames):
            found = tracker.detect(frame)
            if found is not None:
                out[i] = torch.from_numpy(found[0]).float()
        return out

    return detect
