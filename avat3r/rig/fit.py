"""Fitting a rig to a decoder: sample codes across the expression space, decode them, solve one least-squares
problem for every Gaussian's parameters, and measure how far the rig strays from the decoder on codes it was
not fitted to (rendered PSNR and parameter RMS)."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from ..cameras import Cameras, intrinsics_from_fov, look_at
from ..gaussians import Gaussians
from .core import GROUPS, N_PARAMS, Rig, RigError, gaussians_to_params, params_to_gaussians

Decode = Callable[[torch.Tensor], Gaussians]  # codes (F, E) → batched Gaussians (F, N, …) with ``valid``
Progress = Callable[[int], None] | None

# Each known space's code range; synthheads-v1 codes are blendshape weights in [0, 1] (the generator clips to
# it). A space without an entry gets neutral ± 1, the scale of a latent code near the unit ball.
SPACE_RANGES = {"synthheads-v1": (0.0, 1.0)}
EVAL_FOV_DEGREES = 18.0  # the render stage's default field of view: the whole head at 1 m
EVAL_YAWS_DEGREES = (0.0, -35.0, 35.0)  # frontal and both three-quarter views: where expressions show


def code_ranges(space: str, neutral: torch.Tensor) -> torch.Tensor:
    """(E, 2) [low, high] of every parameter of ``space``."""
    neutral = torch.as_tensor(neutral, dtype=torch.float32)
    if space in SPACE_RANGES:
        lo, hi = SPACE_RANGES[space]
        return torch.tensor([[lo, hi]] * neutral.shape[0], dtype=torch.float32)
    return torch.stack([neutral - 1.0, neutral + 1.0], dim=1)


def sample_codes(neutral: torch.Tensor, ranges: torch.Tensor, n: int, seed: int = 0) -> torch.Tensor:
    """(n, E) codes to fit on: the neutral code first, then sweeps of each parameter alone from neutral to each
    end of its range (they pin every delta), then random mixtures within the ranges: three in four move 1–4
    parameters at once (as expressions do), one in four moves all of them (slider combinations)."""
    neutral = torch.as_tensor(neutral, dtype=torch.float32)
    E = neutral.shape[0]
    sides = [(k, end) for k in range(E) for end in (0, 1) if abs(float(ranges[k, end] - neutral[k])) > 1e-9]
    if n < 1 + len(sides):
        raise RigError(f"a rig of {E} parameters needs at least {1 + len(sides)} samples (the neutral code and "
                       f"one sweep per parameter and direction), got {n}", param="samples")
    levels = max(1, min(4, (n // 2) // max(1, len(sides))))
    rows = [neutral]
    for k, end in sides:
        for t in torch.arange(1, levels + 1) / levels:
            z = neutral.clone()
            z[k] = neutral[k] + t * (ranges[k, end] - neutral[k])
            rows.append(z)
    g = torch.Generator().manual_seed(int(seed))
    lo, hi = ranges[:, 0], ranges[:, 1]
    while len(rows) < n:
        u = lo + torch.rand(E, generator=g) * (hi - lo)
        if torch.rand(1, generator=g).item() < 0.75:
            k = int(torch.randint(1, min(4, E) + 1, (1,), generator=g))
            moving = torch.zeros(E, dtype=torch.bool)
            moving[torch.randperm(E, generator=g)[:k]] = True
            u = torch.where(moving, u, neutral)
        rows.append(u)
    return torch.stack(rows[:n]).contiguous()


def fit_linear(codes: torch.Tensor, targets: torch.Tensor, neutral: torch.Tensor,
               chunk: int = 1 << 16) -> tuple[torch.Tensor, torch.Tensor]:
    """Least squares of ``targets`` (S, N, P) on ``[1, codes − neutral]`` (S, E+1), one design matrix for every
    Gaussian and parameter: returns ``base`` (N, P) and ``deltas`` (E, N, P), float32 (solved in float64)."""
    S, E = codes.shape
    X = torch.cat([torch.ones(S, 1, dtype=torch.float64), codes.double() - neutral.double()], dim=1)
    if int(torch.linalg.matrix_rank(X)) < E + 1:
        raise RigError(f"the {S} sample codes do not span the {E}-parameter expression space; sample more",
                       param="samples")
    pinv = torch.linalg.pinv(X)  # (E+1, S)
    Y = targets.reshape(S, -1)
    B = torch.empty(E + 1, Y.shape[1], dtype=torch.float32)
    for c in range(0, Y.shape[1], chunk):
        B[:, c:c + chunk] = (pinv @ Y[:, c:c + chunk].double()).float()
    B = B.reshape(E + 1, *targets.shape[1:])
    return B[0].contiguous(), B[1:].contiguous()


def prune_deltas(deltas: torch.Tensor, ranges: torch.Tensor, neutral: torch.Tensor,
                 threshold: float) -> tuple[torch.Tensor, float]:
    """Zero every (parameter, Gaussian, attribute group) whose largest change over the parameter's range is below
    ``threshold`` (in the group's own units: metres, colour, logit, log scale, quaternion component); returns the
    deltas and the fraction of groups zeroed. Zeros cost almost nothing in the compressed file."""
    if threshold <= 0:
        return deltas, 0.0
    reach = torch.maximum((ranges[:, 1] - neutral).abs(), (ranges[:, 0] - neutral).abs())  # (E,)
    out, zeroed, total = deltas.clone(), 0, 0
    for cols in GROUPS.values():
        small = (deltas[..., cols].abs().amax(-1) * reach[:, None]) < threshold  # (E, N)
        out[..., cols] = out[..., cols].masked_fill(small[..., None], 0.0)
        zeroed, total = zeroed + int(small.sum()), total + small.numel()
    return out, zeroed / total


def eval_cameras(size: int = 128, radius: float = 1.0) -> Cameras:
    """The cameras fit errors are rendered from: frontal and ±35° yaw at the render stage's default framing."""
    yaws = [math.radians(a) for a in EVAL_YAWS_DEGREES]
    eyes = torch.tensor([[radius * math.sin(a), 0.0, radius * math.cos(a)] for a in yaws])
    K = intrinsics_from_fov(EVAL_FOV_DEGREES, size, size).expand(len(yaws), 3, 3).clone()
    return Cameras(K, look_at(eyes), size, size)


def decode_params(decode: Decode, codes: torch.Tensor, batch: int, keep: torch.Tensor | None,
                  reference_quats: torch.Tensor | None, progress: Progress = None
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Decode ``codes`` in batches → (rig parameters (S, N, 14) of the kept Gaussians, keep mask, reference quats).

    The set is fixed: a Gaussian is kept only if the decoder marks it valid for every code (our decoder's mask
    comes from the identity's confidence, so it never changes with the code, but a decoder that dropped Gaussians
    by opacity would otherwise shuffle the rows)."""
    raw = []
    for start in range(0, codes.shape[0], batch):
        with torch.inference_mode():
            g = decode(codes[start:start + batch])
        valid = g.valid if g.valid is not None else torch.ones(g.means.shape[:2], dtype=torch.bool)
        keep = valid.all(0) if keep is None else keep & valid.all(0)
        raw.append(g.to("cpu"))
        if progress:
            progress(min(batch, codes.shape[0] - start))
    if not bool(keep.any()):
        raise RigError("the decoder keeps no Gaussian for every sampled code; nothing to rig")
    ref = reference_quats
    if ref is None:  # the first code's rotations (the neutral one when fitting)
        ref = torch.nn.functional.normalize(raw[0].quats[0, keep], dim=-1)
    params = torch.cat([gaussians_to_params(_batched_select(g, keep), ref) for g in raw])
    return params, keep, ref


def _batched_select(g: Gaussians, keep: torch.Tensor) -> Gaussians:
    return Gaussians(g.means[:, keep], g.quats[:, keep], g.scales[:, keep], g.opacities[:, keep],
                     g.colors[:, keep])


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = float(((a - b) ** 2).mean())
    return float("inf") if mse == 0 else -10 * math.log10(mse)


def compare(rig: Rig, decode: Decode, keep: torch.Tensor, codes: torch.Tensor, cameras: Cameras,
            batch: int = 8, progress: Progress = None) -> dict:
    """Rig vs decoder on ``codes``: PSNR of their renders (pooled over ``cameras``) per code, and the RMS of the
    rig parameters' error per attribute group."""
    from ..render import rasterize

    truth, _, _ = decode_params(decode, codes, batch, keep, rig_reference_quats(rig))
    approx = rig.params(codes)
    scores = []
    for i in range(codes.shape[0]):
        with torch.inference_mode():
            a, _, _ = rasterize(params_to_gaussians(approx[i]), cameras, backend="torch")
            b, _, _ = rasterize(params_to_gaussians(truth[i]), cameras, backend="torch")
        scores.append(psnr(a.clamp(0, 1), b.clamp(0, 1)))
        if progress:
            progress(1)
    err = approx - truth
    rms = {name: float(err[..., cols].pow(2).mean().sqrt()) for name, cols in GROUPS.items()}
    return {"psnr": scores, "psnr_mean": sum(scores) / len(scores), "psnr_worst": min(scores), "rms": rms}


def rig_reference_quats(rig: Rig) -> torch.Tensor:
    return torch.nn.functional.normalize(rig.base[:, 10:14], dim=-1)


def fit_rig(decode: Decode, space: str, names, neutral: torch.Tensor, ranges: torch.Tensor | None = None,
            n_samples: int = 128, prune: float = 0.0, seed: int = 0, batch: int = 8, n_eval: int = 16,
            eval_size: int = 128, float16: bool = True, meta: dict | None = None,
            progress: Progress = None) -> tuple[Rig, torch.Tensor]:
    """Fit a rig to ``decode``; returns it (its ``meta["fit"]`` is the report) and the keep mask over the
    decoder's Gaussians. The deltas are rounded to float16 first when ``float16`` (what the file stores), so the
    report measures the rig as saved. ``n_eval`` held-out random codes (another seed) are rendered to score it."""
    neutral = torch.as_tensor(neutral, dtype=torch.float32).reshape(-1)
    names = tuple(names)
    if len(names) != neutral.shape[0]:
        raise RigError(f"{len(names)} expression names for a {neutral.shape[0]}-parameter neutral code")
    ranges = code_ranges(space, neutral) if ranges is None else torch.as_tensor(ranges, dtype=torch.float32)
    codes = sample_codes(neutral, ranges, n_samples, seed)
    params, keep, _ = decode_params(decode, codes, batch, None, None, progress)
    base, deltas = fit_linear(codes, params, neutral)
    if float16:
        deltas = deltas.half().float()
    deltas, pruned = prune_deltas(deltas, ranges, neutral, prune)
    rig = Rig(base, deltas, space, names, neutral, ranges, meta=dict(meta or {}))
    report = {"samples": int(n_samples), "seed": int(seed), "prune": float(prune), "pruned_fraction": pruned,
              "gaussians": int(base.shape[0]), "columns": N_PARAMS}
    if n_eval > 0:
        held_out = sample_codes(neutral, ranges, n_samples + n_eval, seed + 1)[n_samples:]
        cmp = compare(rig, decode, keep, held_out, eval_cameras(eval_size), batch, progress)
        report.update(held_out=int(n_eval), eval_size=int(eval_size), psnr_mean=cmp["psnr_mean"],
                      psnr_worst=cmp["psnr_worst"], rms=cmp["rms"])
    rig.meta["fit"] = report
    return rig, keep


def avatar_decoder(avatar) -> Decode:
    """``codes → Gaussians`` of an animatable avatar (``stages.animate.load_animatable``)."""
    dev = avatar.state.tokens.device

    def decode(codes: torch.Tensor) -> Gaussians:
        return avatar.model.decode(avatar.state, codes.to(dev))

    return decode


def rig_from_avatar(avatar, n_samples: int = 128, prune: float = 0.0, seed: int = 0, batch: int = 8,
                    n_eval: int = 16, eval_size: int = 128, progress: Progress = None) -> Rig:
    """Fit the rig of an animatable avatar; the rig records the avatar's space, names, input cameras and
    checkpoint so it can be checked and rendered like the avatar."""
    names = avatar.meta.get("expression_names") or [f"e{i}" for i in range(avatar.config.expression_dim)]
    meta = {"source_avatar": avatar.source.replace("\\", "/").rsplit("/", 1)[-1],
            "checkpoint_sha256": avatar.meta.get("checkpoint_sha256"),
            "cameras": avatar.meta.get("cameras")}
    rig, _ = fit_rig(avatar_decoder(avatar), avatar.expression_space, names, avatar.neutral.cpu(),
                     n_samples=n_samples, prune=prune, seed=seed, batch=batch, n_eval=n_eval,
                     eval_size=eval_size, meta=meta, progress=progress)
    return rig
