"""The SynthHeads skin surface: a deformed ellipsoid with a carved face relief (nose, brows, lips, chin).

``HeadShape.surface(u)`` maps unit directions to points on the skin, so the skin can be sampled uniformly in
direction space and every Gaussian's footprint follows from the map's Jacobian. Face landmarks (eye centres,
mouth line, jaw hinge) are attributes so the other parts and the expression fields line up with the relief.
"""

from __future__ import annotations

import numpy as np

from .identity import Identity
from .shapes import gauss2, normalize, smoothstep, tangent_basis


class HeadShape:
    def __init__(self, ident: Identity):
        self.ident = ident
        self.A = 0.074 * ident.head_width
        self.B = 0.105 * ident.head_height
        self.C = 0.094 * ident.head_depth
        hh = ident.head_height
        self.y_eye = 0.004 * hh
        self.eye_x = ident.eye_spacing / 2
        self.y_brow = self.y_eye + 0.017 * hh
        self.y_bridge = self.y_eye + 0.004
        self.y_tip = self.y_bridge - 0.037 * ident.nose_length * hh
        self.y_mouth = self.y_tip - 0.021 * hh
        self.mouth_w = ident.mouth_width
        self.y_hairline = self.y_eye + 0.058 * hh
        self.hinge = np.array([0.0, -0.008 * hh, -0.008])
        self.jaw_max_angle = np.deg2rad(17.0)

    # -- the surface ---------------------------------------------------------------------------
    def base(self, u: np.ndarray) -> np.ndarray:
        """Skull and jaw without the face relief."""
        ux, uy, uz = u[:, 0], u[:, 1], u[:, 2]
        low = smoothstep(0.05, -0.85, uy)  # 0 on the skull, 1 towards the chin
        x = self.A * ux * (1 - (1 - self.ident.jaw_width) * low)
        y = self.B * uy
        front = uz > 0
        zf = self.C * np.sign(uz) * np.abs(uz) ** 0.8  # a flatter face than an ellipsoid's
        zb = self.C * uz * (1 - 0.22 * low)
        z = np.where(front, zf, zb)
        chin = np.exp(-((ux / 0.35) ** 2 + ((uy + 0.85) / 0.22) ** 2)) * smoothstep(0.0, 0.4, uz)
        y = y - self.ident.chin_length * chin
        z = z + 0.006 * chin
        return np.stack([x, y, z], -1)

    def relief(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Forward (z) offset of the face features at face coordinates (x, y)."""
        i = self.ident
        p = i.nose_projection
        # nose: a ridge growing from the bridge to the tip, a bulb, alae, then a quick fall to the philtrum
        t = np.clip((self.y_bridge - y) / (self.y_bridge - self.y_tip), 0.0, 1.0)
        ridge = p * (0.004 + 0.017 * t ** 1.25)
        below = p * 0.021 * np.exp(-(((self.y_tip - y) / 0.0062) ** 2))
        above = p * 0.004 * np.exp(-(((y - self.y_bridge) / 0.009) ** 2))
        h = np.where(y >= self.y_tip, np.where(y <= self.y_bridge, ridge, above), below)
        sx = i.nose_width * np.where(y >= self.y_tip, 0.0055 + 0.0045 * t, 0.0095)
        dz = h * np.exp(-0.5 * (x / sx) ** 2)
        dz += p * 0.0035 * gauss2(x, y - self.y_tip - 0.002, 0.0065, 0.0065)
        for s in (-1, 1):
            dz += p * 0.006 * gauss2(x - s * 0.0115 * i.nose_width, y - self.y_tip - 0.001, 0.0048, 0.0048)
            # eye sockets, cheekbones
            dz -= 0.0045 * gauss2(x - s * self.eye_x, y - self.y_eye, 0.016, 0.011)
            dz += 0.005 * gauss2(x - s * 0.038, y - self.y_eye + 0.026, 0.015, 0.013)
        dz += 0.0035 * gauss2(x, y - self.y_brow, 0.04, 0.007)  # brow ridge
        lf = i.lip_fullness
        m = self.y_mouth
        dz += 0.0036 * lf * gauss2(x, y - m - 0.0045, self.mouth_w * 0.85, 0.0038)
        dz += 0.0042 * lf * gauss2(x, y - m + 0.0058, self.mouth_w * 0.8, 0.0045)
        dz -= 0.0012 * gauss2(x, y - m, self.mouth_w, 0.0011)
        dz -= 0.0018 * gauss2(x, y - m + 0.017, 0.02, 0.004)
        dz += 0.0045 * gauss2(x, y - m + 0.033, 0.014, 0.011)
        return dz

    def surface(self, u: np.ndarray) -> np.ndarray:
        p = self.base(u)
        wf = smoothstep(0.2, 0.55, u[:, 2])
        p[:, 2] += wf * self.relief(p[:, 0], p[:, 1])
        return p

    def jacobian(self, u: np.ndarray, h: float = 1e-4):
        """Surface tangents along two orthonormal direction-space tangents (per radian), and the normal."""
        e1, e2 = tangent_basis(u)
        j1 = (self.surface(normalize(u + h * e1)) - self.surface(normalize(u - h * e1))) / (2 * h)
        j2 = (self.surface(normalize(u + h * e2)) - self.surface(normalize(u - h * e2))) / (2 * h)
        n = normalize(np.cross(j1, j2))
        n = n * np.where(np.sum(n * u, -1, keepdims=True) < 0, -1.0, 1.0)
        return j1, j2, n

    def front_point(self, x, y, iters: int = 12):
        """Skin point and normal in front of face coordinates (x, y) (for placing brows, teeth, glasses)."""
        x = np.asarray(x, dtype=np.float64).reshape(-1)
        y = np.asarray(y, dtype=np.float64).reshape(-1)
        ux, uy = x / self.A, y / self.B
        for _ in range(iters):
            uz = np.sqrt(np.clip(1 - ux ** 2 - uy ** 2, 1e-6, None))
            u = normalize(np.stack([ux, uy, uz], -1))
            p = self.surface(u)
            ux = u[:, 0] + 0.8 * (x - p[:, 0]) / self.A
            uy = u[:, 1] + 0.8 * (y - p[:, 1]) / self.B
        uz = np.sqrt(np.clip(1 - ux ** 2 - uy ** 2, 1e-6, None))
        u = normalize(np.stack([ux, uy, uz], -1))
        return self.surface(u), self.jacobian(u)[2]

    def shell_radius(self, points: np.ndarray, offset) -> np.ndarray:
        """Distance from the head centre to the skin (plus ``offset``) in the direction of ``points``."""
        u = normalize(points / np.array([self.A, self.B, self.C]))
        return np.linalg.norm(self.surface(u), axis=-1) + offset

    # -- masks in face coordinates -------------------------------------------------------------
    def lip_alpha(self, x, y):
        """Soft masks (upper, lower) of the lips' red area."""
        w, m, lf = self.mouth_w, self.y_mouth, self.ident.lip_fullness
        r = np.clip(1 - (x / w) ** 2, 0.0, 1.0)
        hu = 0.0072 * lf * r ** 0.55 * (1 - 0.22 * np.exp(-0.5 * (x / 0.0035) ** 2))
        hl = 0.0088 * lf * r ** 0.5
        edge = 0.0007
        upper = smoothstep(m - edge, m, y) * smoothstep(m + hu + edge, m + hu - edge, y) * (r > 0)
        lower = smoothstep(m + edge, m, y) * smoothstep(m - hl - edge, m - hl + edge, y) * (r > 0)
        return upper, lower

    def jaw_weight(self, p: np.ndarray) -> np.ndarray:
        """How much each point follows the jaw: a hard split along the lips so the mouth can open, a soft
        one across the cheeks so they stretch, nothing behind the jaw hinge."""
        x, y, z = p[:, 0], p[:, 1], p[:, 2]
        ax = np.abs(x)
        line = self.y_mouth + 0.55 * np.clip(ax - self.mouth_w, 0.0, None)
        tau = 0.0005 + 0.01 * smoothstep(self.mouth_w - 0.002, self.mouth_w + 0.02, ax)
        w = 1.0 / (1.0 + np.exp(-np.clip((line - y) / tau, -60, 60)))
        return w * smoothstep(-0.02, 0.025, z)
