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
            oi, di = o[i][sel], d[i][sel]  # (P,3)
            a, b = t0[i][sel], t1[i][sel]
            ts = a[:, None] + (b - a)[:, None] * steps  # (P,N)
            occ = self._inside_all(oi, di, ts, carve, cameras, i, H, W)
            anyocc = occ.any(-1)
            first = torch.argmax(occ.to(torch.uint8), dim=-1)
            last = self.hull_samples - 1 - torch.argmax(occ.flip(-1).to(torch.uint8), dim=-1)
            t_exit[i][sel] = ts.gather(1, last[:, None])[:, 0]
            hi = ts.gather(1, first[:, None])[:, 0]
            lo = ts.gather(1, (first - 1).clamp_min(0)[:, None])[:, 0]
            for _ in range(self.hull_bisections):  # invariant: lo outside (or the entry point), hi inside
                mid = 0.5 * (lo + hi)
                inside = self._inside_all(oi, di, mid[:, None], carve, cameras, i, H, W)[:, 0]
                hi = torch.where(inside, mid, hi)
                lo = torch.where(inside, lo, mid)
            t_sel = t_hull[i][sel]
            t_hull[i][sel] = torch.where(anyocc, hi, t_sel)
            h = hull_hit[i].clone()
            h[sel] = anyocc
            hull_hit[i] = h
        return t_hull, t_exit, hull_hit

    def _inside_all(self, o, d, t, carve, cameras, ref, H, W):
        """(P,N) bool: the points o + t·d (rays (P,3), depths (P,N)) inside the silhouette of every view other
        than ``ref``."""
        P, N = t.shape
        others = [j for j in range(len(cameras)) if j != ref]
        uv, z = _ray_project(cameras[others], o, d, t.T.contiguous())  # (J, N·P): depth-major
        m = _sample(carve[others][:, None], uv, W, H)[:, 0]  # (J, P·N)
        # Off-image points read the silhouette's border pixel: carved unless the silhouette runs off the image
        # there (a crop that cuts hair or neck cannot carve what lies beyond it).
        inside = (m > 0.5) | (z <= 1e-4)
        return inside.all(0).reshape(N, P).T

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
            o_i, d_i, t_hull_i = o[i][crop], d[i][crop], t_hull[i][crop]
            others = [j for j in range(V) if j != i]
            cams_j = cameras[others]
            ref = img[i:i + 1, :, None, crop[0], crop[1]]  # (1,3,1,h,w): broadcast over views and depths
            mu_a, var_a = _box_stats(ref, self.window)
            img_fg = torch.cat([img[others], fg[others][:, None]], 1)  # colour and silhouette: one bilinear lookup
            step = (span[i][crop] + self.front) / (self.sweep_steps - 1)  # (h,w)
            J = len(others)
            costs, nvis = [], []
            # all depths of a chunk in one batch of calls: the per-call overhead of ~10 small ops per depth
            # dominated the sweep at training resolutions
            chunk = max(1, _SWEEP_POINTS // (J * h * w))
            for k0 in range(0, self.sweep_steps, chunk):
                ks = torch.arange(k0, min(k0 + chunk, self.sweep_steps), dtype=torch.float32)
                n_k = ks.numel()
                t = t_hull_i - self.front + ks[:, None, None] * step  # (k,h,w)
                uv, z = _ray_project(cams_j, o_i.reshape(-1, 3), d_i.reshape(-1, 3), t.reshape(n_k, h * w))
                looked = _sample(img_fg, uv, W, H).reshape(J, 4, n_k, h, w)
                warped, m = looked[:, :3], looked[:, 3]  # (J,3,k,h,w), (J,k,h,w)
                zj = _sample(occluder_z[others][:, None], uv, W, H, mode="nearest").reshape(J, n_k, h, w)
                inimg = _in_image(uv, W, H).reshape(J, n_k, h, w)
                z = z.reshape(J, n_k, h, w)
                vis = inimg & (z > 1e-4) & (m > 0.5) & (z <= zj + tolerance)
                cost = self._match_cost(ref, warped, mu_a, var_a)  # (J,k,h,w)
                costs.append(_best_views_mean(cost, vis, self.best_views) + ramp[k0:k0 + n_k, None, None])
                nvis.append(vis.to(torch.float32).sum(0))
            C = torch.cat(costs)  # (K,h,w)
            best = torch.argmin(C, dim=0)
            offset = _parabola_offset(C, best)
            t_out[i][crop] = t_hull_i - self.front + (best + offset) * step
            c_best = C.gather(0, best[None])[0] - ramp[best]
            score_out[i][crop] = (1 - 2 * c_best).clamp(0, 1)  # cost 0 → 1; cost ≥ 0.5 (no better than chance) → 0
            nvis_out[i][crop] = torch.cat(nvis).gather(0, best[None])[0]
        return t_out, score_out, nvis_out

    def _match_cost(self, a, b, mu_a, var_a):
        """(J,…,H,W) in [0,1]: windowed NCC over the RGB window (channels as extra samples) + colour difference.
        ``a``, ``b``: (J,3,…,H,W) images (channels in dim 1), broadcast against each other; ``mu_a``, ``var_a``
        from ``_box_stats(a)``."""
        # one pooling call for all windowed moments: b per channel; Σ_c b², Σ_c a·b and |a − b| (channel sums
        # pooled, since the window mean is linear: 6 channels to pool instead of 10), summed channel by channel
        # so that no 3-channel temporaries are made
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
        sad.div_(3)
        pooled = _box(stack, self.window)
        mu_b, mu_bb, mu_ab, sad = pooled[:, 0:3], pooled[:, 3], pooled[:, 4], pooled[:, 5]
        var_b = (mu_bb - (mu_b * mu_b).sum(1)).clamp_min(0)
        cov = mu_ab - (mu_a * mu_b).sum(1)
        ncc = cov / torch.sqrt(var_a * var_b + 1e-6)
        colour = (sad / self.colour_scale).clamp(0, 1)
        return self.ncc_weight * (1 - ncc.clamp(-1, 1)) / 2 + (1 - self.ncc_weight) * colour


# -- small tensor helpers ---------------------------------------------------------------------------
_SWEEP_POINTS = 1 << 20  # sweep points (views × depths × pixels) evaluated per batch: bounds memory at high res

def _ray_project(cameras: Cameras, o: torch.Tensor, d: torch.Tensor, t: torch.Tensor):
    """Points o + t·d on R rays (o, d (R,3); depths t (N,R)) → pixel coordinates (J, N·R, 2) and camera z
    (J, N·R) in each of J cameras, depth-major. In camera j the point is A + t·B with A = Rⱼo + tⱼ and
    B = Rⱼd, and K(A + tB) = KA + t·KB: per ray two small products, then per point only multiply-adds and
    one division, instead of materialising and transforming every 3D point."""
    Rot, tr = cameras.w2c[:, :3, :3], cameras.w2c[:, :3, 3]
    J, R = len(cameras), o.shape[0]
    A = (o @ Rot.reshape(J * 3, 3).T).reshape(R, J, 3).permute(1, 2, 0) + tr[:, :, None]  # (J,3,R)
    B = (d @ Rot.reshape(J * 3, 3).T).reshape(R, J, 3).permute(1, 2, 0)
    KA, KB = torch.bmm(cameras.K, A), torch.bmm(cameras.K, B)  # pinhole: row 3 of K is (0, 0, 1)
    z = torch.addcmul(A[:, 2, None], t, B[:, 2, None])  # (J,N,R)
    iz = 1 / z.clamp_min(1e-6)
    uv = torch.stack([torch.addcmul(KA[:, 0, None], t, KB[:, 0, None]).mul_(iz),
                      torch.addcmul(KA[:, 1, None], t, KB[:, 1, None]).mul_(iz)], dim=-1)
    return uv.reshape(J, -1, 2), z.reshape(J, -1)


def _bounding_box(mask: torch.Tensor, margin: int):
    """(y0, y1, x0, x1) of the true pixels of an (H,W) mask widened by ``margin`` (clipped to the image), or
    None when there are none."""
    rows, cols = mask.any(1).nonzero()[:, 0], mask.any(0).nonzero()[:, 0]
    if rows.numel() == 0:
        return None
    H, W = mask.shape
    return (max(int(rows[0]) - margin, 0), min(int(rows[-1]) + margin + 1, H),
            max(int(cols[0]) - margin, 0), min(int(cols[-1]) + margin + 1, W))


def _in_image(uv, W, H):
    return (uv[..., 0] >= 0) & (uv[..., 0] <= W) & (uv[..., 1] >= 0) & (uv[..., 1] <= H)


def _sample(maps: torch.Tensor, uv: torch.Tensor, W: int, H: int, mode: str = "bilinear") -> torch.Tensor:
    """Sample (J,C,H,W) maps at continuous pixel coordinates (J,P,2) (centres at +.5) → (J,C,P)."""
    grid = torch.stack([uv[..., 0] / W * 2 - 1, uv[..., 1] / H * 2 - 1], dim=-1)[:, :, None, :]
    grid = torch.nan_to_num(grid, nan=-2.0, posinf=-2.0, neginf=-2.0)
    return F.grid_sample(maps, grid, mode=mode, padding_mode="border", align_corners=False)[..., 0]


def _box(x: torch.Tensor, k: int) -> torch.Tensor:
    """k×k window mean over (…, H, W), windows clipped at the border (``avg_pool2d`` without counting the
    padding). Written as shifted in-place adds along rows, then along columns, and one division by the clipped
    window size: the clipped window is a rectangle, so the sums factor. CPU ``avg_pool2d`` was the sweep's
    largest cost (it reads k² values per output); this reads 2k and needs no padded copy."""
    r = k // 2
    H, W = x.shape[-2:]
    rows = x.clone()
    for s in range(1, r + 1):
        rows[..., s:] += x[..., :-s]
        rows[..., :-s] += x[..., s:]
    out = rows.clone()
    for s in range(1, r + 1):
        out[..., s:, :] += rows[..., :-s, :]
        out[..., :-s, :] += rows[..., s:, :]
    return out.div_(_window_count(H, r, x)[:, None] * _window_count(W, r, x)[None, :])


def _window_count(n: int, r: int, like: torch.Tensor) -> torch.Tensor:
    i = torch.arange(n, dtype=like.dtype, device=like.device)
    return (i + r).clamp_max(n - 1) - (i - r).clamp_min(0) + 1


def _box_stats(x: torch.Tensor, k: int):
    """Windowed per-channel means (J,3,…,H,W) and the RGB-window variance summed over channels (J,…,H,W)."""
    mu = _box(x, k)
    var = (_box(x * x, k) - mu * mu).sum(1).clamp_min(0)
    return mu, var


def _dilate(mask: torch.Tensor, r: int) -> torch.Tensor:
    return F.max_pool2d(mask[:, None], 2 * r + 1, stride=1, padding=r)[:, 0]


def _best_views_mean(cost: torch.Tensor, vis: torch.Tensor, k: int) -> torch.Tensor:
    """(H,W) mean of the ``k`` lowest costs among visible views (fewer where fewer see it; 0.5 where none do)."""
    c = torch.where(vis, cost, torch.full_like(cost, float("inf")))
    low = torch.topk(c, min(k, c.shape[0]), dim=0, largest=False).values
    ok = torch.isfinite(low)
    n = ok.sum(0)
    return torch.where(n > 0, torch.where(ok, low, 0).sum(0) / n.clamp_min(1), torch.full_like(n, 0.5, dtype=c.dtype))


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
