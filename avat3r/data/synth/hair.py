"""Hair as strands of elongated Gaussians (scalp hair, facial hair) and the rigid accessories.

Strands are grown from roots on the skin: each step follows a combed tangent direction plus gravity (and a
helix for curls) and is pushed back outside a shell around the skin whose thickness is the hair volume, so
styles differ in silhouette, not only in colour. Each segment is one flat ribbon Gaussian along the strand.
"""

from __future__ import annotations

import numpy as np

from .face import HeadShape
from .head import beard_region, eye_centre, hair_region
from .parts import GaussianAccumulator
from .shapes import LIGHT, axes_to_quat, fibonacci_cap, normalize, smoothstep


def grow_strands(shape: HeadShape, roots, normals, comb, n_steps, length, volume, gravity, rng,
                 curl_radius=0.0, lift=0.3, hug=None, hug_below=-0.07, face_clear=None):
    """Grow strands; returns segment midpoints, directions, lengths and the strand fraction (S·K,)."""
    step = np.reshape(np.asarray(length, dtype=np.float64) / n_steps, (-1, 1))
    pos = roots + normals * 6e-4
    d = normalize(comb + lift * normals)
    S = len(roots)
    mids, dirs, seglen, frac, sid = [], [], [], [], []
    phase = rng.uniform(0, 2 * np.pi, S)
    freq = rng.uniform(0.8, 1.2, S) * 2.2
    for k in range(n_steps):
        g = gravity * (k + 1) / n_steps
        want = normalize(d + g[:, None] * np.array([0.0, -1.0, 0.0]) if np.ndim(g) else
                         d + g * np.array([0.0, -1.0, 0.0]))
        nxt = pos + step * want
        if curl_radius > 0:
            b1, b2 = np.cross(want, normals), None
            b1 = normalize(b1)
            b2 = np.cross(want, b1)
            a = phase + freq * k
            nxt = nxt + curl_radius * (np.cos(a)[:, None] * b1 + np.sin(a)[:, None] * b2) * 0.6
        if face_clear is not None:  # scalp hair frames the face instead of hanging over it: move such
            x_half, y_top = face_clear  # points behind the face plane; the shell below pushes them to the side
            over = (nxt[:, 2] > -0.01) & (nxt[:, 1] < y_top) & (np.abs(nxt[:, 0]) < x_half)
            nxt[over, 2] = -0.01
        # stay outside the skin + volume shell, and outside the neck
        r = np.linalg.norm(nxt, axis=-1)
        shell = shape.shell_radius(nxt, volume * smoothstep(0.0, 0.6, (k + 1) / n_steps) + 0.0015)
        inside = (r < shell) & (nxt[:, 1] > -0.07)
        nxt[inside] *= (shell[inside] / r[inside])[:, None]
        if hug is not None:  # flat styles lie on the shell instead of sticking out
            outer = shell + hug
            out = (r > outer) & (nxt[:, 1] > hug_below)
            nxt[out] *= (outer[out] / r[out])[:, None]
        neck = np.sqrt((nxt[:, 0] / 0.068) ** 2 + ((nxt[:, 2] + 0.014) / 0.075) ** 2)
        below = (nxt[:, 1] <= -0.07) & (neck < 1)
        nxt[below, 0] /= neck[below]
        nxt[below, 2] = (nxt[below, 2] + 0.014) / neck[below] - 0.014
        seg = nxt - pos
        ln = np.linalg.norm(seg, axis=-1)
        mids.append(pos + 0.5 * seg)
        dirs.append(seg / np.maximum(ln, 1e-9)[:, None])
        seglen.append(ln)
        frac.append(np.full(S, (k + 0.5) / n_steps))
        sid.append(np.arange(S))
        d = normalize(seg)
        pos = nxt
    return (np.concatenate(mids), np.concatenate(dirs), np.concatenate(seglen), np.concatenate(frac),
            np.concatenate(sid))


def strand_gaussians(shape, mids, dirs, seglen, frac, sid, base_rgb, width, rng, n_strands):
    """Ribbons lying on the hair shell, coloured per strand with a baked sheen."""
    out_n = normalize(mids / np.array([shape.A, shape.B, shape.C]) ** 2)
    side = normalize(np.cross(out_n, dirs))
    q = axes_to_quat(dirs, side)
    # segments that jumped (pushed out of the face or the head) must not smear into long streaks
    seglen = np.minimum(seglen, 1.3 * np.median(seglen))
    sc = np.stack([0.62 * seglen + 2e-4, np.full(len(mids), width), np.full(len(mids), 3e-4)], -1)
    tone = rng.uniform(0.65, 1.25, n_strands)[sid]
    col = np.array(base_rgb)[None] * (tone * (0.8 + 0.35 * frac))[:, None]
    lit = 0.5 + 0.5 * np.clip(out_n @ LIGHT, 0, None) + 0.1 * out_n[:, 1]
    halfway = normalize(LIGHT + np.array([0.0, 0.0, 1.0]))
    sheen = np.clip(np.abs(np.sum(np.cross(dirs, out_n) * halfway, -1)), 0, 1) ** 12 * 0.25
    col = col * lit[:, None] + sheen[:, None] * (0.4 + np.array(base_rgb))[None]
    return q, sc, col


def build_hair(shape: HeadShape, rng, acc: GaussianAccumulator):
    i = shape.ident
    style = i.hair_style
    if style == "bald":
        return np.zeros(0, dtype=np.int64)
    u = fibonacci_cap(5200, -1.0, rng)
    p = shape.surface(u)
    m = hair_region(shape, p, soft=0.0015)
    roots_u = u[m > 0.5]
    pick = rng.permutation(len(roots_u))
    vol = {"short": 0.004 + 0.008 * i.hair_volume, "long": 0.006 + 0.012 * i.hair_volume,
           "bun": 0.003 + 0.004 * i.hair_volume, "curly": 0.014 + 0.028 * i.hair_volume}[style]
    n_roots = {"short": 1500, "long": 1500, "bun": 1300, "curly": 1500}[style]
    roots_u = roots_u[pick[:n_roots]]
    roots = shape.surface(roots_u)
    _, _, nrm = shape.jacobian(roots_u)
    part_x = rng.uniform(-0.03, 0.03)
    side = np.sign(roots[:, 0] - part_x + 1e-9)
    top = smoothstep(0.02, 0.07, roots[:, 1])
    comb_top = np.stack([side * 0.8, np.zeros(len(roots)), -0.6 * np.ones(len(roots))], -1)
    if style == "long":  # front strands go back over the crown, not down over the face
        comb_top = comb_top * np.array([0.6, 1.0, 2.0])
    comb = top[:, None] * comb_top + (1 - top[:, None]) * np.array([0.0, -1.0, -0.3])
    bun_centre = np.array([0.0, 0.6 * shape.B, -shape.C - 0.01])
    if style == "bun":  # everything is pulled towards the bun
        comb = bun_centre - roots
    comb = normalize(comb - np.sum(comb * nrm, -1, keepdims=True) * nrm)
    if style == "short":
        # shorter at the sides and the nape so strands do not hang below the ears
        length, steps, grav, curl, width = (0.035 + 0.035 * i.hair_length) * (0.45 + 0.55 * top), 6, 0.15, 0.0, 0.0012
    elif style == "long":
        length, steps, grav, curl, width = 0.14 + 0.14 * i.hair_length, 14, 1.6, 0.0, 0.0013
    elif style == "bun":
        length, steps, grav, curl, width = np.linalg.norm(bun_centre - roots, axis=-1) * 1.1, 7, 0.0, 0.0, 0.0012
    else:
        length, steps, grav, curl, width = (0.045 + 0.03 * i.hair_length) * (0.6 + 0.4 * top), 9, 0.05, 0.004, 0.0013
    lift = 0.9 if style == "curly" else 0.25
    hug = {"short": 0.002, "long": 0.002, "bun": 0.0015, "curly": 0.006}[style]
    mids, dirs, seglen, frac, sid = grow_strands(shape, roots, nrm, comb, steps, length, vol, grav, rng,
                                                 curl_radius=curl, lift=lift, hug=hug,
                                                 hug_below=0.0 if style == "long" else -0.07,
                                                 face_clear=(shape.A + 0.5 * vol, shape.y_hairline - 0.005))
    q, sc, col = strand_gaussians(shape, mids, dirs, seglen, frac, sid, i.hair_color, width, rng, len(roots))
    idx = [acc.add("hair", mids, q, sc, 0.93, col)]
    if style == "bun":
        c = bun_centre
        d = fibonacci_cap(2600, -1.0, rng)
        rb = 0.028 + 0.01 * i.hair_volume
        pb = c + d * rb * (1 + 0.06 * rng.normal(0, 1, len(d)))[:, None]
        t = normalize(np.cross(d, normalize(rng.normal(0, 1, (len(d), 3)))))
        qb = axes_to_quat(t, np.cross(d, t))
        scb = np.tile([0.004, 0.0011, 3e-4], (len(d), 1))
        lit = 0.5 + 0.5 * np.clip(d @ LIGHT, 0, None)
        colb = np.array(i.hair_color)[None] * (rng.uniform(0.7, 1.2, len(d)) * lit)[:, None]
        idx.append(acc.add("hair", pb, qb, scb, 0.95, colb))
    return np.concatenate(idx)


def build_facial_hair(shape: HeadShape, rng, acc: GaussianAccumulator):
    i = shape.ident
    if i.facial_hair == "none":
        return np.zeros(0, dtype=np.int64)
    u = fibonacci_cap(9000, 0.0, rng)
    p = shape.surface(u)
    if i.facial_hair == "moustache":
        x, y = p[:, 0], p[:, 1]
        w = shape.mouth_w + 0.004
        mask = (np.abs(x) < w) & (y > shape.y_mouth + 0.004 + 0.15 * np.abs(x)) & \
               (y < shape.y_mouth + 0.015 + 0.1 * np.abs(x)) & (p[:, 2] > 0)
        length, width, n_max = 0.007, 0.0009, 900
    else:
        mask = beard_region(shape, p) > 0.5
        length, width, n_max = (0.0025, 0.0005, 1400) if i.facial_hair == "stubble" else (0.012, 0.0011, 2200)
    cand = np.flatnonzero(mask)
    cand = cand[rng.permutation(len(cand))[:n_max]]
    roots = p[cand]
    _, _, nrm = shape.jacobian(u[cand])
    down = np.array([0.0, -1.0, 0.0])
    if i.facial_hair == "moustache":
        down = np.stack([np.sign(roots[:, 0]) * 0.6, -np.ones(len(roots)), np.zeros(len(roots))], -1)
    comb = normalize(down - np.sum(down * nrm, -1, keepdims=True) * nrm)
    steps = 2 if i.facial_hair == "stubble" else 3
    mids, dirs, seglen, frac, sid = grow_strands(shape, roots, nrm, comb, steps, length, 0.0005, 0.5, rng,
                                                 lift=0.15, hug=0.004)
    q, sc, col = strand_gaussians(shape, mids, dirs, seglen, frac, sid, np.array(i.hair_color) * 0.85, width,
                                  rng, len(roots))
    return acc.add("facial_hair", mids, q, sc, 0.9, col)


def _ring(centre, rx, ry, n, z_tilt=0.0):
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    p = np.stack([centre[0] + rx * np.cos(t), centre[1] + ry * np.sin(t), centre[2] + z_tilt * np.cos(t)], -1)
    tang = normalize(np.stack([-rx * np.sin(t), ry * np.cos(t), -z_tilt * np.sin(t)], -1))
    return p, tang


def build_accessories(shape: HeadShape, rng, acc: GaussianAccumulator):
    i = shape.ident
    idx = []
    if i.glasses:
        col = np.array(i.glasses_color)
        parts_p, parts_t = [], []
        fronts = []
        for side in (-1, 1):
            c = eye_centre(shape, side)
            gc = np.array([c[0] + side * 0.003, c[1] - 0.001, c[2] + 0.0115 * i.eye_size + 0.014])
            fronts.append(gc)
            p, t = _ring(gc, 0.022, 0.016, 110)
            parts_p.append(p), parts_t.append(t)
            # temple arm: from the outer rim back over the ear
            z = np.linspace(gc[2] - 0.004, -0.02, 45)
            y = np.full_like(z, gc[1] + 0.004)
            xs = np.sqrt(np.clip(1 - (y / shape.B) ** 2 - (z / shape.C) ** 2, 0.02, None)) * shape.A + 0.006
            x = side * np.maximum(xs, np.abs(gc[0]) + 0.022)
            p = np.stack([x, y, z], -1)
            parts_p.append(p), parts_t.append(normalize(np.gradient(p, axis=0)))
            # lens
            n_l = 160
            rr = np.sqrt((np.arange(n_l) + 0.5) / n_l)
            th = np.arange(n_l) * 2.39996
            lp = np.stack([gc[0] + 0.021 * rr * np.cos(th), gc[1] + 0.015 * rr * np.sin(th),
                           np.full(n_l, gc[2] - 0.001)], -1)
            lq = np.tile([1.0, 0, 0, 0], (n_l, 1))
            idx.append(acc.add("glasses", lp, lq, np.tile([0.0025, 0.0025, 2e-4], (n_l, 1)), 0.12,
                               np.tile([0.65, 0.75, 0.85], (n_l, 1))))
        a, b = fronts
        tb = np.linspace(0, 1, 14)
        bridge = a[None] * (1 - tb[:, None]) + b[None] * tb[:, None]
        bridge[:, 0] = np.clip(bridge[:, 0], -0.011, 0.011)
        bridge[:, 1] += 0.006 + 0.003 * np.sin(np.pi * tb)
        parts_p.append(bridge), parts_t.append(np.tile([1.0, 0, 0], (14, 1)))
        p, t = np.concatenate(parts_p), np.concatenate(parts_t)
        up = normalize(np.cross(t, np.array([0.0, 0.0, 1.0])) + 1e-6)
        q = axes_to_quat(t, up + np.array([0, 1e-3, 0]))
        lit = 0.7 + 0.3 * rng.random(len(p))
        idx.append(acc.add("glasses", p, q, np.tile([0.0016, 0.0011, 0.0011], (len(p), 1)), 0.98,
                           col[None] * lit[:, None]))
    if i.headband:
        vol = {"bald": 0.0, "short": 0.004 + 0.008 * i.hair_volume, "long": 0.006 + 0.012 * i.hair_volume,
               "bun": 0.003 + 0.004 * i.hair_volume, "curly": 0.014 + 0.028 * i.hair_volume}[i.hair_style]
        az = np.linspace(-np.pi, np.pi, 220, endpoint=False)
        pts, tans = [], []
        for v in np.linspace(-1, 1, 5):
            yc = (shape.y_hairline + 0.012) * (1 + np.cos(az)) / 2 + 0.0 * (1 - np.cos(az)) / 2 + v * 0.007
            d = np.stack([np.sin(az) * np.sqrt(np.clip(1 - (yc / shape.B) ** 2, 0, 1)) * shape.A, yc,
                          np.cos(az) * np.sqrt(np.clip(1 - (yc / shape.B) ** 2, 0, 1)) * shape.C], -1)
            r = shape.shell_radius(d, vol + 0.004)
            p = normalize(d) * r[:, None]
            pts.append(p), tans.append(normalize(np.roll(p, -1, 0) - np.roll(p, 1, 0)))
        p, t = np.concatenate(pts), np.concatenate(tans)
        out = normalize(p)
        q = axes_to_quat(t, np.cross(out, t))
        lit = 0.55 + 0.45 * np.clip(out @ LIGHT, 0, None)
        stripes = 1 + 0.12 * np.sign(np.sin(np.arctan2(p[:, 0], p[:, 2]) * 40))
        col = np.array(i.headband_color)[None] * (lit * stripes)[:, None]
        idx.append(acc.add("headband", p, q, np.tile([0.0016, 0.0022, 6e-4], (len(p), 1)), 0.98, col))
    return np.concatenate(idx) if idx else np.zeros(0, dtype=np.int64)
