"""Neutral SynthHeads geometry: skin, neck, ears, eyes with lids, brows and the mouth interior.

Every builder takes the shared ``HeadShape`` (landmarks and the skin surface), a numpy generator and the
accumulator; colours carry baked shading (the renderer has no lights) and high-frequency detail (skin
mottling, iris streaks, individual brow hairs) so image losses have texture to work with.
"""

from __future__ import annotations

import numpy as np

from .face import HeadShape
from .parts import GaussianAccumulator
from .shapes import (
    axes_to_quat,
    covariance_to_gaussian,
    fibonacci_cap,
    gauss2,
    normalize,
    shade,
    smoothstep,
    tangent_basis,
    value_noise,
)

SKIN_SPHERE_POINTS = 8000
FACE_CAP_COS = np.cos(np.deg2rad(58.0))
FACE_DENSITY = 4.0  # the face cap is sampled this many times denser than the skull
CAVITY_COLOR = np.array([0.17, 0.035, 0.045])
LID_AZ = np.deg2rad(np.linspace(-78, 78, 30))
LID_TOP = np.deg2rad(80.0)
UPPER_LID_S, LOWER_LID_S = 12, 8
UPPER_EDGE, LOWER_EDGE = np.deg2rad(20.0), np.deg2rad(-25.0)


def hair_region(shape: HeadShape, p: np.ndarray, soft: float = 0.004) -> np.ndarray:
    """Soft mask of the scalp: above a hairline that runs from the forehead down to the nape."""
    az = np.arctan2(p[:, 0], p[:, 2])
    c = np.cos(az)
    y_line = shape.y_hairline * (1 + c) / 2 + (-0.058) * (1 - c) / 2
    return smoothstep(y_line - soft, y_line + soft, p[:, 1])


def eye_centre(shape: HeadShape, side: int) -> np.ndarray:
    p, _ = shape.front_point(side * shape.eye_x, shape.y_eye)
    r = 0.0115 * shape.ident.eye_size
    return np.array([side * shape.eye_x, shape.y_eye, p[0, 2] + 0.0012 - r])


def build_skin(shape: HeadShape, rng, acc: GaussianAccumulator):
    i = shape.ident
    u_skull = fibonacci_cap(SKIN_SPHERE_POINTS, -1.0, rng)
    u_skull = u_skull[u_skull[:, 2] < FACE_CAP_COS]
    n_face = int(FACE_DENSITY * SKIN_SPHERE_POINTS * (1 - FACE_CAP_COS) / 2)
    u_face = fibonacci_cap(n_face, FACE_CAP_COS, rng)
    d0 = np.sqrt(4 * np.pi / SKIN_SPHERE_POINTS)
    u = np.concatenate([u_skull, u_face])
    delta = np.concatenate([np.full(len(u_skull), d0), np.full(len(u_face), d0 / np.sqrt(FACE_DENSITY))])
    p = shape.surface(u)
    keep = ~((p[:, 1] < -0.085) & (p[:, 2] < 0.0))  # inside the neck, never seen
    es = i.eye_size
    for s in (-1, 1):  # eye openings: the eyeball and lids show through
        dx, dy = p[:, 0] - s * shape.eye_x, p[:, 1] - shape.y_eye - 0.0005
        keep &= ~(((dx / (0.0135 * es)) ** 2 + (dy / (0.0072 * es)) ** 2 < 1) & (u[:, 2] > 0.3))
    u, delta, p = u[keep], delta[keep], p[keep]
    j1, j2, n = shape.jacobian(u)
    k = 0.72 * delta[:, None, None]
    cov = k ** 2 * (j1[:, :, None] * j1[:, None, :] + j2[:, :, None] * j2[:, None, :])
    cov += 0.0006 ** 2 * n[:, :, None] * n[:, None, :]
    quats, scales = covariance_to_gaussian(cov)
    scales = np.minimum(scales, 0.004)  # where the relief is nearly vertical (nose wings) the map is degenerate

    x, y, z = p[:, 0], p[:, 1], p[:, 2]
    base = np.array(i.skin_color)
    low = value_noise(p, rng, 8, 60, 250)
    fine = value_noise(p, rng, 10, 600, 1800)
    grain = rng.normal(0, 1, len(p))
    albedo = base[None] * (1 + i.skin_texture * (0.8 * low + 0.5 * fine + 0.35 * grain))[:, None]
    blush = sum(gauss2(x - s * 0.035, y - shape.y_mouth - 0.02, 0.016, 0.014) for s in (-1, 1))
    blush += 0.7 * gauss2(x, y - shape.y_tip, 0.008, 0.008)
    albedo += (blush * 0.06)[:, None] * np.array([1.0, -0.35, -0.3])[None] * (z[:, None] > 0)
    if i.freckles > 0:
        zone = gauss2(x, y - shape.y_tip - 0.01, 0.045, 0.018) * (z > 0)
        dots = (rng.random(len(p)) < 0.12 * i.freckles * zone)
        albedo[dots] *= np.array([0.72, 0.62, 0.55])
    # lips, with fine vertical creases
    up, lo = shape.lip_alpha(x, y)
    lip = np.clip(up + lo, 0, 1) * (z > 0)
    lipc = np.array(i.lip_color)[None] * (1 + 0.07 * np.sin(x * 2 * np.pi / 0.0013))[:, None]
    albedo = albedo * (1 - lip[:, None]) + lipc * lip[:, None]
    crease = gauss2(x, y - shape.y_mouth, shape.mouth_w * 0.95, 0.0008) * (z > 0)
    albedo *= (1 - 0.55 * crease)[:, None]
    nostril = sum(gauss2(x - s * 0.0058 * i.nose_width, y - shape.y_tip + 0.0045, 0.0028, 0.0018)
                  for s in (-1, 1)) * (n[:, 1] < -0.2) * (z > 0.05)
    albedo *= (1 - 0.8 * np.clip(nostril * 1.5, 0, 1))[:, None]
    if i.hair_style != "bald":  # dark hair roots show between strands
        h = hair_region(shape, p)
        albedo = albedo * (1 - h[:, None]) + np.array(i.hair_color)[None] * 0.55 * h[:, None]
    if i.facial_hair in ("stubble", "beard"):
        b = beard_region(shape, p)
        albedo = albedo * (1 - 0.35 * b[:, None]) + 0.35 * b[:, None] * np.array(i.hair_color)[None] * 0.6
    # soft occlusion in the folds: beside the nose, under it, the inner eye corners
    ao = 1.0
    for s in (-1, 1):
        ao = ao - 0.22 * gauss2(x - s * 0.016 * i.nose_width, y - shape.y_tip - 0.004, 0.005, 0.009)
        ao = ao - 0.15 * gauss2(x - s * (shape.eye_x - 0.014), y - shape.y_eye, 0.005, 0.006)
        ao = ao - 0.12 * gauss2(x - s * 0.025, y - shape.y_mouth - 0.012, 0.004, 0.012)
    ao = ao - 0.25 * gauss2(x, y - shape.y_tip + 0.007, 0.008, 0.003)
    colors = albedo * (shade(n, 0.42, 0.68) * np.where(z > 0, ao, 1.0))[:, None]
    part_is_lip = (np.maximum(up, lo) > 0.5) & (z > 0)
    idx_skin = acc.add("skin", p[~part_is_lip], quats[~part_is_lip], scales[~part_is_lip], 0.99,
                       colors[~part_is_lip])
    idx_lip = acc.add("lips", p[part_is_lip], quats[part_is_lip], scales[part_is_lip], 0.99, colors[part_is_lip])
    return idx_skin, idx_lip


def beard_region(shape: HeadShape, p: np.ndarray) -> np.ndarray:
    """Soft mask of the beard: lower face and jaw, not the lips, fading up the cheeks."""
    x, y, z = p[:, 0], p[:, 1], p[:, 2]
    up, lo = shape.lip_alpha(x, y)
    lips = np.clip(up + lo, 0, 1)
    cheek_line = shape.y_mouth + 0.022 - 0.25 * np.abs(x)
    m = smoothstep(cheek_line + 0.004, cheek_line - 0.004, y) * smoothstep(-0.03, 0.0, z)
    m = np.maximum(m, gauss2(x, y - shape.y_mouth - 0.011, shape.mouth_w * 1.1, 0.004) * (z > 0))
    return m * (1 - lips) * smoothstep(-0.13, -0.095, y)


def build_neck(shape: HeadShape, rng, acc: GaussianAccumulator):
    i = shape.ident
    rx, rz, cz = 0.05 * i.head_width, 0.056, -0.014
    n_th, n_y = 78, 34
    th = (np.arange(n_th) + 0.5) / n_th * 2 * np.pi
    ys = np.linspace(-0.045, -0.2, n_y)
    T, Y = np.meshgrid(th, ys)
    T = T + rng.uniform(-0.3, 0.3, T.shape) * 2 * np.pi / n_th
    x, z = rx * np.sin(T).ravel(), cz + rz * np.cos(T).ravel()
    y = Y.ravel()
    p = np.stack([x, y, z], -1)
    n = normalize(np.stack([x / rx ** 2, np.zeros_like(x), (z - cz) / rz ** 2], -1))
    up = np.tile([0.0, 1.0, 0.0], (len(p), 1))
    along = 0.62 * 2 * np.pi * 0.053 / n_th
    quats = axes_to_quat(np.cross(up, n), up)
    scales = np.stack([np.full(len(p), along), np.full(len(p), 0.62 * 0.155 / n_y), np.full(len(p), 6e-4)], -1)
    ao = 0.7 + 0.3 * smoothstep(-0.06, -0.1, y) * 1.0  # under the chin is in shadow
    albedo = np.array(i.skin_color)[None] * (0.93 + i.skin_texture * value_noise(p, rng, 6, 60, 300))[:, None]
    colors = albedo * (shade(n) * ao)[:, None]
    return acc.add("neck", p, quats, scales, 0.97, colors)


def build_ears(shape: HeadShape, rng, acc: GaussianAccumulator):
    i = shape.ident
    es = i.ear_size
    y_c, z_front = shape.y_eye - 0.016, -0.004
    idx = []
    for s in (-1, 1):
        d = normalize(np.array([[s * 1.0, y_c / shape.B, z_front / shape.C]]))
        root = shape.surface(d)[0] - np.array([s * 0.003, 0, 0])
        ang = np.deg2rad(i.ear_angle)
        tilt = np.deg2rad(12.0)
        up = np.array([0.0, np.cos(tilt), -np.sin(tilt)])
        back = normalize(np.array([s * np.sin(ang), 0.0, -np.cos(ang)]))
        back = normalize(back - np.dot(back, up) * up)
        normal = np.cross(up, back) * s
        n_pts = 700
        r = np.sqrt((np.arange(n_pts) + 0.5) / n_pts)
        th = np.arange(n_pts) * 2.39996 + rng.uniform(0, 0.3, n_pts)
        a, b = 0.015 * es, 0.031 * es
        sx, sy = r * np.cos(th), r * np.sin(th)
        # a lobe: the lower half is narrower
        sx = sx * np.where(sy < 0, 1 - 0.35 * np.abs(sy) ** 2, 1.0)
        u_b, u_u = a * (1 + sx), b * sy
        rim = smoothstep(0.72, 0.92, r)
        concha = gauss2(sx + 0.35, sy + 0.05, 0.35, 0.35)
        offset = 0.0025 * rim - 0.003 * concha + 0.004 * (1 - np.abs(sy)) * (sx + 1) * 0.5
        p = root[None] + u_b[:, None] * back[None] + u_u[:, None] * up[None] + offset[:, None] * normal[None]
        spacing = np.sqrt(np.pi * a * b / n_pts)
        quats = axes_to_quat(np.tile(back, (n_pts, 1)), np.tile(up, (n_pts, 1)))
        scales = np.stack([np.full(n_pts, 0.75 * spacing), np.full(n_pts, 0.75 * spacing), np.full(n_pts, 8e-4)], -1)
        light = 0.55 + 0.35 * rim - 0.3 * concha + 0.15 * max(0.0, float(normal @ np.array([0.35, 0.55, 0.75])))
        albedo = np.array(i.skin_color) * np.array([1.0, 0.9, 0.88])
        colors = albedo[None] * light[:, None] * (1 + 0.5 * i.skin_texture * rng.normal(0, 1, n_pts))[:, None]
        idx.append(acc.add("ear", p, quats, scales, 0.97, colors))
    return np.concatenate(idx)


def sphere_cap_gaussians(centre, radius, dirs, spacing, flat=3e-4):
    p = centre[None] + radius * dirs
    t1, t2 = tangent_basis(dirs)
    return p, axes_to_quat(t1, t2), np.stack([np.full(len(p), spacing), np.full(len(p), spacing),
                                              np.full(len(p), flat)], -1)


def build_eyes(shape: HeadShape, rng, acc: GaussianAccumulator) -> dict:
    """Eyeballs (sclera, streaked iris, pupil, catch-light) and the lids, whose per-Gaussian parameters are
    returned so blinks can slide them over the eyeball."""
    i = shape.ident
    r = 0.0115 * i.eye_size
    lids = {"idx": [], "centre": [], "az": [], "s": [], "upper": [], "side": [], "radius": []}
    iris_rgb = np.array(i.iris_color)
    for side in (-1, 1):
        c = eye_centre(shape, side)
        # sclera: the front 2/3 of the ball
        dirs = fibonacci_cap(600, -0.35, rng)
        spacing = 0.65 * r * np.sqrt(4 * np.pi * 0.675 / 600)
        p, q, s = sphere_cap_gaussians(c, r, dirs, spacing)
        edge = 1 - dirs[:, 2]
        sclera = np.array([0.93, 0.91, 0.88])[None] * (1 - 0.08 * edge)[:, None]
        sclera += (edge * 0.08)[:, None] * np.array([0.3, -0.4, -0.4])[None]
        veins = rng.random(len(p)) < 0.05 * edge
        sclera[veins] = np.array([0.8, 0.45, 0.45])
        acc.add("sclera", p, q, s, 0.98, sclera * shade(dirs, 0.65, 0.4)[:, None])
        # iris: sunflower disc on a cap of angular radius 0.5 rad, radial streaks and a dark limbal ring
        n_iris = 320
        rho = np.sqrt((np.arange(n_iris) + 0.5) / n_iris)
        phi = np.arange(n_iris) * 2.39996
        ang = 0.5 * rho
        dirs = np.stack([np.sin(ang) * np.cos(phi), np.sin(ang) * np.sin(phi), np.cos(ang)], -1)
        sp = 0.7 * r * 0.5 * np.sqrt(np.pi / n_iris)
        p, q, s = sphere_cap_gaussians(c, r + 3e-4, dirs, sp)
        streak = rng.uniform(0.6, 1.4, 64)[((phi % (2 * np.pi)) / (2 * np.pi) * 64).astype(int) % 64]
        col = iris_rgb[None] * (streak * (1 + 0.35 * gauss2(rho - 0.5, 0, 0.08, 1)))[:, None]
        col *= (1 - 0.6 * smoothstep(0.8, 1.0, rho))[:, None]
        pupil = rho < 0.38
        col[pupil] = np.array([0.02, 0.02, 0.025])
        col = col * shade(dirs, 0.7, 0.35)[:, None]
        acc.add("iris", p[~pupil], q[~pupil], s[~pupil], 0.99, col[~pupil])
        acc.add("pupil", p[pupil], q[pupil], s[pupil], 0.99, col[pupil])
        hl_dir = normalize(np.array([[-0.25, 0.3, 1.0]]))
        acc.add("pupil", c[None] + (r + 8e-4) * hl_dir, np.array([[1.0, 0, 0, 0]]), np.full((1, 3), 0.0007), 0.9,
                np.array([[1.0, 1.0, 1.0]]))
        # lids: rows from the edge (s = 0) to the hidden top/bottom of the ball (s = 1)
        for upper, n_s in ((True, UPPER_LID_S), (False, LOWER_LID_S)):
            S, AZ = np.meshgrid(np.linspace(0, 1, n_s), LID_AZ)
            S, AZ = S.ravel(), AZ.ravel()
            rl = r + (0.0013 if upper else 0.0011)
            el = lid_elevation(S, upper, 0.0, 0.0)
            p = lid_points(c, rl, AZ, el)
            skin = np.array(i.skin_color) * (0.9 if upper else 0.95)
            col = np.tile(skin, (len(p), 1)) * (1 + 0.5 * i.skin_texture * rng.normal(0, 1, len(p)))[:, None]
            if upper:  # lash line
                col[S < 0.01] = np.array([0.04, 0.03, 0.03])
                col[(S > 0.01) & (S < 0.2)] *= 0.75  # lid crease shadow near the lashes
            else:
                col[S < 0.01] = skin * np.array([0.85, 0.7, 0.7])
            col *= (0.6 + 0.4 * np.cos(AZ) ** 0.5)[:, None]
            q0 = np.tile([1.0, 0, 0, 0], (len(p), 1))
            idx = acc.add("lid", p, q0, np.full((len(p), 3), 1e-3), 0.99, col)
            lids["idx"].append(idx)
            lids["centre"].append(np.tile(c, (len(p), 1)))
            lids["az"].append(AZ)
            lids["s"].append(S)
            lids["upper"].append(np.full(len(p), upper))
            lids["side"].append(np.full(len(p), side))
            lids["radius"].append(np.full(len(p), rl))
    return {k: np.concatenate(v) for k, v in lids.items()}


def lid_elevation(s, upper, blink, wide):
    """Elevation of lid rows: the edge moves with blink/wide, the hidden end stays put (the lid stretches)."""
    if np.ndim(upper) == 0:
        upper = np.full(np.shape(s), bool(upper))
    e_up = (UPPER_EDGE + np.deg2rad(22.0) * wide) * (1 - blink) + np.deg2rad(-14.0) * blink
    e_lo = LOWER_EDGE - np.deg2rad(4.0) * wide + np.deg2rad(5.0) * blink
    return np.where(upper, e_up + s * (LID_TOP - e_up), e_lo - s * (LID_TOP + e_lo))


def lid_points(c, radius, az, el):
    d = np.stack([np.cos(el) * np.sin(az), np.sin(el), np.cos(el) * np.cos(az)], -1)
    return c + np.asarray(radius)[..., None] * d


def lid_geometry(lids: dict, blink: np.ndarray, wide: np.ndarray):
    """Positions, quaternions and scales of all lid Gaussians for per-Gaussian blink/wide amounts."""
    el = lid_elevation(lids["s"], lids["upper"], blink, wide)
    az, rad = lids["az"], lids["radius"]
    p = lid_points(lids["centre"], rad, az, el)
    t_az = np.stack([np.cos(az), np.zeros_like(az), -np.sin(az)], -1)
    t_el = np.stack([-np.sin(el) * np.sin(az), np.cos(el), -np.sin(el) * np.cos(az)], -1)
    q = axes_to_quat(t_az, t_el)
    rows = np.where(lids["upper"], UPPER_LID_S - 1, LOWER_LID_S - 1)
    e_edge = lid_elevation(np.zeros_like(el), lids["upper"], blink, wide)
    d_el = np.abs(np.where(lids["upper"], LID_TOP - e_edge, LID_TOP + e_edge)) / rows
    d_az = LID_AZ[1] - LID_AZ[0]
    scales = np.stack([0.7 * rad * d_az * np.cos(el) + 3e-4, 0.7 * rad * d_el + 3e-4,
                       np.full(len(el), 4e-4)], -1)
    return p, q, scales


def build_brows(shape: HeadShape, rng, acc: GaussianAccumulator):
    i = shape.ident
    n = int(380 * i.brow_thickness)
    idx = []
    for side in (-1, 1):
        t = rng.random(n)
        v = rng.uniform(-0.5, 0.5, n)
        x_in, x_out = 0.009, shape.eye_x + 0.023
        x = side * (x_in + (x_out - x_in) * t)
        thick = 0.0075 * i.brow_thickness * (1 - 0.55 * t)
        y = shape.y_brow + 0.005 * np.sin(np.pi * t * 0.9) - 0.004 * t ** 2 + v * thick
        p, nrm = shape.front_point(x, y)
        p = p + nrm * 6e-4
        direction = np.stack([side * (0.25 + 0.85 * t), 1.0 - 0.75 * t + 0.3 * v, np.zeros(n)], -1)
        direction = normalize(direction - np.sum(direction * nrm, -1, keepdims=True) * nrm)
        q = axes_to_quat(direction, np.cross(nrm, direction))
        scales = np.stack([np.full(n, 0.0024), np.full(n, 0.0003), np.full(n, 0.0002)], -1)
        col = np.array(i.brow_color)[None] * rng.uniform(0.6, 1.15, n)[:, None]
        idx.append(acc.add("brow", p, q, scales, 0.9, col))
    return np.concatenate(idx)


def behind_skin(shape: HeadShape, p: np.ndarray, gap: float) -> np.ndarray:
    """Push points back so they sit at least ``gap`` behind the face surface (hidden while the lips close)."""
    skin, _ = shape.front_point(p[:, 0], p[:, 1])
    p = p.copy()
    p[:, 2] = np.minimum(p[:, 2], skin[:, 2] - gap)
    return p


def build_mouth_interior(shape: HeadShape, rng, acc: GaussianAccumulator) -> dict:
    """Teeth, tongue and a dark cavity behind the lips: hidden while the lips touch."""
    i = shape.ident
    m, w = shape.y_mouth, shape.mouth_w
    z_front = shape.front_point(0.0, m)[0][0, 2] - 0.0008 * (1 + i.lip_fullness)
    out = {}
    # teeth: an arch of small white Gaussians, darker between teeth
    n_arc, n_v = 44, 8
    for name, y0, y1, back in (("upper", m - 0.0015, m + 0.0085, 0.0075), ("lower", m - 0.008, m + 0.001, 0.009)):
        phi, v = np.meshgrid(np.deg2rad(np.linspace(-64, 64, n_arc)), np.linspace(0, 1, n_v))
        phi, v = phi.ravel(), v.ravel()
        R = 0.026 * w / 0.024
        p = np.stack([R * np.sin(phi), y0 + (y1 - y0) * v, z_front - back - R * (1 - np.cos(phi)) * 1.1], -1)
        p = behind_skin(shape, p, back)
        arc = R * phi
        gap = np.abs(((arc / (0.0052 + 0.0012 * np.abs(phi))) % 1.0) - 0.5) > 0.42
        col = np.tile([0.95, 0.93, 0.86], (len(p), 1)) * (1 - 0.45 * gap)[:, None]
        col *= (1 - 0.35 * np.abs(np.sin(phi)))[:, None]
        tang = np.stack([np.cos(phi), np.zeros_like(phi), np.sin(phi)], -1)
        q = axes_to_quat(tang, np.tile([0.0, 1.0, 0.0], (len(p), 1)))
        sc = np.stack([np.full(len(p), 0.7 * R * np.deg2rad(128) / n_arc), np.full(len(p), 0.7 * (y1 - y0) / n_v),
                       np.full(len(p), 4e-4)], -1)
        out[f"teeth_{name}"] = acc.add("teeth", p, q, sc, 0.99, col)
    # tongue: the top of a flattened ellipsoid resting on the lower jaw
    dirs = fibonacci_cap(520, -0.2, rng)[:, [0, 2, 1]]  # cap around +y
    rad = np.array([0.017 * w / 0.024, 0.006, 0.022])
    centre = np.array([0.0, m - 0.0105, z_front - 0.024])
    p = behind_skin(shape, centre + dirs * rad, 0.012)
    nrm = normalize(dirs / rad)
    t1, t2 = tangent_basis(nrm)
    sp = 0.6 * np.sqrt(2 * np.pi * 0.6 * 0.017 * 0.022 / 520) * 1.4
    col = np.array([0.80, 0.38, 0.40])[None] * (1 + 0.12 * rng.normal(0, 1, len(p)))[:, None]
    col *= (0.75 + 0.25 * np.clip(nrm[:, 1], 0, 1))[:, None]
    out["tongue"] = acc.add("tongue", p, axes_to_quat(t1, t2), np.tile([sp, sp, 6e-4], (len(p), 1)), 0.99, col)
    out["tongue_reach"] = smoothstep(-1.0, 1.0, dirs[:, 2]) * 0.75 + 0.25
    # cavity: a bowl opening forwards behind the teeth
    dirs = -fibonacci_cap(900, -0.2, rng)  # a cap around −z: the back wall and the sides, rim behind the lips
    rad = np.array([0.025 * w / 0.024, 0.02, 0.03])
    centre = np.array([0.0, m - 0.003, z_front - 0.009])
    p = behind_skin(shape, centre + dirs * rad, 0.0045)
    nrm = normalize(dirs / rad)
    t1, t2 = tangent_basis(nrm)
    sp = 0.7 * np.sqrt(2 * np.pi * 0.78 * 0.025 * 0.025 / 900) * 1.3
    depth = np.clip(-dirs[:, 2], 0, 1)
    col = CAVITY_COLOR[None] * (1 - 0.4 * depth)[:, None] * (1 + 0.1 * rng.normal(0, 1, len(p)))[:, None]
    out["cavity"] = acc.add("cavity", p, axes_to_quat(t1, t2), np.tile([sp, sp, 8e-4], (len(p), 1)), 0.99, col)
    return out
