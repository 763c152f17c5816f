"""Training batches streamed from WebDataset shards: local files, ``pipe:`` commands or URLs (DESIGN §4).

Random access (``Manifest.read``) needs the shards on a seekable disk; clusters keep them in object storage,
where a shard is read front to back. So a streaming reader works on *groups*, one person's samples in one
shard (``prep synth`` writes one person per shard; a shard is ≤ 1 GiB, so a group fits in memory as encoded
bytes), and a ``GroupSchedule`` on the ExampleSampler says which group each example comes from: step
``s`` belongs to lane ``s % lanes``, and each (slot, lane) keeps its group for ``block`` of its steps. Inside
the group the example is planned exactly as the random-access sampler plans it, so
``sampler.example(i)`` (by byte span) and this reader give equal tensors, whatever the worker count or the
step a run resumes from.

``StreamingExamples`` yields one process's collated batches for steps ``start, start+1, …``. A DataLoader
with W workers takes their outputs round-robin, so worker w yields the steps ``start+w, start+w+W, …``;
with W dividing the lane count those steps cover ``lanes / W`` lanes, and the worker holds at most
``lanes / W × batch`` groups at a time (one person's samples for batch 1 and W = lanes). A rank reads only
the groups of its own slots.

Shard locations: the manifest (read locally) names each shard relative to its folder; a ``shard_url``
template such as ``https://host/ava256/{shard}`` or ``pipe:aws s3 cp s3://bucket/ava256/{shard} -`` puts
them elsewhere ("" = the file beside the manifest). Members are kept as raw bytes and decoded by
``decode_sample``, never by WebDataset's ``.decode()``, whose default handlers unpickle.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Sequence

import torch

from ..errors import Avat3rError, error_line
from .examples import EXAMPLE_ENTRIES, ExampleSampler, collate_examples
from .manifest import Manifest
from .shards import MAX_MEMBER_BYTES, ShardError, decode_sample

SHARD_FIELD = "{shard}"


class StreamError(Avat3rError, ValueError):
    """A streaming reader is set up inconsistently (no schedule, a worker count that splits lanes)."""


def shard_location(manifest: Manifest, shard: str, template: str = "") -> str:
    """Where to stream ``shard`` (a name from the manifest's ``shard`` column) from: ``template`` with
    ``{shard}`` replaced, or the file beside the manifest when the template is empty."""
    if not template:
        return str(manifest.root / shard)
    if SHARD_FIELD not in template:
        raise StreamError(f"shard URL template {template!r} lacks {SHARD_FIELD}", param="data.shard_url")
    return template.replace(SHARD_FIELD, shard)


def stream_members(url: str, keys: Iterable[str], entries: Sequence[str] = EXAMPLE_ENTRIES
                   ) -> dict[str, dict[str, bytes]]:
    """``{key: {entry: bytes}}`` of the samples ``keys`` in the shard at ``url``, read front to back by plain
    WebDataset, keeping only ``entries`` (depth maps and codes stay unread). Any failure to open or read the
    stream, and a key the shard lacks, is a one-line ShardError naming the URL."""
    import webdataset as wds

    wanted, keep = set(keys), set(entries)
    out: dict[str, dict[str, bytes]] = {}
    try:
        ds = wds.WebDataset(url, shardshuffle=False, nodesplitter=None, workersplitter=None,
                            handler=wds.reraise_exception, empty_check=False)
        for raw in ds:
            key = raw["__key__"]
            if key not in wanted:
                continue
            members = {e: v for e, v in raw.items() if e in keep}
            for entry, value in members.items():
                if len(value) > MAX_MEMBER_BYTES:
                    raise ShardError(f"{url}: sample {key}: member {entry} is {len(value):,} bytes, more than a "
                                     f"sample's member may be ({MAX_MEMBER_BYTES:,})")
            out[key] = members
    except ShardError:
        raise
    except Exception as err:  # noqa: BLE001 — gopen, tarfile and subprocesses report failures with many types
        raise ShardError(f"{url}: cannot stream the shard ({_reason(err)})") from None
    missing = sorted(wanted - set(out))
    if missing:
        raise ShardError(f"{url}: sample {missing[0]}: not in the streamed shard ({len(missing)} of the manifest's "
                         "samples missing: a stale manifest or the wrong shard_url?)")
    return out


def _reason(err: Exception) -> str:
    """A stream failure in a few words: WebDataset reports a failed ``pipe:`` command or download (curl) as an
    OSError whose text holds the whole command and the pipe object; its exit status is what matters."""
    text = str(err.args[0]) if err.args else str(err)
    status = re.search(r"\): exit (-?\d+)", text)
    if status:
        return f"the command or download exited with status {status.group(1)}"
    return f"{type(err).__name__}: {error_line(err)}"


class GroupSamples:
    """One group's samples held as raw bytes; ``read`` decodes like ``Manifest.read`` (the sampler's hook)."""

    def __init__(self, manifest: Manifest, url: str, members: dict[str, dict[str, bytes]]):
        self.manifest, self.url, self.members = manifest, url, members

    def read(self, row: int, entries: Sequence[str] | None = None) -> dict:
        key = str(self.manifest["key"][row])
        members = self.members.get(key)
        if members is None:  # a plan outside its group: a bug, but say which sample
            raise ShardError(f"{self.url}: sample {key}: not among the samples held for this group")
        if entries is not None:
            members = {e: members[e] for e in entries if e in members}
        return decode_sample(members, self.url, key)


class WorkerFailure:
    """An error raised in a DataLoader worker, passed to the main process as a value: torch would re-raise
    it with its traceback folded into the message, and our errors are one line."""

    def __init__(self, error: Avat3rError):
        self.error = error


def raise_failures(batches: Iterable) -> Iterator:
    """Batches of a DataLoader over StreamingExamples, re-raising a worker's error as itself."""
    for item in batches:
        if isinstance(item, WorkerFailure):
            raise item.error
        yield item


class StreamingExamples(torch.utils.data.IterableDataset):
    """This process's collated batches of steps ``start … stop-1`` (example ``j`` of step ``s`` on ``rank`` is
    ``(s · world + rank) · batch + j``, as the trainer numbers them), streamed group by group.

    ``sampler`` must carry a GroupSchedule with ``slots = world · batch``. Use in a DataLoader with
    ``batch_size=None``; its worker count must divide the schedule's lanes. ``loads`` and ``peak_groups``
    count the groups this process (or, in a worker, that worker's copy) streamed and held at most at once."""

    def __init__(self, sampler: ExampleSampler, start: int, stop: int, rank: int = 0, world: int = 1,
                 batch: int = 1, shard_url: str = ""):
        super().__init__()
        schedule = sampler.schedule
        if schedule is None:
            raise StreamError("streaming needs an ExampleSampler with a GroupSchedule")
        if schedule.slots != world * batch:
            raise StreamError(f"the group schedule has {schedule.slots} slots per step but world × batch is "
                              f"{world} × {batch}")
        if not 0 <= rank < world:
            raise StreamError(f"rank {rank} outside a world of {world}")
        self.sampler, self.start, self.stop = sampler, int(start), int(stop)
        self.rank, self.world, self.batch = rank, world, batch
        self.shard_url = shard_url
        shard_location(sampler.manifest, "x", shard_url)  # a bad template fails here, not in a worker
        self.loads = 0
        self.peak_groups = 0

    def check_workers(self, num_workers: int) -> None:
        lanes = self.sampler.schedule.lanes
        if num_workers > 1 and lanes % num_workers:
            raise StreamError(f"{num_workers} DataLoader workers do not divide the {lanes} stream lanes; use a "
                              "worker count that divides data.stream_lanes", param="data.num_workers")

    def example_indices(self, step: int) -> list[int]:
        return [(step * self.world + self.rank) * self.batch + j for j in range(self.batch)]

    def _load(self, group: int) -> GroupSamples:
        s = self.sampler
        shard, _ = s.groups[group]
        url = shard_location(s.manifest, shard, self.shard_url)
        keys = [str(s.manifest["key"][r]) for r in s.group_rows(group)]
        self.loads += 1
        return GroupSamples(s.manifest, url, stream_members(url, keys))

    def batches(self, worker: int = 0, num_workers: int = 1) -> Iterator[dict]:
        """The batches worker ``worker`` of ``num_workers`` yields: steps ``start + worker`` every
        ``num_workers``. Keeps one group per (lane, slot) it serves and drops a group once no stream needs it."""
        self.check_workers(num_workers)
        schedule, sampler = self.sampler.schedule, self.sampler
        current: dict[tuple[int, int], int] = {}  # (lane, slot) → group it holds
        held: dict[int, GroupSamples] = {}
        for step in range(self.start + worker, self.stop, max(num_workers, 1)):
            examples = []
            for i in self.example_indices(step):
                _, slot, lane, _ = schedule.position(i)
                group = schedule.group(sampler.seed, i, len(sampler.groups))
                current[(lane, slot)] = group
                for g in set(held) - set(current.values()):
                    del held[g]  # its streams moved on: free it before loading the next
                if group not in held:
                    held[group] = self._load(group)
                    self.peak_groups = max(self.peak_groups, len(held))
                examples.append(sampler.with_samples(held[group]).example(i))
            yield collate_examples(examples)

    def __iter__(self) -> Iterator[dict]:
        info = torch.utils.data.get_worker_info()
        if info is None:
            yield from self.batches()
            return
        try:
            yield from self.batches(info.id, info.num_workers)
        except Avat3rError as err:
            yield WorkerFailure(err)
