"""The weights-free position prior: a visual hull from the silhouettes, refined by multi-view photo-consistency.

Per input view and pixel ray (all views at once, vectorised):
1. Visual hull. March depths through a head-sized bounding sphere around the origin and keep the first depth
   that lies inside every other view's silhouette, refined by bisection. A point off another view's image
   reads that silhouette's nearest border pixel, so a crop that cuts off hair or neck cannot carve them. The hull contains the head, so the true surface
   lies on or behind this depth along the ray.
2. Plane sweep. Try depths from just in front of the hull surface through the hull along the ray; score each
   by a windowed colour difference plus normalised cross-correlation between the reference view and each other
   view's image reprojected onto it, ignoring views that do not see the point (off-image, outside their
   silhouette, or occluded: behind that view's hull surface) and averaging the best two views. Winner-take-all
   with a parabola fit for sub-step depth. Optional further passes use the refined depths as occlusion test.
3. Confidence: the foreground mask, scaled by how well the views agree at the chosen depth; low off the head,
   where no other view sees the pixel and where the ray missed the hull (silhouettes disagree).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..cameras import Cameras, rays
from .base import check_inputs, ellipsoid_positions, foreground_masks, ray_ellipsoid


@dataclass
class GeometricPrior:
    """Visual hull + plane-sweep photo-consistency on the known cameras (CPU friendly, no weights)."""

    bound_radius: float = 0.2  # m, sphere around the origin that holds head and hair
    hull_samples: int = 64  # depth samples per ray through the bounding sphere (160 was no more accurate on
    # SynthHeads at 64², and 2.5× slower)
    hull_bisections: int = 6  # halve the hull step this many times at the first occupied sample
    band: float = 0.12  # m: the sweep searches the hull's depth along each ray, at most this deep
    front: float = 0.004  # m in front of the hull also searched (mask edges shrink the hull slightly)
    sweep_steps: int = 40  # 64 steps: 5% lower median error on the ray-cast test head, 2× slower
    window: int = 5  # matching window (pixels); wide baselines distort larger windows
    ncc_weight: float = 0.2  # cost = w·(1−NCC)/2 + (1−w)·colour term (colour matched better in our tests)
    colour_scale: float = 0.15  # mean absolute colour difference that counts as a full mismatch
    hull_pull: float = 0.02  # tiny cost ramp over the band: on flat costs prefer depths near the hull
    occlusion_tolerance: float = 0.006  # m: a point more than this behind another view's surface is hidden there
    passes: int = 1  # a second sweep with the refined depths as occlusion test did not help on test heads
    best_views: int = 2  # average the best this many visible views' costs: one occluded view cannot veto a depth
    mask_threshold: float = 0.02  # luminance above which a pixel is foreground when no masks are given
    name: str = "geometric"

    def __call__(self, images: torch.Tensor, cameras: Cameras, masks: torch.Tensor | None = None):
        V, H, W = check_inputs(images, cameras, masks)
        images = images.to(torch.float32).cpu()
        cameras = cameras.to("cpu", torch.float32)
        fg = foreground_masks(images, None if masks is None else masks.cpu(), self.mask_threshold)
        o, d = rays(cameras)  # (V,H,W,3) world, unit d
        fwd = cameras.forward  # (V,3): camera z of a point o + t d is t (d·fwd)
        cos = (d * fwd[:, None, None, :]).sum(-1)

        t_hull, t_exit, hull_hit = self._visual_hull(o, d, fg, cameras, H, W)
        # search from just in front of the hull to its far side along the ray, at most `band` deep
        span = (t_exit - t_hull).clamp(min=0.01, max=self.band)
        t_cur = t_hull
        score = torch.zeros(V, H, W)
        n_vis = torch.zeros(V, H, W)
        occluder_z = t_hull * cos  # pass 1: the hull depths bound each view's visible surface from the front
        tolerance = self.band
        for _ in range(max(1, self.passes)):
            t_cur, score, n_vis = self._sweep(images, fg, o, d, t_hull, span, occluder_z, tolerance, cameras, H, W,
                                              hull_hit)
            occluder_z = torch.where(hull_hit, t_cur * cos, t_hull * cos)
            tolerance = self.occlusion_tolerance

        fallback, _ = ellipsoid_positions(cameras)
        pos = torch.where(hull_hit[..., None], o + t_cur[..., None] * d, fallback)
        agree = score * (n_vis > 0)
        conf = fg * torch.where(hull_hit, 0.6 + 0.4 * agree, torch.full_like(agree, 0.2))
        pos = torch.nan_to_num(pos, nan=0.0, posinf=0.0, neginf=0.0)
        return pos.to(torch.float32).contiguous(), conf.clamp(0, 1).to(torch.float32).contiguous()

    # -- 1. visual hull ---------------------------------------------------------------------------
    def _visual_hull(self, o, d, fg, cameras, H, W):
        V = o.shape[0]
        carve = _dilate(fg, 1)  # a slightly generous silhouette: mask edge errors must not carve the head
        t0, t1, hit = ray_ellipsoid(o, d, (self.bound_radius,) * 3)
        t0 = t0.clamp_min(1e-3)
        steps = torch.linspace(0, 1, self.hull_samples)
        t_hull = t0.clone()
        t_exit = t0.clone()
        hull_hit = torch.zeros(V, H, W, dtype=torch.bool)
        for i in range(V):
            sel = (fg[i] > 0.5) & hit[i]
            if not sel.any():
                continue
            others = [j for j in range(V) if j != i]
            # per ray, the other views' projection coefficients: every sample below is a few multiply-adds
            coef = _ray_coefficients(cameras[others], o[i][sel], d[i][sel], W, H)
            silhouettes = carve[others][:, None]
            a, b = t0[i][sel], t1[i][sel]
            ts = a[None] + (b - a)[None] * steps[:, None]  # (N,P): depth-major, as the lookups want it
            occ = self._inside_all(coef, ts, silhouettes)
            anyocc = occ.any(0)
            first = torch.argmax(occ.to(torch.uint8), dim=0)
            last = self.hull_samples - 1 - torch.argmax(occ.flip(0).to(torch.uint8), dim=0)
            t_exit[i][sel] = ts.gather(0, last[None])[0]
            hi = ts.gather(0, first[None])[0]
            lo = ts.gather(0, (first - 1).clamp_min(0)[None])[0]
            for _ in range(self.hull_bisections):  # invariant: lo outside (or the entry point), hi inside
                mid = 0.5 * (lo + hi)
                inside = self._inside_all(coef, mid[None], silhouettes)[0]
                hi = torch.where(inside, mid, hi)
                lo = torch.where(inside, lo, mid)
            t_sel = t_hull[i][sel]
            t_hull[i][sel] = torch.where(anyocc, hi, t_sel)
            h = hull_hit[i].clone()
            h[sel] = anyocc
            hull_hit[i] = h
        return t_hull, t_exit, hull_hit

    @staticmethod
    def _inside_all(coef, t, silhouettes):
        """(N,P) bool: the points at depths t (N,P) on the rays of ``coef`` (see ``_ray_coefficients``) inside
        every silhouette (J,1,H,W) of those cameras. Evaluated in batches of a few depths: the lookups' buffers
        then stay in cache."""
        N, P = t.shape
        out = torch.empty(N, P, dtype=torch.bool)
        step = max(1, _BATCH_POINTS // (coef[0].shape[0] * P))
        for n0 in range(0, N, step):
            grid, z = _grid_at(coef, t[n0:n0 + step])
            m = F.grid_sample(silhouettes, grid, mode="bilinear", padding_mode="border", align_corners=False)
            # Off-image points read the silhouette's border pixel: carved unless the silhouette runs off the
            # image there (a crop that cuts hair or neck cannot carve what lies beyond it).
            inside = (m.view(z.shape) > 0.5).logical_or_(z <= 1e-4)
            out[n0:n0 + step] = inside.all(0)
        return out

    # -- 2. plane sweep ---------------------------------------------------------------------------
    def _sweep(self, images, fg, o, d, t_hull, span, occluder_z, tolerance, cameras, H, W, hull_hit):
        """Depth, agreement score and visible-view count per pixel. Only pixels whose ray hit the hull use
        them, so each reference view is swept over the bounding box of those pixels, widened by the matching
        window's radius so that their windows see the same pixels as on the whole image (heads cover about
        40 % of a training crop); outside it the hull depth, score 0 and count 0 are returned."""
        V = images.shape[0]
        img = images.permute(0, 3, 1, 2)  # (V,3,H,W)
        fractions = torch.linspace(0, 1, self.sweep_steps)  # depth k of pixel p: hull − front + f_k (span + front)
        ramp = self.hull_pull * fractions
        t_out = t_hull.clone()
        score_out = torch.zeros(V, H, W)
        nvis_out = torch.zeros(V, H, W)
        for i in range(V):
            box = _bounding_box(hull_hit[i], self.window // 2)
            if box is None:
                continue
            crop = (slice(box[0], box[1]), slice(box[2], box[3]))
            h, w = box[1] - box[0], box[3] - box[2]
            t_hull_i = t_hull[i][crop]
            others = [j for j in range(V) if j != i]
            coef = _ray_coefficients(cameras[others], o[i][crop].reshape(-1, 3), d[i][crop].reshape(-1, 3), W, H)
            ref = img[i:i + 1, :, None, crop[0], crop[1]]  # (1,3,1,h,w): broadcast over views and depths
            mu_a, var_a = _box_stats(ref, self.window)
            img_fg = torch.cat([img[others], fg[others][:, None]], 1)  # colour and silhouette: one bilinear lookup
            occluders = occluder_z[others][:, None]
            step = (span[i][crop] + self.front) / (self.sweep_steps - 1)  # (h,w)
            J = len(others)
            costs, nvis = [], []
            # a few depths per batch: few enough that the window statistics' buffers stay in cache, enough that
            # the per-call overhead of the ~40 small ops per batch does not dominate
            chunk = max(1, _BATCH_POINTS // (J * h * w))
            for k0 in range(0, self.sweep_steps, chunk):
                ks = torch.arange(k0, min(k0 + chunk, self.sweep_steps), dtype=torch.float32)
                n_k = ks.numel()
                t = t_hull_i - self.front + ks[:, None, None] * step  # (k,h,w)
                grid, z = _grid_at(coef, t.reshape(n_k, h * w))
                looked = F.grid_sample(img_fg, grid, mode="bilinear", padding_mode="border", align_corners=False)
                looked = looked.view(J, 4, n_k, h, w)
                zj = F.grid_sample(occluders, grid, mode="nearest", padding_mode="border", align_corners=False)
                vis = self._visible(grid, z, looked[:, 3], zj, tolerance).view(J, n_k, h, w)
                cost = self._match_cost(ref, looked[:, :3], mu_a, var_a)  # (J,k,h,w)
                n_vis = vis.sum(0, dtype=torch.float32)
                best2 = _best_views_mean(cost, vis, n_vis, self.best_views)
                costs.append(best2.add_(ramp[k0:k0 + n_k, None, None]))
                nvis.append(n_vis)
            C = torch.cat(costs)  # (K,h,w)
            best = torch.argmin(C, dim=0)
            offset = _parabola_offset(C, best)
            t_out[i][crop] = t_hull_i - self.front + (best + offset) * step
            c_best = C.gather(0, best[None])[0] - ramp[best]
            score_out[i][crop] = (1 - 2 * c_best).clamp(0, 1)  # cost 0 → 1; cost ≥ 0.5 (no better than chance) → 0
            nvis_out[i][crop] = torch.cat(nvis).gather(0, best[None])[0]
        return t_out, score_out, nvis_out

    @staticmethod
    def _visible(grid, z, m, zj, tolerance):
        """(J,…) bool: the point is on the image, in front of the camera, inside the silhouette and not
        behind the occluding surface by more than ``tolerance``."""
        vis = grid.abs().le_(1).all(-1).view(z.shape)  # on the image: |normalised coordinate| ≤ 1
        vis &= z > 1e-4
        vis &= m.reshape(z.shape) > 0.5
        vis &= z <= zj.view(z.shape).add_(tolerance)
        return vis

    def _match_cost(self, a, b, mu_a, var_a):
        """(J,…,H,W) in [0,1]: windowed NCC over the RGB window (channels as extra samples) + colour difference.
        ``a``, ``b``: (J,3,…,H,W) images (channels in dim 1), broadcast against each other; ``mu_a``, ``var_a``
        from ``_box_stats(a)``."""
        # one pooling call for all windowed moments: b per channel; Σ_c b², Σ_c a·b and Σ_c |a − b| (channel
        # sums pooled, since the window mean is linear: 6 channels to pool instead of 10), summed channel by
        # channel so that no 3-channel temporaries are made
        stack = torch.empty((b.shape[0], 6) + b.shape[2:], dtype=b.dtype)
        stack[:, 0:3] = b
        bb, ab, sad = stack[:, 3], stack[:, 4], stack[:, 5]
        torch.mul(b[:, 0], b[:, 0], out=bb)
        torch.mul(a[:, 0], b[:, 0], out=ab)
        torch.sub(a[:, 0], b[:, 0], out=sad).abs_()
        for c in (1, 2):
            bb.addcmul_(b[:, c], b[:, c])
            ab.addcmul_(a[:, c], b[:, c])
            sad.add_((a[:, c] - b[:, c]).abs_())
        pooled = _box(stack, self.window)
        # the rest in place on the pooled channels: var_b in Σb², cov in Σab, the colour term in Σ|a − b|
        var_b, cov, colour = pooled[:, 3], pooled[:, 4], pooled[:, 5]
        for c in range(3):
            mu_b = pooled[:, c]
            var_b.addcmul_(mu_b, mu_b, value=-1)
            cov.addcmul_(mu_a[:, c], mu_b, value=-1)
        denom = var_b.clamp_min_(0).mul_(var_a).add_(1e-6).sqrt_()
        ncc = cov.div_(denom).clamp_(-1, 1)
        colour.mul_(1 / (3 * self.colour_scale)).clamp_(0, 1)  # mean over channels, then the scale
        # w·(1 − ncc)/2 + (1 − w)·colour
        w = self.ncc_weight
        return colour.mul_(1 - w).add_(ncc, alpha=-w / 2).add_(w / 2)


# -- small tensor helpers ---------------------------------------------------------------------------
_BATCH_POINTS = 1 << 17  # points (views × depths × pixels) per batch: the buffers of a batch stay in cache


def _ray_coefficients(cameras: Cameras, o: torch.Tensor, d: torch.Tensor, W: int, H: int):
    """Per-ray coefficients A, B (each (J,3,R)) of the points o + t·d (rays o, d (R,3)) in J cameras, such that a
    point's camera z is A₂ + t·B₂ and its normalised image coordinates (``grid_sample``'s, −1…1 across the
    image) are (Aₓ + t·Bₓ)/z. In camera j the point is Rⱼo + tⱼ + t·Rⱼd; the pixel scale and the shift to
    −1…1 are folded into rows 0 and 1, so that every point costs a few multiply-adds and one division."""
    Rot, tr = cameras.w2c[:, :3, :3], cameras.w2c[:, :3, 3]
    J, R = len(cameras), o.shape[0]
    A = (o @ Rot.reshape(J * 3, 3).T).reshape(R, J, 3).permute(1, 2, 0) + tr[:, :, None]  # (J,3,R) camera frame
    B = (d @ Rot.reshape(J * 3, 3).T).reshape(R, J, 3).permute(1, 2, 0)
    # normalised x = (2/W)·u − 1 with u = (K(A + tB))ₓ / z: pinhole K, row 3 is (0, 0, 1)
    scale = torch.tensor([2.0 / W, 2.0 / H, 1.0])[:, None]
    shift = torch.tensor([1.0, 1.0, 0.0])[:, None]
    KA = torch.bmm(cameras.K, A) * scale - shift * A[:, 2:3]
    KB = torch.bmm(cameras.K, B) * scale - shift * B[:, 2:3]
    return KA.contiguous(), KB.contiguous()


def _grid_at(coef, t: torch.Tensor):
    """The points at depths t (N,R) on the rays of ``coef`` → normalised coordinates (J, N·R, 1, 2), ready for
    ``grid_sample``, and camera z (J,N,R). Off-image and behind-camera points get coordinates outside −1…1."""
    A, B = coef
    J, R = A.shape[0], A.shape[2]
    N = t.shape[0]
    z = torch.addcmul(A[:, 2, None], t, B[:, 2, None])  # (J,N,R)
    iz = z.clamp_min(1e-6).reciprocal_()
    grid = torch.empty(J, N, R, 2)
    torch.addcmul(A[:, 0, None], t, B[:, 0, None], out=grid[..., 0])
    torch.addcmul(A[:, 1, None], t, B[:, 1, None], out=grid[..., 1])
    grid.mul_(iz[..., None]).nan_to_num_(nan=-2.0, posinf=-2.0, neginf=-2.0)
    return grid.view(J, N * R, 1, 2), z


def _bounding_box(mask: torch.Tensor, margin: int):
    """(y0, y1, x0, x1) of the true pixels of an (H,W) mask widened by ``margin`` (clipped to the image), or
    None when there are none."""
    rows, cols = mask.any(1).nonzero()[:, 0], mask.any(0).nonzero()[:, 0]
    if rows.numel() == 0:
        return None
    H, W = mask.shape
    return (max(int(rows[0]) - margin, 0), min(int(rows[-1]) + margin + 1, H),
            max(int(cols[0]) - margin, 0), min(int(cols[-1]) + margin + 1, W))


def _box(x: torch.Tensor, k: int) -> torch.Tensor:
    """k×k window mean over (…, H, W), windows clipped at the border (``avg_pool2d`` without counting the
    padding). Written as shifted adds along rows, then along columns, and one multiplication by the inverse
    clipped window size: the clipped window is a rectangle, so the sums factor. CPU ``avg_pool2d`` was the sweep's
    largest cost (it reads k² values per output); this reads 2k and needs no padded copy."""
    r = k // 2
    H, W = x.shape[-2:]
    rows = _shifted_sum(x, r, -1)
    out = _shifted_sum(rows, r, -2)
    return out.mul_(_inverse_window_size(H, W, r))


def _shifted_sum(x: torch.Tensor, r: int, dim: int) -> torch.Tensor:
    """Sum of x shifted by −r…r along ``dim`` (shifts past the border dropped), added in the order x[i],
    x[i−1], x[i+1], x[i−2], … The first add writes a new tensor (no copy of x to add into)."""
    def sl(a, b):
        return (slice(None),) * (x.ndim + dim) + (slice(a, b),)
    out = torch.empty_like(x)
    if r == 0 or x.shape[dim] == 1:
        return out.copy_(x)
    torch.add(x[sl(1, None)], x[sl(None, -1)], out=out[sl(1, None)])
    out[sl(0, 1)] = x[sl(0, 1)]
    out[sl(None, -1)] += x[sl(1, None)]
    for s in range(2, r + 1):
        out[sl(s, None)] += x[sl(None, -s)]
        out[sl(None, -s)] += x[sl(s, None)]
    return out


@functools.lru_cache(maxsize=64)
def _inverse_window_size(H: int, W: int, r: int) -> torch.Tensor:
    """(H,W) 1 / the number of pixels in each border-clipped window (the same for every batch of a view)."""
    return 1 / (_window_count(H, r)[:, None] * _window_count(W, r)[None, :])


def _window_count(n: int, r: int) -> torch.Tensor:
    i = torch.arange(n, dtype=torch.float32)
    return (i + r).clamp_max(n - 1) - (i - r).clamp_min(0) + 1


def _box_stats(x: torch.Tensor, k: int):
    """Windowed per-channel means (J,3,…,H,W) and the RGB-window variance summed over channels (J,…,H,W)."""
    mu = _box(x, k)
    var = (_box(x * x, k) - mu * mu).sum(1).clamp_min(0)
    return mu, var


def _dilate(mask: torch.Tensor, r: int) -> torch.Tensor:
    return F.max_pool2d(mask[:, None], 2 * r + 1, stride=1, padding=r)[:, 0]


def _best_views_mean(cost: torch.Tensor, vis: torch.Tensor, n_vis: torch.Tensor, k: int) -> torch.Tensor:
    """(…) mean of the ``k`` lowest costs (J,…) among visible views (fewer where fewer see it; 0.5 where none
    do); ``n_vis`` (…) counts the visible views. Overwrites ``cost``."""
    c = cost.masked_fill_(~vis, float("inf"))
    if c.shape[0] == 3 and k == 2:  # the default: 4 views, best 2
        lowest, second = _two_lowest_of_three(c)
        mean = torch.where(n_vis >= 2, (lowest + second).mul_(0.5), lowest)
        return mean.masked_fill_(n_vis == 0, 0.5)
    low = torch.topk(c, min(k, c.shape[0]), dim=0, largest=False).values
    ok = torch.isfinite(low)
    n = ok.sum(0)
    return torch.where(n > 0, torch.where(ok, low, 0).sum(0) / n.clamp_min(1), torch.full_like(n, 0.5, dtype=c.dtype))


def _two_lowest_of_three(c: torch.Tensor):
    """The lowest and second-lowest of (3,…) values, as ``topk`` gives them, by elementwise min/max (``topk``
    along a short leading dim is a slow strided loop)."""
    lo, hi = torch.minimum(c[0], c[1]), torch.maximum(c[0], c[1])
    lowest = torch.minimum(lo, c[2])
    second = torch.minimum(hi, torch.maximum(lo, c[2], out=lo), out=hi)
    return lowest, second


def _parabola_offset(C: torch.Tensor, best: torch.Tensor) -> torch.Tensor:
    """Sub-step offset in [−½, ½] of the minimum of the parabola through the best cost and its neighbours."""
    K = C.shape[0]
    lo = (best - 1).clamp_min(0)
    hi = (best + 1).clamp_max(K - 1)
    c0, c1, c2 = C.gather(0, lo[None])[0], C.gather(0, best[None])[0], C.gather(0, hi[None])[0]
    denom = c0 - 2 * c1 + c2
    off = torch.where(denom > 1e-9, 0.5 * (c0 - c2) / denom.clamp_min(1e-9), torch.zeros_like(c1))
    interior = (best > 0) & (best < K - 1)
    return torch.where(interior, off.clamp(-0.5, 0.5), torch.zeros_like(off))
