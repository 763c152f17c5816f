"""Training-example throughput of the two readers: random access by byte span (``data.loader = "random"``) and
streaming group by group with WebDataset (``data.loader = "stream"``), from a local path and through
``pipe:cat``, on a generated set at 64² and 256².

The set is written straight through ShardWriter (noisy head-like images, a float32 depth map per sample, as
``prep synth`` writes; one person per shard) so generation takes seconds rather than the renderer's hours.
Each reader runs in this process (one DataLoader worker's share) over the same step range; the streaming rows
include the group loads, which a block of ``--block`` steps per lane amortises.

    python bench/data_loaders.py                      # 64² and 256², 96 examples each
    python bench/data_loaders.py --res 128 --examples 200
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from avat3r.cameras import intrinsics_from_fov, look_at
from avat3r.data.examples import ExampleSampler, GroupSchedule
from avat3r.data.manifest import build_manifest, write_manifest
from avat3r.data.shards import ShardWriter, encode_sample, make_key
from avat3r.data.streaming import StreamingExamples


def write_set(folder: Path, persons: int, frames: int, cameras: int, res: int) -> int:
    """A dataset of ``persons`` × ``frames`` × ``cameras`` samples at ``res``²; returns its bytes."""
    az = np.linspace(-1.3, 1.3, cameras)
    eye = torch.tensor(np.stack([np.sin(az), 0.1 * np.cos(3 * az), np.cos(az)], -1), dtype=torch.float32)
    w2c, K = look_at(eye), intrinsics_from_fov(20.0, res, res)
    yy, xx = (np.mgrid[0:res, 0:res] + 0.5) / res - 0.5
    inside = xx ** 2 + yy ** 2 < 0.12
    rng = np.random.default_rng(0)
    records, rows = [], []
    with ShardWriter(folder) as writer:
        for p in range(persons):
            person = f"id{p:03d}"
            for f in range(frames):
                for c in range(cameras):
                    shade = (128 + 100 * np.sin(8 * xx + p + f)[..., None] * np.array([1, 0.8, 0.6])).astype(np.uint8)
                    rgb = (shade + rng.integers(0, 24, (res, res, 3))).astype(np.uint8) * inside[..., None]
                    sample = {"rgb": rgb.astype(np.uint8), "mask": (inside * 255).astype(np.uint8),
                              "camera": {"K": K.tolist(), "w2c": w2c[c].tolist(), "width": res, "height": res},
                              "expr": np.full(4, f / frames, np.float32),
                              "depth": np.where(inside, 1.0, 0.0).astype(np.float32)}
                    key = make_key(person, "EXP_a", f, f"cam{c:02d}")
                    records.append(writer.write(key, encode_sample(sample), group=person))
                    rows.append({"person": person, "segment": "EXP_a", "frame": f, "camera": f"cam{c:02d}",
                                 "width": res, "height": res, "split": "train", "has_prior": False})
    exprs = np.array([[r["frame"] / frames] * 4 for r in rows], np.float32)
    write_manifest(folder / "manifest.parquet", build_manifest(records, rows, exprs, "bench-v1", "bench", folder))
    return sum(p.stat().st_size for p in folder.glob("*.tar"))


def rate(batches, n: int) -> float:
    t0 = time.perf_counter()
    count = sum(1 for _ in zip(range(n), batches))
    return count / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--res", type=int, nargs="+", default=[64, 256])
    ap.add_argument("--persons", type=int, default=4)
    ap.add_argument("--frames", type=int, default=4)
    ap.add_argument("--cameras", type=int, default=12)
    ap.add_argument("--examples", type=int, default=96, help="examples timed per reader")
    ap.add_argument("--lanes", type=int, default=4)
    ap.add_argument("--block", type=int, default=64)
    args = ap.parse_args()
    torch.set_num_threads(1)
    load = os.getloadavg()[0]
    lines = [f"`python bench/data_loaders.py{''.join(' ' + a for a in sys.argv[1:])}`, "
             f"{datetime.date.today()}, {platform.machine()} with {os.cpu_count()} cores, torch {torch.__version__}, "
             f"1 thread; load average {load:.1f} at the start. Set: {args.persons} persons × {args.frames} frames × "
             f"{args.cameras} cameras, one person per shard; examples of 4 inputs + 8 targets; streaming with "
             f"{args.lanes} lanes × {args.block}-step blocks, batch 1, one process.", "",
             "| res | set MB | reader | examples/s | samples/s | group loads |", "|---|---|---|---|---|---|"]
    for res in args.res:
        with tempfile.TemporaryDirectory(prefix="avat3r-bench-loaders-") as tmp:
            folder = Path(tmp)
            size = write_set(folder, args.persons, args.frames, args.cameras, res)
            plain = ExampleSampler(folder, "train", seed=0, require_prior=False)
            plain.example(0)  # warm the per-person camera cache, as a long run would be
            r = rate((plain.example(i) for i in range(1, 10**9)), args.examples)
            rows = [("random access (byte span)", r, "–")]
            scheduled = ExampleSampler(folder, "train", seed=0, require_prior=False,
                                       schedule=GroupSchedule(1, args.lanes, args.block))
            for name, url in (("stream, local path", ""), ("stream, `pipe:cat`", f"pipe:cat {folder}/{{shard}}")):
                ds = StreamingExamples(scheduled, 0, args.examples, shard_url=url)
                rows.append((name, rate(ds.batches(), args.examples), str(ds.loads)))
            for name, value, loads in rows:
                lines.append(f"| {res}² | {size / 1e6:.1f} | {name} | {value:.1f} | {12 * value:.0f} | {loads} |")
            print(f"# {res}² done", file=sys.stderr)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
