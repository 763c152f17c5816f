"""Linear Gaussian rigs: the fit is exact where the decoder is linear, close to the shipped network on held-out
codes, the .rig.npz file round-trips bit-exactly, bad files fail with one line, and animate/render take a rig
in place of an avatar with the same expression-space checks."""

from __future__ import annotations

import io
import json
import zipfile

import numpy as np
import pytest
import torch
from rig_helpers import shipped_avatar

from avat3r.expressions import builtin_sequence, write_sequence
from avat3r.gaussians import Gaussians
from avat3r.rig import (
    COLUMNS,
    Rig,
    RigError,
    fit_rig,
    gaussians_to_params,
    load_rig,
    params_to_gaussians,
    rig_bytes,
    rig_from_avatar,
    sample_codes,
    save_rig,
)
from avat3r.stages.animate import load_animatable

E, N = 5, 40


def _linear_decoder(seed: int = 0):
    """A decoder that is exactly linear in the rig's parameters (unit quaternions held fixed, but returned with
    a random sign per code: q and −q are one rotation), with 3 Gaussians it never keeps."""
    g = torch.Generator().manual_seed(seed)
    base = torch.cat([torch.randn(N, 3, generator=g) * 0.1, 0.3 + 0.4 * torch.rand(N, 3, generator=g),
                      torch.randn(N, 1, generator=g), -4 + 0.3 * torch.randn(N, 3, generator=g),
                      torch.nn.functional.normalize(torch.randn(N, 4, generator=g), dim=-1)], dim=1)
    deltas = torch.randn(E, N, len(COLUMNS), generator=g) * torch.tensor([0.01] * 3 + [0.05] * 3 + [0.5] + [0.1] * 3
                                                                       + [0.0] * 4)
    valid = torch.ones(N, dtype=torch.bool)
    valid[[3, 17, 29]] = False
    neutral = torch.zeros(E)

    def decode(codes):
        p = base + torch.einsum("fe,enp->fnp", codes - neutral, deltas)
        sign = torch.where(torch.rand(codes.shape[0], N, 1, generator=g) < 0.5, -1.0, 1.0)
        out = params_to_gaussians(p)
        out.quats = out.quats * sign
        out.valid = valid.expand(codes.shape[0], N)
        return out

    return decode, base, deltas, valid, neutral


def test_the_fit_reproduces_a_linear_decoder_exactly():
    decode, base, deltas, valid, neutral = _linear_decoder()
    names = [f"p{i}" for i in range(E)]
    rig, keep = fit_rig(decode, "test-space", names, neutral, n_samples=40, n_eval=0, float16=False)
    assert torch.equal(keep, valid) and len(rig) == int(valid.sum())
    assert torch.allclose(rig.base[:, :10], base[valid, :10], atol=2e-5, rtol=0)
    # rotations are fitted in the hemisphere of the first code's quaternion, whichever sign it came with
    assert torch.allclose((rig.base[:, 10:] * base[valid, 10:]).sum(-1).abs(), torch.ones(len(rig)), atol=1e-6)
    assert torch.allclose(rig.deltas, deltas[:, valid], atol=2e-5, rtol=0)
    code = torch.tensor([0.3, -0.7, 0.1, 0.9, -0.2])
    want = decode(code[None])[0].mask(valid)
    got = rig(code)
    for name in ("means", "scales", "opacities", "colors"):
        assert torch.allclose(getattr(got, name), getattr(want, name), atol=1e-5), name
    assert torch.allclose((got.quats * want.quats).sum(-1).abs(), torch.ones(len(got)), atol=1e-6)


def test_sampled_codes_cover_the_space_from_neutral():
    neutral, ranges = torch.zeros(13), torch.tensor([[0.0, 1.0]] * 13)
    codes = sample_codes(neutral, ranges, 128, seed=0)
    assert torch.equal(codes[0], neutral)
    assert codes.shape == (128, 13) and bool((codes >= 0).all() and (codes <= 1).all())
    assert all(bool((codes[:, k] == 1.0).any()) for k in range(13))  # each parameter swept to its end
    assert torch.equal(codes, sample_codes(neutral, ranges, 128, seed=0))
    with pytest.raises(RigError, match="needs at least 14 samples"):
        sample_codes(neutral, ranges, 5)


@pytest.fixture(scope="module")
def shipped(tmp_path_factory):
    """The shipped model's avatar of a held-out person and its rig (64 samples: quick)."""
    folder = tmp_path_factory.mktemp("rig")
    avt = shipped_avatar(folder / "head.avt")
    avatar = load_animatable(avt, device="cpu")
    rig = rig_from_avatar(avatar, n_samples=64, n_eval=12, eval_size=96)
    save_rig(folder / "head.rig.npz", rig)
    return avt, folder / "head.rig.npz", avatar, rig


def test_the_rig_renders_like_the_shipped_network_on_held_out_codes(shipped):
    _, _, avatar, rig = shipped
    fit = rig.meta["fit"]
    # measured 46–47 dB mean, 37–38 dB worst on held-out random codes (docs/results.md)
    assert fit["psnr_mean"] >= 35.0 and fit["psnr_worst"] >= 30.0, fit
    assert fit["rms"]["means"] < 2e-3, fit  # metres
    # the rig moves what the network moves: jaw open changes the Gaussians, and alike
    jaw = avatar.neutral.clone()
    jaw[list(rig.names).index("jawOpen")] = 1.0
    with torch.inference_mode():
        net = avatar.model.decode(avatar.state, torch.stack([avatar.neutral, jaw]))
    moved_net = (net.means[1] - net.means[0])[net.valid[0]].norm(dim=-1)
    moved_rig = (rig(jaw).means - rig(avatar.neutral).means).norm(dim=-1)
    assert float(moved_net.max()) > 2e-3
    assert torch.corrcoef(torch.stack([moved_net, moved_rig]))[0, 1] > 0.95


def test_the_rig_file_round_trips_bit_exactly(shipped, tmp_path):
    _, path, _, rig = shipped
    back = load_rig(path)
    assert torch.equal(back.base, rig.base) and torch.equal(back.deltas, rig.deltas)  # deltas were float16 already
    assert back.names == rig.names and back.space == "synthheads-v1" and torch.equal(back.ranges, rig.ranges)
    assert back.meta["fit"] == json.loads(json.dumps(rig.meta["fit"]))
    assert rig_bytes(back) == path.read_bytes()  # deterministic bytes
    with np.load(path, allow_pickle=False) as npz:
        assert npz["deltas"].dtype == np.float16 and npz["base"].dtype == np.float32
        meta = json.loads(str(npz["meta"]))
    assert meta["format"] == "avat3r-rig" and meta["columns"] == list(COLUMNS)
    assert path.stat().st_size < 10e6
    assert len(back.cameras) == 4  # the avatar's input cameras travel with the rig


OBJECT_ARRAY = object()  # stands for a member claiming an object (pickled) dtype


def _object_npy() -> bytes:
    """An .npy member whose header claims dtype object, as a pickled array's would, with a payload that is not a
    pickle: the loader must refuse it from the header alone, and nothing here ever pickles."""
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "|O", "fortran_order": False, "shape": (1,)})
    return buf.getvalue() + b"not a pickle"


def _rewrite(src, dst, drop=(), replace=None):
    members = {}
    with zipfile.ZipFile(src) as zf:
        for name in zf.namelist():
            if name[:-4] not in drop:
                members[name] = zf.read(name)
    for name, arr in (replace or {}).items():
        if arr is OBJECT_ARRAY:
            members[f"{name}.npy"] = _object_npy()
            continue
        buf = io.BytesIO()
        np.lib.format.write_array(buf, arr, allow_pickle=False)
        members[f"{name}.npy"] = buf.getvalue()
    with zipfile.ZipFile(dst, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return dst


def test_bad_rig_files_fail_with_one_line(shipped, tmp_path, capsys):
    _, path, _, _ = shipped
    with np.load(path, allow_pickle=False) as npz:
        meta = json.loads(str(npz["meta"]))
        base = npz["base"]
    (tmp_path / "text.rig.npz").write_text("not a rig")
    bad_base = base.copy()
    bad_base[0, 0] = np.nan
    cases = {
        "text.rig.npz": "not a rig",
        "missing.rig.npz": "missing member deltas",
        "pickle.rig.npz": "unreadable rig",
        "shape.rig.npz": "member base has shape",
        "nan.rig.npz": "non-finite",
        "format.rig.npz": "does not describe an avat3r rig",
        "names.rig.npz": "meta neutral must be",
    }
    _rewrite(path, tmp_path / "missing.rig.npz", drop=("deltas",))
    _rewrite(path, tmp_path / "pickle.rig.npz", replace={"base": OBJECT_ARRAY})
    _rewrite(path, tmp_path / "shape.rig.npz", replace={"base": base[:-1]})
    _rewrite(path, tmp_path / "nan.rig.npz", replace={"base": bad_base})
    _rewrite(path, tmp_path / "format.rig.npz", replace={"meta": np.array(json.dumps({**meta, "format": "x"}))})
    _rewrite(path, tmp_path / "names.rig.npz",
             replace={"meta": np.array(json.dumps({**meta, "names": meta["names"] + ["extra"]}))})
    for name, message in cases.items():
        with pytest.raises(RigError, match=message) as err:
            load_rig(tmp_path / name)
        assert "\n" not in str(err.value)
    with pytest.raises(RigError, match="no such rig"):
        load_rig(tmp_path / "absent.rig.npz")
    code, err = _cli(["render", tmp_path / "nan.rig.npz", "--video", tmp_path / "x.mp4"], capsys)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code != 0 and len(lines) == 1 and lines[0].startswith("avat3r: error:") and "non-finite" in lines[0]


def _cli(argv, capsys) -> tuple[int, str]:
    """Run the console script in this process: (exit code, stderr)."""
    from avat3r.cli.main import main

    with pytest.raises(SystemExit) as exit_info:
        main([str(a) for a in argv])
    return exit_info.value.code, capsys.readouterr().err


def test_animate_and_render_take_a_rig_with_the_avatars_space_checks(shipped, tmp_path, capsys):
    from avat3r.stream import read_frame_stream

    _, path, _, rig = shipped
    write_sequence(tmp_path / "expr.parquet", builtin_sequence("demo", "synthheads-v1", 25.0, n_frames=6))
    write_sequence(tmp_path / "other.parquet", torch.zeros(3, 256), fps=25.0, space="ava256")
    code, err = _cli(["animate", path, tmp_path / "expr.parquet", "-o", tmp_path / "frames.tar", "-q"], capsys)
    assert code == 0, err
    with open(tmp_path / "frames.tar", "rb") as f:
        frames = list(read_frame_stream(f))
    assert len(frames) == 6 and all(len(g) == len(rig) for _, g in frames)
    assert frames[0][0]["expression_space"] == "synthheads-v1"
    code, err = _cli(["render", path, "--expr", tmp_path / "expr.parquet", "--path", "inputs", "--frames",
                      tmp_path / "png", "--size", "32", "-q"], capsys)
    assert code == 0, err
    assert len(list((tmp_path / "png").glob("*.png"))) == 6
    for args in (["animate", path, tmp_path / "other.parquet", "-o", tmp_path / "bad.tar"],
                 ["render", path, "--expr", tmp_path / "other.parquet", "--video", tmp_path / "b.mp4"]):
        code, err = _cli(args, capsys)
        lines = [ln for ln in err.splitlines() if ln.strip()]
        assert code != 0 and len(lines) == 1 and "'ava256'" in err and "'synthheads-v1'" in err, err


def test_export_cli_writes_the_rig_and_reports_the_fit(shipped, tmp_path, capsys):
    code, err = _cli(["export", shipped[0], "-o", tmp_path / "h.rig.npz", "--samples", "32", "--held-out", "2",
                      "--prune", "1e-4", "-q"], capsys)
    assert code == 0, err
    assert "PSNR mean" in err
    rig = load_rig(tmp_path / "h.rig.npz")
    assert rig.meta["fit"]["samples"] == 32 and rig.meta["fit"]["pruned_fraction"] > 0
    assert isinstance(rig, Rig) and rig.meta["source_avatar"] == "head.avt"


def test_params_round_trip_through_gaussians():
    g = torch.Generator().manual_seed(2)
    gs = Gaussians(torch.randn(7, 3, generator=g), torch.nn.functional.normalize(torch.randn(7, 4, generator=g), dim=-1),
                   torch.rand(7, 3, generator=g) * 0.01 + 1e-3, torch.rand(7, generator=g) * 0.9 + 0.05,
                   torch.rand(7, 3, generator=g))
    back = params_to_gaussians(gaussians_to_params(gs))
    for name in ("means", "quats", "scales", "opacities", "colors"):
        assert torch.allclose(getattr(back, name), getattr(gs, name), atol=1e-6), name
