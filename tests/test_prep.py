"""`avat3r prep synth` / `prep images`: byte-identical output, person splits, user-photo crops and masks."""

from __future__ import annotations

import json
import math
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from test_data import FAKE, tree_hash
from typer.testing import CliRunner

from avat3r.cameras import Cameras, intrinsics, look_at, project, write_cams_json
from avat3r.cli.main import app

runner = CliRunner()


def prep_synth_cli(out: Path, *extra: str):
    return runner.invoke(app, ["prep", "synth", "--source", FAKE, "--persons", "3", "--frames", "2", "--cameras",
                               "8", "--res", "32", "--seed", "5", "--rig", "shared", "-o", str(out), *extra])


def test_prep_synth_is_byte_identical_for_equal_arguments(tmp_path):
    r1 = prep_synth_cli(tmp_path / "a", "--shard-mb", "0.03")
    assert r1.exit_code == 0, r1.output
    assert "persons train/val/test = 1/1/1" in r1.output
    a = tree_hash(tmp_path / "a")
    assert len(a) > 3  # several size-bounded shards + manifest
    assert all((tmp_path / "a" / name).stat().st_size <= 30_000 + 10240 for name in a if name.endswith(".tar"))
    r2 = prep_synth_cli(tmp_path / "b", "--shard-mb", "0.03")
    assert r2.exit_code == 0 and tree_hash(tmp_path / "b") == a
    r3 = prep_synth_cli(tmp_path / "a", "--shard-mb", "0.03")  # rerun into the same folder: same bytes
    assert r3.exit_code == 0 and tree_hash(tmp_path / "a") == a
    r4 = runner.invoke(app, ["prep", "synth", "--source", FAKE, "--persons", "3", "--frames", "2", "--cameras",
                             "8", "--res", "32", "--seed", "6", "--rig", "shared", "-o", str(tmp_path / "c"),
                             "--shard-mb", "0.03"])
    assert r4.exit_code == 0 and tree_hash(tmp_path / "c")["shard-000000.tar"] != a["shard-000000.tar"]


@pytest.mark.slow  # two spawned workers each import torch: ~25 s on 2 busy cores
def test_prep_synth_bytes_do_not_depend_on_the_worker_count(tmp_path):
    r1 = prep_synth_cli(tmp_path / "a", "--shard-mb", "0.03")
    r2 = prep_synth_cli(tmp_path / "b", "--shard-mb", "0.03", "--workers", "2")
    assert r1.exit_code == 0 and r2.exit_code == 0, r2.output
    a = tree_hash(tmp_path / "a")
    assert len(a) > 3 and tree_hash(tmp_path / "b") == a


def test_prep_synth_rerun_keeps_the_old_set_until_the_new_one_is_complete(tmp_path):
    from avat3r.data.prep import prep_synth
    from avat3r.fileio import OutputLock

    out = tmp_path / "set"
    assert prep_synth_cli(out, "--shard-mb", "0.03").exit_code == 0
    (out / "notes.txt").write_text("mine")  # not part of the dataset: survives reruns
    old = tree_hash(out)

    def interrupt_after_two_frames(n, seen=[]):
        seen.append(n)
        if len(seen) == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):  # a rerun with other arguments, stopped half-way
        prep_synth(out, 3, 2, 8, 32, seed=6, source=FAKE, maxsize=30_000, progress=interrupt_after_two_frames)
    assert tree_hash(out) == old and sorted(p.name for p in tmp_path.iterdir()) == ["set"]

    # a killed run's debris (its build folder, its lock file) is no obstacle: the next run clears it
    (tmp_path / ".set.partial").mkdir()
    (tmp_path / ".set.partial" / "shard-000009.tar").write_bytes(b"half")
    (tmp_path / ".set.lock").touch()
    r = prep_synth_cli(out, "--seed", "6")  # fewer, larger shards than before: one per person
    assert r.exit_code == 0, r.output
    new = tree_hash(out)
    assert sorted(new) == ["manifest.parquet", "notes.txt", *(f"shard-{i:06d}.tar" for i in range(3))] and new != old
    assert sorted(p.name for p in tmp_path.iterdir()) == ["set"]

    # a second run into a folder that one is writing is refused with one line, the folder untouched
    with OutputLock(out):
        r = prep_synth_cli(out)
    assert r.exit_code != 0 and tree_hash(out) == new
    assert r.output.strip().splitlines()[-1].startswith("avat3r: error: ")
    assert "is being written by another run" in r.output

    # a folder of other things is not replaced
    other = tmp_path / "other"
    other.mkdir()
    (other / "thesis.tex").write_text("x")
    r = prep_synth_cli(other)
    assert r.exit_code != 0 and "is not empty and holds no dataset" in r.output
    assert sorted(p.name for p in other.iterdir()) == ["thesis.tex"]


def test_prep_synth_sizes_are_bounded(tmp_path):
    for args, pattern in ((["--res", "100000"], "res must be between 8 and 4,096, got 100,000"),
                          (["--cameras", "5000"], "cameras must be between 1 and 1,024"),
                          (["--persons", "9000", "--frames", "9000"], "more than one set may hold")):
        r = prep_synth_cli(tmp_path / "x", *args)
        lines = r.output.strip().splitlines()
        assert r.exit_code != 0 and len(lines) == 1 and lines[0].startswith("avat3r: error: ")
        assert pattern in r.output, r.output
    assert not (tmp_path / "x").exists()
    r = runner.invoke(app, ["prep", "synth-photos", "--person", "0", "--res", "100000", "-o", str(tmp_path / "p")])
    assert r.exit_code != 0 and r.output.strip() == "avat3r: error: --res must be at most 4096, got 100,000"


def test_prep_synth_segments_splits_preview_and_errors(tmp_path):
    from avat3r.data.manifest import read_manifest

    r = prep_synth_cli(tmp_path / "s", "--segments", "EXP_b", "--val-persons", "0", "--test-persons", "2",
                       "--preview", str(tmp_path / "sheet.png"), "--no-depth")
    assert r.exit_code == 0, r.output
    m = read_manifest(tmp_path / "s")
    assert set(m["segment"]) == {"EXP_b"} and len(m) == 3 * 2 * 8
    assert {p: set(m["split"][m["person"] == p]) for p in m.persons()} == {
        "id000": {"train"}, "id001": {"test"}, "id002": {"test"}}
    assert "depth" not in m.read(0)
    sheet = cv2.imread(str(tmp_path / "sheet.png"))
    assert sheet.shape == (32, 3 * 32, 3)
    bad = prep_synth_cli(tmp_path / "x", "--segments", "EXP_nope")
    assert bad.exit_code != 0 and bad.output.strip().splitlines()[-1].startswith("avat3r: error: unknown segment")
    bad = prep_synth_cli(tmp_path / "x", "--val-persons", "2", "--test-persons", "1")
    assert bad.exit_code != 0 and "none to train" in bad.output


def test_prep_synth_with_synthheads(tmp_path):
    """The real generator, tiny: what is stored is exactly what render_sample returns."""
    sh = pytest.importorskip("avat3r.data.synthheads")
    from avat3r.data.manifest import read_manifest
    from avat3r.data.prep import prep_synth

    seg = sh.SEGMENTS[0]
    prep_synth(tmp_path, persons=1, frames=1, cameras=2, res=16, seed=0, segments=[seg])
    m = read_manifest(tmp_path)
    assert len(m) == 2 and m.expression_space == sh.EXPRESSION_SPACE and m.expr_dim == len(sh.EXPRESSION_NAMES)
    want = sh.render_sample(0, 0, seg, 0, 1, 1, 2, 16)
    got = m.read(1)
    assert np.array_equal(got["rgb"], want["rgb"]) and np.array_equal(got["expr"], want["expr"])
    assert np.array_equal(got["depth"], want["depth"])

    # --supersample: the stored images are the area-sampled renders; the fake source cannot, and says so
    r = runner.invoke(app, ["prep", "synth", "--supersample", "2", "--persons", "1", "--frames", "1", "--cameras",
                            "2", "--res", "16", "--segments", seg, "--rig", "shared", "--val-persons", "0",
                            "--test-persons", "0", "-o", str(tmp_path / "ss")])
    assert r.exit_code == 0, r.output
    want = sh.render_sample(0, 0, seg, 0, 1, 1, 2, 16, supersample=2)
    assert np.array_equal(read_manifest(tmp_path / "ss").read(1)["rgb"], want["rgb"])
    assert not np.array_equal(want["rgb"], got["rgb"])
    bad = prep_synth_cli(tmp_path / "x", "--supersample", "2")
    assert bad.exit_code != 0 and bad.output.strip().splitlines()[-1] == (
        f"avat3r: error: the source {FAKE} cannot supersample its renders (--supersample)"), bad.output


# -- prep images -----------------------------------------------------------------------------------
W, H = 160, 120


def photo_camera(yaw_degrees: float = 0.0, aim_offset: float = 0.0, cx: float = 70.0, cy: float = 52.0) -> Cameras:
    a = math.radians(yaw_degrees)
    eye = torch.tensor([[0.9 * math.sin(a), 0.05, 0.9 * math.cos(a)]])
    w2c = look_at(eye, torch.tensor([aim_offset, 0.0, 0.0]))
    return Cameras(intrinsics(300.0, 300.0, cx, cy)[None], w2c, W, H)


def disk_image(cam: Cameras, point, radius_px: float, color=(250, 200, 40), background=None) -> np.ndarray:
    uv, _ = project(cam, torch.tensor([[point]], dtype=torch.float32))
    yy, xx = np.mgrid[0:H, 0:W] + 0.5
    inside = (xx - float(uv[0, 0, 0])) ** 2 + (yy - float(uv[0, 0, 1])) ** 2 < radius_px ** 2
    img = np.zeros((H, W, 3), np.uint8) if background is None else background.copy()
    img[inside] = color
    return img


def write_photos(folder: Path, images: dict[str, np.ndarray], cams: list[Cameras]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, img in images.items():
        cv2.imwrite(str(folder / name), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    write_cams_json(folder / "cams.json", Cameras.cat(cams), list(images))
    return folder / "cams.json"


def test_crop_and_resize_keep_projected_points_on_their_content(tmp_path):
    from avat3r.data.images import load_user_images

    point = (0.05, 0.03, 0.04)
    cams = [photo_camera(0.0), photo_camera(30.0, cx=30.0, cy=20.0)]  # the second crop runs off the photo
    images = {f"v{i}.png": disk_image(c, point, 6.0) for i, c in enumerate(cams)}
    cams_json = write_photos(tmp_path / "photos", images, cams)
    masks = tmp_path / "masks"
    masks.mkdir()
    for name in images:
        cv2.imwrite(str(masks / name), np.full((H, W), 255, np.uint8))
    rgb, m, new_cams, names = load_user_images(tmp_path / "photos", cams_json, res=48, masks=masks)
    assert rgb.shape == (2, 48, 48, 3) and rgb.dtype == np.float32 and m.shape == (2, 48, 48)
    assert names == ["v0.png", "v1.png"] and new_cams.image_size == (48, 48)
    uv, _ = project(new_cams, torch.tensor([point], dtype=torch.float32).expand(2, 1, 3))
    centre, _ = project(new_cams, torch.zeros(2, 1, 3))
    yy, xx = np.mgrid[0:48, 0:48] + 0.5
    for v in range(2):
        weight = rgb[v, ..., 0]
        got = np.array([(weight * xx).sum(), (weight * yy).sum()]) / weight.sum()
        assert np.abs(got - uv[v, 0].numpy()).max() < 0.25, (v, got, uv[v, 0])
        # the head centre sits in the middle of the square crop (up to the crop's whole-pixel rounding)
        assert np.abs(centre[v, 0].numpy() - 24).max() < 0.5
    assert m[1].min() == 0  # padding outside the photo counts as background


def test_grabcut_masks_when_none_given_and_written_samples(tmp_path):
    from avat3r.data.images import head_crop_box, prep_images
    from avat3r.data.manifest import read_manifest

    rng = np.random.default_rng(0)
    cams = [photo_camera(0.0), photo_camera(-20.0)]
    bg = (rng.integers(0, 60, (H, W, 3)) + np.array([0, 90, 160])).astype(np.uint8)  # noisy blue wall
    images = {}
    for name, cam in zip(("front", "left"), cams):
        img = disk_image(cam, (0, 0, 0), 30.0, background=bg)  # the head …
        uv, _ = project(cam, torch.zeros(1, 1, 3))
        u, v = float(uv[0, 0, 0]), float(uv[0, 0, 1])
        img[int(v):, int(u) - 12:int(u) + 12] = (250, 200, 40)  # … and its neck, leaving the photo at the bottom
        images[f"{name}.png"] = img
    cams_json = write_photos(tmp_path / "photos", images, cams)
    prepared = prep_images(tmp_path / "photos", cams_json, tmp_path / "out", res=64)
    assert prepared.mask_source == "grabcut" and prepared.warnings == []
    yy, xx = np.mgrid[0:64, 0:64] + 0.5
    for v in range(2):
        _, _, side = head_crop_box(cams[v])
        s = 64 / side  # the head centre projects to the crop's centre (32, 32)
        truth = ((xx - 32) ** 2 + (yy - 32) ** 2 < (30 * s) ** 2) | ((yy > 32) & (np.abs(xx - 32) < 12 * s))
        fg = prepared.masks[v] > 0.5
        iou = (fg & truth).sum() / (fg | truth).sum()
        assert iou > 0.9, iou
        assert prepared.rgb[v][~fg].max() == 0  # background is black
    m = read_manifest(tmp_path / "out")
    assert list(m["key"]) == ["user/input/000000/front", "user/input/000000/left"]
    assert m.source == "images" and set(m["split"]) == {"test"}
    s = m.read(1)
    assert np.array_equal(s["rgb"], (prepared.rgb[1] * 255 + 0.5).astype(np.uint8))
    assert np.allclose(s["camera"]["K"], prepared.cameras.K[1].numpy()) and s["camera"]["width"] == 64


def test_prep_images_errors_and_warnings(tmp_path):
    cams = [photo_camera(0.0), photo_camera(10.0)]
    img = np.zeros((H, W, 3), np.uint8)
    cams_json = write_photos(tmp_path / "p", {"a.png": img, "b.png": img}, cams)
    cv2.imwrite(str(tmp_path / "p" / "extra.jpg"), img)
    r = runner.invoke(app, ["prep", "images", str(tmp_path / "p"), "--cams", str(cams_json), "-o", str(tmp_path / "o")])
    assert r.exit_code != 0
    assert r.output.strip().splitlines()[-1] == "avat3r: error: extra.jpg: no camera for this image in cams.json"
    (tmp_path / "p" / "extra.jpg").unlink()
    cv2.imwrite(str(tmp_path / "p" / "b.png"), np.zeros((H + 2, W, 3), np.uint8))
    r = runner.invoke(app, ["prep", "images", str(tmp_path / "p"), "--cams", str(cams_json), "-o", str(tmp_path / "o")])
    assert r.exit_code != 0 and "b.png: image is 160x122 but its camera says 160x120" in r.output
    # a camera aimed 0.3 m beside the head: warned about, still prepared
    cams_json = write_photos(tmp_path / "q", {"a.png": img, "b.png": img}, [cams[0], photo_camera(0.0, 0.3)])
    masks = tmp_path / "m"
    masks.mkdir()
    cv2.imwrite(str(masks / "a.png"), np.zeros((H, W), np.uint8))
    r = runner.invoke(app, ["prep", "images", str(tmp_path / "q"), "--cams", str(cams_json), "-o", str(tmp_path / "o"),
                            "--res", "32", "--masks", str(masks)])
    assert r.exit_code != 0 and "b.png: no mask for this image" in r.output
    cv2.imwrite(str(masks / "b.png"), np.zeros((H, W), np.uint8))
    r = runner.invoke(app, ["prep", "images", str(tmp_path / "q"), "--cams", str(cams_json), "-o", str(tmp_path / "o"),
                            "--res", "32", "--masks", str(masks)])
    assert r.exit_code == 0, r.output
    assert "warning: b.png: camera aims 18° away from the head centre" in r.output
    assert "a.png" not in r.output and "background removed with the given masks" in r.output
    doc = json.loads(cams_json.read_text())
    doc["cameras"].pop()
    cams_json.write_text(json.dumps(doc))
    r = runner.invoke(app, ["prep", "images", str(tmp_path / "q"), "--cams", str(cams_json), "-o", str(tmp_path / "o")])
    assert r.exit_code != 0 and "b.png: no camera for this image" in r.output


def test_opencv_log_lines_never_reach_the_terminal(tmp_path, capfd):
    from avat3r.data.images import ImagePrepError, load_user_images
    from avat3r.imageio import ImageError, read_image

    img = np.zeros((H, W, 3), np.uint8)
    cams_json = write_photos(tmp_path / "p", {"a.png": img, "b.png": img}, [photo_camera(0.0), photo_camera(10.0)])
    (tmp_path / "p" / "b.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 20)
    capfd.readouterr()
    with pytest.raises(ImagePrepError, match="b.png: cannot read the image"):
        load_user_images(tmp_path / "p", cams_json, res=32)
    with pytest.raises(ImageError, match="not a readable image"):
        read_image(tmp_path / "p" / "b.png")
    err = capfd.readouterr().err  # what reached the process's stderr, OpenCV's C++ side included
    assert "WARN" not in err and "ERROR" not in err, err


def test_grabcut_keeps_the_neck_of_a_synthheads_render(tmp_path):
    """A rendered head composited on a wall: GrabCut must keep hair, ears and the neck that leaves the crop."""
    sh = pytest.importorskip("avat3r.data.synthheads")
    from avat3r.data.images import crop_square, head_crop_box, prepare_user_images

    s = sh.render_sample(0, 1, "neutral", 0, 0, 1, 16, 160)
    rng = np.random.default_rng(0)
    wall = np.clip(rng.normal(0, 12, (160, 160, 3)) + np.linspace(60, 180, 160)[None, :, None] * [0.6, 0.8, 1.0],
                   0, 255)
    alpha = s["mask"][..., None] / 255.0
    photo = np.clip(s["rgb"] + (1 - alpha) * wall, 0, 255).astype(np.uint8)
    cam = Cameras(torch.tensor(s["camera"]["K"]), torch.tensor(s["camera"]["w2c"]), 160, 160)
    cams_json = write_photos(tmp_path / "p", {"front.png": photo}, [cam])
    prepared = prepare_user_images(tmp_path / "p", cams_json, res=96)
    x0, y0, side = head_crop_box(cam.to(dtype=torch.float32))
    truth = cv2.resize(crop_square(s["mask"], x0, y0, side), (96, 96), interpolation=cv2.INTER_AREA) > 127
    fg = prepared.masks[0] > 0.5
    assert truth[-1].any()  # the neck does reach the crop's lower edge
    assert (fg & truth).sum() / (fg | truth).sum() > 0.95
