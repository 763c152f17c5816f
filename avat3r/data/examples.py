"""Training examples (paper §4 / App. C, DESIGN §4): 4 inputs + 8 supervision views of one person.

Inputs: 4 cameras picked by k-farthest viewpoint sampling (10 evenly spread candidates from a random start,
4 of them at random, never a back-only camera), each at an independently random timestep of the person, so the
network learns to be robust to inconsistent expressions across inputs (``random_timesteps=False`` puts every
input at the target timestep, for the ablation; adding ``inputs_elsewhere=True`` puts them all at one other
timestep, to measure animation). Supervision: 8 cameras (back ones allowed) at the target
timestep, whose expression code drives the decoder.

Options that keep the expression code from being redundant or the scores from flattering:
``avoid_target_timestep`` draws random-timestep inputs only from timesteps other than the target's (copying
an input view would otherwise reproduce the target's expression without reading the code);
``novel_targets`` never supervises/scores a target at an input camera (evaluation: novel views only);
``input_segments`` restricts the inputs to some segments (e.g. neutral photos, driven to every expression);
``reference_views`` adds the target cameras' images at the *reference timestep* (input 0's) and its code, so
the pixels that an expression change moves can be found from the truth alone (loss weighting, eval).
``input_downsample`` = f > 1 averages the inputs (images, prior maps, confidences) over f×f blocks and scales
their cameras, while targets keep the stored resolution: supervision at f× the network's input resolution, the
paper's setting (its inputs are 512², its targets the capture's full resolution). Prior maps that
`avat3r prior --downsample f` computed at the input side are used as they are: those are the priors
`reconstruct` gives the model on photos at its input side.

An example is a pure function of ``(seed, index)``: ``ExampleSampler(manifest, split, seed).example(i)``
reads its samples by byte span. ``ExampleDataset`` deals indices to ranks and DataLoader workers without
overlap; a trainer that starts at ``start`` resumes on exactly the examples it would have seen.

Streaming from shards (``avat3r.data.streaming``) cannot seek, so there a ``GroupSchedule`` ties runs of
examples to *groups* (one person's samples in one shard) that a reader holds in memory; the same scheduled
sampler reading by byte span gives the same examples, which is how the streaming reader is tested.
"""

from __future__ import annotations

import copy
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Protocol

import numpy as np
import torch

from ..cameras import Cameras, cameras_from_dicts, k_farthest_viewpoints
from ..errors import Avat3rError
from ..imageio import block_mean
from .manifest import Manifest, read_manifest


class ExampleError(Avat3rError, ValueError):
    """A manifest cannot give the examples asked for (too few cameras, a missing prior, mixed image sizes)."""


N_INPUTS = 4
N_TARGETS = 8
N_CANDIDATES = 10
# entries an example needs (depth and expr.npy stay unread: the codes come from the manifest)
_INPUT_ENTRIES = ("rgb.png", "camera.json", "pos.npy", "conf.npy", "feat.npy")
_TARGET_ENTRIES = ("rgb.png", "mask.png", "camera.json")
EXAMPLE_ENTRIES = tuple(dict.fromkeys(_INPUT_ENTRIES + _TARGET_ENTRIES))  # all an example may read of a sample


class SampleReader(Protocol):
    """Where an ExampleSampler gets decoded samples: a Manifest (by byte span) or a group held in memory."""

    def read(self, row: int, entries: Sequence[str] | None = None) -> dict: ...


@dataclass(frozen=True)
class ExamplePlan:
    """Which manifest rows make up one example."""

    person: str
    target_timestep: tuple[str, int]  # (segment, frame)
    inputs: tuple[int, ...]  # manifest rows of the input views
    targets: tuple[int, ...]  # manifest rows of the supervision views
    group: tuple[str, str] | None = None  # (shard, person) the rows come from, with a GroupSchedule


@dataclass(frozen=True)
class GroupSchedule:
    """Which group (one person's samples in one shard) example ``i`` comes from, for streaming readers.

    With ``slots`` examples per step over all processes (world × batch), example ``i`` sits in slot
    ``i % slots`` of step ``i // slots``; that step belongs to lane ``step % lanes`` and to block
    ``(step // lanes) // block`` of its lane. Each (slot, lane) pair is a *stream* that keeps one group for a
    block (``block`` of its steps), so a reader that owns some lanes holds one group per (slot, lane) at a
    time. Streams draw groups without replacement: visit ``n = block · slots · lanes + lane · slots + slot``
    takes position ``n mod G`` of the ``n // G``-th seeded permutation of the G groups, so every group is
    visited once per pass and concurrent streams hold different groups while G ≥ slots · lanes. Everything
    is a pure function of (seed, i): no worker count, no resume point, no history enters it."""

    slots: int
    lanes: int = 4
    block: int = 64

    def __post_init__(self):
        if min(self.slots, self.lanes, self.block) < 1:
            raise ExampleError(f"a group schedule needs slots, lanes and block ≥ 1, got {self.slots}, "
                               f"{self.lanes}, {self.block}")

    def position(self, index: int) -> tuple[int, int, int, int]:
        """(step, slot, lane, block) of example ``index``."""
        step, slot = divmod(int(index), self.slots)
        return step, slot, step % self.lanes, (step // self.lanes) // self.block

    def visit(self, index: int) -> int:
        """The running number of the group visit example ``index`` belongs to (see the class docstring)."""
        _, slot, lane, block = self.position(index)
        return (block * self.lanes + lane) * self.slots + slot

    def group(self, seed: int, index: int, n_groups: int) -> int:
        epoch, pos = divmod(self.visit(index), n_groups)
        return int(_group_order(int(seed), epoch, n_groups)[pos])


@lru_cache(maxsize=8)
def _group_order(seed: int, epoch: int, n_groups: int) -> np.ndarray:
    return np.random.default_rng([seed, epoch, 0x6A0B]).permutation(n_groups)


def _camera_from_json(cam: dict) -> Cameras:
    return cameras_from_dicts([cam], "camera.json", validate=False)  # written by prep: checked there


class ExampleSampler:
    """Draws training examples of one split of a manifest; ``example(i)`` depends only on (seed, i).

    Without a schedule example ``i`` draws its person from the rng seeded by (seed, i). With a
    ``GroupSchedule`` the schedule picks a group (one person's rows in one shard) and the example is planned
    from that group's rows alone, so a streaming reader that holds the group in memory (``with_samples``)
    gives exactly what this sampler reads by byte span."""

    def __init__(self, manifest: Manifest | str, split: str | None = "train", seed: int = 0,
                 n_inputs: int = N_INPUTS, n_targets: int = N_TARGETS, n_candidates: int = N_CANDIDATES,
                 random_timesteps: bool = True, require_prior: bool = True, inputs_elsewhere: bool = False,
                 avoid_target_timestep: bool = False, novel_targets: bool = False,
                 input_segments: Sequence[str] | None = None, reference_views: bool = False,
                 input_downsample: int = 1, schedule: GroupSchedule | None = None):
        self.manifest = read_manifest(manifest) if not isinstance(manifest, Manifest) else manifest
        self.split, self.seed = split, int(seed)
        self.n_inputs, self.n_targets, self.n_candidates = n_inputs, n_targets, n_candidates
        self.random_timesteps, self.require_prior = random_timesteps, require_prior
        # with random_timesteps=False: all inputs at one timestep other than the target's (the animation case:
        # photos at one expression, the avatar driven to another)
        self.inputs_elsewhere = bool(inputs_elsewhere) and not random_timesteps
        self.avoid_target_timestep = bool(avoid_target_timestep) and random_timesteps
        self.novel_targets, self.reference_views = bool(novel_targets), bool(reference_views)
        self.input_segments = tuple(input_segments) if input_segments else None
        if int(input_downsample) != input_downsample or input_downsample < 1:
            raise ExampleError(f"input_downsample must be a whole number ≥ 1, got {input_downsample}")
        self.input_downsample = int(input_downsample)
        self.schedule = schedule
        self.samples: SampleReader = self.manifest  # where ``read`` gets samples: by byte span by default
        m = self.manifest
        rows = m.rows(split)
        eligible = np.ones(len(m), bool) if not require_prior else m["has_prior"].astype(bool)
        if self.input_segments is not None:
            eligible &= np.isin(np.asarray(m["segment"], dtype=object), self.input_segments)
        # A *unit* is what an example is drawn from: a person, or with a schedule one person's rows in one shard
        # (a group). unit → timestep → rows, and unit → camera → input-eligible rows (in manifest order)
        self._by_time: dict = defaultdict(lambda: defaultdict(list))
        self._inputs_by_cam: dict = defaultdict(lambda: defaultdict(list))
        for r in rows.tolist():
            p = m["person"][r]
            unit = p if schedule is None else (str(m["shard"][r]), p)
            self._by_time[unit][(m["segment"][r], int(m["frame"][r]))].append(r)
            if eligible[r]:
                self._inputs_by_cam[unit][m["camera"][r]].append(r)
        # plain dicts: the sampler is pickled into DataLoader workers, and lambdas do not pickle
        self._by_time = {u: dict(v) for u, v in self._by_time.items()}
        self._inputs_by_cam = {u: dict(v) for u, v in self._inputs_by_cam.items()}
        units = sorted(u for u in self._by_time if len(self._inputs_by_cam.get(u, {})) >= n_inputs)
        if not units:
            what = "with a prior (run `avat3r prior` first)" if require_prior else ""
            who = "person" if schedule is None else "group (one person's samples in one shard)"
            raise ExampleError(f"no {who} of split {split!r} in {m.root} has {n_inputs} cameras {what}".strip())
        # groups: (shard, person) in shard order; persons: those with at least one qualifying unit
        self.groups: list[tuple[str, str]] = units if schedule is not None else []
        self.persons = units if schedule is None else sorted({p for _, p in units})
        self._units = units
        self._timesteps = {u: sorted(self._by_time[u]) for u in units}
        self._timestep_of_row = {r: (m["segment"][r], int(m["frame"][r])) for u in units
                                 for rs in self._by_time[u].values() for r in rs}
        self._eligible = {u: {r for rs in self._inputs_by_cam[u].values() for r in rs} for u in units}
        self._cam_cache: dict[tuple, Cameras] = {}

    def read(self, row: int, entries: Sequence[str] | None = None) -> dict:
        """The decoded sample of one manifest row: every sample an example uses is read through here, so a
        streaming reader only has to replace ``samples`` (see ``with_samples``)."""
        return self.samples.read(row, entries=entries)

    def with_samples(self, samples: SampleReader) -> ExampleSampler:
        """A copy that reads its samples from ``samples`` (e.g. a group held in memory) instead."""
        other = copy.copy(self)
        other.samples = samples
        return other

    def group_rows(self, group: int) -> list[int]:
        """Manifest rows of one group (scheduled samplers), in manifest order."""
        return sorted(r for rs in self._by_time[self.groups[group]].values() for r in rs)

    def _person(self, unit) -> str:
        return unit if isinstance(unit, str) else unit[1]

    def _reference_camera(self, unit, camera: str) -> Cameras:
        """The camera as seen in its first input-eligible sample of the unit (head pose varies little over a
        capture)."""
        key = (unit, camera)
        if key not in self._cam_cache:
            row = self._inputs_by_cam[unit][camera][0]
            self._cam_cache[key] = _camera_from_json(self.read(row, entries=["camera.json"])["camera"])
        return self._cam_cache[key]

    def unit_of(self, index: int):
        """The person (or with a schedule, the group ``(shard, person)``) example ``index`` is drawn from."""
        if self.schedule is None:
            rng = np.random.default_rng([self.seed, int(index)])
            return self.persons[int(rng.integers(len(self.persons)))]
        return self._units[self.schedule.group(self.seed, index, len(self._units))]

    def plan(self, index: int) -> ExamplePlan:
        m = self.manifest
        rng = np.random.default_rng([self.seed, int(index)])
        if self.schedule is None:
            unit = person = self.persons[int(rng.integers(len(self.persons)))]
        else:  # the group comes from the schedule; the rest of the plan draws from the same rng as ever
            unit = self.unit_of(index)
            person = unit[1]
        timesteps = self._timesteps[unit]
        eligible = self._eligible[unit]
        t_input = None
        if not self.random_timesteps:
            # inputs share one timestep, so only timesteps with enough input-eligible views qualify for it
            qualifying = [t for t in timesteps
                          if sum(r in eligible for r in self._by_time[unit][t]) >= self.n_inputs] or timesteps
            if self.inputs_elsewhere:
                # a target timestep that has some other qualifying timestep for the inputs
                targets = [t for t in timesteps if any(q != t for q in qualifying)] or timesteps
                t_target = targets[int(rng.integers(len(targets)))]
                others = [t for t in qualifying if t != t_target] or qualifying
                t_input = others[int(rng.integers(len(others)))]
            else:
                t_target = t_input = qualifying[int(rng.integers(len(qualifying)))]
        else:
            t_target = timesteps[int(rng.integers(len(timesteps)))]
        at_target = self._by_time[unit][t_target]

        if self.random_timesteps:
            cams = sorted(self._inputs_by_cam[unit])
        else:
            row_of_cam = {m["camera"][r]: r for r in self._by_time[unit][t_input] if r in eligible}
            cams = sorted(row_of_cam)
            if len(cams) < self.n_inputs:
                raise ExampleError(f"{person} has only {len(cams)} input cameras at {t_input[0]}/{t_input[1]}")
        cameras = Cameras.cat([self._reference_camera(unit, c) for c in cams])
        gen = torch.Generator().manual_seed(int(rng.integers(2**62)))
        picked = k_farthest_viewpoints(cameras, k=self.n_inputs, n_candidates=self.n_candidates, generator=gen,
                                       exclude_back=True)
        inputs = []
        for i in picked:
            if self.random_timesteps:
                cam_rows = self._inputs_by_cam[unit][cams[i]]
                if self.avoid_target_timestep:
                    cam_rows = [r for r in cam_rows if self._timestep_of_row[r] != t_target] or cam_rows
                inputs.append(cam_rows[int(rng.integers(len(cam_rows)))])
            else:
                inputs.append(row_of_cam[cams[i]])
        if self.novel_targets:
            input_cams = {m["camera"][r] for r in inputs}
            at_target = [r for r in at_target if m["camera"][r] not in input_cams]
            if not at_target:
                raise ExampleError(f"{person} has no camera at {t_target[0]}/{t_target[1]} besides the input cameras")
        replace = len(at_target) < self.n_targets  # small rigs repeat views rather than fail
        targets = rng.choice(np.asarray(at_target), size=self.n_targets, replace=replace)
        return ExamplePlan(person, t_target, tuple(inputs), tuple(int(t) for t in targets),
                           None if self.schedule is None else unit)

    def example(self, index: int) -> dict:
        """The example dict of DESIGN §4 (see module docstring); tensors float32."""
        plan = self.plan(index)
        m = self.manifest
        ins = [self.read(r, entries=_INPUT_ENTRIES) for r in plan.inputs]
        tgs = [self.read(r, entries=_TARGET_ENTRIES) for r in plan.targets]
        h, w = ins[0]["rgb"].shape[:2]
        for s in ins + tgs:
            if s["rgb"].shape[:2] != (h, w):
                raise ExampleError(f"{s['__key__']}: image size {s['rgb'].shape[1]}x{s['rgb'].shape[0]} differs from "
                                 f"{w}x{h} of {ins[0]['__key__']}; prep all views at one resolution")

        # prior maps are stored at the image size, or at the input side (`prior --downsample f`)
        f = self.input_downsample
        sizes = {(h, w), (h // f, w // f)}
        ph, pw = ins[0]["pos"].shape[:2] if "pos" in ins[0] else (h, w)
        for s in ins:
            if "pos" in s and (s["pos"].shape[:2] != (ph, pw) or (ph, pw) not in sizes):
                raise ExampleError(f"{s['__key__']}: prior maps of {s['pos'].shape[1]}x{s['pos'].shape[0]} fit "
                                   f"neither its {w}x{h} image nor the input side {w // f}x{h // f} "
                                   f"(input_downsample = {f}); recompute them with `avat3r prior`")

        # stack in numpy and convert once: cheaper than many small torch ops on a busy CPU
        def prior(s, name, shape):
            if name in s:
                return np.asarray(s[name], dtype=np.float32)
            if self.require_prior:
                raise ExampleError(f"{s['__key__']}: the manifest says it has a prior but {name}.npy is missing")
            return np.zeros(shape, np.float32)

        def mask(s):
            if "mask" in s:
                return s["mask"].astype(np.float32) / 255.0
            return (s["rgb"].max(axis=-1) > 0).astype(np.float32)

        def rgb(samples):
            return torch.from_numpy(np.stack([s["rgb"] for s in samples]).astype(np.float32) / 255.0)

        out = {
            "inputs_rgb": rgb(ins),
            "inputs_cameras": Cameras.cat([_camera_from_json(s["camera"]) for s in ins]),
            "inputs_pos": torch.from_numpy(np.stack([prior(s, "pos", (ph, pw, 3)) for s in ins])),
            "inputs_conf": torch.from_numpy(np.stack([prior(s, "conf", (ph, pw)) for s in ins])),
            "inputs_expr": torch.from_numpy(m["expr"][list(plan.inputs)].astype(np.float32)),
            "target_rgb": rgb(tgs),
            "target_mask": torch.from_numpy(np.stack([mask(s) for s in tgs])),
            "target_cameras": Cameras.cat([_camera_from_json(s["camera"]) for s in tgs]),
            "expr": torch.from_numpy(m["expr"][plan.targets[0]].astype(np.float32)),
            "person": plan.person,
            "target_timestep": "/".join(map(str, plan.target_timestep)),
        }
        if self.reference_views:
            out.update(self._reference(plan, (h, w)))
        if all("feat" in s for s in ins):
            out["inputs_feat"] = torch.from_numpy(np.stack([s["feat"] for s in ins]).astype(np.float32))
        if self.input_downsample > 1:
            out.update(downsample_inputs(out, self.input_downsample))
        return out


    def _reference(self, plan: ExamplePlan, hw: tuple[int, int]) -> dict:
        """The reference timestep (input 0's): its code and every target camera's image there (zeros and
        ``target_ref_valid`` False where that camera has no sample at it)."""
        m = self.manifest
        t_ref = self._timestep_of_row[plan.inputs[0]]
        unit = plan.person if plan.group is None else plan.group
        row_of_cam = {m["camera"][r]: r for r in self._by_time[unit][t_ref]}
        images, valid = [], []
        for r in plan.targets:
            ref_row = row_of_cam.get(m["camera"][r])
            valid.append(ref_row is not None)
            images.append(self.read(ref_row, entries=("rgb.png",))["rgb"] if ref_row is not None
                          else np.zeros((*hw, 3), np.uint8))
        return {"ref_expr": torch.from_numpy(m["expr"][plan.inputs[0]].astype(np.float32)),
                "target_ref_rgb": torch.from_numpy(np.stack(images).astype(np.float32) / 255.0),
                "target_ref_valid": torch.tensor(valid),
                "ref_timestep": "/".join(map(str, t_ref))}


def downsample_inputs(example: dict, factor: int) -> dict:
    """The inputs of ``example`` at 1/``factor`` of their size: images and confidences averaged over
    factor×factor blocks, positions averaged weighted by confidence (a block half off the head keeps the head's
    point instead of one pulled toward the origin), cameras resized to match. Targets are left alone."""
    rgb, pos, conf = example["inputs_rgb"], example["inputs_pos"], example["inputs_conf"]
    V, H, W, _ = rgb.shape
    if H % factor or W % factor:
        raise ExampleError(f"input images of {W}x{H} do not divide by input_downsample = {factor}")

    out = {"inputs_rgb": block_mean(rgb, factor),
           "inputs_cameras": example["inputs_cameras"].resized(W // factor, H // factor)}
    if pos.shape[1:3] == (H, W):  # maps computed at the stored size: averaged down
        weight = block_mean(conf, factor)[..., None]
        out["inputs_pos"] = torch.where(weight > 0, block_mean(pos * conf[..., None], factor) / weight.clamp_min(1e-12),
                                        0.0)
        out["inputs_conf"] = weight[..., 0]
    return out  # maps already at the input side (`prior --downsample`) are kept as they are


# -- distributed iteration -----------------------------------------------------------------------
def shard_indices(rank: int, world_size: int, worker: int, num_workers: int, start: int = 0,
                  stop: int | None = None) -> Iterator[int]:
    """Example indices of one (rank, worker): rank r owns i ≡ r (mod world_size) — independent of the worker
    count — and its workers take turns over those. Together all (rank, worker) pairs cover [start, stop) once."""
    if not (0 <= rank < world_size and 0 <= worker < num_workers):
        raise ValueError(f"bad rank/worker {rank}/{world_size}, {worker}/{num_workers}")
    first = start + (rank - start) % world_size  # first index ≥ start owned by this rank
    i = first + worker * world_size
    step = world_size * num_workers
    while stop is None or i < stop:
        yield i
        i += step


def buffered_shuffle(items: Iterator[int], size: int, rng: np.random.Generator) -> Iterator[int]:
    """Shuffle a (possibly endless) stream with a bounded buffer of ``size`` items."""
    if size <= 1:
        yield from items
        return
    buf: list[int] = []
    for x in items:
        if len(buf) < size:
            buf.append(x)
            continue
        j = int(rng.integers(size))
        yield buf[j]
        buf[j] = x
    rng.shuffle(buf)
    yield from buf


class ExampleDataset(torch.utils.data.IterableDataset):
    """Examples ``start, start+1, …`` (up to ``num_examples`` in total, or endless) split across ranks and
    DataLoader workers without duplicates, optionally through a bounded shuffle buffer (seeded by the
    sampler's seed, rank and worker, so the order is reproducible too). ``with_index`` adds each example's
    ``index`` (an int) to its dict."""

    def __init__(self, sampler: ExampleSampler, num_examples: int | None = None, start: int = 0, rank: int = 0,
                 world_size: int = 1, shuffle_buffer: int = 0, with_index: bool = False):
        super().__init__()
        self.with_index = with_index
        self.sampler, self.num_examples, self.start = sampler, num_examples, start
        self.rank, self.world_size, self.shuffle_buffer = rank, world_size, shuffle_buffer

    def indices(self, worker: int = 0, num_workers: int = 1) -> Iterator[int]:
        stop = None if self.num_examples is None else self.start + self.num_examples
        idx = shard_indices(self.rank, self.world_size, worker, num_workers, self.start, stop)
        rng = np.random.default_rng([self.sampler.seed, self.rank, worker, num_workers, self.start, 0x5EED])
        return buffered_shuffle(idx, self.shuffle_buffer, rng)

    def __iter__(self) -> Iterator[dict]:
        info = torch.utils.data.get_worker_info()
        worker, num_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        for i in self.indices(worker, num_workers):
            ex = self.sampler.example(i)
            if self.with_index:
                ex["index"] = i
            yield ex


def collate_examples(batch: Sequence[dict]) -> dict:
    """Stack tensors (and numpy arrays) along a new batch axis; Cameras stay per example (a list), as do
    strings and ints."""
    out = {}
    for key in batch[0]:
        values = [b[key] for b in batch]
        if isinstance(values[0], torch.Tensor):
            out[key] = torch.stack(values)
        elif isinstance(values[0], np.ndarray):
            out[key] = torch.stack([torch.from_numpy(v) for v in values])
        else:
            out[key] = list(values)
    return out
