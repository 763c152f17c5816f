"""Parquet manifests: one row per sample, pointing at its byte span in a shard (DESIGN §4).

Columns: ``key, shard, offset, size, person, segment, frame, camera, width, height, split, has_prior, expr``
(``expr`` a fixed-size list<float32> of the expression space's dimension). File metadata:
``expression_space``, ``source``, ``version``. ``shard`` is relative to the manifest's folder.

Splits are per person, so a held-out person never contributes a training sample.
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import Avat3rError
from ..fileio import atomic_write_bytes

MANIFEST_VERSION = 1
MANIFEST_NAME = "manifest.parquet"
SPLITS = ("train", "val", "test")
COLUMNS = ("key", "shard", "offset", "size", "person", "segment", "frame", "camera", "width", "height", "split",
           "has_prior", "expr")


def is_dataset_file(name: str) -> bool:
    """Whether a dataset folder's file is one the data stages write (shards, the manifest, the prior stage's
    options record, temp files): a rerun replaces these and keeps anything else."""
    return (name in (MANIFEST_NAME, "prior.json") or name.endswith(".tar")
            or (name.startswith(".") and name.endswith(".tmp")))


class ManifestError(Avat3rError, ValueError):
    """A manifest is missing, malformed or inconsistent; the message names the file."""


def manifest_schema(expr_dim: int) -> pa.Schema:
    return pa.schema([
        ("key", pa.string()), ("shard", pa.string()), ("offset", pa.int64()), ("size", pa.int64()),
        ("person", pa.string()), ("segment", pa.string()), ("frame", pa.int32()), ("camera", pa.string()),
        ("width", pa.int32()), ("height", pa.int32()), ("split", pa.string()), ("has_prior", pa.bool_()),
        ("expr", pa.list_(pa.float32(), expr_dim)),
    ])


@dataclass
class Manifest:
    """An in-memory manifest: column arrays (numpy) plus file metadata and the folder shards live in."""

    columns: dict[str, np.ndarray]
    expression_space: str
    source: str
    version: int = MANIFEST_VERSION
    root: Path = field(default_factory=lambda: Path("."))

    def __len__(self) -> int:
        return len(self.columns["key"])

    def __getitem__(self, name: str) -> np.ndarray:
        return self.columns[name]

    @property
    def expr_dim(self) -> int:
        return int(self.columns["expr"].shape[1])

    def shard_path(self, row: int) -> Path:
        return self.root / str(self.columns["shard"][row])

    def rows(self, split: str | None = None) -> np.ndarray:
        """Row indices, all or of one split."""
        if split is None:
            return np.arange(len(self))
        if split not in SPLITS:
            raise ManifestError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
        return np.flatnonzero(self.columns["split"] == split)

    def persons(self, split: str | None = None) -> list[str]:
        return sorted(set(self.columns["person"][self.rows(split)].tolist()))

    def read(self, row: int, entries=None) -> dict:
        """The decoded sample of one row, read from its shard by byte span."""
        from .shards import read_sample

        return read_sample(self.shard_path(row), int(self.columns["offset"][row]), int(self.columns["size"][row]),
                           key=str(self.columns["key"][row]), entries=entries)


def build_manifest(records: Sequence, rows: Sequence[dict], expr: np.ndarray, expression_space: str,
                   source: str, root: str | os.PathLike = ".") -> Manifest:
    """Assemble a Manifest from shard records (``SampleRecord``) and per-sample fields (person, segment, frame,
    camera, width, height, split, has_prior) in the same order; ``expr`` is (N, E) float32."""
    if len(records) != len(rows):
        raise ValueError(f"{len(records)} shard records for {len(rows)} manifest rows")
    expr = np.asarray(expr, dtype=np.float32).reshape(len(rows), -1)
    cols = {
        "key": np.array([r.key for r in records], dtype=object),
        "shard": np.array([r.shard for r in records], dtype=object),
        "offset": np.array([r.offset for r in records], dtype=np.int64),
        "size": np.array([r.size for r in records], dtype=np.int64),
    }
    for name, dtype in (("person", object), ("segment", object), ("frame", np.int32), ("camera", object),
                        ("width", np.int32), ("height", np.int32), ("split", object), ("has_prior", bool)):
        cols[name] = np.array([row[name] for row in rows], dtype=dtype)
    cols["expr"] = expr
    bad = set(cols["split"].tolist()) - set(SPLITS)
    if bad:
        raise ManifestError(f"unknown split(s) {sorted(bad)}; expected {', '.join(SPLITS)}")
    return Manifest(cols, expression_space, source, MANIFEST_VERSION, Path(root))


def manifest_table(manifest: Manifest) -> pa.Table:
    c = manifest.columns
    n, e = len(manifest), manifest.expr_dim
    arrays = [pa.array(c[name].tolist(), type=manifest_schema(e).field(name).type) for name in COLUMNS[:-1]]
    flat = pa.array(np.ascontiguousarray(c["expr"], dtype=np.float32).reshape(-1), type=pa.float32())
    arrays.append(pa.FixedSizeListArray.from_arrays(flat, e) if n else pa.array([], pa.list_(pa.float32(), e)))
    schema = manifest_schema(e).with_metadata({"expression_space": manifest.expression_space,
                                               "source": manifest.source, "version": str(manifest.version)})
    return pa.Table.from_arrays(arrays, schema=schema)


def write_manifest(path: str | os.PathLike, manifest: Manifest) -> None:
    """Write atomically (temp file + rename)."""
    buf = io.BytesIO()
    pq.write_table(manifest_table(manifest), buf, compression="zstd")
    atomic_write_bytes(path, buf.getvalue())


def read_manifest(path: str | os.PathLike) -> Manifest:
    """Read a manifest file or the ``manifest.parquet`` inside a folder; ``root`` becomes its folder."""
    path = Path(path)
    if path.is_dir():
        path = path / MANIFEST_NAME
    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowException) as err:
        raise ManifestError(f"{path}: cannot read manifest ({str(err).splitlines()[0]})") from None
    missing = [c for c in COLUMNS if c not in table.column_names]
    if missing:
        raise ManifestError(f"{path}: manifest lacks column(s) {', '.join(missing)}")
    meta = {k.decode(): v.decode() for k, v in (table.schema.metadata or {}).items()}
    for name in ("expression_space", "source", "version"):
        if name not in meta:
            raise ManifestError(f"{path}: manifest metadata lacks {name!r}")
    if not meta["version"].isdigit():
        raise ManifestError(f"{path}: manifest metadata version {meta['version']!r} is not a version number")
    if int(meta["version"]) > MANIFEST_VERSION:
        raise ManifestError(f"{path}: manifest version {meta['version']} is newer than this avat3r reads "
                            f"({MANIFEST_VERSION})")
    expr_type = table.schema.field("expr").type
    if not pa.types.is_fixed_size_list(expr_type):
        raise ManifestError(f"{path}: column expr must be a fixed-size list<float32>")
    cols: dict[str, np.ndarray] = {}
    for name in COLUMNS[:-1]:
        values = table.column(name).to_pylist()
        dtype = {"offset": np.int64, "size": np.int64, "frame": np.int32, "width": np.int32, "height": np.int32,
                 "has_prior": bool}.get(name, object)
        if dtype is not object and not all(isinstance(v, (int, bool)) for v in values):
            bad = next(v for v in values if not isinstance(v, (int, bool)))
            raise ManifestError(f"{path}: column {name} must hold whole numbers, found {bad!r}")
        cols[name] = np.array(values, dtype=dtype)
    e = expr_type.list_size
    flat = table.column("expr").combine_chunks().flatten().to_numpy(zero_copy_only=False)
    cols["expr"] = np.array(flat, dtype=np.float32).reshape(len(table), e)  # a writable copy
    return Manifest(cols, meta["expression_space"], meta["source"], int(meta["version"]), path.parent)


# -- person-level splits -------------------------------------------------------------------------
def default_holdout(n_persons: int) -> tuple[int, int]:
    """(n_val, n_test): about 10 % each, at least one each once there are three persons or more."""
    if n_persons < 3:
        return 0, 0
    k = max(1, round(0.1 * n_persons))
    return k, k


def assign_splits(persons: Sequence[str], n_val: int, n_test: int) -> dict[str, str]:
    """Person → split: the last ``n_test`` persons (in the given order) are test, the ``n_val`` before them
    val, the rest train. The result depends only on the person ids and the counts, never on timing."""
    n = len(persons)
    if len(set(persons)) != n:
        raise ValueError("person ids must be unique")
    if n_val < 0 or n_test < 0:
        raise ManifestError("held-out person counts cannot be negative")
    if n_val + n_test > n or (n_val + n_test == n > 0 and n_test != n):
        # an all-test set (n_test = n) is allowed: a held-out evaluation set of persons and rigs never trained on
        raise ManifestError(f"holding out {n_val} val + {n_test} test of {n} persons leaves none to train on "
                            "(hold out every person as test for an evaluation-only set)")
    out = {}
    for i, p in enumerate(persons):
        out[p] = "test" if i >= n - n_test else "val" if i >= n - n_test - n_val else "train"
    return out
