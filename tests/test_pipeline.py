"""The inference stages end to end: render (stream / .ply / .avt → MP4, PNGs, PLYs), animate, reconstruct,
real OS pipes between processes, and one-line errors for bad inputs."""

from __future__ import annotations

import io
import math
import os
import pty
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from avat3r.cameras import Cameras, intrinsics_from_fov, look_at, write_cams_json
from avat3r.cli.main import app
from avat3r.expressions import ExpressionSequence, read_sequence, write_sequence
from avat3r.gaussians import Gaussians, read_ply, write_ply
from avat3r.imageio import read_image, write_png
from avat3r.render import rasterize
from avat3r.stages.camera_path import CameraPath
from avat3r.stages.render import render_image
from avat3r.stream import FrameStreamWriter, read_frame_stream
from avat3r.video import count_frames, read_video_frames, video_info

E_SYNTH = 13  # synthheads-v1 code size (the tiny preset's expression_dim)


# -- fixtures: a head-sized Gaussian scene and its photos ------------------------------------------
def ellipsoid_scene(n: int = 1500, seed: int = 0, shift: float = 0.0) -> Gaussians:
    """Gaussians on a head-sized ellipsoid, coloured by surface normal (so every view looks different)."""
    g = torch.Generator().manual_seed(seed)
    d = torch.nn.functional.normalize(torch.randn(n, 3, generator=g), dim=-1)
    radii = torch.tensor([0.08, 0.1, 0.09])
    means = d * radii + torch.tensor([shift, 0.0, 0.0])
    return Gaussians(means=means, quats=torch.tensor([1.0, 0, 0, 0]).expand(n, 4).clone(),
                     scales=torch.full((n, 3), 0.008), opacities=torch.full((n,), 0.9),
                     colors=(d * 0.45 + 0.5).clamp(0, 1))


def ring_cameras(n: int, size: int, radius: float = 1.0, sweep: float = 80.0) -> Cameras:
    eyes = []
    for i in range(n):
        a = math.radians(-sweep / 2 + sweep * i / max(n - 1, 1))
        eyes.append([radius * math.sin(a), 0.05 * (i % 2), radius * math.cos(a)])
    K = intrinsics_from_fov(14.0, size, size)[None].expand(n, 3, 3).clone()
    return Cameras(K, look_at(torch.tensor(eyes)), size, size)


def run_cli(args: list[str], input: bytes | None = None):
    res = CliRunner().invoke(app, args, input=input)
    return res.exit_code, res.stdout_bytes, res.stderr


def cli_argv() -> list[str]:
    return [sys.executable, "-m", "avat3r.cli.main"]


def write_stream(path: Path, frames: list[Gaussians], cams: Cameras | None, fps: float = 10.0) -> None:
    with open(path, "wb") as f, FrameStreamWriter(f, fps, "synthheads-v1", cams, n_frames=len(frames)) as w:
        for i, g in enumerate(frames):
            w.write(i, g)


def to_u8(rgb: torch.Tensor) -> np.ndarray:
    return np.round(rgb.clamp(0, 1).numpy() * 255).astype(np.uint8)


# -- render --------------------------------------------------------------------------------------
def test_render_stream_to_mp4_pngs_and_plys(tmp_path):
    frames = [ellipsoid_scene(400, seed=1, shift=0.01 * i) for i in range(5)]
    stream = tmp_path / "frames.tar"
    write_stream(stream, frames, ring_cameras(4, 32), fps=10.0)
    size = 45  # odd: the MP4 is padded to 46x46, the PNGs keep 45x45
    code, _, err = run_cli(["render", str(stream), "--path", "orbit", "--size", str(size), "--video",
                            str(tmp_path / "out.mp4"), "--frames", str(tmp_path / "png"), "--ply",
                            str(tmp_path / "ply"), "--background", "0,0,1", "-q"])
    assert code == 0, err
    n, secs = count_frames(tmp_path / "out.mp4")
    assert n == 5 and secs == pytest.approx(0.5, abs=0.05)
    info = video_info(tmp_path / "out.mp4")
    assert tuple(info["size"]) == (46, 46) and info["fps"] == pytest.approx(10.0)

    path = CameraPath("orbit", size, 1.0)
    decoded = list(read_video_frames(tmp_path / "out.mp4"))
    for i, g in enumerate(frames):
        cam = path.camera(i, 5)
        az = 2 * math.pi * i / 5  # orbit: one turn over the sequence, starting in front
        assert torch.allclose(cam.centers[0], torch.tensor([math.sin(az), 0.0, math.cos(az)]), atol=1e-5)
        rgb, _, _ = rasterize(g, cam, background=torch.tensor([0.0, 0.0, 1.0]), backend="torch")
        png = read_image(tmp_path / "png" / f"{i:06d}.png")
        assert np.array_equal(png, to_u8(rgb[0]))  # lossless PNG: exactly the renderer's image
        assert png.shape == (45, 45, 3) and png[0, 0].tolist() == [0, 0, 255]  # background corner
        # H.264 (with 2x2-subsampled chroma) is lossy: close to this frame's PNG, far from the others'
        err = np.abs(decoded[i][:45, :45].astype(float) - png).mean()
        other = np.abs(decoded[(i + 1) % 5][:45, :45].astype(float) - png).mean()
        assert err < 8.0 and err < other / 3, (err, other)
        back = read_ply(tmp_path / "ply" / f"{i:06d}.ply")
        assert torch.allclose(back.means, g.means, atol=1e-6) and torch.allclose(back.colors, g.colors, atol=1e-6)
    # the frames differ (the scene moves and the camera turns)
    assert not np.array_equal(read_image(tmp_path / "png" / "000000.png"), read_image(tmp_path / "png" / "000001.png"))


def test_render_writes_each_frame_as_it_arrives(tmp_path):
    """Frame 0's PNG exists before the writer has produced frame 1 (render does not wait for the stream's end)."""
    import threading
    import time

    from avat3r.stages.render import render
    from avat3r.stages.sources import stream_source

    read_fd, write_fd = os.pipe()
    png0 = tmp_path / ".f.partial" / "000000.png"  # the folder is built aside and swapped in at the end
    seen = []

    def writer():
        with os.fdopen(write_fd, "wb") as f, FrameStreamWriter(f, 10, "synthheads-v1", None, n_frames=3) as w:
            w.write(0, ellipsoid_scene(100, seed=0))
            deadline = time.monotonic() + 60
            while not png0.exists() and time.monotonic() < deadline:
                time.sleep(0.02)
            seen.append(png0.exists())
            w.write(1, ellipsoid_scene(100, seed=1))
            w.write(2, ellipsoid_scene(100, seed=2))

    t = threading.Thread(target=writer)
    t.start()
    with os.fdopen(read_fd, "rb") as f:
        n = render(stream_source(f), "frontal", {"frames_dir": tmp_path / "f"}, size=16, device="cpu")
    t.join()
    assert seen == [True] and n == 3
    assert sorted(p.name for p in (tmp_path / "f").iterdir()) == ["000000.png", "000001.png", "000002.png"]


def test_render_folders_replace_an_older_render_whole(tmp_path):
    from avat3r.fileio import OutputLock
    from avat3r.stages.render import render
    from avat3r.stages.sources import stream_source

    stream = tmp_path / "s.tar"
    write_stream(stream, [ellipsoid_scene(100, seed=i) for i in range(4)], None)

    def run(*extra):
        return run_cli(["render", str(stream), "--size", "16", "--frames", str(tmp_path / "f"), "--ply",
                        str(tmp_path / "p"), "-q", *extra])

    assert run("--n-frames", "4")[0] == 0
    (tmp_path / "f" / "notes.txt").write_text("mine")  # not a frame: kept
    write_stream(stream, [ellipsoid_scene(100, seed=i) for i in range(2)], None)
    code, _, err = run()
    assert code == 0, err
    assert sorted(p.name for p in (tmp_path / "f").iterdir()) == ["000000.png", "000001.png", "notes.txt"]
    assert sorted(p.name for p in (tmp_path / "p").iterdir()) == ["000000.ply", "000001.ply"]
    before = {p.name: p.read_bytes() for p in (tmp_path / "f").iterdir()}

    def interrupt(n):
        raise KeyboardInterrupt

    write_stream(stream, [ellipsoid_scene(100, seed=9)] * 3, None)
    with open(stream, "rb") as f, pytest.raises(KeyboardInterrupt):  # a render stopped after its first frame
        render(stream_source(f), "frontal", {"frames_dir": tmp_path / "f"}, size=16, device="cpu",
               progress=interrupt)
    assert {p.name: p.read_bytes() for p in (tmp_path / "f").iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f", "p", "s.tar"]

    # a killed render's folder is marked as such (.f.partial) and cleared by the next render
    (tmp_path / ".f.partial").mkdir()
    (tmp_path / ".f.partial" / "000005.png").write_bytes(b"half")
    assert run()[0] == 0
    assert sorted(p.name for p in (tmp_path / "f").iterdir()) == [f"{i:06d}.png" for i in range(3)] + ["notes.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f", "p", "s.tar"]

    for args, pattern in ((["--frames", str(tmp_path / "same"), "--ply", str(tmp_path / "same")], "same folder"),
                          (["--frames", str(tmp_path)], "holds no rendered frames")):
        code, _, err = run_cli(["render", str(stream), "--size", "16", "-q", *args])
        assert code != 0 and pattern in err and err.count("\n") == 1 and err.startswith("avat3r: error:"), err
    with OutputLock(tmp_path / "f"):
        code, _, err = run()
    assert code != 0 and "is being written by another run" in err and err.count("\n") == 1
    assert not (tmp_path / "same").exists()


def test_killed_video_writers_leave_no_temp_files_for_long(tmp_path):
    from avat3r.video import VideoWriter

    out = tmp_path / "out.mp4"
    kill = ("import os, signal, sys, numpy as np; from avat3r.video import VideoWriter; "
            "w = VideoWriter(sys.argv[1], 10); w.write(np.zeros((16, 16, 3), np.uint8)); "
            "os.kill(os.getpid(), signal.SIGKILL)")
    subprocess.run([sys.executable, "-c", kill, str(out)], timeout=300)
    left = [p.name for p in tmp_path.iterdir()]
    assert len(left) == 1 and left[0].startswith(".out.mp4.") and left[0].endswith(".partial.mp4"), left

    live = VideoWriter(out, 10)  # a writer still at work: its temp file is not taken for a killed one's
    live.write(np.zeros((16, 16, 3), np.uint8))
    with VideoWriter(out, 10) as w:
        w.write(np.full((16, 16, 3), 255, np.uint8))
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names[-1] == "out.mp4" and len(names) == 2 and names[0] != left[0] and names[0].endswith(".partial.mp4")
    live.abort()
    assert [p.name for p in tmp_path.iterdir()] == ["out.mp4"] and count_frames(out)[0] == 1


def test_render_ply_along_cams_json_and_inputs_path_cycles(tmp_path):
    scene = ellipsoid_scene(400, seed=2)
    write_ply(tmp_path / "scene.ply", scene)
    cams = ring_cameras(3, 40)
    write_cams_json(tmp_path / "cams.json", cams, ["a.png", "b.png", "c.png"])
    code, _, err = run_cli(["render", str(tmp_path / "scene.ply"), "--path", str(tmp_path / "cams.json"),
                            "--size", "32", "--n-frames", "5", "--frames", str(tmp_path / "f"), "-q"])
    assert code == 0, err
    pngs = sorted((tmp_path / "f").iterdir())
    assert [p.name for p in pngs] == [f"{i:06d}.png" for i in range(5)]
    imgs = [read_image(p) for p in pngs]
    assert imgs[0].shape == (32, 32, 3)
    assert np.array_equal(imgs[3], imgs[0]) and np.array_equal(imgs[4], imgs[1])  # cycles 3 cameras
    assert not np.array_equal(imgs[0], imgs[1])
    # frame k is the PLY seen through camera k mod 3 scaled to 32 px
    ref = render_image(read_ply(tmp_path / "scene.ply"), cams[1].resized(32, 32), (0.0, 0.0, 0.0), "torch")
    assert np.array_equal(imgs[1], to_u8(ref))

    # a stream's input cameras drive --path inputs; default length is the stream's
    stream = tmp_path / "s.tar"
    write_stream(stream, [scene] * 4, cams)
    code, _, err = run_cli(["render", str(stream), "--path", "inputs", "--size", "32", "--frames",
                            str(tmp_path / "g"), "-q"])
    assert code == 0, err
    assert [np.array_equal(read_image(tmp_path / "g" / f"{i:06d}.png"), imgs[i % 3]) for i in range(4)] == [True] * 4


def test_render_reads_a_stream_on_stdin(tmp_path):
    stream = tmp_path / "s.tar"
    write_stream(stream, [ellipsoid_scene(300, seed=3)] * 3, None)
    code, _, err = run_cli(["render", "--size", "24", "--frames", str(tmp_path / "f"), "-q"],
                           input=stream.read_bytes())
    assert code == 0, err
    assert len(list((tmp_path / "f").iterdir())) == 3


def test_render_errors_are_one_line(tmp_path):
    (tmp_path / "junk.tar").write_bytes(b"definitely not a tar stream" * 50)
    for args, pattern in ((["render", str(tmp_path / "junk.tar"), "--video", str(tmp_path / "o.mp4")],
                           "not a frame stream"),
                          (["render", str(tmp_path / "nope.ply"), "--video", str(tmp_path / "o.mp4")], "no such"),
                          (["render", str(tmp_path / "junk.tar")], "nothing to write"),
                          (["render", "-", "--frames", str(tmp_path / "f"), "--path", "spiral"], "camera path")):
        stdin = b"" if args[1] != "-" else _one_frame_stream()
        code, _, err = run_cli(args, input=stdin)
        assert code != 0 and pattern in err and err.count("\n") == 1 and err.startswith("avat3r: error:"), err
    assert not (tmp_path / "o.mp4").exists()


def _one_frame_stream() -> bytes:
    buf = io.BytesIO()
    with FrameStreamWriter(buf, 25, "synthheads-v1", None, n_frames=1) as w:
        w.write(0, ellipsoid_scene(50))
    return buf.getvalue()


# -- animate: refusals that need no model ----------------------------------------------------------
def test_animate_refuses_to_write_to_a_terminal(tmp_path):
    master, slave = pty.openpty()
    try:
        proc = subprocess.run(cli_argv() + ["animate", str(tmp_path / "head.avt"), "--builtin", "demo"],
                              stdout=slave, stderr=subprocess.PIPE, timeout=120, cwd=Path(__file__).parents[1])
    finally:
        os.close(slave)
        os.close(master)
    err = proc.stderr.decode()
    assert proc.returncode != 0 and "terminal" in err and err.count("\n") == 1, err


def test_corrupt_avatar_is_refused_with_one_line(tmp_path):
    bad = tmp_path / "head.avt"
    bad.write_bytes(b"PK\x03\x04 this is not really a zip" * 10)
    code, out, err = run_cli(["animate", str(bad), "--builtin", "demo", "-o", str(tmp_path / "f.tar")])
    assert code != 0 and err.startswith("avat3r: error:") and err.count("\n") == 1 and "avatar" in err, err
    assert not (tmp_path / "f.tar").exists() and out == b""
    code, _, err = run_cli(["render", str(bad), "--video", str(tmp_path / "o.mp4")])
    assert code != 0 and err.startswith("avat3r: error:") and err.count("\n") == 1, err


# -- with a (randomly initialised) tiny model -------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    from avat3r.model import Avat3r, Avat3rConfig
    from avat3r.model.checkpoint import save_checkpoint

    torch.manual_seed(0)
    model = Avat3r(Avat3rConfig.preset("tiny"))
    with torch.no_grad():  # the Δ heads and cross-attention outputs start at zero; perturb them so
        for p in model.decoder.heads.parameters():  # expressions visibly move Gaussians
            p.add_(0.02 * torch.randn_like(p))
        for blk in model.decoder.blocks:
            blk.attn.proj.weight.add_(0.02 * torch.randn_like(blk.attn.proj.weight))
    d = tmp_path_factory.mktemp("ckpt") / "tiny"
    neutral = [0.0] * E_SYNTH
    save_checkpoint(d, model, {"expression_space": "synthheads-v1",
                               "expression_names": [f"e{i}" for i in range(E_SYNTH)], "neutral": neutral,
                               "position_prior": "none", "feature_prior": "none"})
    return d


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """4 photos (96², black background) of the ellipsoid scene + masks + cams.json."""
    d = tmp_path_factory.mktemp("photos")
    scene, cams = ellipsoid_scene(2000, seed=5), ring_cameras(4, 96, sweep=100.0)
    rgb, alpha, _ = rasterize(scene, cams, backend="torch")
    names = [f"view{i}.png" for i in range(4)]
    (d / "masks").mkdir()
    for i, name in enumerate(names):
        write_png(d / "imgs" / name, rgb[i])
        write_png(d / "masks" / name, (alpha[i] > 0.5).float()[..., None].expand(-1, -1, 3))
    write_cams_json(d / "imgs" / "cams.json", cams, names)
    return d


@pytest.fixture(scope="module")
def avatar(tiny_checkpoint, photos, tmp_path_factory):
    out = tmp_path_factory.mktemp("avt") / "head.avt"
    code, _, err = run_cli(["reconstruct", str(photos / "imgs"), "--cams", str(photos / "imgs" / "cams.json"),
                            "--masks", str(photos / "masks"), "-o", str(out), "--checkpoint", str(tiny_checkpoint),
                            "--device", "cpu"])
    assert code == 0, err
    return out


def test_reconstruct_writes_an_avatar_that_decodes_like_the_model(avatar, tiny_checkpoint, photos):
    from avat3r.avatar import load_avatar
    from avat3r.model.checkpoint import load_checkpoint, weights_sha256

    av = load_avatar(avatar)
    assert av.model is None  # not self-contained
    assert av.meta["checkpoint_sha256"] == weights_sha256(tiny_checkpoint)
    assert av.meta["expression_space"] == "synthheads-v1" and av.meta["position_prior"] == "none"
    assert av.state.pos.shape == (1, 4, 64, 64, 3)
    # the avatar's RGB is the masked, cropped photos: mostly black off the head, coloured on it
    fg = (av.state.rgb.sum(-1) > 0).float().mean()
    assert 0.1 < float(fg) < 0.9

    from avat3r.stages.animate import animate, load_animatable

    codes = torch.rand(5, E_SYNTH, generator=torch.Generator().manual_seed(1))
    seq = ExpressionSequence(codes, 12.0, "synthheads-v1")
    buf = io.BytesIO()
    n = animate(load_animatable(avatar, tiny_checkpoint, "cpu"), seq, buf, batch=2)
    assert n == 5
    model, _ = load_checkpoint(tiny_checkpoint)
    frames = list(read_frame_stream(io.BytesIO(buf.getvalue())))
    with torch.inference_mode():
        for start in (0, 2, 4):  # the same batches animate used: bit-exact
            ref = model.decode(av.state, codes[start:start + 2])
            for f in range(ref.means.shape[0]):
                meta, g = frames[start + f]
                want = ref[f].compact()
                assert meta["frame"] == start + f and meta["fps"] == 12.0
                assert torch.equal(g.means, want.means) and torch.equal(g.colors, want.colors)
                assert torch.equal(g.opacities, want.opacities) and torch.equal(g.scales, want.scales)
    # expressions change the Gaussians
    assert not torch.equal(frames[0][1].means, frames[1][1].means)


def test_animate_builtin_demo_to_a_file(avatar, tiny_checkpoint, tmp_path):
    from avat3r.expressions import builtin_sequence

    out = tmp_path / "frames.tar"
    code, stdout, err = run_cli(["animate", str(avatar), "--builtin", "demo", "--fps", "4", "--checkpoint",
                                 str(tiny_checkpoint), "-o", str(out), "--batch", "16", "-q"])
    assert code == 0 and stdout == b"", err
    want = builtin_sequence("demo", "synthheads-v1", fps=4)
    with open(out, "rb") as f:
        metas = [m for m, _ in read_frame_stream(f)]
    assert [m["frame"] for m in metas] == list(range(len(want)))
    assert torch.equal(torch.tensor([m["expr"] for m in metas]), want.codes)
    assert {m["fps"] for m in metas} == {4.0} and metas[0]["n_frames"] == len(want)
    assert len(metas[0]["input_cameras"]) == 4
    assert [p.name for p in tmp_path.iterdir()] == ["frames.tar"]  # written atomically, no temp left


def test_animate_refusals(avatar, tiny_checkpoint, tmp_path):
    write_sequence(tmp_path / "ava.parquet", torch.zeros(3, 256), fps=25, space="ava256")
    code, _, err = run_cli(["animate", str(avatar), str(tmp_path / "ava.parquet"), "--checkpoint",
                            str(tiny_checkpoint), "-o", str(tmp_path / "x.tar")])
    assert code != 0 and "'ava256'" in err and "'synthheads-v1'" in err and err.count("\n") == 1, err
    code, _, err = run_cli(["animate", str(avatar), "--builtin", "neutral", "-o", str(tmp_path / "x.tar")])
    assert code != 0 and "--checkpoint" in err and err.count("\n") == 1, err  # not self-contained
    from avat3r.model import Avat3r, Avat3rConfig
    from avat3r.model.checkpoint import save_checkpoint

    other = tmp_path / "other"
    save_checkpoint(other, Avat3r(Avat3rConfig.preset("tiny")), {"expression_space": "synthheads-v1"})
    code, _, err = run_cli(["animate", str(avatar), "--builtin", "neutral", "--checkpoint", str(other),
                            "-o", str(tmp_path / "x.tar")])
    assert code != 0 and "sha256" in err and err.count("\n") == 1, err
    assert not (tmp_path / "x.tar").exists()


def test_render_avatar_exports_a_neutral_ply_and_renders_its_input_views(avatar, tiny_checkpoint, tmp_path):
    from avat3r.avatar import load_avatar
    from avat3r.model.checkpoint import load_checkpoint

    code, _, err = run_cli(["render", str(avatar), "--checkpoint", str(tiny_checkpoint), "--ply",
                            str(tmp_path / "head.ply"), "--path", "inputs", "--size", "32", "--frames",
                            str(tmp_path / "f"), "-q"])
    assert code == 0, err
    av = load_avatar(avatar)
    model, _ = load_checkpoint(tiny_checkpoint)
    with torch.inference_mode():
        neutral = model.decode(av.state, av.neutral[None])[0].compact()
    ply = read_ply(tmp_path / "head.ply")  # the INRIA layout any 3DGS viewer opens
    assert len(ply) == len(neutral) > 0
    assert torch.allclose(ply.means, neutral.means, atol=1e-6)
    assert torch.allclose(ply.opacities, neutral.opacities.clamp(1e-7, 1 - 1e-7), atol=1e-5)
    # one frame per input camera, each the neutral head seen through it
    pngs = sorted((tmp_path / "f").iterdir())
    assert len(pngs) == 4
    ref = render_image(neutral, av.cameras[2].resized(32, 32), (0.0, 0.0, 0.0), "torch")
    assert np.array_equal(read_image(pngs[2]), to_u8(ref))


def _check_video(path: Path, n_frames: int, fps: float, size: int) -> None:
    n, secs = count_frames(path)
    assert n == n_frames and secs == pytest.approx(n_frames / fps, abs=0.05)
    assert tuple(video_info(path)["size"]) == (size, size)
    frames = list(read_video_frames(path))
    assert max(float(f.mean()) for f in frames) > 2.0  # the head is visible, not an all-black video


def test_animate_pipes_into_render_across_processes(avatar, tiny_checkpoint, tmp_path):
    """`avat3r animate … | avat3r render …`: two processes joined by a real OS pipe."""
    codes = torch.rand(4, E_SYNTH, generator=torch.Generator().manual_seed(3))
    write_sequence(tmp_path / "expr.parquet", codes, fps=8, space="synthheads-v1")
    cli = " ".join(shlex.quote(a) for a in cli_argv())
    script = (f"set -euo pipefail; {cli} animate {avatar} {tmp_path / 'expr.parquet'} --checkpoint {tiny_checkpoint} "
              f"--batch 3 --device cpu -q | {cli} render --path orbit --size 32 --video {tmp_path / 'out.mp4'} "
              f"--device cpu -q")
    proc = subprocess.run(["bash", "-c", script], capture_output=True, timeout=600, cwd=Path(__file__).parents[1])
    assert proc.returncode == 0, proc.stderr.decode()
    assert proc.stdout == b""  # frames went through the pipe; logs to stderr
    _check_video(tmp_path / "out.mp4", 4, 8.0, 32)


@pytest.mark.slow
def test_reconstruct_animate_render_through_a_real_pipe(tiny_checkpoint, photos, tmp_path):
    """The whole chain as separate processes: reconstruct (self-contained) → animate | render."""
    head = tmp_path / "head.avt"
    imgs = photos / "imgs"
    codes = torch.rand(6, E_SYNTH, generator=torch.Generator().manual_seed(2))
    write_sequence(tmp_path / "expr.parquet", codes, fps=15, space="synthheads-v1")
    cli = " ".join(shlex.quote(a) for a in cli_argv())
    script = (f"set -euo pipefail; {cli} reconstruct {imgs} --cams {imgs / 'cams.json'} --masks {photos / 'masks'} "
              f"-o {head} --checkpoint {tiny_checkpoint} --self-contained --device cpu && "
              f"{cli} animate {head} {tmp_path / 'expr.parquet'} --batch 4 -q | "
              f"{cli} render --path orbit --size 48 --video {tmp_path / 'out.mp4'} -q")
    proc = subprocess.run(["bash", "-c", script], capture_output=True, timeout=600, cwd=Path(__file__).parents[1])
    assert proc.returncode == 0, proc.stderr.decode()
    assert proc.stdout == b""
    _check_video(tmp_path / "out.mp4", 6, 15.0, 48)


# -- lift --------------------------------------------------------------------------------------------
LIFTER_MODULE = '''
import torch
from avat3r.cameras import Cameras, intrinsics_from_fov, look_at

def make_lifter():
    def lift(image):
        views = torch.stack([image.flip(1) if i % 2 else image for i in range(4)])  # 4 "views"
        eyes = torch.tensor([[0.0, 0, 1], [0.5, 0, 0.8], [-0.5, 0, 0.8], [0, 0.4, 0.9]])
        h, w = image.shape[:2]
        K = intrinsics_from_fov(14.0, w, h)[None].expand(4, 3, 3).clone()
        return views, Cameras(K, look_at(eyes), w, h)
    return lift
'''


def test_lift_without_backend_is_one_clear_line(tmp_path):
    write_png(tmp_path / "me.png", torch.rand(16, 16, 3))
    code, _, err = run_cli(["lift", str(tmp_path / "me.png"), "-o", str(tmp_path / "views")])
    assert code != 0 and err.startswith("avat3r: error: no lifting backend installed;") and err.count("\n") == 1
    assert "avat3r.lifters" in err and not (tmp_path / "views").exists()
    code, _, err = run_cli(["lift", str(tmp_path / "me.png"), "-o", str(tmp_path / "v"), "--backend", "eg3d"])
    assert code != 0 and "eg3d" in err and err.count("\n") == 1


def test_lift_with_a_plugged_in_backend_writes_views_and_cams(tmp_path, monkeypatch):
    from avat3r.cameras import read_cams_json

    (tmp_path / "toy_lifter.py").write_text(LIFTER_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    image = torch.rand(20, 24, 3)
    write_png(tmp_path / "me.png", image)
    code, _, err = run_cli(["lift", str(tmp_path / "me.png"), "-o", str(tmp_path / "views"), "--backend",
                            "toy_lifter:make_lifter"])
    assert code == 0, err
    names, cams = read_cams_json(tmp_path / "views" / "cams.json")
    assert names == [f"view_{i}.png" for i in range(4)] and cams.image_size == (24, 20)
    assert torch.allclose(cams.centers[1], torch.tensor([0.5, 0, 0.8]), atol=1e-5)
    src = read_image(tmp_path / "me.png")
    assert np.array_equal(read_image(tmp_path / "views" / "view_0.png"), src)
    assert np.array_equal(read_image(tmp_path / "views" / "view_1.png"), src[:, ::-1])


def test_animate_reads_expressions_off_a_driving_video(avatar, tiny_checkpoint, tmp_path):
    from avat3r.driving import (
        ExpressionRegressor,
        RegressorConfig,
        RegressorExtractor,
        load_regressor,
        save_regressor,
    )
    from avat3r.video import VideoWriter

    torch.manual_seed(3)
    save_regressor(tmp_path / "reg", ExpressionRegressor(RegressorConfig("synthheads-v1", E_SYNTH, 16, 8)))
    g = torch.Generator().manual_seed(0)
    with VideoWriter(tmp_path / "drive.mp4", fps=8.0) as v:
        for _ in range(5):
            v.write(torch.rand(20, 24, 3, generator=g))
    out, expr = tmp_path / "frames.tar", tmp_path / "expr.parquet"
    code, _, err = run_cli(["animate", str(avatar), "--video", str(tmp_path / "drive.mp4"), "--extractor-weights",
                            str(tmp_path / "reg"), "--smooth", "1", "--save-expr", str(expr), "--checkpoint",
                            str(tiny_checkpoint), "-o", str(out), "-q"])
    assert code == 0, err
    frames = np.stack(list(read_video_frames(tmp_path / "drive.mp4")))
    want = RegressorExtractor(load_regressor(tmp_path / "reg"))(frames)
    seq = read_sequence(expr)
    assert seq.fps == 8.0 and seq.space == "synthheads-v1" and torch.allclose(seq.codes, want, atol=1e-6)
    with open(out, "rb") as f:
        metas = [m for m, _ in read_frame_stream(f)]
    assert len(metas) == 5 and torch.allclose(torch.tensor([m["expr"] for m in metas]), want, atol=1e-6)

    code, _, err = run_cli(["animate", str(avatar), "--video", str(tmp_path / "drive.mp4"), "--extractor-weights",
                            str(tmp_path / "none"), "--checkpoint", str(tiny_checkpoint), "-o", str(out)])
    assert code != 0 and "--extractor-weights" in err and err.count("\n") == 1, err
    code, _, err = run_cli(["animate", str(avatar), "--video", str(tmp_path / "drive.mp4"), "--builtin", "demo",
                            "-o", str(out)])
    assert code != 0 and "exactly one" in err, err
