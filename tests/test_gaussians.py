"""Gaussians and the 3DGS PLY format: round trips, files from other software, errors, splat exports."""

from pathlib import Path

import numpy as np
import pytest
import torch

from avat3r.gaussians import SH_C0, Gaussians, PlyError, export_splats, read_ply, write_ply

TESTDATA = Path(__file__).resolve().parent / "data"  # files written by other software (see its README)


def random_gaussians(n=50, sh_degree=0, seed=0):
    g = torch.Generator().manual_seed(seed)
    sh = torch.randn(n, (sh_degree + 1) ** 2 - 1, 3, generator=g) * 0.1 if sh_degree else None
    return Gaussians(torch.randn(n, 3, generator=g) * 0.1,
                     torch.nn.functional.normalize(torch.randn(n, 4, generator=g), dim=-1),
                     torch.rand(n, 3, generator=g) * 0.01 + 1e-3, torch.rand(n, generator=g) * 0.98 + 0.01,
                     torch.rand(n, 3, generator=g), sh)


@pytest.mark.parametrize("sh_degree", [0, 2])
def test_ply_round_trip(tmp_path, sh_degree):
    g = random_gaussians(sh_degree=sh_degree)
    write_ply(tmp_path / "g.ply", g)
    h = read_ply(tmp_path / "g.ply")
    assert len(h) == len(g) and h.sh_degree == sh_degree
    for name in ("means", "quats", "scales", "opacities", "colors", "sh_rest"):
        a, b = getattr(g, name), getattr(h, name)
        if a is None:
            assert b is None
            continue
        assert (a - b).abs().max() < 1e-6, name
    assert "f_dc_0" in (tmp_path / "g.ply").read_bytes()[:2000].decode("latin-1")


def test_ply_round_trip_drops_invalid(tmp_path):
    g = random_gaussians(10)
    g.valid = torch.arange(10) % 3 != 0
    write_ply(tmp_path / "g.ply", g)
    h = read_ply(tmp_path / "g.ply")
    assert len(h) == int(g.valid.sum())
    assert torch.allclose(h.means, g.means[g.valid], atol=1e-6)


def test_read_foreign_sh3_file():
    g = read_ply(TESTDATA / "train-1000.ply")
    assert len(g) == 1000 and g.sh_degree == 3 and g.sh_rest.shape == (1000, 15, 3)
    assert torch.allclose(g.quats.norm(dim=-1), torch.ones(1000), atol=1e-6)
    assert ((g.opacities > 0) & (g.opacities < 1)).all() and (g.scales > 0).all()
    # the DC colour and the channel-major f_rest layout decode as the INRIA writer stored them
    from plyfile import PlyData

    v = PlyData.read(str(TESTDATA / "train-1000.ply"))["vertex"].data
    assert np.allclose(g.colors[:, 1].numpy(), v["f_dc_1"] * SH_C0 + 0.5, atol=1e-6)
    assert np.allclose(g.sh_rest[:, 0, 1].numpy(), v["f_rest_15"], atol=1e-7)  # G channel, first coefficient
    assert np.allclose(g.sh_rest[:, 14, 2].numpy(), v["f_rest_44"], atol=1e-7)
    assert np.allclose(g.means[:, 2].numpy(), v["z"])


def test_ply_missing_properties_named(tmp_path):
    from plyfile import PlyData, PlyElement

    arr = np.zeros(3, dtype=[(n, "f4") for n in ("x", "y", "z", "f_dc_0", "f_dc_1", "f_dc_2", "opacity",
                                                  "scale_0", "scale_1", "scale_2", "rot_0", "rot_1")])
    PlyData([PlyElement.describe(arr, "vertex")]).write(str(tmp_path / "bad.ply"))
    with pytest.raises(PlyError, match="missing 3DGS properties: rot_2, rot_3"):
        read_ply(tmp_path / "bad.ply")
    (tmp_path / "junk.ply").write_bytes(b"not a ply")
    with pytest.raises(PlyError, match="junk.ply"):
        read_ply(tmp_path / "junk.ply")


def test_export_splat(tmp_path):
    g = random_gaussians(40)
    export_splats(tmp_path / "g.splat", g)
    data = (tmp_path / "g.splat").read_bytes()
    assert len(data) == 32 * len(g)  # position, scale (float32 ×3 each), RGBA and quaternion (uint8 ×4 each)
    rec = np.frombuffer(data, dtype=[("pos", "<f4", 3), ("scale", "<f4", 3), ("rgba", "u1", 4),
                                     ("rot", "u1", 4)])
    # rows may be reordered (viewers want them sorted): compare as sets of positions
    order_a = np.lexsort(rec["pos"].T)
    order_b = np.lexsort(g.means.numpy().T)
    assert np.allclose(rec["pos"][order_a], g.means.numpy()[order_b], atol=1e-6)
    assert np.allclose(rec["scale"][order_a], g.scales.numpy()[order_b], rtol=1e-5)
    assert np.allclose(rec["rgba"][order_a, 3] / 255, g.opacities.numpy()[order_b], atol=1 / 255 + 1e-6)


def test_export_compressed_ply(tmp_path):
    from plyfile import PlyData

    g = random_gaussians(300, sh_degree=1)
    export_splats(tmp_path / "g.compressed.ply", g)
    ply = PlyData.read(str(tmp_path / "g.compressed.ply"))
    names = [e.name for e in ply.elements]
    assert "chunk" in names and "vertex" in names
    assert len(ply["vertex"].data) == len(g)  # every opacity is above the format's 1/255 cut
    assert len(ply["chunk"].data) == -(-len(g) // 256)
    export_splats(tmp_path / "plain.ply", g)
    assert torch.allclose(read_ply(tmp_path / "plain.ply").means, g.means, atol=1e-6)


def test_concat_and_raw_round_trip():
    a, b = random_gaussians(5, seed=1), random_gaussians(7, seed=2)
    c = Gaussians.concat([a, b])
    assert len(c) == 12 and torch.equal(c.means[5:], b.means)
    r = c.raw()
    d = Gaussians.from_raw(r["means"], r["scales"], r["opacities"], r["sh0"], r["quats"], r["shN"])
    for name in ("means", "quats", "scales", "opacities", "colors"):
        assert torch.allclose(getattr(c, name), getattr(d, name), atol=1e-6), name
    with pytest.raises(ValueError, match="quats"):
        Gaussians(a.means, a.quats[:, :3], a.scales, a.opacities, a.colors)
