"""Train the synthheads-v1 expression regressor that `avat3r animate --video` reads driving videos with.

Renders SynthHeads training persons (0–199 of the shipped model's data) making random expressions in front
of near-frontal cameras with pose jitter, fits `avat3r.driving.ExpressionRegressor` to them, measures it on
held-out persons (210–219) against always predicting the training mean, and writes the model folder:

    python recipes/train_expression_regressor.py -o models/synthheads-expr

The renders are cached (npz) so a second fit skips them. About 20 min on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from avat3r.data.synth.expressions import EXPRESSION_NAMES, EXPRESSION_SPACE, SEGMENTS, segment_codes
from avat3r.data.synth.identity import make_identity
from avat3r.data.synth.render import head_gaussians, render_views, single_thread
from avat3r.driving import (
    DRIVING_RES,
    ExpressionRegressor,
    RegressorConfig,
    RegressorExtractor,
    driving_cameras,
    prepare_frames,
    save_regressor,
)
from avat3r.fileio import atomic_write_bytes

CHUNK = 25  # codes per worker task


# -- training data: SynthHeads renders of random expressions ----------------------------------------
def random_codes(rng: np.random.Generator, n: int) -> np.ndarray:
    """Sparse random synthheads-v1 codes: each parameter is active with probability ½ at a uniform level,
    and a third of the codes are frames of the recorded segments (the combinations faces really make)."""
    e = len(EXPRESSION_NAMES)
    codes = np.where(rng.random((n, e)) < 0.5, rng.random((n, e)), 0.0)
    for i in np.flatnonzero(rng.random(n) < 1 / 3):
        seg = SEGMENTS[int(rng.integers(len(SEGMENTS)))]
        codes[i] = segment_codes(seg, 40)[int(rng.integers(40))].numpy()
    return codes.astype(np.float32)


def render_training_chunk(seed: int, persons: list[int], n_codes: int, views_per_code: int, res: int,
                          chunk_seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``n_codes`` random (person, code) pairs, each seen by ``views_per_code`` jittered cameras:
    images (N, res, res, 3) uint8 and their codes (N, E) float32. A pure function of its arguments."""
    rng = np.random.default_rng([int(seed), int(chunk_seed), 0xE4])
    codes = random_codes(rng, n_codes)
    images, targets = [], []
    for code in codes:
        person = persons[int(rng.integers(len(persons)))]
        g = head_gaussians(make_identity(seed, person), torch.from_numpy(code))
        with single_thread():
            rgb, _, _ = render_views(g, driving_cameras(rng, views_per_code, res))
        images.append(np.round(rgb.clamp(0, 1).numpy() * 255).astype(np.uint8))
        targets.append(np.repeat(code[None], views_per_code, 0))
    return np.concatenate(images), np.concatenate(targets)


def fit_regressor(images: np.ndarray, codes: np.ndarray, config: RegressorConfig, steps: int = 3000,
                  batch: int = 64, lr: float = 1e-3, seed: int = 0,
                  progress: Callable[[int, float], None] | None = None) -> ExpressionRegressor:
    """Fit an ``ExpressionRegressor`` to (images uint8 (N,H,W,3), codes (N,E)) with MSE and AdamW under a
    one-cycle schedule; random shifts of up to 1/16 of the frame make it tolerate framing. Not L1: most
    parameters are 0 in most frames, so L1's optimum at the start is the median 0, where the sigmoid
    saturates and the network stays stuck predicting it."""
    torch.manual_seed(seed)
    model = ExpressionRegressor(config)
    x_all = prepare_frames(images, config.input_size)
    y_all = torch.as_tensor(codes, dtype=torch.float32)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.05)
    g = torch.Generator().manual_seed(seed)
    shift = max(1, config.input_size // 16)
    model.train()
    for step in range(steps):
        idx = torch.randint(len(x_all), (batch,), generator=g)
        dx, dy = (int(v) for v in torch.randint(-shift, shift + 1, (2,), generator=g))
        x = torch.roll(x_all[idx], shifts=(dy, dx), dims=(2, 3))
        loss = F.mse_loss(model(x), y_all[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if progress is not None:
            progress(step, loss.item())
    return model.eval()



def _render(seed, persons, n_codes, views, res, first_chunk, workers, desc):
    chunks = [(seed, persons, min(CHUNK, n_codes - i), views, res, first_chunk + i // CHUNK)
              for i in range(0, n_codes, CHUNK)]
    images, codes = [], []
    with ProcessPoolExecutor(max_workers=workers, initializer=torch.set_num_threads, initargs=(1,)) as pool:
        for im, co in tqdm(pool.map(render_training_chunk, *zip(*chunks)), total=len(chunks), desc=desc,
                           unit="chunk", file=sys.stderr):
            images.append(im)
            codes.append(co)
    return np.concatenate(images), np.concatenate(codes)


def _cached(path: Path, make):
    if path.is_file():
        with np.load(path) as z:
            return z["images"], z["codes"]
    images, codes = make()
    buf = io.BytesIO()
    np.savez(buf, images=images, codes=codes)
    atomic_write_bytes(path, buf.getvalue())
    return images, codes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-o", "--out", default="models/synthheads-expr", help="model folder to write")
    ap.add_argument("--cache", default="data/expr-regressor", help="folder for the cached renders")
    ap.add_argument("--seed", type=int, default=0, help="SynthHeads set seed (the shipped data's is 0)")
    ap.add_argument("--train-persons", type=int, default=200, help="persons 0..N-1 are rendered for training")
    ap.add_argument("--test-persons", default="210-219", help="held-out person range for the measurement")
    ap.add_argument("--codes", type=int, default=1500, help="random expressions rendered for training")
    ap.add_argument("--views", type=int, default=2, help="jittered cameras per training expression")
    ap.add_argument("--test-codes", type=int, default=150, help="random expressions of held-out persons")
    ap.add_argument("--res", type=int, default=DRIVING_RES)
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--batch", type=int, default=48)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    args = ap.parse_args()

    lo, hi = (int(v) for v in args.test_persons.split("-"))
    cache = Path(args.cache)
    tag = f"s{args.seed}-r{args.res}"
    t0 = time.time()
    train = _cached(cache / f"train-{tag}-p{args.train_persons}-c{args.codes}-v{args.views}.npz",
                    lambda: _render(args.seed, list(range(args.train_persons)), args.codes, args.views, args.res,
                                    0, args.workers, "render train"))
    test = _cached(cache / f"test-{tag}-p{lo}_{hi}-c{args.test_codes}.npz",
                   lambda: _render(args.seed, list(range(lo, hi + 1)), args.test_codes, 1, args.res,
                                   1_000_000, args.workers, "render test"))
    t_render = time.time() - t0

    config = RegressorConfig(space=EXPRESSION_SPACE, dim=len(EXPRESSION_NAMES), input_size=args.res)
    bar = tqdm(total=args.steps, desc="fit", unit="step", file=sys.stderr)

    def progress(step, loss):
        bar.update(1)
        if step % 50 == 0:
            bar.set_postfix(mse=f"{loss:.4f}")

    t1 = time.time()
    model = fit_regressor(*train, config, steps=args.steps, batch=args.batch, lr=args.lr, progress=progress)
    bar.close()
    t_fit = time.time() - t1

    pred = torch.cat([RegressorExtractor(model)(test[0][i:i + 256]) for i in range(0, len(test[0]), 256)])
    truth = torch.from_numpy(test[1])
    mae = (pred - truth).abs().mean(0)
    mean_mae = (truth - torch.from_numpy(train[1]).mean(0)).abs().mean(0)
    info = {
        "data": {"seed": args.seed, "train_persons": f"0-{args.train_persons - 1}", "codes": args.codes,
                 "views_per_code": args.views, "res": args.res, "test_persons": args.test_persons,
                 "test_codes": args.test_codes},
        "fit": {"steps": args.steps, "batch": args.batch, "lr": args.lr},
        "held_out": {"mae": float(mae.mean()), "mae_of_mean_prediction": float(mean_mae.mean()),
                     "mae_per_parameter": dict(zip(EXPRESSION_NAMES, (round(float(v), 4) for v in mae))),
                     "mean_prediction_mae_per_parameter": dict(zip(EXPRESSION_NAMES,
                                                                  (round(float(v), 4) for v in mean_mae)))},
        "seconds": {"render": round(t_render, 1), "fit": round(t_fit, 1)},
    }
    save_regressor(args.out, model, info)
    print(json.dumps(info["held_out"], indent=1))
    print(f"wrote {args.out}: held-out MAE {mae.mean():.4f} (mean prediction {mean_mae.mean():.4f}); "
          f"render {t_render:.0f} s, fit {t_fit:.0f} s", file=sys.stderr)


if __name__ == "__main__":
    main()
