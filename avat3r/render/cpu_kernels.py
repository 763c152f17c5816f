"""Fused per-pixel compositing kernels for CPU tensors (numba), the inner loop of the tiled rasterizer.

The tensor-op walk in ``tiled.py`` makes ~10 elementwise passes over every Gaussian–pixel pair in the forward
and ~25 in the backward, each a separate kernel over a large temporary. Here compiled loops do what gsplat's
CUDA kernel does: walk each tile's depth-sorted list once (Gaussian by Gaussian over the tile's pixels),
evaluate alpha, blend, and stop each pixel at T ≤ t_min. The kernels release the GIL and take a chunk of the
tiles (tiles c, c + n, c + 2n, …), so the caller runs n chunks on n Python threads; numba's own parallel layer
is not used because its OpenMP runtime here is a second one beside PyTorch's, and two pools of spinning threads
share the cores (docs/benchmarks.md). Semantics are those of ``dense.composite_dense``: alpha =
min(o·exp(−σ), ALPHA_MAX), skipped below ``alpha_min`` (or when σ < 0), a Gaussian that would bring T to
≤ t_min ends the pixel's list without blending.

Backward walks the same lists front to back (see ``tiled._TiledComposite.backward`` for the derivation):
dL/dαᵢ = Tᵢ sᵢ − (G·out − Σ_{j≤i} wⱼ sⱼ)/(1 − αᵢ), with sᵢ = G·fᵢ. Gradients are summed per chunk into the
chunk's own buffer (no races, and the same order on every run for a given thread count); the caller adds the chunks.
"""

from __future__ import annotations

import numpy as np
from numba import njit

# per-Gaussian columns of ``gauss``: mean x, y; conic a/2, b, c/2 (σ without a float constant keeps float32
# tables in float32 arithmetic); opacity; r, g, b; camera z
# per-pixel features accumulated in ``out``: r, g, b, camera z, 1 (→ alpha)
# gradient columns per Gaussian: mean x, y; conic a, b, c; log opacity; r, g, b; camera z


@njit(cache=True, nogil=True)
def _pixel_centres(ts, like):
    """Tile-local pixel centres (u, v), row-major, in ``like``'s dtype: no integer division and no float64
    promotion in the per-pair loops."""
    U, V = np.empty(ts * ts, like.dtype), np.empty(ts * ts, like.dtype)
    for p in range(ts * ts):
        U[p], V[p] = p % ts + 0.5, p // ts + 0.5
    return U, V


@njit(inline="always")
def _sigma_cut(o, alpha_min):
    """o·exp(−σ) < alpha_min for σ beyond this bound: no exp is needed there."""
    return np.log(o / alpha_min) + 1e-6 if alpha_min > 0 else np.inf


@njit(inline="always")
def _pair(dx, dy, ca, cb, cc, o, sigma_cut, alpha_min, alpha_max):
    """(raw o·exp(−σ), alpha) of one Gaussian–pixel pair at offset (dx, dy); alpha 0 when the pair is skipped
    (σ < 0, or alpha below alpha_min). ca, cc are the halved conic."""
    sigma = ca * dx * dx + cc * dy * dy + cb * dx * dy
    if sigma < 0 or sigma > sigma_cut:
        return 0.0, 0.0
    raw = o * np.exp(-sigma)
    alpha = min(raw, alpha_max)
    if alpha < alpha_min:
        return raw, 0.0
    return raw, alpha


@njit(cache=True, nogil=True)
def composite_forward(gauss, entries, tile_start, tile_count, tiles_x, tiles_y, ts, width, height,
                      alpha_min, alpha_max, t_min, out, n_used, chunk, n_chunks):
    """Fill ``out`` (tiles, 5, ts²) and ``n_used`` (tiles, ts²) for the chunk's tiles: the list entries each
    pixel walked before it stopped. Pixels outside the image stay 0.

    The loop runs Gaussian by Gaussian over the tile's pixels (a Gaussian's columns are read once per tile,
    not once per pixel) and leaves the tile once every pixel has stopped."""
    n_tiles, P = tile_count.shape[0], ts * ts
    U, V = _pixel_centres(ts, gauss)
    origin = np.empty(2, gauss.dtype)
    T = np.empty(P)  # transmittance; 0 once the pixel has stopped (or lies outside the image)
    for t in range(chunk, n_tiles, n_chunks):
        x0 = (t % tiles_x) * ts
        y0 = ((t // tiles_x) % tiles_y) * ts
        origin[0], origin[1] = x0, y0  # in the table's dtype: int − float32 would promote to float64
        start, count = tile_start[t], tile_count[t]
        alive = 0
        for p in range(P):
            inside = x0 + p % ts < width and y0 + p // ts < height
            T[p] = 1.0 if inside else 0.0
            alive += inside
        k = 0
        while k < count and alive > 0:
            mx, my, ca, cb, cc, o, r, g, b, z = gauss[entries[start + k]]
            sigma_cut = _sigma_cut(o, alpha_min)
            ox, oy = origin[0] - mx, origin[1] - my
            for p in range(P):
                if T[p] == 0:
                    continue
                _, alpha = _pair(U[p] + ox, V[p] + oy, ca, cb, cc, o, sigma_cut, alpha_min, alpha_max)
                if alpha == 0:
                    continue
                T_next = T[p] * (1 - alpha)
                if T_next <= t_min:  # this Gaussian would bring T to ≤ t_min: the pixel stops before it
                    T[p] = 0.0
                    n_used[t, p] = k
                    alive -= 1
                    continue
                w = alpha * T[p]
                out[t, 0, p] += w * r
                out[t, 1, p] += w * g
                out[t, 2, p] += w * b
                out[t, 3, p] += w * z
                out[t, 4, p] += w
                T[p] = T_next
            k += 1
        for p in range(P):
            if T[p] > 0:
                n_used[t, p] = count


@njit(cache=True, nogil=True)
def composite_backward(gauss, entries, tile_start, tile_count, tiles_x, tiles_y, ts, width, height,
                       alpha_min, alpha_max, grad_out, out, n_used, acc, chunk, n_chunks):
    """Add dL/d(Gaussian columns) of the chunk's tiles into ``acc`` (Gaussians, 10), the chunk's own buffer.
    ``grad_out`` and ``out`` are (tiles, 5, ts²). Gaussian by Gaussian as in the forward; each Gaussian's
    gradient is summed over the tile's pixels before it is added to ``acc``."""
    n_tiles, P = tile_count.shape[0], ts * ts
    U, V = _pixel_centres(ts, gauss)
    origin = np.empty(2, gauss.dtype)
    T = np.empty(P)
    prefix = np.empty(P)  # Σ_{j≤i} wⱼ sⱼ
    rest = np.empty(P)  # G·out, the sum over the whole list
    for t in range(chunk, n_tiles, n_chunks):
        x0 = (t % tiles_x) * ts
        y0 = ((t // tiles_x) % tiles_y) * ts
        origin[0], origin[1] = x0, y0  # in the table's dtype: int − float32 would promote to float64
        start = tile_start[t]
        walk = 0
        for p in range(P):
            T[p], prefix[p] = 1.0, 0.0
            rest[p] = (grad_out[t, 0, p] * out[t, 0, p] + grad_out[t, 1, p] * out[t, 1, p]
                       + grad_out[t, 2, p] * out[t, 2, p] + grad_out[t, 3, p] * out[t, 3, p]
                       + grad_out[t, 4, p] * out[t, 4, p])
            walk = max(walk, n_used[t, p])  # 0 outside the image
        for k in range(walk):
            i = entries[start + k]
            mx, my, ca, cb, cc, o, r, g, b, z = gauss[i]
            sigma_cut = _sigma_cut(o, alpha_min)
            d0 = d1 = d2 = d3 = d4 = d5 = d6 = d7 = d8 = d9 = 0.0
            ox, oy = origin[0] - mx, origin[1] - my
            for p in range(P):
                if k >= n_used[t, p]:
                    continue
                dx, dy = U[p] + ox, V[p] + oy
                raw, alpha = _pair(dx, dy, ca, cb, cc, o, sigma_cut, alpha_min, alpha_max)
                if alpha == 0:
                    continue
                G0, G1, G2, G3 = grad_out[t, 0, p], grad_out[t, 1, p], grad_out[t, 2, p], grad_out[t, 3, p]
                s = G0 * r + G1 * g + G2 * b + G3 * z + grad_out[t, 4, p]
                w = alpha * T[p]
                prefix[p] += w * s
                d6 += w * G0
                d7 += w * G1
                d8 += w * G2
                d9 += w * G3
                if raw < alpha_max:  # the clamp at ALPHA_MAX cuts the geometry's gradient
                    gx = (T[p] * s - (rest[p] - prefix[p]) / (1 - alpha)) * raw  # dL/d(−σ + log o)
                    d0 += gx * (2 * ca * dx + cb * dy)
                    d1 += gx * (2 * cc * dy + cb * dx)
                    d2 -= gx * 0.5 * dx * dx
                    d3 -= gx * dx * dy
                    d4 -= gx * 0.5 * dy * dy
                    d5 += gx
                T[p] *= 1 - alpha
            gi = acc[i]
            gi[0] += d0
            gi[1] += d1
            gi[2] += d2
            gi[3] += d3
            gi[4] += d4
            gi[5] += d5
            gi[6] += d6
            gi[7] += d7
            gi[8] += d8
            gi[9] += d9


@njit(cache=True, nogil=True)
def bin_tiles(order, first_tile, x0, y0, x1, y1, tiles_x, n_tiles):
    """Depth-sorted (tile, Gaussian) lists by a counting sort: Gaussian ``order[j]`` (front to back) covers
    tiles [x0, x1) × [y0, y1) of its camera, whose first tile is ``first_tile``. Returns (entries, tile_start,
    tile_count); within a tile the list keeps the depth order, as the stable sort of ``tiled._intersections``."""
    count = np.zeros(n_tiles, np.int64)
    for g in order:
        for ty in range(y0[g], y1[g]):
            for tx in range(x0[g], x1[g]):
                count[first_tile[g] + ty * tiles_x + tx] += 1
    start = np.zeros(n_tiles, np.int64)
    for t in range(1, n_tiles):
        start[t] = start[t - 1] + count[t - 1]
    cursor = start.copy()
    entries = np.empty(start[-1] + count[-1] if n_tiles else 0, np.int64)
    for g in order:
        for ty in range(y0[g], y1[g]):
            for tx in range(x0[g], x1[g]):
                t = first_tile[g] + ty * tiles_x + tx
                entries[cursor[t]] = g
                cursor[t] += 1
    return entries, start, count
