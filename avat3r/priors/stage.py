"""The `prior` stage: add ``pos``/``conf``/``feat`` entries to every sample that can be a model input.

Paper App. C: precomputing priors for every 4-view combination is prohibitive, so each input sample gets its
maps from one set of "reasonable partner views" at the same frame: the sample's own camera plus ``partners``
other non-back cameras picked by farthest-point sampling of viewing directions starting from the sample's
(spread like training inputs, which is also what a visual hull needs). Their camera names are stored in the
sample as ``partners.json``. One run gives maps for all its views, so partner views that are inputs
too reuse them (with the run's other views as their partners) instead of running again.

Work goes shard by shard into the hidden sibling ``.OUT.partial`` of the output folder, which is swapped in
whole when complete: each shard is written under a temp name and renamed when complete, and a rerun with the
same options skips the shards already there, so a killed run restarts where it stopped and ends with the same
bytes as an uninterrupted one. ``downsample`` = f > 1 computes the maps on the views averaged over f×f
blocks (cameras resized to match) and stores them at that size: the priors a model with 1/f of the stored
input side gets from `reconstruct` on such photos, for training with ``data.options.input_downsample = f``
(averaging maps computed at the stored size instead gives a model priors it never sees at inference).
The options (and the source manifest's digest) are recorded as ``prior.json``;
work made with other options is never reused. The manifest is written last, from the output shards' headers.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..cameras import Cameras, cameras_from_dicts, farthest_point_sampling, is_back_only
from ..data.manifest import MANIFEST_NAME, Manifest, is_dataset_file, read_manifest, write_manifest
from ..data.shards import ShardError, ShardWriter, decode_entry, encode_npy, index_shard, read_members
from ..fileio import StagedFolder, atomic_write_bytes
from ..imageio import block_mean
from . import get_feature_prior, get_position_prior
from .base import PriorError

PARTNERS_ENTRY = "partners.json"
PRIOR_ENTRIES = ("pos.npy", "conf.npy", "feat.npy", PARTNERS_ENTRY)
OPTIONS_NAME = "prior.json"  # what the output was made from; see is_dataset_file


@dataclass
class PriorStageConfig:
    position: str = "geometric"
    features: str = "none"
    partners: int = 3
    segments: tuple[str, ...] | None = None  # only samples of these segments get priors (default: all)
    frames: tuple[int, ...] | None = None  # only these frames (default: all)
    downsample: int = 1  # maps computed on (and stored at) views averaged over downsample² blocks
    position_options: dict = field(default_factory=dict)
    feature_options: dict = field(default_factory=dict)


def _camera(doc: dict) -> Cameras:
    return cameras_from_dicts([doc], "camera.json", validate=False)  # written by prep: checked there


def choose_partners(cameras: Cameras, ref: int, n: int) -> list[int]:
    """Indices of up to ``n`` partner cameras for camera ``ref``: farthest-point sampling of the non-back
    cameras' viewing directions, starting from ``ref`` (back-only cameras are never partners)."""
    allowed = [i for i in range(len(cameras)) if i == ref or not bool(is_back_only(cameras[i])[0])]
    dirs = torch.nn.functional.normalize(cameras.centers[allowed].double(), dim=-1)
    picked = farthest_point_sampling(dirs, min(n + 1, len(allowed)), start=allowed.index(ref))
    return [allowed[i] for i in picked[1:]]


class _Index:
    """Where every sample lives and which samples share a frame (person, segment, frame)."""

    def __init__(self, manifest: Manifest):
        self.m = manifest
        self.groups: dict[tuple, list[int]] = defaultdict(list)
        for r in range(len(manifest)):
            self.groups[(manifest["person"][r], manifest["segment"][r], int(manifest["frame"][r]))].append(r)
        self._cams: dict[int, dict] = {}

    def members(self, row: int, entries=None) -> dict[str, bytes]:
        return read_members(self.m.shard_path(row), int(self.m["offset"][row]), int(self.m["size"][row]),
                            key=str(self.m["key"][row]), entries=entries)

    def camera_doc(self, row: int) -> dict:
        if row not in self._cams:
            self._cams[row] = json.loads(self.members(row, ["camera.json"])["camera.json"])
        return self._cams[row]

    def group_of(self, row: int) -> list[int]:
        m = self.m
        return self.groups[(m["person"][row], m["segment"][row], int(m["frame"][row]))]


def _is_input(index: _Index, row: int, cfg: PriorStageConfig) -> bool:
    m = index.m
    if cfg.segments is not None and m["segment"][row] not in cfg.segments:
        return False
    if cfg.frames is not None and int(m["frame"][row]) not in cfg.frames:
        return False
    return not bool(is_back_only(_camera(index.camera_doc(row)))[0])


def _decoded(index: _Index, row: int, members: dict[str, bytes], entry: str):
    """One entry of a sample decoded; damage is a ShardError naming the shard and the sample."""
    try:
        return decode_entry(entry, members[entry])
    except Exception as err:  # noqa: BLE001 — any decoder failure is corruption of this sample
        raise ShardError(f"{index.m.shard_path(row)}: sample {index.m['key'][row]}: cannot decode {entry} "
                         f"({err})") from None


def _sample_views(index: _Index, rows: list[int]):
    imgs, masks, depths, cams = [], [], [], []
    for r in rows:
        mem = index.members(r)
        imgs.append(torch.from_numpy(_decoded(index, r, mem, "rgb.png").astype(np.float32) / 255))
        masks.append(torch.from_numpy(_decoded(index, r, mem, "mask.png").astype(np.float32) / 255)
                     if "mask.png" in mem else None)
        depths.append(torch.from_numpy(_decoded(index, r, mem, "depth.npy").astype(np.float32))
                      if "depth.npy" in mem else None)
        cams.append(_camera(json.loads(mem["camera.json"])))
    mask = torch.stack(masks) if all(m is not None for m in masks) else None
    depth = torch.stack(depths) if all(d is not None for d in depths) else None
    return torch.stack(imgs), Cameras.cat(cams), mask, depth


def downsample_views(images: torch.Tensor, cameras: Cameras, masks: torch.Tensor | None, factor: int):
    """Views averaged over factor×factor blocks (images and masks), cameras resized to match."""
    W, H = cameras.image_size
    return (block_mean(images, factor), cameras.resized(W // factor, H // factor),
            None if masks is None else block_mean(masks, factor))


def sample_prior_entries(index: _Index, row: int, cfg: PriorStageConfig, position, features) -> dict[int, dict[str, bytes]]:
    """The new entries (pos, conf, feat, partners) of one input sample and of its partner views.

    One multi-view run yields maps for all of its views, so each partner's maps (with the other views of
    the run as its partners) are returned too; the caller reuses them instead of recomputing (≈ 4× less work).
    """
    group = index.group_of(row)
    docs = [index.camera_doc(r) for r in group]
    cams = Cameras.cat([_camera(d) for d in docs])
    partner_rows = [group[i] for i in choose_partners(cams, group.index(row), cfg.partners)]
    rows = [row] + partner_rows
    images, cameras, masks, depth = _sample_views(index, rows)
    if cfg.downsample > 1:
        images, cameras, masks = downsample_views(images, cameras, masks, cfg.downsample)
    if cfg.position == "ground-truth":
        if depth is None:
            raise PriorError(f"sample {index.m['key'][row]}: the ground-truth prior needs depth.npy entries")
        pos, conf = position(images, cameras, masks, depth=depth)
    else:
        pos, conf = position(images, cameras, masks)
    feats = features(images)
    out = {}
    for i, r in enumerate(rows):
        others = [str(index.m["camera"][o]) for o in rows if o != r]
        entries = {"pos.npy": encode_npy(pos[i].numpy().astype(np.float32)),
                   "conf.npy": encode_npy(conf[i].clamp(0, 1).numpy().astype(np.float16)),
                   PARTNERS_ENTRY: json.dumps({"partners": others}, separators=(",", ":")).encode()}
        if feats is not None:
            entries["feat.npy"] = encode_npy(feats[i].numpy().astype(np.float16))
        out[r] = entries
    return out


def _process_shard(manifest_path: str, shard: str, out_dir: str, cfg: PriorStageConfig,
                   progress: Callable[[int], None] | None = None) -> str:
    """Write ``out_dir/shard`` (atomically) with prior entries added to its input samples."""
    manifest = read_manifest(manifest_path)
    index = _Index(manifest)
    position = get_position_prior(cfg.position, **cfg.position_options)
    features = get_feature_prior(cfg.features, **cfg.feature_options)
    rows = sorted((r for r in range(len(manifest)) if manifest["shard"][r] == shard),
                  key=lambda r: int(manifest["offset"][r]))
    done: dict[int, dict[str, bytes]] = {}  # maps of partner views computed along with an earlier sample
    with ShardWriter(out_dir, maxcount=1 << 62, maxsize=1 << 62, pattern=shard) as writer:
        for r in rows:
            members = {k: v for k, v in index.members(r).items() if k not in PRIOR_ENTRIES}
            if _is_input(index, r, cfg):
                if r not in done:
                    done.update(sample_prior_entries(index, r, cfg, position, features))
                members.update(done.pop(r))
            writer.write(str(manifest["key"][r]), members)
            if progress is not None:
                progress(1)
    return shard


def run_prior_stage(source: str | os.PathLike, out_dir: str | os.PathLike, cfg: PriorStageConfig,
                    workers: int = 1, progress: Callable[[int], None] | None = None) -> Manifest:
    """Add priors to the samples of the manifest ``source`` (a file or a folder holding manifest.parquet);
    writes shards of the same names plus a manifest into ``out_dir``. Returns the new manifest."""
    manifest = read_manifest(source)
    manifest_path = str(Path(source) / MANIFEST_NAME if Path(source).is_dir() else Path(source))
    out = Path(out_dir)
    if out.resolve() == manifest.root.resolve():
        raise PriorError("the output folder must differ from the input folder (shards are rewritten)")
    check_selection(manifest, manifest_path, cfg)
    check_downsample(manifest, manifest_path, cfg)
    options = prior_options(manifest_path, cfg)
    if _recorded_options(out) == options and (out / MANIFEST_NAME).is_file():
        if progress is not None:  # done before with these very options
            progress(len(manifest))
        return read_manifest(out)
    # the old output stays whole until the new one is complete; a killed run's work with the same options is
    # continued, never work made with other options
    with StagedFolder(out, is_dataset_file, "dataset", resume=True) as stage:
        work = stage.path
        if _recorded_options(work) != options:
            for entry in work.iterdir():
                shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
            atomic_write_bytes(work / OPTIONS_NAME, (json.dumps(options, indent=1) + "\n").encode())
        shards = list(dict.fromkeys(str(s) for s in manifest["shard"]))
        todo = [s for s in shards if not (work / s).exists()]
        if progress is not None:
            progress(int(sum(int((manifest["shard"] == s).sum()) for s in shards if s not in todo)))
        if workers <= 1 or len(todo) <= 1:
            for s in todo:
                _process_shard(manifest_path, s, str(work), cfg, progress)
        else:
            with ProcessPoolExecutor(max_workers=workers, initializer=torch.set_num_threads,
                                     initargs=(1,)) as pool:
                futures = [pool.submit(_process_shard, manifest_path, s, str(work), cfg) for s in todo]
                for s, f in zip(todo, futures):
                    f.result()
                    if progress is not None:
                        progress(int((manifest["shard"] == s).sum()))
        result = _write_output_manifest(manifest, work, shards)
    result.root = out
    return result


def check_downsample(manifest: Manifest, manifest_path: str, cfg: PriorStageConfig) -> None:
    """Refuse a ``downsample`` that is not a whole number ≥ 1, that does not divide the images, or that the
    ground-truth prior (depth at the stored size) cannot take."""
    if cfg.downsample < 1 or int(cfg.downsample) != cfg.downsample:
        raise PriorError(f"--downsample must be a whole number ≥ 1, got {cfg.downsample}", param="downsample")
    if cfg.downsample > 1:
        if cfg.position == "ground-truth":
            raise PriorError("the ground-truth prior unprojects depth at the stored size; it takes no --downsample",
                             param="downsample")
        sizes = set(zip(manifest["width"].tolist(), manifest["height"].tolist()))
        bad = sorted(f"{w}x{h}" for w, h in sizes if w % cfg.downsample or h % cfg.downsample)
        if bad:
            raise PriorError(f"{manifest_path}: images of {', '.join(bad)} do not divide by --downsample "
                             f"{cfg.downsample}", param="downsample")


def check_selection(manifest: Manifest, manifest_path: str, cfg: PriorStageConfig) -> None:
    """Refuse segments the manifest does not hold, and frames of which none is there: such a run would
    rewrite every shard and add no prior anywhere."""
    present = set(manifest["segment"].tolist())
    if cfg.segments is not None:
        unknown = [s for s in cfg.segments if s not in present]
        if unknown:
            raise PriorError(f"{manifest_path}: no segment named {', '.join(unknown)} (it has "
                             f"{', '.join(sorted(present))})", param="segments")
    if cfg.frames is not None:
        rows = np.isin(manifest["segment"], list(cfg.segments or present))
        frames = set(manifest["frame"][rows].tolist())
        if not frames & set(cfg.frames):
            raise PriorError(f"{manifest_path}: none of the frames asked for is there (its frames are "
                             f"{min(frames)}–{max(frames)})" if frames else f"{manifest_path}: holds no samples",
                             param="frames")


def prior_options(manifest_path: str | os.PathLike, cfg: PriorStageConfig) -> dict:
    """Everything the output's bytes depend on, as recorded in ``prior.json``: the source manifest's digest and
    the stage's options (JSON-normalised, so a record read back compares equal)."""
    doc = {"source_manifest_sha256": hashlib.sha256(Path(manifest_path).read_bytes()).hexdigest(),
           "position": cfg.position, "features": cfg.features, "partners": cfg.partners,
           "segments": cfg.segments, "frames": cfg.frames,
           "position_options": cfg.position_options, "feature_options": cfg.feature_options}
    if cfg.downsample != 1:  # recorded only when used: outputs made before the option stay valid
        doc["downsample"] = cfg.downsample
    return json.loads(json.dumps(doc, sort_keys=True))


def _recorded_options(folder: Path) -> dict | None:
    try:
        return json.loads((folder / OPTIONS_NAME).read_text())
    except (OSError, ValueError):
        return None


def _write_output_manifest(manifest: Manifest, out: Path, shards: list[str]) -> Manifest:
    cols = {k: v.copy() for k, v in manifest.columns.items()}
    spans = {}
    for s in shards:
        for key, offset, size in index_shard(out / s):
            spans[key] = (s, offset, size)
    for r, key in enumerate(cols["key"]):
        if key not in spans:
            raise PriorError(f"sample {key} is missing from the output shards")
        s, cols["offset"][r], cols["size"][r] = spans[key]
        has = read_members(out / s, int(cols["offset"][r]), int(cols["size"][r]), key=key, entries=["pos.npy"])
        cols["has_prior"][r] = "pos.npy" in has
    result = Manifest(cols, manifest.expression_space, manifest.source, manifest.version, out)
    write_manifest(out / MANIFEST_NAME, result)
    return result
