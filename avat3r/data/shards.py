"""WebDataset shards: deterministic writing, safe decoding, and random access by byte span (DESIGN §4).

A sample is one image of one person at one frame from one camera. Its members are tar entries named
``{key}.{entry}`` with ``key = {person}/{segment}/{frame:06d}/{camera}`` and ``entry`` one of
``rgb.png``, ``mask.png``, ``camera.json``, ``expr.npy``, ``depth.npy``, ``pos.npy``, ``conf.npy``,
``feat.npy``. Keys carry no dots because WebDataset splits member names at the first dot of the base name.

Shards are plain uncompressed tars written with fixed mtime/uid/gid/names, so equal inputs give equal bytes.
Each written sample reports its byte span ``(offset, size)`` inside its shard; ``read_sample`` seeks there and
parses only that span. Decoding never unpickles: PNG through OpenCV, ``.npy`` with ``allow_pickle=False``, JSON.
"""

from __future__ import annotations

import io
import json
import math
import os
import tarfile
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..cameras import camera_dict
from ..errors import Avat3rError
from ..fileio import AbortOnError, AtomicFile, tar_end, tar_member
from ..imageio import decode_png, encode_png

SHARD_PATTERN = "shard-{:06d}.tar"
DEFAULT_MAXCOUNT = 100_000
DEFAULT_MAXSIZE = 1 << 30  # 1 GiB keeps shards easy to copy and cache
ENTRY_ORDER = ("rgb.png", "mask.png", "camera.json", "expr.npy", "depth.npy", "pos.npy", "conf.npy", "feat.npy")
# Resource limits on what is read into memory: the largest entry prep writes (a 4096² float32 depth map) is
# 64 MiB, so a member, image or array beyond these is damage or a foreign file, refused with one line instead of
# exhausting memory.
MAX_MEMBER_BYTES = 512 << 20
MAX_IMAGE_PIXELS = 8192 * 8192
PNG_COMPRESSION = 3  # zlib level of rgb.png / mask.png: part of the shards' exact bytes
SHARD_MEMBER_MODE = 0o444  # the members' tar mode, also part of those bytes
_NPY_DTYPES = {"expr.npy": np.float32, "depth.npy": np.float32, "pos.npy": np.float32,
               "conf.npy": np.float16, "feat.npy": np.float16}


class ShardError(Avat3rError, ValueError):
    """A shard or one of its samples is unreadable; the message names the shard and the key."""


# -- keys ----------------------------------------------------------------------------------------
def make_key(person: str, segment: str, frame: int, camera: str) -> str:
    """``{person}/{segment}/{frame:06d}/{camera}``; raises ValueError on parts WebDataset would mis-split."""
    parts = [str(person), str(segment), f"{int(frame):06d}", str(camera)]
    for name, part in zip(("person", "segment", "frame", "camera"), parts):
        if not part or "." in part or "/" in part or any(c.isspace() for c in part):
            raise ValueError(f"{name} {part!r} cannot be part of a sample key (no dots, slashes, spaces; non-empty)")
    return "/".join(parts)


def split_key(key: str) -> tuple[str, str, int, str]:
    person, segment, frame, camera = key.split("/")
    return person, segment, int(frame), camera


# -- encoding ------------------------------------------------------------------------------------
def _png_entry(image: np.ndarray) -> bytes:
    """uint8 H×W×3 RGB or H×W gray → PNG bytes (deterministic for a given OpenCV build)."""
    image = np.asarray(image)
    if image.dtype != np.uint8:  # a float image here is a caller's mistake, not something to round silently
        raise ValueError(f"PNG entries must be uint8, got {image.dtype}")
    if image.ndim not in (2, 3):
        raise ValueError(f"PNG entries must be H×W or H×W×3, got {image.shape}")
    return encode_png(image, PNG_COMPRESSION)


def encode_npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array), allow_pickle=False)
    return buf.getvalue()


def encode_sample(sample: Mapping) -> dict[str, bytes]:
    """Fields (``rgb`` uint8 H×W×3, ``mask`` uint8 H×W, ``camera`` dict, ``expr``, ``depth``, ``pos``, ``conf``,
    ``feat`` arrays; optional ones may be absent or None) → ``{entry name: bytes}``."""
    out: dict[str, bytes] = {}
    if sample.get("rgb") is None or sample.get("camera") is None:
        raise ValueError("a sample needs at least rgb and camera")
    out["rgb.png"] = _png_entry(sample["rgb"])
    if sample.get("mask") is not None:
        out["mask.png"] = _png_entry(sample["mask"])
    cam = sample["camera"]
    out["camera.json"] = json.dumps(camera_dict(cam["K"], cam["w2c"], cam["width"], cam["height"]),
                                    sort_keys=True, separators=(",", ":")).encode()
    for field in ("expr", "depth", "pos", "conf", "feat"):
        if sample.get(field) is not None:
            entry = f"{field}.npy"
            out[entry] = encode_npy(np.asarray(sample[field], dtype=_NPY_DTYPES[entry]))
    return out


# -- decoding ------------------------------------------------------------------------------------
def _load_npy(data: bytes) -> np.ndarray:
    """``np.load`` once the header's shape fits the bytes there (numpy allocates the whole array first)."""
    f = io.BytesIO(data)
    major, _ = np.lib.format.read_magic(f)
    read_header = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
    shape, _, dtype = read_header(f)
    if math.prod(shape) * dtype.itemsize > len(data) - f.tell():
        raise ValueError(f"its header claims a {'x'.join(map(str, shape))} {dtype} array, more than the data")
    return np.load(io.BytesIO(data), allow_pickle=False)


def decode_entry(entry: str, data: bytes):
    """Decode one member; unknown entries stay bytes. Raises ValueError on malformed data."""
    if entry.endswith(".png"):
        return decode_png(data, MAX_IMAGE_PIXELS)
    if entry.endswith(".npy"):
        return _load_npy(data)
    if entry.endswith(".json"):
        return json.loads(data.decode("utf-8"))
    return data


def decode_sample(members: Mapping[str, bytes], shard: str, key: str) -> dict:
    """``{entry: bytes}`` → ``{field: value}`` (``rgb``, ``mask``, ``camera``, ``expr``, …) plus ``__key__``."""
    out: dict = {"__key__": key}
    for entry, data in members.items():
        try:
            value = decode_entry(entry, data)
        except Exception as err:  # noqa: BLE001 — any decoder failure is corruption of this sample
            raise ShardError(f"{shard}: sample {key}: cannot decode {entry} ({err})") from None
        out[entry.split(".", 1)[0]] = value
    if "rgb" in out and (out["rgb"].ndim != 3 or out["rgb"].shape[2] != 3):
        raise ShardError(f"{shard}: sample {key}: rgb.png is not an RGB image")
    return out


# -- writing -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SampleRecord:
    key: str
    shard: str  # file name of the shard, relative to the output folder
    offset: int  # byte span of the sample's members inside the (uncompressed) tar
    size: int


def _entry_sort_key(entry: str) -> tuple[int, str]:
    return (ENTRY_ORDER.index(entry) if entry in ENTRY_ORDER else len(ENTRY_ORDER), entry)


class ShardWriter(AbortOnError):
    """Writes samples into ``folder/shard-000000.tar``, … in the order given, starting a new shard when the
    next sample would exceed ``maxsize`` bytes or ``maxcount`` samples, or belongs to another ``group`` than
    the last one (prep passes the person, so a streaming reader that wants one person reads shards of that
    person only). Each shard is written under a temp name and renamed when complete. Use as a context manager;
    ``write`` returns the sample's SampleRecord."""

    def __init__(self, folder: str | os.PathLike, maxcount: int = DEFAULT_MAXCOUNT,
                 maxsize: int = DEFAULT_MAXSIZE, pattern: str = SHARD_PATTERN):
        if maxcount < 1 or maxsize < 1:
            raise ValueError("maxcount and maxsize must be positive")
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.maxcount, self.maxsize, self.pattern = maxcount, maxsize, pattern
        self.shards: list[str] = []
        self._file: AtomicFile | None = None
        self._offset = 0  # bytes written to the current shard
        self._count = 0
        self._last_key: str | None = None
        self._group: str | None = None

    def _open_next(self) -> None:
        self._close_current()
        name = self.pattern.format(len(self.shards))
        self.shards.append(name)
        self._file = AtomicFile(self.folder / name)
        self._offset = self._count = 0

    def _close_current(self) -> None:
        if self._file is None:
            return
        self._file.write(tar_end(self._offset))
        self._file.close()
        self._file = None

    def write(self, key: str, members: Mapping[str, bytes], group: str | None = None) -> SampleRecord:
        make_key(*split_key(key))  # validates the key
        if not members:
            raise ValueError(f"sample {key} has no entries")
        if self._last_key is not None and key == self._last_key:
            raise ValueError(f"sample {key} written twice in a row")
        entries = sorted(members, key=_entry_sort_key)
        size = sum(512 + -(-len(members[e]) // 512) * 512 for e in entries)
        if (self._file is None or self._count >= self.maxcount
                or (self._count > 0 and self._offset + size > self.maxsize)
                or (self._count > 0 and group != self._group)):
            self._open_next()
        self._group = group
        start = self._offset
        for entry in entries:
            self._offset += self._file.write(tar_member(f"{key}.{entry}", members[entry], mode=SHARD_MEMBER_MODE))
        self._count += 1
        self._last_key = key
        return SampleRecord(key, self.shards[-1], start, self._offset - start)

    def close(self) -> None:
        self._close_current()

    def abort(self) -> None:
        """Drop the shard being written (its temp file) after a failure."""
        if self._file is not None:
            self._file.abort()
            self.shards.pop()
            self._file = None


# -- random access -------------------------------------------------------------------------------
class _Span:
    """A read-only window [offset, offset+size) of an open file, seekable, as tarfile expects."""

    def __init__(self, f, offset: int, size: int):
        self.f, self.offset, self.size, self.pos = f, offset, size, 0
        self.mode = "rb"

    def tell(self) -> int:
        return self.pos

    def seek(self, pos: int, whence: int = 0) -> int:
        self.pos = {0: pos, 1: self.pos + pos, 2: self.size + pos}[whence]
        return self.pos

    def read(self, n: int = -1) -> bytes:
        n = self.size - self.pos if n is None or n < 0 else min(n, self.size - self.pos)
        if n <= 0:
            return b""
        self.f.seek(self.offset + self.pos)
        data = self.f.read(n)
        self.pos += len(data)
        return data


def _check_member_size(shard: str, label: str, entry: str, size: int) -> None:
    if size > MAX_MEMBER_BYTES:
        raise ShardError(f"{shard}: sample {label}: member {entry} is {size:,} bytes, more than a sample's member "
                         f"may be ({MAX_MEMBER_BYTES:,})")


def read_members(shard_path: str | os.PathLike, offset: int, size: int, key: str | None = None,
                 entries: Iterable[str] | None = None) -> dict[str, bytes]:
    """Raw ``{entry: bytes}`` of the sample stored at bytes [offset, offset+size) of ``shard_path``.
    With ``key`` the members must belong to that key; with ``entries`` only those are read."""
    shard = str(shard_path)
    label = key if key is not None else f"at offset {offset}"
    wanted = set(entries) if entries is not None else None
    try:
        f = open(shard_path, "rb")
    except OSError as err:
        raise ShardError(f"{shard}: sample {label}: cannot open shard ({err.strerror})") from None
    with f:
        total = os.fstat(f.fileno()).st_size
        if offset < 0 or size <= 0 or offset + size > total:
            raise ShardError(f"{shard}: sample {label}: span {offset}+{size} lies outside the {total}-byte shard "
                             "(truncated shard or stale manifest)")
        out: dict[str, bytes] = {}
        seen_key = key
        try:
            tar = tarfile.open(fileobj=_Span(f, offset, size), mode="r:")
            for member in tar:
                base, dot, entry = member.name.partition(".")
                if not dot or not member.isfile():
                    raise ShardError(f"{shard}: sample {label}: unexpected member {member.name!r}")
                if seen_key is None:
                    seen_key = base
                if base != seen_key:
                    raise ShardError(f"{shard}: sample {label}: span holds member {member.name!r} of another sample")
                if member.offset_data + member.size > size:
                    raise ShardError(f"{shard}: sample {label}: member {entry} runs past the sample's span")
                if wanted is None or entry in wanted:
                    _check_member_size(shard, label, entry, member.size)
                    out[entry] = tar.extractfile(member).read()
        except (tarfile.TarError, EOFError, UnicodeDecodeError) as err:
            raise ShardError(f"{shard}: sample {label}: corrupt tar data ({err})") from None
    if not out and wanted is None:
        raise ShardError(f"{shard}: sample {label}: no members in span {offset}+{size}")
    return out


def read_sample(shard_path: str | os.PathLike, offset: int, size: int, key: str | None = None,
                entries: Iterable[str] | None = None) -> dict:
    """Decoded sample (``rgb`` uint8 H×W×3, ``mask``, ``camera`` dict, ``expr``, … and ``__key__``) stored at
    bytes [offset, offset+size) of ``shard_path``. Corruption raises ShardError naming shard and key."""
    members = read_members(shard_path, offset, size, key, entries)
    if key is None:
        key = f"at offset {offset}"
    return decode_sample(members, str(shard_path), key)


def index_shard(path: str | os.PathLike) -> list[tuple[str, int, int]]:
    """(key, offset, size) of every sample in a shard, from its tar headers alone.

    Python's tarfile (and so WebDataset) silently stops at a damaged header in mid-archive; this walk checks
    every header checksum instead and raises ShardError naming the shard and the last intact key."""
    shard = str(path)
    spans: list[list] = []
    with open(path, "rb") as f:
        total = os.fstat(f.fileno()).st_size
        pos = 0
        while pos + 512 <= total:
            block = f.read(512)
            if block == b"\0" * 512:  # end-of-archive marker
                return [tuple(s) for s in spans]
            last = spans[-1][0] if spans else None
            where = f"after sample {last}" if last else "at its first sample"
            try:
                info = tarfile.TarInfo.frombuf(block, "utf-8", "surrogateescape")
            except tarfile.HeaderError as err:
                raise ShardError(f"{shard}: sample {where}: corrupt tar header at byte {pos} ({err})") from None
            end = pos + 512 + -(-info.size // 512) * 512
            key, _, entry = info.name.partition(".")
            if end > total:
                raise ShardError(f"{shard}: sample {key}: truncated at byte {total}")
            _check_member_size(shard, key, entry, info.size)  # WebDataset would read it whole
            if spans and spans[-1][0] == key:
                spans[-1][2] = end - spans[-1][1]
            else:
                spans.append([key, pos, end - pos])
            pos = end
            f.seek(pos)
    last = spans[-1][0] if spans else None
    raise ShardError(f"{shard}: sample {f'after sample {last}' if last else 'at its first sample'}: "
                     "the tar ends without its end-of-archive marker (truncated shard)")


def iter_shard(path: str | os.PathLike) -> Iterator[dict]:
    """Decoded samples of one shard, read by plain ``webdataset.WebDataset``.

    Decoding is explicit (``decode_sample``) rather than ``.decode()``, whose default post-handlers would
    unpickle ``.pyd``/``.pickle`` members. The tar headers are checked first (see ``index_shard``)."""
    import webdataset as wds

    shard = str(path)
    expected = [key for key, _, _ in index_shard(path)]
    ds = wds.WebDataset(shard, shardshuffle=False, nodesplitter=None, workersplitter=None,
                        handler=wds.reraise_exception, empty_check=False)
    it = iter(ds)
    for n, want in enumerate(expected):
        try:
            raw = next(it)
        except StopIteration:
            raise ShardError(f"{shard}: sample {want}: missing from the WebDataset pass") from None
        except Exception as err:  # noqa: BLE001 — webdataset reports tar damage with several types
            raise ShardError(f"{shard}: sample {want}: unreadable ({type(err).__name__}: "
                             f"{str(err).splitlines()[0] if str(err) else ''})") from None
        key = raw["__key__"]
        if key != want:
            raise ShardError(f"{shard}: sample {want}: WebDataset read {key!r} instead (a key with a dot?)")
        members = {k: v for k, v in raw.items() if not k.startswith("__")}
        yield decode_sample(members, shard, key)
