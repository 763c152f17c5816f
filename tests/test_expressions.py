"""Expression spaces, expr.parquet sequences and built-in sequences."""

from __future__ import annotations

import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from avat3r.expressions import (
    ExpressionError,
    ExpressionSequence,
    builtin_sequence,
    check_space,
    get_space,
    load_sequence,
    read_sequence,
    write_sequence,
)


def _codes(t: int, e: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    c = torch.randn(t, e, generator=g)
    c[0, 0] = 1e-42  # a subnormal survives bit-exact
    c[0, 1] = -0.0
    return c


def test_parquet_round_trip_is_bit_exact_and_plain_pyarrow_reads_it(tmp_path):
    seq = ExpressionSequence(_codes(37, 256), fps=29.97, space="ava256")
    path = tmp_path / "expr.parquet"
    write_sequence(path, seq)
    back = read_sequence(path)
    assert back.space == "ava256" and back.fps == 29.97
    assert back.codes.dtype == torch.float32
    assert torch.equal(back.codes.view(torch.int32), seq.codes.view(torch.int32))  # bit-exact, incl. -0.0

    table = pq.read_table(path)  # no avat3r code involved
    assert table.schema.field("frame").type == pa.int32()
    assert table.schema.field("expr").type == pa.list_(pa.float32(), 256)
    assert table.schema.metadata[b"expression_space"] == b"ava256"
    assert float(table.schema.metadata[b"fps"]) == 29.97
    assert table.column("frame").to_pylist() == list(range(37))
    assert np.array_equal(np.array(table.column("expr").to_pylist(), dtype=np.float32), seq.codes.numpy())
    assert [p.name for p in tmp_path.iterdir()] == ["expr.parquet"]  # atomic: no temp file left behind


def test_write_sequence_accepts_raw_codes(tmp_path):
    codes = _codes(5, 13)
    write_sequence(tmp_path / "e.parquet", codes, fps=30, space="synthheads-v1")
    back = read_sequence(tmp_path / "e.parquet")
    assert torch.equal(back.codes, codes) and back.fps == 30.0 and back.space == "synthheads-v1"
    with pytest.raises(ExpressionError, match="expression space"):
        write_sequence(tmp_path / "f.parquet", codes, fps=30)


def test_rows_out_of_order_are_sorted_and_gaps_refused(tmp_path):
    codes = _codes(4, 3).numpy()
    order = [2, 0, 3, 1]
    flat = pa.array(codes[order].reshape(-1), type=pa.float32())
    meta = {b"expression_space": b"ava256", b"fps": b"25"}
    table = pa.table({"frame": pa.array(order, type=pa.int32()),
                      "expr": pa.FixedSizeListArray.from_arrays(flat, 3)}).replace_schema_metadata(meta)
    pq.write_table(table, tmp_path / "shuffled.parquet")
    assert torch.equal(read_sequence(tmp_path / "shuffled.parquet").codes, torch.from_numpy(codes))

    gap = table.set_column(0, "frame", pa.array([0, 1, 2, 5], type=pa.int32()))
    pq.write_table(gap, tmp_path / "gap.parquet")
    with pytest.raises(ExpressionError, match="0..3 once each"):
        read_sequence(tmp_path / "gap.parquet")


def test_wrong_files_give_clear_errors(tmp_path):
    (tmp_path / "notes.txt").write_text("not parquet")
    with pytest.raises(ExpressionError, match="not a Parquet expression sequence"):
        read_sequence(tmp_path / "notes.txt")
    with pytest.raises(ExpressionError, match="no such"):
        read_sequence(tmp_path / "missing.parquet")
    pq.write_table(pa.table({"frame": [0, 1]}), tmp_path / "nocol.parquet")
    with pytest.raises(ExpressionError, match="missing column.*expr"):
        read_sequence(tmp_path / "nocol.parquet")
    flat = pa.array(np.zeros(6, np.float32))
    t = pa.table({"frame": pa.array([0, 1], pa.int32()), "expr": pa.FixedSizeListArray.from_arrays(flat, 3)})
    pq.write_table(t, tmp_path / "nometa.parquet")
    with pytest.raises(ExpressionError, match="expression_space and fps"):
        read_sequence(tmp_path / "nometa.parquet")
    with pytest.raises(ExpressionError, match="non-finite"):
        ExpressionSequence(torch.tensor([[float("nan")]]), 25, "ava256")
    with pytest.raises(ExpressionError, match="fps"):
        ExpressionSequence(torch.zeros(2, 3), 0, "ava256")


def test_check_space_refuses_another_space_and_dimension():
    seq = ExpressionSequence(torch.zeros(3, 256), 25, "ava256")
    check_space(seq, "ava256", 256)
    with pytest.raises(ExpressionError, match="space 'ava256' but the avatar was trained in 'synthheads-v1'"):
        check_space(seq, "synthheads-v1")
    with pytest.raises(ExpressionError, match="256-d codes .* 13-d"):
        check_space(seq, "ava256", 13)


def test_ava256_space_and_neutral_builtin():
    sp = get_space("ava256")
    assert sp.dim == 256 and torch.equal(sp.neutral_code(), torch.zeros(256))
    seq = builtin_sequence("neutral", "ava256", fps=10, n_frames=7)
    assert seq.codes.shape == (7, 256) and not seq.codes.any() and seq.fps == 10
    with pytest.raises(ExpressionError, match="synthheads-v1 segments"):
        builtin_sequence("demo", "ava256")
    with pytest.raises(ExpressionError, match="unknown built-in"):
        builtin_sequence("dance", "ava256")
    with pytest.raises(ExpressionError, match="unknown expression space"):
        get_space("flame")
    assert len(load_sequence("neutral", "ava256", fps=5)) == 5


def test_demo_sequence_plays_smile_jaw_tongue_blink_in_order():
    pytest.importorskip("avat3r.data.synthheads")
    sp = get_space("synthheads-v1")
    fps = 20
    seq = builtin_sequence("demo", "synthheads-v1", fps=fps)
    assert seq.codes.shape[1] == sp.dim == 13 and seq.space == "synthheads-v1" and seq.fps == fps
    assert torch.equal(seq.codes[0], sp.neutral_code())  # starts at rest
    assert float(seq.codes[-1].abs().max()) < 0.05  # and ends (almost) there
    assert float(seq.codes.min()) >= 0 and float(seq.codes.max()) <= 1
    col = {n: seq.codes[:, i] for i, n in enumerate(sp.names)}

    def peak_frame(values: torch.Tensor) -> int:
        return int(torch.argmax(values))

    smile = peak_frame(col["mouthSmileLeft"] + col["mouthSmileRight"])
    tongue = peak_frame(col["tongueOut"])
    blink = peak_frame(col["eyeBlinkLeft"] + col["eyeBlinkRight"])
    jaw_alone = peak_frame(col["jawOpen"] * (col["tongueOut"] < 0.01))
    assert smile < jaw_alone < tongue < blink  # the order the demo promises
    assert min(float(col["mouthSmileLeft"][smile]), float(col["tongueOut"][tongue]),
               float(col["eyeBlinkLeft"][blink]), float(col["jawOpen"][jaw_alone])) > 0.95
    assert float(col["jawOpen"][tongue]) > 0.5  # the tongue comes out of an open mouth
    jaw_step = (col["jawOpen"][1:] - col["jawOpen"][:-1]).abs().max()
    assert float(jaw_step) < 0.3  # the jaw eases in and out (no pops between segments)
    assert 6.0 < len(seq) / fps < 8.0
    resampled = builtin_sequence("demo", "synthheads-v1", fps=fps, n_frames=11)
    assert resampled.codes.shape == (11, 13)


def test_sequence_file_is_not_rewritten_on_failure(tmp_path):
    path = tmp_path / "e.parquet"
    write_sequence(path, ExpressionSequence(torch.ones(2, 4), 25, "ava256"))
    before = path.read_bytes()
    with pytest.raises(ExpressionError):
        write_sequence(path, torch.ones(0, 4), fps=25, space="ava256")
    assert path.read_bytes() == before and os.listdir(tmp_path) == ["e.parquet"]
