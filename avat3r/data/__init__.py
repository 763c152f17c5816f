"""Data: WebDataset shards + Parquet manifests, the SynthHeads generator, user photo prep, training examples.

- ``shards``: deterministic shard writing, safe decoding, ``read_sample`` by byte span, ``iter_shard``.
- ``manifest``: the Parquet manifest (one row per sample) and person-level splits.
- ``prep``: ``prep synth`` (parallel, byte-identical for equal arguments).
- ``images``: user photos + cams.json → head-centred square crops with black background.
- ``examples``: training examples (4 inputs + 8 targets of one person), sampler, dataset, collate.
"""

from .examples import ExampleDataset, ExampleSampler, collate_examples
from .images import load_user_images
from .manifest import Manifest, read_manifest, write_manifest
from .shards import ShardError, ShardWriter, iter_shard, read_sample

__all__ = [
           "ExampleDataset",
           "ExampleSampler",
           "Manifest",
           "ShardError",
           "ShardWriter",
           "collate_examples",
           "iter_shard",
           "load_user_images",
           "read_manifest",
           "read_sample",
           "write_manifest",
]
