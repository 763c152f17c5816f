"""Part labels and an accumulator that turns per-part point sets into one Gaussian cloud."""

from __future__ import annotations

import numpy as np

PARTS = ("skin", "lips", "neck", "ear", "sclera", "iris", "pupil", "lid", "brow", "hair", "facial_hair",
         "teeth", "tongue", "cavity", "glasses", "headband")
PART_ID = {name: i for i, name in enumerate(PARTS)}
# parts that never move with the expression (DESIGN §5: hair, ears and accessories are rigid)
RIGID_PARTS = ("neck", "ear", "sclera", "iris", "pupil", "hair", "glasses", "headband")
# parts the smooth face-deformation fields act on
FIELD_PARTS = ("skin", "lips", "brow", "facial_hair")


class GaussianAccumulator:
    def __init__(self):
        self.chunks: list[tuple] = []
        self.extra: dict[str, list] = {}

    def add(self, part: str, means, quats, scales, opacities, colors) -> np.ndarray:
        """Append one part's Gaussians; returns their indices in the final cloud."""
        n = len(means)
        start = sum(len(c[1]) for c in self.chunks)
        op = np.broadcast_to(np.asarray(opacities, dtype=np.float64), (n,))
        self.chunks.append((PART_ID[part], np.asarray(means), np.asarray(quats), np.asarray(scales), op,
                            np.clip(np.asarray(colors), 0.0, 1.0)))
        return np.arange(start, start + n)

    def arrays(self) -> dict[str, np.ndarray]:
        part = np.concatenate([np.full(len(c[1]), c[0], dtype=np.int8) for c in self.chunks])
        out = {k: np.concatenate([c[i] for c in self.chunks]).astype(np.float32)
               for i, k in ((1, "means"), (2, "quats"), (3, "scales"), (4, "opacities"), (5, "colors"))}
        out["part"] = part
        return out
