"""The gan3d lifting backend (`lift photo --backend gan3d --gan3d model.pt`) with stand-in TorchScript modules:
a sphere ray-cast analytically from the cameras avat3r passes (so the views can be checked against them), and
modules that break the interface."""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from avat3r.cameras import read_cams_json
from avat3r.cli.main import app
from avat3r.gan3d import DEFAULT_FOV_DEGREES, ENV_MODEL, VIEW_YAW_PITCH, gan3d_cameras
from avat3r.imageio import read_image, write_png

SIZE = 64
RADIUS = 0.1  # metres: the stand-in head
TINT = (1.0, 0.8, 0.6)  # the photo's colour; the stand-in multiplies its shading by the photo's mean


def run_cli(args):
    res = CliRunner().invoke(app, [str(a) for a in args])
    return res.exit_code, res.stdout, res.stderr


def render_sphere(image: torch.Tensor, K: torch.Tensor, w2c: torch.Tensor, width: int, height: int,
                  radius: float) -> torch.Tensor:
    """(V, 3, height, width): a sphere at the origin shaded by its normal, (n + 1) / 2, times the photo's mean
    colour, on black."""
    tint = image.mean(dim=(2, 3)).reshape(1, 3, 1, 1)
    v, u = torch.meshgrid(torch.arange(height, dtype=torch.float32) + 0.5,
                          torch.arange(width, dtype=torch.float32) + 0.5, indexing="ij")
    n_views = K.shape[0]
    x = (u[None] - K[:, 0, 2, None, None]) / K[:, 0, 0, None, None]
    y = (v[None] - K[:, 1, 2, None, None]) / K[:, 1, 1, None, None]
    d_cam = torch.stack([x, y, torch.ones_like(x)], dim=-1).reshape(n_views, height * width, 3)
    R, t = w2c[:, :3, :3], w2c[:, :3, 3]
    d = d_cam @ R  # world directions: Rᵀ d_cam, as rows
    d = d / (d * d).sum(-1, keepdim=True).sqrt()
    o = -(R.transpose(1, 2) @ t[:, :, None])[:, None, :, 0]  # camera centres (V, 1, 3)
    b = (o * d).sum(-1)
    disc = b * b - ((o * o).sum(-1) - radius * radius)
    hit = (disc > 0).float()[..., None]
    s = -b - disc.clamp(min=0.0).sqrt()
    normal = (o + s[..., None] * d) / radius
    rgb = (normal + 1.0) / 2.0 * hit
    return rgb.reshape(n_views, height, width, 3).permute(0, 3, 1, 2) * tint


class SphereGan(torch.nn.Module):
    """The interface a scripted inversion takes: forward(image, K, w2c, width, height)."""

    def __init__(self, radius: float = RADIUS):
        super().__init__()
        self.radius = radius

    def forward(self, image: torch.Tensor, K: torch.Tensor, w2c: torch.Tensor, width: int, height: int
                ) -> torch.Tensor:
        return render_sphere(image, K, w2c, width, height, self.radius)


class TracedSphereGan(torch.nn.Module):
    """A traced module takes forward(image, K, w2c) and renders at the size it was traced at."""

    def __init__(self, size: int):
        super().__init__()
        self.size = size

    def forward(self, image, K, w2c):
        return render_sphere(image, K, w2c, self.size, self.size, RADIUS)


class WrongShape(torch.nn.Module):
    def forward(self, image: torch.Tensor, K: torch.Tensor, w2c: torch.Tensor, width: int, height: int
                ) -> torch.Tensor:
        return torch.zeros(K.shape[0], 3, height + 1, width)


class TooFewViews(torch.nn.Module):
    def forward(self, image: torch.Tensor, K: torch.Tensor, w2c: torch.Tensor, width: int, height: int
                ) -> torch.Tensor:
        return torch.zeros(1, 3, height, width)


class NaNView(torch.nn.Module):
    def forward(self, image: torch.Tensor, K: torch.Tensor, w2c: torch.Tensor, width: int, height: int
                ) -> torch.Tensor:
        out = torch.zeros(K.shape[0], 3, height, width)
        out[2, 0, 5, 5] = float("nan")
        return out


class SignedRange(torch.nn.Module):
    """A GAN's raw [-1, 1] output, not mapped to [0, 1]."""

    def forward(self, image: torch.Tensor, K: torch.Tensor, w2c: torch.Tensor, width: int, height: int
                ) -> torch.Tensor:
        return torch.linspace(-1.0, 1.0, K.shape[0] * 3 * height * width).reshape(K.shape[0], 3, height, width)


class WrongSignature(torch.nn.Module):
    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return image


class Fails(torch.nn.Module):
    def forward(self, image: torch.Tensor, K: torch.Tensor, w2c: torch.Tensor, width: int, height: int
                ) -> torch.Tensor:
        if image.shape[2] > 0:
            raise RuntimeError("inversion diverged")
        return image


def script(module: torch.nn.Module, path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit.script's deprecation notice
        torch.jit.script(module).save(str(path))
    return path


@pytest.fixture
def photo(tmp_path):
    path = tmp_path / "me.png"
    write_png(path, torch.tensor(TINT).expand(40, 32, 3))
    return path


@pytest.fixture(scope="module")
def sphere_model(tmp_path_factory):
    return script(SphereGan(), tmp_path_factory.mktemp("gan") / "sphere.pt")


def expected_centre_colour(centre: torch.Tensor) -> np.ndarray:
    """The stand-in's colour at the image centre: the sphere's normal there points at the camera."""
    n = torch.nn.functional.normalize(centre.double(), dim=0)
    return ((n + 1) / 2 * torch.tensor(TINT, dtype=torch.float64)).numpy()


def check_views(out, size: int = SIZE, fov: float = DEFAULT_FOV_DEGREES):
    names, cams = read_cams_json(out / "cams.json")
    assert names == [f"view_{i}.png" for i in range(4)]
    want = gan3d_cameras(size, fov)
    assert torch.equal(cams.K, want.K) and torch.equal(cams.w2c, want.w2c)  # exactly the cameras rendered
    assert cams.image_size == (size, size)
    # the cameras: frontal, 35° to the subject's left (+x) and right, 20° above, 1 m from the head centre
    c = cams.centers
    assert torch.allclose(c.norm(dim=-1), torch.ones(4), atol=1e-5)
    for centre, (yaw, pitch) in zip(c, VIEW_YAW_PITCH):
        assert math.degrees(math.atan2(centre[0], centre[2])) == pytest.approx(yaw, abs=1e-3)
        assert math.degrees(math.asin(centre[1])) == pytest.approx(pitch, abs=1e-3)
    views = [read_image(out / n).astype(np.float64) / 255 for n in names]
    f = float(cams.K[0, 0, 0])
    disc_px = math.pi * (f * RADIUS / math.sqrt(1 - RADIUS ** 2)) ** 2
    for view, centre in zip(views, c):
        assert view.shape == (size, size, 3)
        # the views differ as the cameras do: the colour at the centre is the normal facing that camera
        mid = view[size // 2 - 1:size // 2 + 1, size // 2 - 1:size // 2 + 1].mean(axis=(0, 1))
        assert np.abs(mid - expected_centre_colour(centre)).max() < 0.02
        # …and the sphere has the size the distance and field of view give it
        assert (view.sum(-1) > 0).sum() == pytest.approx(disc_px, rel=0.08)
        assert view[0, 0].max() == 0  # black background
    assert all(np.abs(views[i] - views[j]).mean() > 0.005 for i in range(4) for j in range(i))
    assert np.allclose(views[1][:, ::-1, [1, 2]], views[2][:, :, [1, 2]], atol=2 / 255)  # left/right mirror
    info = json.loads((out / "lift.json").read_text())
    assert info["backend"] == "gan3d" and info["size"] == size and info["fov_degrees"] == fov
    assert info["yaw_pitch_degrees"] == [list(v) for v in VIEW_YAW_PITCH]
    return views


def test_gan3d_cameras_are_head_centred_and_valid():
    cams = gan3d_cameras(128, 20.0, 1.0)
    cams.validate()
    assert len(cams) == 4 and cams.image_size == (128, 128)
    assert torch.allclose(cams.K[:, 0, 2], torch.full((4,), 64.0)) and torch.allclose(cams.K[:, 1, 2], torch.full((4,), 64.0))
    assert float(cams.K[0, 0, 0]) == pytest.approx(64 / math.tan(math.radians(10)))
    # every camera looks at the head centre: it projects to the image centre
    from avat3r.cameras import project

    uv, z = project(cams, torch.zeros(4, 1, 3))
    assert torch.allclose(uv, torch.full_like(uv, 64.0), atol=1e-4) and torch.allclose(z, torch.ones_like(z), atol=1e-5)


def test_lift_gan3d_writes_the_views_the_module_renders_at_the_chosen_cameras(photo, sphere_model, tmp_path):
    out = tmp_path / "views"
    code, _, err = run_cli(["lift", photo, "--backend", "gan3d", "--gan3d", sphere_model, "-o", out,
                            "--size", SIZE, "--device", "cpu"])
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir()) == ["cams.json", "lift.json"] + [f"view_{i}.png" for i in range(4)]
    check_views(out)
    info = json.loads((out / "lift.json").read_text())
    assert info["source"] == "me.png" and info["model"] == "sphere.pt" and info["distance_m"] == 1.0


def test_lift_gan3d_from_the_environment_with_another_fov(photo, sphere_model, tmp_path, monkeypatch):
    monkeypatch.setenv(ENV_MODEL, str(sphere_model))
    out = tmp_path / "views"
    code, _, err = run_cli(["lift", photo, "--backend", "gan3d", "-o", out, "--size", 48, "--fov", 15])
    assert code == 0, err
    check_views(out, size=48, fov=15.0)


def test_lift_gan3d_is_the_default_for_a_photo_when_a_model_is_given(photo, sphere_model, tmp_path):
    code, _, err = run_cli(["lift", photo, "--gan3d", sphere_model, "-o", tmp_path / "views", "--size", SIZE])
    assert code == 0, err
    assert json.loads((tmp_path / "views" / "lift.json").read_text())["backend"] == "gan3d"


def test_lift_gan3d_takes_a_traced_module(photo, tmp_path):
    cams = gan3d_cameras(SIZE)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings
        traced = torch.jit.trace(TracedSphereGan(SIZE), (torch.rand(1, 3, 40, 32), cams.K, cams.w2c))
    traced.save(str(tmp_path / "traced.pt"))
    code, _, err = run_cli(["lift", photo, "--backend", "gan3d", "--gan3d", tmp_path / "traced.pt",
                            "-o", tmp_path / "views", "--size", SIZE])
    assert code == 0, err
    check_views(tmp_path / "views")


def test_lift_then_reconstruct_with_the_shipped_model(photo, sphere_model, tmp_path):
    out = tmp_path / "views"
    code, _, err = run_cli(["lift", photo, "--gan3d", sphere_model, "-o", out, "--size", 128])
    assert code == 0, err
    code, _, err = run_cli(["reconstruct", out, "--cams", out / "cams.json", "-o", tmp_path / "head.avt",
                            "--checkpoint", "synthheads-tiny", "--device", "cpu"])
    assert code == 0, err
    assert (tmp_path / "head.avt").stat().st_size > 0


def one_line_error(code, err, *fragments):
    assert code != 0
    assert err.startswith("avat3r: error: ") and err.count("\n") == 1, err
    for fragment in fragments:
        assert str(fragment) in err, err


BAD_MODULES = {
    "wrong-shape": (WrongShape, "returned shape (4, 3, 65, 64), expected (4, 3, 64, 64)"),
    "too-few-views": (TooFewViews, "returned shape (1, 3, 64, 64)"),
    "nan": (NaNView, "non-finite pixels (NaN or inf) in view 2"),
    "signed-range": (SignedRange, "pixels from -1 to 1, expected [0, 1]"),
    "wrong-signature": (WrongSignature, "forward takes 1 inputs (image)"),
    "raises": (Fails, "the 3D-GAN module failed (RuntimeError: inversion diverged)"),
}


@pytest.mark.parametrize("case", sorted(BAD_MODULES))
def test_lift_gan3d_refuses_a_module_that_breaks_the_interface(case, photo, tmp_path):
    cls, message = BAD_MODULES[case]
    model = script(cls(), tmp_path / f"{case}.pt")
    code, _, err = run_cli(["lift", photo, "--gan3d", model, "-o", tmp_path / "views", "--size", SIZE])
    one_line_error(code, err, model, message, "(--gan3d)")
    assert not (tmp_path / "views").exists()


def test_lift_gan3d_refuses_files_that_are_not_torchscript(photo, tmp_path):
    torch.save(SphereGan().state_dict(), tmp_path / "weights.pt")  # a pickle: never loaded as one
    (tmp_path / "notes.pt").write_text("not a model\n")
    for bad in ("weights.pt", "notes.pt"):
        code, _, err = run_cli(["lift", photo, "--gan3d", tmp_path / bad, "-o", tmp_path / "views"])
        one_line_error(code, err, tmp_path / bad, "not a TorchScript module", "torch.jit.script")
        assert not (tmp_path / "views").exists()


def test_lift_gan3d_without_a_model_says_how_to_supply_one(photo, tmp_path, monkeypatch):
    monkeypatch.delenv(ENV_MODEL, raising=False)
    code, _, err = run_cli(["lift", photo, "--backend", "gan3d", "-o", tmp_path / "views"])
    one_line_error(code, err, "TorchScript", f"${ENV_MODEL}", "(--gan3d)")
    code, _, err = run_cli(["lift", photo, "--gan3d", tmp_path / "missing.pt", "-o", tmp_path / "views"])
    one_line_error(code, err, tmp_path / "missing.pt", "does not exist")
    monkeypatch.setenv(ENV_MODEL, str(tmp_path / "gone.pt"))
    code, _, err = run_cli(["lift", photo, "--backend", "gan3d", "-o", tmp_path / "views"])
    one_line_error(code, err, tmp_path / "gone.pt", "does not exist")
    assert not (tmp_path / "views").exists()


def test_lift_gan3d_refuses_bad_options(photo, sphere_model, tmp_path):
    code, _, err = run_cli(["lift", photo, "--gan3d", sphere_model, "-o", tmp_path / "v", "--size", 4])
    one_line_error(code, err, "view size", "(--size)")
    code, _, err = run_cli(["lift", photo, "--gan3d", sphere_model, "-o", tmp_path / "v", "--fov", 0])
    one_line_error(code, err, "field of view", "(--fov)")
    (tmp_path / "photos").mkdir()
    code, _, err = run_cli(["lift", tmp_path / "photos", "--backend", "gan3d", "--gan3d", sphere_model,
                            "-o", tmp_path / "v"])
    one_line_error(code, err, "lifts one image")
    code, _, err = run_cli(["lift", tmp_path / "photos", "--gan3d", sphere_model, "-o", tmp_path / "v"])
    one_line_error(code, err, "gan3d model is for the gan3d backend", "(--gan3d)")
    assert not (tmp_path / "v").exists()


def test_lift_lists_gan3d():
    code, out, _ = run_cli(["lift", "x", "-o", "y", "--list"])
    assert code == 0 and "gan3d" in out.split()
