"""Data throughput: SynthHeads generation (`prep synth`), sample reads by byte span, training examples.

Renders a fraction of the reference set (64 persons × 30 frames × 16 cameras at 128² = 30,720 samples) with
the given worker count, extrapolates the full set's prep time from the measured samples/s, and times reading
samples back (random order, by offset) and assembling training examples through a DataLoader.

    python bench/data.py                     # 2 workers, 2 persons × 10 frames × 16 cameras at 128²
    python bench/data.py --persons 64 --frames 30 --segments 1   # the whole reference set (long)
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from avat3r.data.examples import ExampleDataset, ExampleSampler, collate_examples
from avat3r.data.manifest import read_manifest
from avat3r.data.prep import DEFAULT_SOURCE, load_source, prep_synth
from avat3r.data.shards import ShardWriter, encode_sample

REFERENCE = {"persons": 64, "frames": 30, "cameras": 16, "res": 128}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--persons", type=int, default=2)
    ap.add_argument("--frames", type=int, default=10, help="frames per segment")
    ap.add_argument("--segments", type=int, default=1, help="how many of the source's segments")
    ap.add_argument("--cameras", type=int, default=REFERENCE["cameras"])
    ap.add_argument("--res", type=int, default=REFERENCE["res"])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--examples", type=int, default=48, help="training examples to time")
    ap.add_argument("--source", default=DEFAULT_SOURCE, help="module with the SynthHeads API")
    ap.add_argument("--keep", type=Path, default=None, help="keep the rendered set here")
    args = ap.parse_args()
    torch.set_num_threads(2)

    src = load_source(args.source)
    segments = list(src.SEGMENTS[: args.segments])
    out = args.keep or Path(tempfile.mkdtemp(prefix="avat3r-bench-data-"))
    n = args.persons * len(segments) * args.frames * args.cameras
    print(f"# data bench: {args.persons} persons × {len(segments)} segment(s) × {args.frames} frames × "
          f"{args.cameras} cameras at {args.res}² = {n} samples, {args.workers} worker(s), {os.cpu_count()} cores, "
          f"source {args.source}, load average {os.getloadavg()[0]:.1f} at start", file=sys.stderr)

    t0 = time.perf_counter()
    summary = prep_synth(out, args.persons, args.frames, args.cameras, args.res, seed=0, segments=segments,
                         workers=args.workers, n_val=0, n_test=0, source=args.source)
    t_gen = time.perf_counter() - t0
    gen_rate = summary.n_samples / t_gen
    ref_samples = REFERENCE["persons"] * REFERENCE["frames"] * REFERENCE["cameras"]
    bytes_per = summary.bytes / summary.n_samples

    m = read_manifest(out)
    # the shard plumbing alone: encode and write the rendered samples again
    samples = [m.read(r) for r in range(min(len(m), 200))]
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp, ShardWriter(tmp) as w:
        for s in samples:
            w.write(s["__key__"], encode_sample(s))
    write_rate = len(samples) / (time.perf_counter() - t0)
    rng = np.random.default_rng(0)
    order = rng.permutation(len(m))[: min(len(m), 400)]
    t0 = time.perf_counter()
    for r in order:
        m.read(int(r))
    read_rate = len(order) / (time.perf_counter() - t0)

    sampler = ExampleSampler(m, "train", seed=0, require_prior=False)
    sampler.example(0)  # warm the per-person camera cache, as a long run would be
    t0 = time.perf_counter()
    for i in range(args.examples // 4):
        sampler.example(i)
    ex_rate_1 = (args.examples // 4) / (time.perf_counter() - t0)
    loader = torch.utils.data.DataLoader(ExampleDataset(sampler, num_examples=args.examples), batch_size=4,
                                         num_workers=args.workers, collate_fn=collate_examples,
                                         persistent_workers=False)
    t0 = time.perf_counter()
    seen = sum(len(b["person"]) for b in loader)
    ex_rate = seen / (time.perf_counter() - t0)

    whole = n == ref_samples and args.res == REFERENCE["res"] and args.cameras == REFERENCE["cameras"]
    print("| measurement | value |")
    print("|---|---|")
    print(f"| generation (render + encode + write), {args.workers} workers | {gen_rate:.1f} samples/s "
          f"({summary.n_samples} samples in {t_gen:.1f} s, {bytes_per / 1e3:.1f} kB/sample) |")
    label = "measured" if whole else f"projected from {summary.n_samples} samples"
    print(f"| 64 persons × 30 frames × 16 cameras at 128² ({ref_samples} samples) | "
          f"{ref_samples / gen_rate / 60:.1f} min, {ref_samples * bytes_per / 1e9:.2f} GB ({label}) |")
    print(f"| shard writing only (PNG/npy encode + tar), 1 process | {write_rate:.0f} samples/s |")
    print(f"| read_sample by offset, random order, 1 process | {read_rate:.0f} samples/s |")
    print(f"| training examples (4 inputs + 8 targets), 1 process | {ex_rate_1:.1f} examples/s "
          f"({12 * ex_rate_1:.0f} samples/s) |")
    print(f"| training examples through DataLoader, {args.workers} workers (incl. start-up) | {ex_rate:.1f} examples/s "
          f"({12 * ex_rate:.0f} samples/s) |")
    print(f"\nload average (1 min) at the end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    if args.keep is None:
        shutil.rmtree(out)


if __name__ == "__main__":
    main()
