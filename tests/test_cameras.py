"""Cameras: cams.json round trip and validation, rays, projection, look_at, viewpoint sampling."""

import json
import math

import pytest
import torch

from avat3r.cameras import (
    CameraError,
    Cameras,
    intrinsics_from_fov,
    is_back_only,
    k_farthest_viewpoints,
    look_at,
    orbit_path,
    plucker,
    project,
    rays,
    read_cams_json,
    unproject,
    write_cams_json,
)


def rig(n=5, size=(32, 24)):
    g = torch.Generator().manual_seed(1)
    eye = torch.nn.functional.normalize(torch.randn(n, 3, generator=g), dim=-1)
    eye[:, 2] = eye[:, 2].abs() + 0.3  # in front of the face
    eye = torch.nn.functional.normalize(eye, dim=-1) * (0.8 + 0.4 * torch.rand(n, 1, generator=g))
    K = torch.stack([intrinsics_from_fov(10 + 5 * i, *size) for i in range(n)])
    return Cameras(K, look_at(eye), *size)


def test_cams_json_round_trip_bit_exact(tmp_path):
    cams = rig()
    names = [f"v{i}.png" for i in range(len(cams))]
    write_cams_json(tmp_path / "cams.json", cams, names)
    names2, cams2 = read_cams_json(tmp_path / "cams.json")
    assert names2 == names
    assert torch.equal(cams2.K, cams.K) and torch.equal(cams2.w2c, cams.w2c)
    assert torch.equal(cams2.width, cams.width) and torch.equal(cams2.height, cams.height)
    # writing the read cameras again gives the same bytes
    write_cams_json(tmp_path / "again.json", cams2, names2)
    assert (tmp_path / "again.json").read_bytes() == (tmp_path / "cams.json").read_bytes()


@pytest.mark.parametrize("edit,message", [
    (lambda c: c["K"][0].__setitem__(0, float("nan")), "non-finite"),
    (lambda c: c["w2c"][0].__setitem__(0, -c["w2c"][0][0]) or [r.__setitem__(0, -r[0]) for r in c["w2c"][:3]],
     "proper rotation"),
    (lambda c: c["w2c"][0].__setitem__(1, c["w2c"][0][1] + 0.5), "proper rotation"),
    (lambda c: c["K"][1].__setitem__(1, 0.0), "focal"),
    (lambda c: c.__setitem__("width", 0), "image size"),
    (lambda c: c.pop("K"), "missing"),
])
def test_cams_json_validation_names_camera(tmp_path, edit, message):
    cams = rig(3)
    write_cams_json(tmp_path / "cams.json", cams, ["a.png", "b.png", "c.png"])
    doc = json.loads((tmp_path / "cams.json").read_text())
    edit(doc["cameras"][1])
    (tmp_path / "bad.json").write_text(json.dumps(doc))
    with pytest.raises(CameraError, match=message) as err:
        read_cams_json(tmp_path / "bad.json")
    assert "b.png" in str(err.value)


def test_improper_rotation_rejected():
    cams = rig(2)
    w2c = cams.w2c.clone()
    w2c[1, :3, 0] *= -1  # a reflection: orthonormal but det = −1
    with pytest.raises(CameraError, match="camera right: .*proper rotation"):
        Cameras(cams.K, w2c, 32, 24).validate(["left", "right"])


def test_plucker_rays():
    cams = rig(3)
    p = plucker(cams)
    moment, d = p[..., :3], p[..., 3:]
    assert torch.allclose(d.norm(dim=-1), torch.ones(()), atol=1e-6)
    assert (moment * d).sum(-1).abs().max() < 1e-6
    o, d2 = rays(cams)
    assert torch.allclose(torch.cross(o, d2, dim=-1), moment)


def test_unproject_project_identity():
    cams = rig(3)
    depth = 0.5 + torch.rand(3, 24, 32)
    pts = unproject(cams, depth)
    uv, z = project(cams, pts.reshape(3, -1, 3))
    grid = torch.stack(torch.meshgrid(torch.arange(24) + 0.5, torch.arange(32) + 0.5, indexing="ij")[::-1], -1)
    assert torch.allclose(uv, grid.reshape(1, -1, 2).expand(3, -1, -1), atol=1e-3)
    assert torch.allclose(z, depth.reshape(3, -1), atol=1e-5)


def test_look_at_puts_target_on_principal_point():
    eye = torch.tensor([[0.3, 0.2, 0.9], [0.0, 0.0, 1.0], [-1.0, 0.5, -0.2]])
    target = torch.tensor([0.05, -0.02, 0.01])
    K = intrinsics_from_fov(12, 64, 48).expand(3, 3, 3)
    cams = Cameras(K, look_at(eye, target), 64, 48)
    uv, z = project(cams, target.expand(3, 1, 3))
    assert torch.allclose(uv[:, 0], torch.tensor([32.0, 24.0]).expand(3, 2), atol=1e-4)
    assert torch.allclose(z[:, 0], (eye - target).norm(dim=-1), atol=1e-6)
    R = cams.w2c[:, :3, :3]
    assert torch.allclose(R @ R.transpose(1, 2), torch.eye(3).expand(3, 3, 3), atol=1e-6)
    assert torch.allclose(torch.linalg.det(R), torch.ones(3), atol=1e-6)
    # image "up" (−y) points along world +y for a level camera
    assert (cams.w2c[1, 1, :3] @ torch.tensor([0.0, 1.0, 0.0])) < -0.99


def _mean_pairwise_angle(cams, idx):
    d = torch.nn.functional.normalize(cams.centers[idx], dim=-1)
    cos = (d @ d.T).clamp(-1, 1)
    iu = torch.triu_indices(len(idx), len(idx), 1)
    return float(torch.rad2deg(torch.acos(cos[iu[0], iu[1]])).mean())


def test_k_farthest_viewpoints_spreads_and_skips_back():
    cams = orbit_path(36, elevation_degrees=10.0)
    back = is_back_only(cams)
    assert back.any()
    g = torch.Generator().manual_seed(0)
    chosen, random = [], []
    allowed = (~back).nonzero()[:, 0]
    for _ in range(30):
        idx = k_farthest_viewpoints(cams, 4, generator=g)
        assert len(set(idx)) == 4 and not back[idx].any()
        chosen.append(_mean_pairwise_angle(cams, idx))
        random.append(_mean_pairwise_angle(cams, allowed[torch.randperm(len(allowed), generator=g)[:4]]))
    assert sum(chosen) / 30 > sum(random) / 30 + 3  # seeded: ≈ 82° vs ≈ 75°
    with pytest.raises(ValueError, match="usable"):
        k_farthest_viewpoints(cams[0], 4)


def test_resize_and_crop_keep_rays():
    cams = rig(1, (40, 40))
    small = cams.resized(20, 20)
    assert small.image_size == (20, 20)
    assert math.isclose(float(small.K[0, 0, 0]), float(cams.K[0, 0, 0]) / 2, rel_tol=1e-6)
    crop = cams.cropped(10, 5, 16, 16)
    _, d_full = rays(cams)
    _, d_crop = rays(crop)
    assert torch.allclose(d_crop[0], d_full[0, 5:21, 10:26], atol=1e-6)


def test_atomic_writes_follow_the_umask(tmp_path):
    import os

    from avat3r.fileio import atomic_write_bytes

    old = os.umask(0o022)
    try:
        atomic_write_bytes(tmp_path / "a.bin", b"x")
        os.umask(0o077)
        atomic_write_bytes(tmp_path / "b.bin", b"y")
    finally:
        os.umask(old)
    assert (tmp_path / "a.bin").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "b.bin").stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "a.bin").read_bytes() == b"x" and not list(tmp_path.glob(".*.tmp"))
