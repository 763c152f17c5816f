"""Tiled rasterizer: gsplat's semantics (DESIGN §2) on any device, memory-bounded, differentiable.

On CPU tensors, binning and compositing (forward and backward) run in the fused per-pixel kernels of
``cpu_kernels`` (``_FusedCPU``; ``AVAT3R_RASTERIZER=tensor`` opts out). The tensor-op walk below serves every
other device and is the second implementation under the same tests.

Plan (the same as gsplat's CUDA kernels, expressed as tensor ops):
1. project every Gaussian once (``projection.project``) and list the (tile, Gaussian) pairs its radius box
   touches; sort them by tile, then by camera depth;
2. walk every tile's depth-sorted list in segments of ``segment`` Gaussians, all tiles at once: evaluate
   alpha for the tile's pixels, carry each pixel's transmittance from segment to segment, apply the
   T ≤ 1e-4 stop rule, and retire a tile once all its pixels have stopped (front surfaces hide the rest);
3. backward: walk the same segments again, recomputing alpha instead of storing it, so memory stays bounded
   by one batch of segments (``max_pairs`` Gaussian–pixel pairs) in both passes.

Alpha is evaluated as a polynomial in tile-local pixel coordinates, σ = k·[u², v², uv, u, v, 1], so one
matrix product replaces the per-pair arithmetic; the origin at the tile centre keeps float32 cancellation
small. Colours, depth and alpha are accumulated with one batched matrix product as well. Per-pair tensors are
laid out (tiles, segment, pixels): the coefficient product is then a single (A·S, 6) × (6, P) matrix product
and the accumulation a (5, S) × (S, P) one per tile, which BLAS runs several times faster than the
(P, 6) × (6, S) and (P, S) × (S, 5) shapes of the transposed layout.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import torch

from .projection import ALPHA_MAX, ALPHA_MIN, T_MIN, project

# feature columns accumulated per pixel: r, g, b, camera z, 1 (→ alpha)
_RGB, _Z, _A = slice(0, 3), 3, 4


def rasterize_tiled(means, quats, scales, opacities, colors, K, w2c, width, height, eps2d=0.3, near=0.01,
                    far=1e10, alpha_min: float = ALPHA_MIN, t_min: float = T_MIN, cull: bool = True,
                    tile_size: int = 8, segment: int = 32, max_pairs: int = 1 << 21):
    """C cameras → rgb (C,H,W,3) (no background), alpha (C,H,W), accumulated depth Σwᵢzᵢ (C,H,W).

    ``alpha_min``, ``t_min`` and ``cull`` (radius-box culling) exist to switch the discontinuities off in
    gradient tests, as in ``dense.rasterize_dense``; with ``cull=False`` every Gaussian in front of the near
    plane reaches every pixel. ``max_pairs`` bounds the Gaussian–pixel pairs held at once.
    """
    proj = project(means, quats, scales, opacities, K, w2c, width, height, eps2d, near, far)
    if cull:
        vis = (proj.radii > 0).any(-1)
    else:
        vis = proj.depths > near
    cam, gid = vis.nonzero(as_tuple=True)
    plan = _intersections(proj.means2d[cam, gid].detach(), proj.radii[cam, gid], proj.depths[cam, gid].detach(),
                          cam, K.shape[0], width, height, tile_size, cull)
    conics = proj.conics[cam, gid]
    return _TiledComposite.apply(proj.means2d[cam, gid], conics, proj.opacities[cam, gid], proj.depths[cam, gid],
                                 colors[gid], plan, (width, height, tile_size, segment, max_pairs, alpha_min, t_min))


class _Plan:
    """Depth-sorted (tile, Gaussian) intersection lists of C cameras' tiles."""

    def __init__(self, entries, tile_start, tile_count, tiles_x, tiles_y, n_cameras):
        self.entries = entries  # (M,) index of the projected Gaussian, grouped by tile, front to back
        self.tile_start = tile_start  # (C·Ty·Tx,) first position of each tile's list in ``entries``
        self.tile_count = tile_count  # (C·Ty·Tx,) list lengths
        self.tiles_x, self.tiles_y, self.n_cameras = tiles_x, tiles_y, n_cameras


def _intersections(means2d, radii, depths, cam, n_cameras, width, height, tile_size, cull) -> _Plan:
    tx_n, ty_n = -(-width // tile_size), -(-height // tile_size)
    dev = means2d.device
    if cull:
        r = radii.to(means2d.dtype)
        lo = torch.floor((means2d - r) / tile_size).clamp_min(0).long()
        hi = torch.ceil((means2d + r) / tile_size).long()
        x0, y0 = lo.unbind(-1)
        x1, y1 = hi[:, 0].clamp_max(tx_n), hi[:, 1].clamp_max(ty_n)
    else:  # every Gaussian reaches every tile
        x0 = y0 = torch.zeros_like(cam)
        x1, y1 = torch.full_like(cam, tx_n), torch.full_like(cam, ty_n)
    if _use_fused(means2d):
        from .cpu_kernels import bin_tiles

        y1, x1 = torch.maximum(y1, y0), torch.maximum(x1, x0)  # empty boxes
        first = cam * (ty_n * tx_n)
        entries, start, count = bin_tiles(torch.argsort(depths).numpy(), first.numpy(), x0.numpy(), y0.numpy(),
                                          x1.numpy(), y1.numpy(), tx_n, n_cameras * ty_n * tx_n)
        return _Plan(torch.from_numpy(entries), torch.from_numpy(start), torch.from_numpy(count), tx_n, ty_n,
                     n_cameras)
    nx = (x1 - x0).clamp_min(0)
    counts = nx * (y1 - y0).clamp_min(0)
    # expand each projected Gaussian (in depth order) into its tiles, then group stably by tile. Pair j of a
    # Gaussian whose pairs start at f lies at local = j − f in its box, row local // nx: tile = first tile of
    # the box + local + row·(tiles_x − nx). Everything per pair is int32 except the division, done in float32:
    # local and nx are small (a box has at most tiles_x·tiles_y tiles), so floor(local / nx) is exact.
    by_depth = torch.argsort(depths)
    counts_d = counts.index_select(0, by_depth)
    pair = torch.repeat_interleave(counts_d)  # (M,) position of each pair's Gaussian in depth order
    first = (torch.cumsum(counts_d, 0) - counts_d).int()
    nx_d = nx.index_select(0, by_depth).int().clamp_min(1)
    t0 = ((cam * ty_n + y0) * tx_n + x0).index_select(0, by_depth).int()
    local = torch.arange(pair.shape[0], device=dev, dtype=torch.int32) - first.index_select(0, pair)
    nx_p = nx_d.index_select(0, pair)
    row = torch.floor(local.float() / nx_p.float()).int()
    tile = local.add_(t0.index_select(0, pair)).add_(row.mul_(tx_n - nx_p))
    tile, order = torch.sort(tile, stable=True)
    tile_count = torch.bincount(tile, minlength=n_cameras * ty_n * tx_n)
    gid = by_depth.index_select(0, pair.index_select(0, order))
    return _Plan(gid, torch.cumsum(tile_count, 0) - tile_count, tile_count, tx_n, ty_n, n_cameras)


def _pixel_basis(tile_size, dtype, device):
    """(P, 6) monomials [u², v², uv, u, v, 1] of pixel centres relative to the tile centre, row-major."""
    c = torch.arange(tile_size, dtype=dtype, device=device) + 0.5 - tile_size / 2
    v, u = torch.meshgrid(c, c, indexing="ij")
    u, v = u.reshape(-1), v.reshape(-1)
    return torch.stack([u * u, v * v, u * v, u, v, torch.ones_like(u)], dim=-1)


def _tile_centers(tiles, plan, tile_size, dtype):
    tx = tiles % plan.tiles_x
    ty = (tiles // plan.tiles_x) % plan.tiles_y
    return (tx.to(dtype) + 0.5) * tile_size, (ty.to(dtype) + 0.5) * tile_size


def _neg_sigma_coeffs(mx, my, a, b, c):
    """Coefficients of −σ(u, v) = −½[a(u−mx)² + c(v−my)² + 2b(u−mx)(v−my)] on the monomial basis, (..., 6)."""
    return -torch.stack([0.5 * a, 0.5 * c, b, -(a * mx + b * my), -(c * my + b * mx),
                         0.5 * a * mx * mx + 0.5 * c * my * my + b * mx * my], dim=-1)


class _Segments:
    """Iterates batches of (tile, depth segment) blocks front to back, shared by forward and backward so both
    visit exactly the same blocks. Yields the tiles (A,) and their Gaussians' rows (A, S) in the packed
    feature table, where padding points at the spare last row. The caller updates ``alive`` after each batch."""

    def __init__(self, plan: _Plan, segment: int, n_pixels: int, max_pairs: int, spare: int):
        self.plan, self.segment, self.spare = plan, segment, spare
        self.tiles_per_batch = max(1, max_pairs // (segment * n_pixels))
        self.alive = plan.tile_count > 0

    def __iter__(self):
        plan, S = self.plan, self.segment
        longest = int(plan.tile_count.max()) if plan.tile_count.numel() else 0
        steps = torch.arange(S, device=plan.tile_count.device)
        for start in range(0, longest, S):
            active = ((plan.tile_count > start) & self.alive).nonzero()[:, 0]
            if active.numel() == 0:
                break
            for tiles in active.split(self.tiles_per_batch):
                pos = start + steps
                real = pos < plan.tile_count.index_select(0, tiles)[:, None]  # (A, S) padding mask
                at = (plan.tile_start.index_select(0, tiles)[:, None] + pos).clamp_max(plan.entries.numel() - 1)
                idx = plan.entries.index_select(0, at.reshape(-1)).reshape(at.shape)
                yield tiles, torch.where(real, idx, self.spare)


# packed per-Gaussian columns: mean x, y; conic a, b, c; log opacity; r, g, b; camera z
_MX, _MY, _CA, _CB, _CC, _LOGO, _COL, _DEPTH = 0, 1, 2, 3, 4, 5, slice(6, 9), 9


def _pack(means2d, conics, opac, depths, colors):
    """(E+1, 10) table of the projected Gaussians plus a spare padding row (opacity 0: it never blends)."""
    table = torch.cat([means2d, conics, torch.log(opac)[:, None], colors, depths[:, None]], dim=-1)
    spare = torch.zeros_like(table[:1])
    spare[:, _LOGO] = -torch.inf
    return torch.cat([table, spare])


def _gather(table, tiles, idx, plan, tile_size):
    """Per block: coefficients of log(raw alpha) = −σ + log o on the pixel basis (A,S,6), the blended
    features (A,S,5) and the tile-local geometry (for backward)."""
    g = table.index_select(0, idx.reshape(-1)).reshape(idx.shape + (table.shape[-1],))
    ox, oy = _tile_centers(tiles, plan, tile_size, table.dtype)
    mx, my = g[..., _MX] - ox[:, None], g[..., _MY] - oy[:, None]
    a, b, c = g[..., _CA], g[..., _CB], g[..., _CC]
    k = _neg_sigma_coeffs(mx, my, a, b, c)
    k[..., 5] += g[..., _LOGO]  # the opacity rides in the constant term (−inf on padding)
    f = torch.cat([g[..., _COL], g[..., _DEPTH, None], torch.ones_like(mx)[..., None]], dim=-1)
    return k, f, (mx, my, a, b, c)


def _transmittance(basis, k, alpha_min, keep_raw=True):
    """(A,S,P) raw alpha o·exp(−σ), 1 − alpha (alpha clamped to 0.999 and zeroed below ``alpha_min``) and
    its running product over the segment; the stop rule is applied by the caller. Without ``keep_raw`` (the
    forward pass) the raw alpha is overwritten in place and None is returned for it."""
    A, S = k.shape[:2]
    a_raw = torch.mm(k.reshape(A * S, 6), basis.T).exp_().view(A, S, basis.shape[0])
    alpha = torch.nn.functional.threshold(a_raw, alpha_min * (1 - 1e-7), 0.0, inplace=not keep_raw)
    alpha = alpha.clamp_max_(ALPHA_MAX)
    if not keep_raw:
        a_raw = None
    one_minus = torch.sub(1, alpha, out=alpha)
    return a_raw, one_minus, torch.cumprod(one_minus, dim=1)


def _weights(cp, T_in, t_min):
    """Blend weights wᵢ/T_in = cpᵢ₋₁ − cpᵢ (wᵢ = alphaᵢ·Tᵢ), (A,S,P), with the stop rule: a pixel whose
    transmittance would fall to ≤ t_min drops that Gaussian and all after it; its T_out becomes 0 so later
    segments skip it. The factor T_in is left to the caller, which can apply it to a smaller tensor."""
    w = torch.empty_like(cp)
    torch.sub(1, cp[:, 0], out=w[:, 0])
    torch.sub(cp[:, :-1], cp[:, 1:], out=w[:, 1:])
    T_out = T_in * cp[:, -1]
    stop = (T_in > 0) & (T_out <= t_min)  # (A,P)
    if stop.any():
        # T_in·cpᵢ ≤ t_min ⇔ cpᵢ ≤ t_min / T_in: one per-pixel bound (−1, never met, where no stop) makes the
        # per-Gaussian test a single comparison pass
        bound = torch.where(stop, t_min / T_in.clamp_min(1e-38), -1.0)
        w.masked_fill_(cp <= bound[:, None], 0.0)
        T_out = T_out.masked_fill(stop, 0.0)
    return w, T_out


class _TiledComposite(torch.autograd.Function):
    @staticmethod
    def forward(ctx, means2d, conics, opac, depths, colors, plan, cfg):
        if _use_fused(means2d):
            return _FusedCPU.forward(ctx, means2d, conics, opac, depths, colors, plan, cfg)
        width, height, ts, S, max_pairs, alpha_min, t_min = cfg
        dtype, dev = means2d.dtype, means2d.device
        table = _pack(means2d, conics, opac, depths, colors)
        n_tiles, P = plan.tile_count.numel(), ts * ts
        basis = _pixel_basis(ts, dtype, dev)
        # transmittance per pixel, 0 once stopped; pixels beyond the image border never blend
        T = _inside_mask(plan, ts, width, height, dtype)
        out = torch.zeros(n_tiles, 5, P, dtype=dtype, device=dev)
        segs = _Segments(plan, S, P, max_pairs, spare=means2d.shape[0])
        for tiles, idx in segs:
            k, f, _ = _gather(table, tiles, idx, plan, ts)
            _, _, cp = _transmittance(basis, k, alpha_min, keep_raw=False)
            T_in = T.index_select(0, tiles)
            w, T_out = _weights(cp, T_in, t_min)
            out.index_add_(0, tiles, torch.bmm(f.transpose(1, 2), w).mul_(T_in[:, None]))
            T.index_copy_(0, tiles, T_out)
            segs.alive[tiles] = (T_out > 0).any(-1)
        ctx.save_for_backward(table, opac, out)
        ctx.plan, ctx.cfg, ctx.fused = plan, cfg, False
        return _untile(out, plan, ts, width, height)

    @staticmethod
    def backward(ctx, g_rgb, g_alpha, g_depth):
        """out = Σᵢ wᵢ fᵢ with wᵢ = alphaᵢ Tᵢ. With sᵢ = G·fᵢ, dL/dalphaᵢ = Tᵢ sᵢ − (Σ_{j>i} wⱼ sⱼ)/(1 − alphaᵢ),
        and Σ_{j>i} = G·out − Σ_{j≤i}: one running prefix per pixel, carried across segments. With
        Tᵢ = T_in·cpᵢ/(1 − alphaᵢ) (cp: the running product of 1 − alpha within the segment) this is
        (T_in·cpᵢ·sᵢ + Σ_{j≤i} wⱼ sⱼ − G·out)/(1 − alphaᵢ): a few in-place passes over the block."""
        if ctx.fused:
            return _FusedCPU.backward(ctx, g_rgb, g_alpha, g_depth)
        table, opac, out = ctx.saved_tensors
        plan, (width, height, ts, S, max_pairs, alpha_min, t_min) = ctx.plan, ctx.cfg
        dtype, dev = table.dtype, table.device
        P, E = ts * ts, table.shape[0] - 1
        basis = _pixel_basis(ts, dtype, dev)
        G = _tile_grads(g_rgb, g_alpha, g_depth, plan, ts, width, height, out)  # (T, 5, P)
        total = (G * out).sum(1)
        T = _inside_mask(plan, ts, width, height, dtype)
        prefix = torch.zeros_like(T)
        # per Gaussian (+ the spare row): mx, my, a, b, c, log o, then the 5 blended features
        d_all = torch.zeros(E + 1, 11, dtype=dtype, device=dev)
        segs = _Segments(plan, S, P, max_pairs, spare=E)
        for tiles, idx in segs:
            k, f, (mx, my, a, b, c) = _gather(table, tiles, idx, plan, ts)
            a_raw, one_minus, cp = _transmittance(basis, k, alpha_min)
            T_in = T.index_select(0, tiles)
            w, T_out = _weights(cp, T_in, t_min)
            w.mul_(T_in[:, None])
            Gt = G.index_select(0, tiles)  # (A,5,P)
            s = torch.bmm(f, Gt)  # (A,S,P): dL/dwᵢ
            prefix_t = prefix.index_select(0, tiles)
            pre = torch.mul(w, s).cumsum_(dim=1)  # Σ_{j≤i} wⱼ sⱼ within the segment
            prefix.index_copy_(0, tiles, pre[:, -1] + prefix_t)
            pre.add_((prefix_t - total.index_select(0, tiles))[:, None])
            d_alpha = pre.addcmul_(s.mul_(T_in[:, None]), cp).div_(one_minus)
            # alpha depends on the Gaussian only between the 1/255 skip and the 0.999 clamp, and while kept
            live = (w != 0) & (a_raw < ALPHA_MAX)
            d_x = d_alpha.mul_(a_raw).mul_(live)  # gradient of −σ + log o per pair
            A = d_x.shape[0]
            dk = torch.mm(d_x.view(A * S, P), basis).view(A, S, 6)  # gradient of the log-alpha coefficients
            g0, g1, g2, g3, g4, g5 = (-dk).unbind(-1)  # σ-coefficient gradients (−g5 is also d log o)
            d_geo = torch.stack([
                -a * g3 - b * g4 + (a * mx + b * my) * g5,
                -c * g4 - b * g3 + (c * my + b * mx) * g5,
                0.5 * g0 - mx * g3 + 0.5 * mx * mx * g5,
                g2 - my * g3 - mx * g4 + mx * my * g5,
                0.5 * g1 - my * g4 + 0.5 * my * my * g5,
                -g5], dim=-1)
            d_f = torch.bmm(w, Gt.transpose(1, 2))
            d_all.index_add_(0, idx.reshape(-1), torch.cat([d_geo, d_f], dim=-1).reshape(-1, 11))
            T.index_copy_(0, tiles, T_out)
            segs.alive[tiles] = (T_out > 0).any(-1)
        d_geo, d_f = d_all[:E, :6], d_all[:E, 6:]
        return d_geo[:, :2], d_geo[:, 2:5], _opacity_grad(d_geo[:, 5], opac), d_f[:, _Z], d_f[:, _RGB], None, None


def _opacity_grad(d_log_opacity, opac):
    """dL/do from dL/d(log o), both paths accumulating the latter (0 where o = 0: such a Gaussian never blends)."""
    return torch.where(opac > 0, d_log_opacity / opac.clamp_min(1e-30), torch.zeros_like(opac))


def _use_fused(t: torch.Tensor) -> bool:
    """The fused numba kernels serve CPU tensors unless AVAT3R_RASTERIZER=tensor asks for the tensor-op walk
    (the device-agnostic path, kept as a second implementation under test)."""
    return t.device.type == "cpu" and os.environ.get("AVAT3R_RASTERIZER", "fused") != "tensor"


class _FusedCPU:
    """Forward and backward of ``_TiledComposite`` with the per-pixel kernels of ``cpu_kernels``, one chunk of
    tiles per torch CPU thread (Python threads: the kernels release the GIL)."""

    _pool: ThreadPoolExecutor | None = None
    _pool_size = 0

    @classmethod
    def _run(cls, kernel, *args, buffers=None):
        """kernel(*args, [buffers[c],] c, n) for c < n = torch's thread count, on n threads."""
        n = torch.get_num_threads() if buffers is None else len(buffers)
        calls = [args + ((buffers[c],) if buffers is not None else ()) + (c, n) for c in range(n)]
        if n == 1:
            kernel(*calls[0])
            return
        if cls._pool_size < n:
            cls._pool = ThreadPoolExecutor(max_workers=n, thread_name_prefix="avat3r-raster")
            cls._pool_size = n
        for f in [cls._pool.submit(kernel, *call) for call in calls]:
            f.result()

    @staticmethod
    def forward(ctx, means2d, conics, opac, depths, colors, plan, cfg):
        from .cpu_kernels import composite_forward

        width, height, ts, _, _, alpha_min, t_min = cfg
        half_conic = conics * conics.new_tensor([0.5, 1.0, 0.5])  # σ = a/2·dx² + b·dx·dy + c/2·dy²
        gauss = torch.cat([means2d, half_conic, opac[:, None], colors, depths[:, None]], dim=-1).contiguous()
        n_tiles, P = plan.tile_count.numel(), ts * ts
        out = torch.zeros(n_tiles, 5, P, dtype=means2d.dtype)
        n_used = torch.zeros(n_tiles, P, dtype=torch.int32)
        _FusedCPU._run(composite_forward, gauss.numpy(), plan.entries.numpy(), plan.tile_start.numpy(),
                       plan.tile_count.numpy(), plan.tiles_x, plan.tiles_y, ts, width, height, alpha_min, ALPHA_MAX,
                       t_min, out.numpy(), n_used.numpy())
        ctx.save_for_backward(gauss, out, n_used)
        ctx.plan, ctx.cfg, ctx.fused = plan, cfg, True
        return _untile(out, plan, ts, width, height)

    @staticmethod
    def backward(ctx, g_rgb, g_alpha, g_depth):
        from .cpu_kernels import composite_backward

        gauss, out, n_used = ctx.saved_tensors
        plan, (width, height, ts, _, _, alpha_min, _) = ctx.plan, ctx.cfg
        G = _tile_grads(g_rgb, g_alpha, g_depth, plan, ts, width, height, out).contiguous()
        grads = torch.zeros(torch.get_num_threads(), gauss.shape[0], 10, dtype=gauss.dtype)
        _FusedCPU._run(composite_backward, gauss.numpy(), plan.entries.numpy(), plan.tile_start.numpy(),
                       plan.tile_count.numpy(), plan.tiles_x, plan.tiles_y, ts, width, height, alpha_min, ALPHA_MAX,
                       G.numpy(), out.numpy(), n_used.numpy(), buffers=list(grads.numpy()))
        d = grads.sum(0)
        return d[:, :2], d[:, 2:5], _opacity_grad(d[:, 5], gauss[:, 5]), d[:, 9], d[:, 6:9], None, None


def _inside_mask(plan, ts, width, height, dtype):
    """(C·Ty·Tx, P) 1 for pixels inside the image, 0 for the padding of border tiles."""
    ys = torch.arange(plan.tiles_y * ts, device=plan.tile_count.device) < height
    xs = torch.arange(plan.tiles_x * ts, device=plan.tile_count.device) < width
    m = (ys[:, None] & xs[None, :]).to(dtype)
    m = m.reshape(plan.tiles_y, ts, plan.tiles_x, ts).permute(0, 2, 1, 3).reshape(-1, ts * ts)
    return m.repeat(plan.n_cameras, 1)


def _untile(out, plan, ts, width, height):
    C, ty, tx = plan.n_cameras, plan.tiles_y, plan.tiles_x
    img = out.reshape(C, ty, tx, 5, ts, ts).permute(0, 1, 4, 2, 5, 3).reshape(C, ty * ts, tx * ts, 5)
    img = img[:, :height, :width]
    return img[..., _RGB].contiguous(), img[..., _A].contiguous(), img[..., _Z].contiguous()


def _tile_grads(g_rgb, g_alpha, g_depth, plan, ts, width, height, like):
    C, ty, tx = plan.n_cameras, plan.tiles_y, plan.tiles_x
    G = like.new_zeros(C, ty * ts, tx * ts, 5)
    if g_rgb is not None:
        G[:, :height, :width, _RGB] = g_rgb
    if g_depth is not None:
        G[:, :height, :width, _Z] = g_depth
    if g_alpha is not None:
        G[:, :height, :width, _A] = g_alpha
    return G.reshape(C, ty, ts, tx, ts, 5).permute(0, 1, 3, 5, 2, 4).reshape(-1, 5, ts * ts)
