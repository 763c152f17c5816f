"""The frame stream: bit-exact round trips, incremental reading through a real pipe, malformed streams."""

from __future__ import annotations

import io
import json
import os
import tarfile
import threading

import pytest
import torch

from avat3r.cameras import orbit_path
from avat3r.gaussians import Gaussians
from avat3r.stream import FrameStreamWriter, StreamError, frame_cameras, read_frame_stream


def random_gaussians(n: int, seed: int, sh: bool = False) -> Gaussians:
    g = torch.Generator().manual_seed(seed)
    return Gaussians(means=torch.randn(n, 3, generator=g) * 0.1,
                     quats=torch.nn.functional.normalize(torch.randn(n, 4, generator=g), dim=-1),
                     scales=torch.rand(n, 3, generator=g) * 0.01 + 1e-4,
                     opacities=torch.rand(n, generator=g),
                     colors=torch.rand(n, 3, generator=g),
                     sh_rest=torch.randn(n, 3, 3, generator=g) * 0.1 if sh else None,
                     valid=torch.rand(n, generator=g) > 0.3)


def assert_same(a: Gaussians, b: Gaussians) -> None:
    for name in ("means", "quats", "scales", "opacities", "colors", "sh_rest"):
        x, y = getattr(a, name), getattr(b, name)
        assert (x is None) == (y is None), name
        if x is not None:
            assert x.dtype == y.dtype == torch.float32 and torch.equal(x, y), name


def test_round_trip_through_a_pipe_is_bit_exact_and_incremental():
    frames = [random_gaussians(300 + 50 * i, seed=i, sh=(i == 2)) for i in range(4)]
    cams = orbit_path(4, 1.0, sweep_degrees=90, width=64, height=48)
    read_fd, write_fd = os.pipe()
    first_frame_seen = threading.Event()
    seen_before_writer_went_on = []
    errors = []

    def writer():
        try:
            with os.fdopen(write_fd, "wb") as f:
                w = FrameStreamWriter(f, fps=24.0, expression_space="synthheads-v1", input_cameras=cams,
                                      n_frames=len(frames))
                w.write(0, frames[0], torch.arange(13.0))
                # hold the rest back until the reader has frame 0: it must not need the whole archive
                seen_before_writer_went_on.append(first_frame_seen.wait(timeout=30))
                for i in range(1, len(frames)):
                    w.write(i, frames[i])
                w.close()
        except BaseException as err:  # surfaced in the main thread
            errors.append(err)

    t = threading.Thread(target=writer)
    t.start()
    got = []
    with os.fdopen(read_fd, "rb") as f:
        for meta, g in read_frame_stream(f):
            got.append((meta, g))
            first_frame_seen.set()
    t.join()
    assert not errors and seen_before_writer_went_on == [True]
    assert [m["frame"] for m, _ in got] == [0, 1, 2, 3]
    for (meta, g), ref in zip(got, frames):
        assert_same(g, ref.compact())
        assert g.valid is None and len(g) == int(ref.valid.sum()) == meta["n_gaussians"]
        assert meta["stream_version"] == 1 and meta["fps"] == 24.0 and meta["n_frames"] == 4
        assert meta["expression_space"] == "synthheads-v1"
    assert got[0][0]["expr"] == list(range(13)) and "expr" not in got[1][0]
    back = frame_cameras(got[3][0])
    assert torch.equal(back.K, cams.K) and torch.equal(back.w2c, cams.w2c)
    assert back.image_size == (64, 48)


def _stream_bytes(n_frames: int, announce: int | None = None, close: bool = True) -> bytes:
    buf = io.BytesIO()
    w = FrameStreamWriter(buf, 25, "ava256", n_frames=announce if announce is not None else n_frames)
    for i in range(n_frames):
        w.write(i, random_gaussians(20, seed=i))
    if close:
        w.close()
    return buf.getvalue()


def test_stream_is_a_deterministic_webdataset_style_tar():
    data = _stream_bytes(3)
    assert data == _stream_bytes(3)  # fixed mtime/owner: same frames, same bytes
    assert len(data) % tarfile.RECORDSIZE == 0
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:  # a plain (seekable) tar reader agrees
        names = tar.getnames()
        assert names == [f"{i:06d}.{m}" for i in range(3) for m in ("gaussians.safetensors", "meta.json")]
        assert all(m.mtime == 0 and m.uid == 0 for m in tar.getmembers())
        assert json.loads(tar.extractfile("000001.meta.json").read())["frame"] == 1


def test_truncated_and_malformed_streams_are_refused():
    data = _stream_bytes(3)
    frame_bytes = (len(_stream_bytes(1, close=False)))
    with pytest.raises(StreamError, match="ended abruptly after 1 frame"):
        list(read_frame_stream(io.BytesIO(data[:frame_bytes + 700])))  # cut inside frame 1
    # a writer that died exactly between two frames: the announced length gives it away
    with pytest.raises(StreamError, match="after 2 of 3 frames"):
        list(read_frame_stream(io.BytesIO(_stream_bytes(2, announce=3, close=False))))
    with pytest.raises(StreamError, match="empty"):
        list(read_frame_stream(io.BytesIO(b"")))
    with pytest.raises(StreamError, match="no frames"):
        list(read_frame_stream(io.BytesIO(b"\0" * 10240)))  # a well-formed but empty archive
    with pytest.raises(StreamError):
        list(read_frame_stream(io.BytesIO(b"\x89PNG not a tar" * 100)))


def _tar_with(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def test_foreign_members_are_refused_never_unpickled():
    # WebDataset's default decoders would unpickle a .pyd member; the stream reader refuses any foreign member
    with pytest.raises(StreamError, match="unexpected member '000000.gaussians.pyd'"):
        list(read_frame_stream(io.BytesIO(_tar_with({"000000.gaussians.pyd": b"\x80\x04K\x01."}))))
    meta = json.dumps({"stream_version": 2, "frame": 0}).encode()
    good = _tar_with({"000000.gaussians.safetensors": b"x", "000000.meta.json": meta})
    with pytest.raises(StreamError, match="unsupported stream_version 2"):
        list(read_frame_stream(io.BytesIO(good)))
    meta1 = json.dumps({"stream_version": 1, "frame": 0}).encode()
    bad_st = _tar_with({"000000.gaussians.safetensors": b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ",
                        "000000.meta.json": meta1})
    with pytest.raises(StreamError, match="lacks means"):
        list(read_frame_stream(io.BytesIO(bad_st)))
    with pytest.raises(StreamError, match="incomplete frame"):
        list(read_frame_stream(io.BytesIO(_tar_with({"000000.meta.json": meta1}))))


def test_oversized_and_interleaved_members_are_refused_before_reading():
    def header(name: str, size: int) -> bytes:
        info = tarfile.TarInfo(name)
        info.size = size
        return info.tobuf(format=tarfile.USTAR_FORMAT)

    # a header announcing 3 GiB of Gaussians: refused from the header, nothing read or allocated
    with pytest.raises(StreamError, match="more than a frame's"):
        list(read_frame_stream(io.BytesIO(header("000000.gaussians.safetensors", 3 << 30) + b"\0" * 1024)))
    # frames that never complete cannot pile up in memory
    parts = b""
    for k in range(3):
        data = b"{}"
        parts += header(f"{k:06d}.meta.json", len(data)) + data + b"\0" * (512 - len(data))
    with pytest.raises(StreamError, match="interleaved"):
        list(read_frame_stream(io.BytesIO(parts + b"\0" * 1024)))
