"""`prep synth`: render a SynthHeads set into shards + manifest, in parallel yet byte-identically.

Workers render one frame (all cameras) per job; the parent writes the results in key order (person → segment →
frame → camera), so the bytes never depend on the number of workers or their timing. Each shard holds one
person's samples (a person starts a new shard), the unit a streaming trainer reads (``data.streaming``).
"""

from __future__ import annotations

import importlib
import inspect
import multiprocessing as mp
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import Avat3rError
from ..fileio import StagedFolder
from .manifest import (
    MANIFEST_NAME,
    assign_splits,
    build_manifest,
    default_holdout,
    is_dataset_file,
    write_manifest,
)
from .shards import DEFAULT_MAXCOUNT, DEFAULT_MAXSIZE, ShardWriter, encode_sample, make_key

DEFAULT_SOURCE = "avat3r.data.synthheads"
# sane ranges: a typo such as --res 100000 fails with one line instead of allocating tens of GB
MAX_RES = 4096
LIMITS = {"persons": (1, 10_000), "frames": (1, 100_000), "cameras": (1, 1024), "res": (8, MAX_RES)}
MAX_SAMPLES = 10_000_000


def load_source(spec: str):
    """Resolve ``"package.module"`` or ``"package.module:attribute"`` to the object with the SynthHeads API."""
    module, _, attr = spec.partition(":")
    obj = importlib.import_module(module)
    return getattr(obj, attr) if attr else obj


class PrepError(Avat3rError, ValueError):
    """A synthetic dataset cannot be written as asked (sizes out of range, unknown segments)."""


@dataclass(frozen=True)
class SynthJob:
    """One frame of one person's segment, all cameras: small enough for steady progress and load balance."""

    source: str
    seed: int
    person: int
    segment: str
    frame: int
    n_frames: int
    n_cameras: int
    res: int
    depth: bool
    person_rig: bool = False
    supersample: int = 1


def _mask_u8(mask: np.ndarray) -> np.ndarray:
    mask = np.asarray(mask)
    if mask.dtype == np.uint8 and mask.max(initial=0) > 1:
        return mask
    return (np.clip(mask.astype(np.float32), 0, 1) * 255 + 0.5).astype(np.uint8)


def render_job(job: SynthJob) -> list[tuple[str, dict[str, bytes], dict, np.ndarray]]:
    """Every camera's sample of one frame as (key, encoded entries, manifest fields, expr). Top-level, so
    spawned workers can run it."""
    src = load_source(job.source)
    # keywords only where used: sources without per-person rigs or supersampling need not take them
    options = {"person_rig": True} if job.person_rig else {}
    cam_names, _ = src.make_rig(job.seed, job.n_cameras, job.res, **({"person": job.person} if job.person_rig else {}))
    if job.supersample > 1:
        options["supersample"] = job.supersample
    person = src.person_name(job.person)
    out = []
    if hasattr(src, "render_frame_samples"):  # builds the head once per frame
        frame_samples = src.render_frame_samples(job.seed, job.person, job.segment, job.frame, None, job.n_frames,
                                                 job.n_cameras, job.res, **options)
    else:
        frame_samples = [src.render_sample(job.seed, job.person, job.segment, job.frame, c, job.n_frames,
                                           job.n_cameras, job.res, **options) for c in range(len(cam_names))]
    for cam_name, s in zip(cam_names, frame_samples):
        sample = {"rgb": np.asarray(s["rgb"], dtype=np.uint8), "mask": _mask_u8(s["mask"]),
                  "camera": s["camera"], "expr": np.asarray(s["expr"], dtype=np.float32),
                  "depth": np.asarray(s["depth"], dtype=np.float32) if job.depth else None}
        key = make_key(person, job.segment, job.frame, cam_name)
        h, w = sample["rgb"].shape[:2]
        row = {"person": person, "segment": job.segment, "frame": job.frame, "camera": cam_name,
               "width": w, "height": h, "has_prior": False}
        out.append((key, encode_sample(sample), row, sample["expr"]))
    return out


def _init_worker(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def check_size(persons: int, frames: int, cameras: int, res: int, n_segments: int) -> None:
    """Raise PrepError (one line) unless each count lies in LIMITS and the set holds at most MAX_SAMPLES."""
    for name, value in (("persons", persons), ("frames", frames), ("cameras", cameras), ("res", res)):
        lo, hi = LIMITS[name]
        if not lo <= value <= hi:
            raise PrepError(f"{name} must be between {lo} and {hi:,}, got {value:,}")
    n_samples = persons * n_segments * frames * cameras
    if n_samples > MAX_SAMPLES:
        raise PrepError(f"{n_samples:,} samples are more than one set may hold ({MAX_SAMPLES:,}); "
                         "split it into several sets")


@dataclass
class PrepSummary:
    out: Path
    n_samples: int
    shards: list[str]
    splits: dict[str, str]  # person → split
    bytes: int


def prep_synth(out: str | os.PathLike, persons: int, frames: int, cameras: int, res: int, seed: int = 0,
               segments: Sequence[str] | None = None, workers: int = 1, n_val: int | None = None,
               n_test: int | None = None, depth: bool = True, source: str = DEFAULT_SOURCE,
               maxcount: int = DEFAULT_MAXCOUNT, maxsize: int = DEFAULT_MAXSIZE, person_rig: bool = False,
               supersample: int = 1, progress: Callable[[int], None] | None = None) -> PrepSummary:
    """Render ``persons`` identities × ``segments`` × ``frames`` × ``cameras`` into ``out`` (shards +
    manifest.parquet), each person through its own rig when ``person_rig``, each image area-sampled from a
    ``supersample``× render when > 1 (camera-like, see synth.render.render_views). ``progress(n)`` is called
    with the number of samples each finished frame added."""
    src = load_source(source)
    segments = tuple(segments) if segments else tuple(src.SEGMENTS)
    check_size(persons, frames, cameras, res, len(segments))
    if person_rig and "person" not in inspect.signature(src.make_rig).parameters:
        raise PrepError(f"the source {source} has no per-person rigs; use one rig for all persons",
                        param="person_rig")
    if int(supersample) != supersample or not 1 <= supersample <= 8:
        raise PrepError(f"supersample must be a whole number from 1 to 8, got {supersample}", param="supersample")
    renderer = getattr(src, "render_frame_samples", src.render_sample)
    if supersample > 1 and "supersample" not in inspect.signature(renderer).parameters:
        raise PrepError(f"the source {source} cannot supersample its renders", param="supersample")
    if res * supersample > MAX_RES:
        raise PrepError(f"--res {res} × --supersample {supersample} renders above {MAX_RES}²", param="supersample")
    known = tuple(getattr(src, "ALL_SEGMENTS", src.SEGMENTS))
    unknown = [s for s in segments if s not in known]
    if unknown:
        raise PrepError(f"unknown segment(s) {', '.join(unknown)}; known: {', '.join(known)}")
    if len(set(segments)) != len(segments):
        raise PrepError("segments are listed twice")
    dv, dt = default_holdout(persons)
    n_val = dv if n_val is None else n_val
    n_test = dt if n_test is None else n_test
    names = [src.person_name(p) for p in range(persons)]
    splits = assign_splits(names, n_val, n_test)

    # key order: person → segment → frame → camera (the rig's order)
    jobs = [SynthJob(source, seed, p, seg, f, frames, cameras, res, depth, person_rig, int(supersample))
            for p in range(persons) for seg in segments for f in range(frames)]
    records, rows, exprs = [], [], []
    workers = max(1, min(workers, len(jobs)))
    # built aside and swapped in whole: an older set stays intact until this one is complete, none of its shards
    # is left beside the new ones, and a second run into the same folder is refused
    with StagedFolder(out, is_dataset_file, "dataset") as stage, \
            ShardWriter(stage.path, maxcount=maxcount, maxsize=maxsize) as writer:
        def consume(samples):
            for key, entries, row, expr in samples:
                records.append(writer.write(key, entries, group=row["person"]))
                rows.append({**row, "split": splits[row["person"]]})
                exprs.append(expr)
            if progress is not None:
                progress(len(samples))

        if workers == 1:
            for job in jobs:
                consume(render_job(job))
        else:
            threads = max(1, (os.cpu_count() or 1) // workers)
            with mp.get_context("spawn").Pool(workers, initializer=_init_worker, initargs=(threads,)) as pool:
                for samples in pool.imap(render_job, jobs, chunksize=1):  # imap keeps the jobs' order
                    consume(samples)
        writer.close()
        manifest = build_manifest(records, rows, np.stack(exprs), src.EXPRESSION_SPACE, "synth", stage.path)
        write_manifest(stage.path / MANIFEST_NAME, manifest)
        total = sum((stage.path / s).stat().st_size for s in writer.shards)
    return PrepSummary(Path(out), len(records), list(writer.shards), splits, total)
