"""The .avt avatar file: bit-exact round trips, self-contained animation, refusal of foreign files."""

from __future__ import annotations

import io
import json
import math
import zipfile

import pytest
import torch

from avat3r.avatar import AvatarError, load_avatar, save_avatar
from avat3r.cameras import Cameras, intrinsics_from_fov, look_at
from avat3r.model import Avat3r, Avat3rConfig

CFG = Avat3rConfig.preset("tiny", input_res=32)
META = {"expression_space": "synthheads-v1", "expression_names": [f"e{i}" for i in range(13)],
        "neutral": [0.0] * 13, "checkpoint_sha256": "ab" * 32, "position_prior": "geometric",
        "feature_prior": "none", "camera_names": ["a.png", "b.png", "c.png", "d.png"]}


@pytest.fixture(scope="module")
def encoded():
    torch.manual_seed(0)
    model = Avat3r(CFG).eval()
    R = CFG.input_res
    cams = Cameras.cat([Cameras(intrinsics_from_fov(30.0, R, R),
                                look_at(torch.tensor([0.7 * math.sin(a), 0.05, 0.7 * math.cos(a)])), R, R)
                        for a in (-1.0, -0.3, 0.3, 1.0)])
    g = torch.Generator().manual_seed(1)
    images = torch.rand(1, 4, R, R, 3, generator=g)
    pos = torch.randn(1, 4, R, R, 3, generator=g) * 0.1
    conf = torch.rand(1, 4, R, R, generator=g)
    with torch.no_grad():
        state = model.encode(images, cams, pos, conf)
    return model, state


def assert_states_equal(a, b):
    for k in ("tokens", "pos", "rgb", "conf", "valid", "K", "w2c"):
        assert torch.equal(getattr(a, k), getattr(b, k)), k
    assert (a.size, a.R, a.G, a.config_hash) == (b.size, b.R, b.G, b.config_hash)


def test_round_trip_without_decoder(tmp_path, encoded):
    _, state = encoded
    save_avatar(tmp_path / "head.avt", state, {**META, "config": CFG.to_dict()})
    av = load_avatar(tmp_path / "head.avt")
    assert_states_equal(av.state, state)
    assert av.model is None and av.config == CFG and av.expression_space == "synthheads-v1"
    assert av.meta["version"] == 1 and av.meta["checkpoint_sha256"] == "ab" * 32 and not av.meta["has_decoder"]
    assert av.meta["position_prior"] == "geometric" and av.meta["expression_names"][3] == "e3"
    assert [c["image"] for c in av.meta["cameras"]["cameras"]] == META["camera_names"]
    assert torch.allclose(av.cameras.K, state.K[0]) and torch.allclose(av.cameras.w2c, state.w2c[0])
    assert torch.equal(av.neutral, torch.zeros(13))
    with zipfile.ZipFile(tmp_path / "head.avt") as zf:
        assert sorted(zf.namelist()) == ["meta.json", "state.safetensors"]
    # the same avatar gives the same bytes (fixed zip timestamps)
    save_avatar(tmp_path / "again.avt", state, {**META, "config": CFG.to_dict()})
    assert (tmp_path / "head.avt").read_bytes() == (tmp_path / "again.avt").read_bytes()


def test_self_contained_avatar_animates_bit_exactly(tmp_path, encoded):
    model, state = encoded
    save_avatar(tmp_path / "head.avt", state, META, model=model)
    av = load_avatar(tmp_path / "head.avt")
    assert av.model is not None and not av.model.has_encoder and av.meta["has_decoder"]
    assert av.model.encoder is None  # animation never runs Eq. 4-7, so the file carries no encoder weights
    codes = torch.randn(3, 13, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ref, got = model.decode(state, codes), av.model.decode(av.state, codes)
    for k in ("means", "quats", "scales", "opacities", "colors", "valid"):
        assert torch.equal(getattr(ref, k), getattr(got, k)), k
    with pytest.raises(ValueError, match="decoder weights"):
        av.model.encode(state.rgb, av.cameras, state.pos, state.conf)


def _rewrite(src, dst, drop=(), add=None, edit_meta=None):
    """Copy a .avt, dropping/adding members or editing meta.json."""
    buf = io.BytesIO()
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(buf, "w") as zout:
        for name in zin.namelist():
            if name in drop:
                continue
            data = zin.read(name)
            if name == "meta.json" and edit_meta:
                doc = json.loads(data)
                edit_meta(doc)
                data = json.dumps(doc).encode()
            zout.writestr(name, data)
        for name, data in (add or {}).items():
            zout.writestr(name, data)
    dst.write_bytes(buf.getvalue())
    return dst


def test_foreign_and_corrupt_files_are_refused(tmp_path, encoded):
    model, state = encoded
    good = tmp_path / "good.avt"
    save_avatar(good, state, META, model=model)
    cases = [
        (tmp_path / "text.avt", "not an avatar"),
        (_rewrite(good, tmp_path / "pkl.avt", add={"state.pkl": b"\x80\x04N."}), "unexpected member 'state.pkl'"),
        (_rewrite(good, tmp_path / "nostate.avt", drop=("state.safetensors",)), "missing member state.safetensors"),
        (_rewrite(good, tmp_path / "v2.avt", edit_meta=lambda d: d.update(version=2)), "version 2"),
        (_rewrite(good, tmp_path / "fmt.avt", edit_meta=lambda d: d.update(format="x")), "does not describe"),
        (_rewrite(good, tmp_path / "nospace.avt", edit_meta=lambda d: d.pop("expression_space")),
         "lacks expression_space"),
        # a config whose sizes differ from the stored tensors
        (_rewrite(good, tmp_path / "dim.avt", edit_meta=lambda d: d["config"].update(dim=192)), "shape"),
        (_rewrite(good, tmp_path / "badstate.avt", drop=("state.safetensors",),
                  add={"state.safetensors": b"garbage"}), "state.safetensors is unreadable"),
    ]
    (tmp_path / "text.avt").write_text("hello")
    truncated = tmp_path / "truncated.avt"
    truncated.write_bytes(good.read_bytes()[:-200])
    cases.append((truncated, "not an avatar"))  # the central directory is gone
    for path, match in cases:
        with pytest.raises(AvatarError, match=match) as err:
            load_avatar(path)
        assert "\n" not in str(err.value), path.name
    with pytest.raises(AvatarError, match="no such avatar"):
        load_avatar(tmp_path / "absent.avt")


def test_a_member_that_inflates_past_its_limit_is_refused_unread(tmp_path, encoded, monkeypatch):
    import avat3r.avatar as A

    model, state = encoded
    good = tmp_path / "good.avt"
    save_avatar(good, state, META, model=model)
    # 64 MiB of spaces deflate to ~64 KB: refused from the member's header, before any of it is inflated
    bomb = tmp_path / "bomb.avt"
    with zipfile.ZipFile(good) as zin, zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as zout:
        for name in zin.namelist():
            data = zin.read(name)
            zout.writestr(name, data + b" " * (64 << 20) if name == "meta.json" else data)
    assert bomb.stat().st_size < good.stat().st_size + (1 << 20)
    with pytest.raises(AvatarError, match="meta.json inflates to more than an avatar's 16,777,216 bytes"):
        load_avatar(bomb)
    # a header that understates the size is caught by the bounded read
    monkeypatch.setitem(A.MEMBER_LIMITS, "meta.json", 100)
    real_open = zipfile.ZipFile.open

    def lying_open(self, info, *args, **kwargs):
        if isinstance(info, zipfile.ZipInfo) and info.filename == "meta.json":
            info.file_size = 50  # what a forged header would claim
        return real_open(self, info, *args, **kwargs)

    monkeypatch.setattr(zipfile.ZipFile, "open", lying_open)
    with pytest.raises(AvatarError, match="inflates to more than"):
        load_avatar(good)


def test_decoder_weights_must_match_the_config(tmp_path, encoded):
    model, state = encoded
    good = tmp_path / "good.avt"
    save_avatar(good, state, META, model=model)
    from safetensors.torch import save as st_save

    wrong = {k: v for k, v in model.decoder_state_dict().items()}
    wrong["decoder.norm.weight"] = torch.ones(7)
    bad = _rewrite(good, tmp_path / "dec.avt", drop=("decoder.safetensors",),
                   add={"decoder.safetensors": st_save({k: v.contiguous() for k, v in wrong.items()})})
    with pytest.raises(AvatarError, match="decoder.norm.weight has shape"):
        load_avatar(bad)


def test_save_refuses_inconsistent_input(tmp_path, encoded):
    model, state = encoded
    with pytest.raises(AvatarError, match="lacks expression_space"):
        save_avatar(tmp_path / "x.avt", state, {k: v for k, v in META.items() if k != "expression_space"}, model)
    with pytest.raises(AvatarError, match="needs the model or meta"):
        save_avatar(tmp_path / "x.avt", state, META)
    other = Avat3rConfig.preset("tiny", input_res=32, dim=192)
    with pytest.raises(AvatarError, match="encoded by model config"):
        save_avatar(tmp_path / "x.avt", state, {**META, "config": other.to_dict()})
    with pytest.raises(AvatarError, match="13 entries"):
        save_avatar(tmp_path / "x.avt", state, {**META, "neutral": [0.0] * 5}, model)
    assert not (tmp_path / "x.avt").exists()
