"""Fused per-pixel compositing kernels for CPU tensors (numba), the inner loop of the tiled rasterizer.

The tensor-op walk in ``tiled.py`` makes ~10 elementwise passes over every Gaussian–pixel pair in the forward
and ~25 in the backward, each a separate kernel over a large temporary. Here one loop per pixel does what
gsplat's CUDA kernel does per thread: walk the tile's depth-sorted list once, evaluate alpha, blend, and stop
at T ≤ t_min. The kernels release the GIL and take a chunk of the tiles (tiles c, c + n, c + 2n, …), so the
caller runs n chunks on n Python threads; numba's own parallel layer is not used because its OpenMP runtime is
a second one beside PyTorch's, and two pools of spinning threads on the same cores slow both down many-fold. Semantics are those of ``dense.composite_dense``:
alpha = min(o·exp(−σ), ALPHA_MAX), skipped below ``alpha_min`` (or when σ < 0), a Gaussian that would bring
T to ≤ t_min ends the pixel's list without blending.

Backward walks the same lists front to back (see ``tiled._TiledComposite.backward`` for the derivation):
dL/dαᵢ = Tᵢ sᵢ − (G·out − Σ_{j≤i} wⱼ sⱼ)/(1 − αᵢ), with sᵢ = G·fᵢ. Gradients are summed per chunk into the chunk's own
buffer (no races, and the same order on every run for a given thread count); the caller adds the chunks.
"""

from __future__ import annotations

import numpy as np
from numba import njit

# per-Gaussian columns of ``gauss``: mean x, y; conic a, b, c; opacity; r, g, b; camera z
# per-pixel features accumulated in ``out``: r, g, b, camera z, 1 (→ alpha)
# gradient columns per Gaussian: mean x, y; conic a, b, c; log opacity; r, g, b; camera z


@njit(cache=True, fastmath=False)
def _alpha(gs, px, py, alpha_min, alpha_max):
    """(raw o·exp(−σ), clamped alpha, dx, dy); alpha 0 when the pair is skipped."""
    dx = px - gs[0]
    dy = py - gs[1]
    sigma = 0.5 * (gs[2] * dx * dx + gs[4] * dy * dy) + gs[3] * dx * dy
    if sigma < 0:
        return 0.0, 0.0, dx, dy
    raw = gs[5] * np.exp(-sigma)
    alpha = min(raw, alpha_max)
    if alpha < alpha_min:
        return raw, 0.0, dx, dy
    return raw, alpha, dx, dy


@njit(cache=True, nogil=True)
def composite_forward(gauss, entries, tile_start, tile_count, tiles_x, tiles_y, ts, width, height,
                      alpha_min, alpha_max, t_min, out, n_used, chunk, n_chunks):
    """Fill ``out`` (tiles, 5, ts²) and ``n_used`` (tiles, ts²) for the chunk's tiles: the list entries each
    pixel walked before it stopped. Pixels outside the image stay 0."""
    n_tiles = tile_count.shape[0]
    for t in range(chunk, n_tiles, n_chunks):
        tx = t % tiles_x
        ty = (t // tiles_x) % tiles_y
        start, count = tile_start[t], tile_count[t]
        for p in range(ts * ts):
            x = tx * ts + p % ts
            y = ty * ts + p // ts
            if x >= width or y >= height:
                continue
            px, py = x + 0.5, y + 0.5
            T = 1.0
            r = g = b = z = a = 0.0
            k = 0
            while k < count:
                gs = gauss[entries[start + k]]
                _, alpha, _, _ = _alpha(gs, px, py, alpha_min, alpha_max)
                if alpha > 0:
                    T_next = T * (1 - alpha)
                    if T_next <= t_min:
                        break
                    w = alpha * T
                    r += w * gs[6]
                    g += w * gs[7]
                    b += w * gs[8]
                    z += w * gs[9]
                    a += w
                    T = T_next
                k += 1
            out[t, 0, p], out[t, 1, p], out[t, 2, p], out[t, 3, p], out[t, 4, p] = r, g, b, z, a
            n_used[t, p] = k


@njit(cache=True, nogil=True)
def composite_backward(gauss, entries, tile_start, tile_count, tiles_x, tiles_y, ts, width, height,
                       alpha_min, alpha_max, grad_out, out, n_used, acc, chunk, n_chunks):
    """Add dL/d(Gaussian columns) of the chunk's tiles into ``acc`` (Gaussians, 10), the chunk's own buffer.
    ``grad_out`` and ``out`` are (tiles, 5, ts²)."""
    n_tiles = tile_count.shape[0]
    for t in range(chunk, n_tiles, n_chunks):
        tx = t % tiles_x
        ty = (t // tiles_x) % tiles_y
        start = tile_start[t]
        for p in range(ts * ts):
            x = tx * ts + p % ts
            y = ty * ts + p // ts
            if x >= width or y >= height:
                continue
            px, py = x + 0.5, y + 0.5
            G0, G1, G2, G3, G4 = (grad_out[t, 0, p], grad_out[t, 1, p], grad_out[t, 2, p],
                                  grad_out[t, 3, p], grad_out[t, 4, p])
            total = (G0 * out[t, 0, p] + G1 * out[t, 1, p] + G2 * out[t, 2, p] + G3 * out[t, 3, p]
                     + G4 * out[t, 4, p])
            T = 1.0
            prefix = 0.0
            for k in range(n_used[t, p]):
                i = entries[start + k]
                gs = gauss[i]
                raw, alpha, dx, dy = _alpha(gs, px, py, alpha_min, alpha_max)
                if alpha == 0:
                    continue
                s = G0 * gs[6] + G1 * gs[7] + G2 * gs[8] + G3 * gs[9] + G4
                w = alpha * T
                prefix += w * s
                d_alpha = T * s - (total - prefix) / (1 - alpha)
                gi = acc[i]
                gi[6] += w * G0
                gi[7] += w * G1
                gi[8] += w * G2
                gi[9] += w * G3
                if raw < alpha_max:  # the clamp at ALPHA_MAX cuts the geometry's gradient
                    gx = d_alpha * raw  # dL/d(−σ + log o)
                    gi[0] += gx * (gs[2] * dx + gs[3] * dy)
                    gi[1] += gx * (gs[4] * dy + gs[3] * dx)
                    gi[2] -= gx * 0.5 * dx * dx
                    gi[3] -= gx * dx * dy
                    gi[4] -= gx * 0.5 * dy * dy
                    gi[5] += gx
                T *= 1 - alpha
