"""Bad inputs at every boundary of every stage (prep, prior, train, lift, reconstruct, animate, render, eval:
sizes, segments and frames, cams.json, photos and masks, manifests and shards, recipes and --set, checkpoints,
.avt, expression files, frame streams, PLYs, lifting sources and backends, devices, outputs): each run of the
console script ends with exactly one `avat3r: error:` line, a non-zero exit, no traceback, nothing written to
the stderr file descriptor by native libraries, and an output file that was there before is left as it was."""

from __future__ import annotations

import dataclasses
import io
import json
import math
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from typer.testing import CliRunner

from avat3r.cameras import Cameras, cameras_to_dicts, intrinsics_from_fov, look_at, write_cams_json
from avat3r.cli.main import app
from avat3r.fileio import tar_member
from avat3r.gaussians import Gaussians, ply_bytes
from avat3r.model import Avat3r, Avat3rConfig
from avat3r.model.checkpoint import save_checkpoint

torch.set_num_threads(1)
ROOT = Path(__file__).parents[1]
RECIPE = str(ROOT / "recipes" / "synthheads-tiny.toml")
E = 13  # synthheads-v1 code size
# the smallest model that runs every stage: 16² inputs, 2×2 tokens per view, one layer each
CFG = Avat3rConfig.preset("tiny", dim=32, heads=2, self_layers=1, cross_layers=1, input_res=16, patch=8,
                          expression_hidden=16, upsampler_window=16)
CK_META = {"expression_space": "synthheads-v1", "expression_names": [f"e{i}" for i in range(E)],
           "neutral": [0.0] * E, "position_prior": "none", "feature_prior": "none"}
SENTINEL = b"left as it was\n"


def ring(n: int, size: int) -> Cameras:
    eyes = [[0.8 * math.sin(a), 0.05, 0.8 * math.cos(a)] for a in np.linspace(-1.0, 1.0, n)]
    return Cameras(intrinsics_from_fov(30.0, size, size)[None].expand(n, 3, 3).clone(),
                   look_at(torch.tensor(eyes, dtype=torch.float32)), size, size)


@pytest.fixture(scope="module")
def fx(tmp_path_factory):
    """Good files to spoil: a tiny checkpoint, a self-contained avatar and one made without its decoder,
    4 photos' cams.json, a small scene (with SH bands) as PLY and as a frame stream."""
    from avat3r.avatar import save_avatar

    d = tmp_path_factory.mktemp("good")
    torch.manual_seed(0)
    model = Avat3r(CFG).eval()
    save_checkpoint(d / "ckpt", model, CK_META)
    R = CFG.input_res
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        state = model.encode(torch.rand(1, 4, R, R, 3, generator=g), ring(4, R),
                             torch.randn(1, 4, R, R, 3, generator=g) * 0.1,
                             0.5 + 0.5 * torch.rand(1, 4, R, R, generator=g))
    save_avatar(d / "self.avt", state, {**CK_META}, model=model)
    save_avatar(d / "plain.avt", state, {**CK_META, "config": CFG.to_dict()})
    write_cams_json(d / "cams.json", ring(4, 64), [f"v{i}.png" for i in range(4)])
    n = 40
    scene = Gaussians(means=torch.randn(n, 3, generator=g) * 0.05,
                      quats=torch.nn.functional.normalize(torch.randn(n, 4, generator=g), dim=-1),
                      scales=torch.full((n, 3), 0.01), opacities=torch.full((n,), 0.8),
                      colors=torch.rand(n, 3, generator=g), sh_rest=torch.randn(n, 3, 3, generator=g) * 0.1)
    (d / "scene.ply").write_bytes(ply_bytes(scene))
    tensors = {k: getattr(scene, k).contiguous() for k in ("means", "quats", "scales", "opacities", "colors",
                                                             "sh_rest")}
    write_tiny_set(d / "set")
    from avat3r.video import VideoWriter

    for name, n in (("flat.mp4", 6), ("short.mp4", 2)):  # a flat grey video: no face anywhere in it
        with VideoWriter(d / name, fps=10.0) as video:
            for _ in range(n):
                video.write(torch.full((32, 32, 3), 0.5))
    return {"dir": d, "model": model, "ckpt": d / "ckpt", "self": d / "self.avt", "plain": d / "plain.avt",
            "cams": d / "cams.json", "ply": d / "scene.ply", "tensors": tensors, "set": d / "set",
            "flat_video": d / "flat.mp4", "short_video": d / "short.mp4"}


def write_tiny_set(out: Path, persons=("p0000", "p0001"), segments=("neutral", "EXP_smile"), n_cams: int = 8,
                   res: int = 8) -> None:
    """A dataset as `prep synth` + `prior` leave it (shards + manifest.parquet, pos/conf entries), written
    directly: 2 persons (train, test) × 2 segments × 1 frame × 8 cameras at 8². Confidence 0.9 everywhere
    (above the threshold), so every pixel spawns a Gaussian and training on it renders something."""
    from avat3r.cameras import camera_dict
    from avat3r.data.manifest import MANIFEST_NAME, build_manifest, write_manifest
    from avat3r.data.shards import ShardWriter, encode_sample, make_key

    cams = ring(n_cams, res)
    rng = np.random.default_rng(0)
    records, rows = [], []
    with ShardWriter(out) as writer:
        for p, person in enumerate(persons):
            for seg in segments:
                for c in range(n_cams):
                    sample = {"rgb": rng.integers(0, 256, (res, res, 3), dtype=np.uint8),
                              "mask": np.full((res, res), 255, np.uint8),
                              "camera": camera_dict(cams.K[c], cams.w2c[c], res, res),
                              "expr": np.zeros(E, np.float32), "pos": rng.normal(size=(res, res, 3)) * 0.1,
                              "conf": np.full((res, res), 0.9)}
                    key = make_key(person, seg, 0, f"c{c:02d}")
                    records.append(writer.write(key, encode_sample(sample)))
                    rows.append({"person": person, "segment": seg, "frame": 0, "camera": f"c{c:02d}",
                                 "width": res, "height": res, "split": "train" if p == 0 else "test",
                                 "has_prior": True})
    write_manifest(out / MANIFEST_NAME, build_manifest(records, rows, np.zeros((len(rows), E), np.float32),
                                                       "synthheads-v1", "synth", out))


# -- builders: each spoils one thing, writes it under tmp and returns (argv, pre-existing output) --------
def reconstruct_args(tmp: Path, cams: Path, ckpt: Path) -> tuple[list[str], Path]:
    out = tmp / "head.avt"
    argv = ["reconstruct", str(tmp), "--cams", str(cams), "-c", str(ckpt), "-o", str(out), "--device", "cpu"]
    return argv, out


def bad_checkpoint(edit_weights=None, edit_config=None):
    def build(tmp, fx):
        ck = tmp / "ckpt"
        model = fx["model"]
        if edit_weights is not None:
            model = Avat3r(CFG).eval()
            model.load_state_dict(fx["model"].state_dict())
            with torch.no_grad():
                edit_weights(model)
        save_checkpoint(ck, model, CK_META)  # the sha256 in config.json matches these weights
        if edit_config is not None:
            doc = json.loads((ck / "config.json").read_text())
            edit_config(doc["config"])
            (ck / "config.json").write_text(json.dumps(doc))
        return reconstruct_args(tmp, fx["cams"], ck)
    return build


def ck_config(key: str, value):
    return bad_checkpoint(edit_config=setitem(key, value))


def set_first(name: str, value: float):
    def edit(model):
        dict(model.named_parameters())[name].view(-1)[0] = value
    return edit


def bad_cams(edit=None, n: int = 4, raw: bytes | None = None):
    """A cams.json for `reconstruct`: ``edit(camera_dict)`` spoils its second camera."""
    def build(tmp, fx):
        path = tmp / "cams.json"
        if raw is not None:
            path.write_bytes(raw)
        else:
            write_cams_json(path, ring(n, 64), [f"v{i}.png" for i in range(n)])
            if edit is not None:
                doc = json.loads(path.read_text())
                edit(doc["cameras"][min(1, n - 1)])
                path.write_text(json.dumps(doc))
        return reconstruct_args(tmp, path, fx["ckpt"])
    return build


def render_path_cams(edit):
    def build(tmp, fx):
        args, _ = bad_cams(edit)(tmp, fx)
        out = tmp / "frames"
        out.mkdir()
        return ["render", str(fx["ply"]), "--path", args[3], "--frames", str(out), "--size", "8", "-q"], \
            out / "000000.png"
    return build


def setitem(key, value):
    return lambda c: c.__setitem__(key, value)


def set_k(row: int, col: int, value):
    return lambda c: c["K"][row].__setitem__(col, value)


def rewrite_avatar(src: Path, dst: Path, state=None, meta=None, decoder=None) -> None:
    with zipfile.ZipFile(src) as zf:
        data = {n: zf.read(n) for n in zf.namelist()}
    for member, edit in (("state.safetensors", state), ("decoder.safetensors", decoder)):
        if edit is not None:
            t = st_load(data[member])
            edit(t)
            data[member] = st_save(t)
    if meta is not None:
        doc = json.loads(data["meta.json"])
        meta(doc)
        data["meta.json"] = json.dumps(doc).encode()
    with zipfile.ZipFile(dst, "w") as zf:
        for name, blob in data.items():
            zf.writestr(name, blob)


def bad_avatar(state=None, meta=None, decoder=None, command: str = "animate"):
    def build(tmp, fx):
        avt = tmp / "bad.avt"
        rewrite_avatar(fx["self"], avt, state, meta, decoder)
        if command == "animate":
            out = tmp / "frames.tar"
            return ["animate", str(avt), "--builtin", "neutral", "-o", str(out), "-q"], out
        out = tmp / "head.ply"
        return ["render", str(avt), "--ply", str(out), "-q"], out
    return build


def poke(name: str, value):
    def edit(t):
        t[name].view(-1)[0] = value
    return edit


def neutral_entry(value):
    return lambda meta: meta["neutral"].__setitem__(0, value)


def fill(name: str, value):
    return lambda t: t[name].fill_(value)


def animate_codes(codes=None, fps_meta: str | None = None, extra: list[str] = ()):
    def build(tmp, fx):
        import pyarrow as pa
        import pyarrow.parquet as pq

        from avat3r.expressions import ExpressionSequence, sequence_table

        c = torch.zeros(3, E) if codes is None else torch.as_tensor(codes, dtype=torch.float32)
        table = sequence_table(ExpressionSequence(torch.zeros_like(c), 25.0, "synthheads-v1"))
        flat = pa.array(c.numpy().reshape(-1), type=pa.float32())
        table = table.set_column(1, "expr", pa.FixedSizeListArray.from_arrays(flat, c.shape[1]))
        if fps_meta is not None:
            table = table.replace_schema_metadata({**table.schema.metadata, b"fps": fps_meta.encode()})
        pq.write_table(table, tmp / "expr.parquet")
        out = tmp / "frames.tar"
        return ["animate", str(fx["self"]), str(tmp / "expr.parquet"), "-o", str(out), "-q", *extra], out
    return build


def animate_with_checkpoint(edit_weights):
    """`animate` of the avatar made without decoder weights, through a spoiled checkpoint."""
    def build(tmp, fx):
        ckpt_args, _ = bad_checkpoint(edit_weights=edit_weights)(tmp, fx)
        out = tmp / "frames.tar"
        ckpt = ckpt_args[ckpt_args.index("-c") + 1]
        return ["animate", str(fx["plain"]), "--builtin", "neutral", "-c", ckpt, "-o", str(out), "-q"], out
    return build


def animate_args(*extra: str):
    def build(tmp, fx):
        out = tmp / "frames.tar"
        return ["animate", str(fx["self"]), *extra, "-o", str(out), "-q"], out
    return build


def bad_stream(edit=None, meta=None, raw: bytes | None = None, path: str = "frontal"):
    """One-frame stream for `render --ply`: ``edit(tensors)`` spoils its Gaussians, ``meta(doc)`` its meta."""
    def build(tmp, fx):
        src = tmp / "frames.tar"
        if raw is not None:
            src.write_bytes(raw)
        else:
            t = {k: v.clone() for k, v in fx["tensors"].items()}
            if edit is not None:
                edit(t)
            doc = {"stream_version": 1, "frame": 0, "n_frames": 1, "fps": 25.0,
                   "expression_space": "synthheads-v1", "input_cameras": cameras_to_dicts(ring(4, 16))}
            if meta is not None:
                meta(doc)
            src.write_bytes(tar_member("000000.gaussians.safetensors", st_save(t))
                            + tar_member("000000.meta.json", json.dumps(doc).encode()) + b"\0" * 10240)
        out = tmp / "first.ply"
        return ["render", str(src), "--ply", str(out), "--path", path, "-q"], out
    return build


def set_tensor(name: str, value):
    return lambda t: t.__setitem__(name, value(t[name]) if callable(value) else value)


def cam_meta(key, value):
    return lambda doc: doc["input_cameras"][1].__setitem__(key, value)


def bad_ply(edit=None, drop=(), keep_rows=None, raw: bytes | None = None):
    """A PLY for `render --ply`: ``edit(structured array)`` spoils values, ``drop`` removes properties."""
    def build(tmp, fx):
        from plyfile import PlyData, PlyElement

        src = tmp / "bad.ply"
        if raw is not None:
            src.write_bytes(raw)
        else:
            v = PlyData.read(str(fx["ply"]))["vertex"].data
            names = [n for n in v.dtype.names if n not in drop]
            arr = np.empty(len(v) if keep_rows is None else keep_rows, dtype=[(n, "f4") for n in names])
            for n in names:
                arr[n] = v[n][:len(arr)]
            if edit is not None:
                edit(arr)
            PlyData([PlyElement.describe(arr, "vertex")]).write(str(src))
        out = tmp / "copy.ply"
        return ["render", str(src), "--ply", str(out), "-q"], out
    return build


def ply_set(names, value):
    def edit(arr):
        for n in names:
            arr[n][3] = value
    return edit


def lift_args(backend: str):
    def build(tmp, fx):
        from avat3r.imageio import write_png

        write_png(tmp / "me.png", torch.rand(8, 8, 3))
        (tmp / "views").mkdir()
        return ["lift", str(tmp / "me.png"), "-o", str(tmp / "views"), "--backend", backend], \
            tmp / "views" / "view_0.png"
    return build


def train_args(*overrides: str):
    def build(tmp, fx):
        (tmp / "run").mkdir()
        argv = ["train", "-r", RECIPE, "-o", str(tmp / "run"), "-q"]
        for o in overrides:
            argv += ["--set", o]
        return argv, tmp / "run" / "notes.txt"
    return build



# -- prep ----------------------------------------------------------------------------------------------
def prep_synth_args(*extra: str):
    """`prep synth` of one tiny person (fails on ``extra`` before it renders anything)."""
    def build(tmp, fx):
        out = tmp / "set"
        return ["prep", "synth", "-o", out, "--persons", "1", "--frames", "1", "--cameras", "2", "--res", "8",
                "--segments", "neutral", *extra], out / "manifest.parquet"
    return build


def write_photos(folder: Path, n: int = 4, size: int = 64) -> Path:
    """``n`` random photos v0.png … with a ring of cameras looking at the head: returns their cams.json."""
    from avat3r.imageio import write_png

    folder.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(2)
    for i in range(n):
        write_png(folder / f"v{i}.png", torch.rand(size, size, 3, generator=g))
    write_cams_json(folder / "cams.json", ring(n, size), [f"v{i}.png" for i in range(n)])
    return folder / "cams.json"


def photos(edit=None):
    """A photo folder with its cams.json; ``edit(folder)`` spoils it and may return another cams.json."""
    def build(tmp):
        folder = tmp / "photos"
        cams = write_photos(folder)
        if edit is not None:
            cams = edit(folder) or cams
        return folder, cams
    return build


def prep_images_args(edit=None, *extra: str):
    def build(tmp, fx):
        folder, cams = photos(edit)(tmp)
        out = tmp / "set"
        return ["prep", "images", folder, "--cams", cams, "-o", out, "--res", "16", *extra], \
            out / "manifest.parquet"
    return build


def reconstruct_photos(edit=None, *extra: str, ckpt=None):
    """`reconstruct` of a photo folder spoiled by ``edit(folder)``."""
    def build(tmp, fx):
        folder, cams = photos(edit)(tmp)
        argv, out = reconstruct_args(folder, cams, ckpt(tmp, fx) if ckpt else fx["ckpt"])
        return argv + list(extra), out
    return build


def write_file(name: str, data: bytes):
    def spoil(folder):
        (folder / name).write_bytes(data)
    return spoil


def both(*edits):
    def edit(folder):
        for e in edits:
            e(folder)
    return edit


def png_of_size(name: str, w: int, h: int, gray: bool = False):
    def edit(folder):
        from avat3r.imageio import encode_png

        img = np.full((h, w) if gray else (h, w, 3), 128, np.uint8)
        (folder / name).write_bytes(encode_png(img))
    return edit


def with_masks(*spoil):
    """A mask folder for the photos (white, right size), then each ``spoil(mask_folder)``."""
    def edit(folder):
        masks = folder.parent / "masks"
        masks.mkdir()
        for i in range(4):
            png_of_size(f"v{i}.png", 64, 64, gray=True)(masks)
        for f in spoil:
            f(masks)
    return edit


def cams_doc(edit):
    """Rewrite the photos' cams.json document with ``edit(doc)``."""
    def spoil(folder):
        path = folder / "cams.json"
        doc = json.loads(path.read_text())
        edit(doc)
        path.write_text(json.dumps(doc))
    return spoil


def synth_photos_args(*extra: str):
    def build(tmp, fx):
        out = tmp / "photos"
        return ["prep", "synth-photos", "-o", out, "--person", "0", "--res", "8", *extra], out / "cams.json"
    return build


def synth_video_args(*extra: str, sequence=None):
    """`prep synth-video`; ``sequence(tmp)`` writes an expression file and returns its path."""
    def build(tmp, fx):
        out = tmp / "drive.mp4"
        seq = ["--sequence", sequence(tmp)] if sequence is not None else []
        return ["prep", "synth-video", "-o", out, "--person", "0", "--res", "8", "--frames", "2", "-q", *seq,
                *extra], out
    return build


def expr_parquet(codes=None, space: str = "synthheads-v1", name: str = "expr.parquet", table_edit=None):
    """Writes an expr.parquet of ``codes`` (default 3 neutral frames) in ``space``; ``table_edit(table)``
    returns a spoiled table."""
    def write(tmp):
        import pyarrow as pa
        import pyarrow.parquet as pq

        c = torch.zeros(3, E) if codes is None else torch.as_tensor(codes, dtype=torch.float32)
        flat = pa.array(c.numpy().reshape(-1), type=pa.float32())
        table = pa.table({"frame": pa.array(np.arange(len(c), dtype=np.int32)),
                          "expr": pa.FixedSizeListArray.from_arrays(flat, c.shape[1])})
        table = table.replace_schema_metadata({b"expression_space": space.encode(), b"fps": b"25.0",
                                               b"expr_format_version": b"1"})
        if table_edit is not None:
            table = table_edit(table)
        pq.write_table(table, tmp / name)
        return tmp / name
    return write


def raw_file(name: str, data: bytes):
    def write(tmp):
        (tmp / name).write_bytes(data)
        return tmp / name
    return write


# -- prior ---------------------------------------------------------------------------------------------
def prior_args(*extra: str, edit=None, source=None):
    """`prior` of a copy of the tiny set, spoiled by ``edit(folder)``; ``source(folder)`` names the source."""
    def build(tmp, fx):
        import shutil

        src = tmp / "src"
        shutil.copytree(fx["set"], src)
        if edit is not None:
            edit(src)
        out = tmp / "out"
        return ["prior", source(src) if source else src, "-o", out, *extra], out / "manifest.parquet"
    return build


def rewrite_manifest(edit):
    """Rewrite the manifest's Arrow table with ``edit(table)``."""
    def spoil(folder):
        import pyarrow.parquet as pq

        path = folder / "manifest.parquet"
        pq.write_table(edit(pq.read_table(path)), path)
    return spoil


def truncate(name: str, keep: int):
    def spoil(folder):
        path = folder / name
        path.write_bytes(path.read_bytes()[:keep])
    return spoil


def remove(name: str):
    return lambda folder: (folder / name).unlink()


def flip_bytes(name: str, at: int, n: int = 16):
    def spoil(folder):
        path = folder / name
        data = bytearray(path.read_bytes())
        data[at:at + n] = bytes(b ^ 0x5A for b in data[at:at + n])
        path.write_bytes(bytes(data))
    return spoil


def meta_edit(fn):
    """A manifest spoil: ``fn(metadata dict of bytes)``."""
    def edit(table):
        meta = dict(table.schema.metadata)
        fn(meta)
        return table.replace_schema_metadata(meta)
    return rewrite_manifest(edit)


def set_column(name: str, values):
    def edit(table):
        import pyarrow as pa

        i = table.column_names.index(name)
        col = values(table.column(name)) if callable(values) else pa.array(values)
        return table.set_column(i, name, col)
    return rewrite_manifest(edit)


# -- train, eval, lift ---------------------------------------------------------------------------------
def train_recipe(text: str, *overrides: str):
    """`train` of a recipe file holding ``text``."""
    def build(tmp, fx):
        (tmp / "run").mkdir()
        (tmp / "r.toml").write_text(text)
        argv = ["train", "-r", tmp / "r.toml", "-o", tmp / "run", "-q"]
        for o in overrides:
            argv += ["--set", o]
        return argv, tmp / "run" / "notes.txt"
    return build


def train_data(*overrides: str, init=None):
    """`train` on the tiny set with the tiny model (CFG); ``init(tmp, fx)`` makes model.init's path."""
    def build(tmp, fx):
        extra = [f"data.manifest={fx['set'] / 'manifest.parquet'}", "data.options={}", "data.n_targets=1",
                 "loss.expression_weight=0", "model.overrides={dim=32, heads=2, self_layers=1, cross_layers=1, "
                 "input_res=16, patch=8, expression_hidden=16, upsampler_window=16}"]
        if init is not None:
            extra.append(f"model.init={init(tmp, fx)}")
        return train_args(*extra, *overrides)(tmp, fx)
    return build


def eval_args(*extra: str, checkpoint=True, manifest=None):
    """`eval` of the tiny checkpoint on the tiny set's test person; ``manifest(tmp, fx)`` replaces the set."""
    def build(tmp, fx):
        out = tmp / "eval"
        m = manifest(tmp, fx) if manifest is not None else fx["set"] / "manifest.parquet"
        ck = ["-c", fx["ckpt"]] if checkpoint is True else ["-c", checkpoint(tmp, fx)] if checkpoint else []
        return ["eval", *ck, "-m", m, "-o", out, "-q", "--device", "cpu", "-n", "1", *extra], \
            out / "metrics.parquet"
    return build


def lift_from(source, *extra: str):
    """`lift` of ``source(tmp, fx)`` into views/."""
    def build(tmp, fx):
        return ["lift", source(tmp, fx), "-o", tmp / "views", *extra], tmp / "views" / "view_0.png"
    return build


def folder_of(*files: tuple[str, bytes]):
    def make(tmp, fx):
        folder = tmp / "in"
        folder.mkdir()
        for name, data in files:
            (folder / name).write_bytes(data)
        return folder
    return make


def flat_pngs(n: int):
    def make(tmp, fx):
        from avat3r.imageio import encode_png

        folder = tmp / "in"
        folder.mkdir()
        for i in range(n):
            (folder / f"p{i}.png").write_bytes(encode_png(np.full((32, 32, 3), 90 + i, np.uint8)))
        return folder
    return make


def junk_checkpoint(files: dict[str, bytes] | None = None, edit=None):
    """A checkpoint folder: the tiny one's files, then ``files`` written over them (None: removed) and
    ``edit(folder)``."""
    def make(tmp, fx):
        import shutil

        ck = tmp / "junk-ckpt"
        shutil.copytree(fx["ckpt"], ck)
        for name, data in (files or {}).items():
            if data is None:
                (ck / name).unlink()
            else:
                (ck / name).write_bytes(data)
        if edit is not None:
            edit(ck)
        return ck
    return make


def config_json(edit):
    """Edit the checkpoint's config.json document."""
    def spoil(ck):
        doc = json.loads((ck / "config.json").read_text())
        edit(doc)
        (ck / "config.json").write_text(json.dumps(doc))
    return spoil


def animate_seq(write, *extra: str, avatar: str = "self"):
    """`animate` of an expression file ``write(tmp)``."""
    def build(tmp, fx):
        out = tmp / "frames.tar"
        return ["animate", fx[avatar], write(tmp), "-o", out, "-q", *extra], out
    return build


def render_src(source, *extra: str, output=("--ply", "copy.ply")):
    """`render` of ``source(tmp, fx)`` (a path or a fixture key) with ``extra`` options into one output."""
    def build(tmp, fx):
        src = fx[source] if isinstance(source, str) else source(tmp, fx)
        flag, name = output
        out = tmp / name
        argv = ["render", src, flag, out, "-q", *extra]
        if flag == "--frames":
            out.mkdir()
            out = out / "000000.png"
        return argv, out
    return build

NAN, INF = float("nan"), float("inf")
QKV = "encoder.blocks.0.attn.qkv.weight"

CASES = {
    # checkpoints: numbers (the sha256 in config.json matches the spoiled weights) and config sizes
    "ckpt-nan-weight": (bad_checkpoint(edit_weights=set_first(QKV, NAN)), "non-finite"),
    "ckpt-inf-weight": (bad_checkpoint(edit_weights=set_first("decoder.norm.weight", INF)), "non-finite"),
    "ckpt-nan-embedding": (bad_checkpoint(edit_weights=lambda m: m.encoder.embed.pos_embed.fill_(NAN)),
                           "pos_embed"),
    "ckpt-dim-negative": (ck_config("dim", -128), "dim"),
    "ckpt-heads-zero": (ck_config("heads", 0), "heads"),
    "ckpt-patch-zero": (ck_config("patch", 0), "patch"),
    "ckpt-input-res-negative": (ck_config("input_res", -16), "input_res"),
    "ckpt-layers-negative": (ck_config("self_layers", -1), "self_layers"),
    "ckpt-window-zero": (ck_config("upsampler_window", 0), "upsampler_window"),
    "ckpt-window-not-dividing": (ck_config("upsampler_window", 5), "upsampler_window"),
    "ckpt-mlp-ratio-nan": (ck_config("mlp_ratio", NAN), "mlp_ratio"),
    "ckpt-position-scale-zero": (ck_config("position_scale", 0.0), "position_scale"),
    "ckpt-expression-hidden-zero": (ck_config("expression_hidden", 0), "expression_hidden"),
    # cams.json
    "cams-k-bottom-row": (bad_cams(lambda c: c["K"].__setitem__(2, [5, 5, 7])), "[0, 0, 1]"),
    "cams-k-bottom-row-zero": (bad_cams(lambda c: c["K"].__setitem__(2, [0, 0, 0])), "[0, 0, 1]"),
    "cams-k-skew": (bad_cams(set_k(0, 1, 3.0)), "skew"),
    "cams-fx-tiny": (bad_cams(set_k(0, 0, 1e-6)), "focal"),
    "cams-fx-huge": (bad_cams(set_k(0, 0, 1e12)), "focal"),
    "cams-fy-negative": (bad_cams(set_k(1, 1, -100.0)), "focal"),
    "cams-cx-huge": (bad_cams(set_k(0, 2, 1e30)), "principal point"),
    "cams-k-nan": (bad_cams(set_k(0, 0, NAN)), "non-finite"),
    "cams-width-fraction": (bad_cams(setitem("width", 64.9)), "width"),
    "cams-width-huge": (bad_cams(setitem("width", 1e30)), "width"),
    "cams-width-too-large": (bad_cams(setitem("width", 20000)), "width"),
    "cams-width-string": (bad_cams(setitem("width", "64")), "width"),
    "cams-width-bool": (bad_cams(setitem("width", True)), "width"),
    "cams-height-negative": (bad_cams(setitem("height", -5)), "height"),
    "cams-w2c-not-rotation": (bad_cams(lambda c: c["w2c"][0].__setitem__(0, 3.0)), "rotation"),
    "cams-k-shape": (bad_cams(setitem("K", [[1, 0], [0, 1]])), "3×3"),
    "cams-not-utf8": (bad_cams(raw=b'{"version": 1, "cameras": [\xff\xfe]}'), "cams.json"),
    "cams-not-json": (bad_cams(raw=b"version: 1"), "cams.json"),
    "cams-a-list": (bad_cams(raw=b"[1, 2, 3]"), "cams.json"),
    "cams-camera-a-string": (bad_cams(raw=b'{"version": 1, "cameras": ["front.png"]}'), "cams.json"),
    "cams-empty": (bad_cams(raw=b'{"version": 1, "cameras": []}'), "non-empty"),
    "render-path-k-bottom-row": (render_path_cams(lambda c: c["K"].__setitem__(2, [5, 5, 7])), "[0, 0, 1]"),
    "render-path-width-fraction": (render_path_cams(setitem("width", 64.9)), "width"),
    # reconstruct takes as many photos as the model was trained on (4)
    "views-1": (bad_cams(n=1), "exactly 4"),
    "views-3": (bad_cams(n=3), "exactly 4"),
    "views-9": (bad_cams(n=9), "exactly 4"),
    # .avt: the identity state, its metadata and its decoder weights
    "avt-tokens-nan": (bad_avatar(state=poke("tokens", NAN)), "state tensor tokens"),
    "avt-pos-inf": (bad_avatar(state=poke("pos", INF)), "pos"),
    "avt-rgb-nan": (bad_avatar(state=poke("rgb", NAN)), "rgb"),
    "avt-conf-nan": (bad_avatar(state=poke("conf", NAN)), "conf"),
    "avt-k-nan": (bad_avatar(state=poke("K", NAN)), "state tensor K"),
    "avt-w2c-inf": (bad_avatar(state=poke("w2c", INF)), "state tensor w2c"),
    "avt-no-gaussians": (bad_avatar(state=fill("valid", 0)), "no valid Gaussians"),
    "avt-neutral-nan": (bad_avatar(meta=neutral_entry(NAN), command="render"), "neutral"),
    "avt-neutral-huge": (bad_avatar(meta=neutral_entry(1e30), command="render"), "neutral"),
    "avt-config-dim-negative": (bad_avatar(meta=lambda m: m["config"].__setitem__("dim", -128)), "dim"),
    "avt-camera-width-fraction": (bad_avatar(meta=lambda m: m["cameras"]["cameras"][0].update(width=16.5)),
                                  "width"),
    "avt-decoder-nan": (bad_avatar(decoder=fill("decoder.norm.weight", NAN)), "non-finite"),
    "avt-tokens-nan-render": (bad_avatar(state=poke("tokens", NAN), command="render"), "tokens"),
    "avt-tokens-overflow": (bad_avatar(state=fill("tokens", 3e38), command="render"), "non-finite"),
    # expression codes and frame rates
    "codes-huge": (animate_codes(torch.full((3, E), 1e30)), "expression code"),
    "codes-negative-huge": (animate_codes(torch.full((2, E), -1e5)), "expression code"),
    "codes-nan": (animate_codes(torch.full((2, E), NAN)), "non-finite"),
    "codes-fps-nan": (animate_codes(fps_meta="nan"), "fps"),
    "codes-fps-zero": (animate_codes(fps_meta="0"), "fps"),
    "animate-fps-nan": (animate_args("--builtin", "neutral", "--fps", "nan"), "--fps"),
    "animate-fps-negative": (animate_args("--builtin", "neutral", "--fps", "-3"), "--fps"),
    "animate-with-nan-checkpoint": (animate_with_checkpoint(set_first("decoder.norm.weight", NAN)),
                                    "non-finite"),
    # frame streams
    "stream-means-nan": (bad_stream(poke("means", NAN)), "means"),
    "stream-scales-inf": (bad_stream(poke("scales", INF)), "scales"),
    "stream-opacities-nan": (bad_stream(poke("opacities", NAN)), "opacities"),
    "stream-colors-nan": (bad_stream(poke("colors", NAN)), "colors"),
    "stream-quats-nan": (bad_stream(poke("quats", NAN)), "quats"),
    "stream-sh-nan": (bad_stream(poke("sh_rest", NAN)), "sh_rest"),
    "stream-means-2d": (bad_stream(set_tensor("means", lambda m: m[:, :2].contiguous())), "means"),
    "stream-means-flat": (bad_stream(set_tensor("means", lambda m: m.reshape(-1).contiguous())), "means"),
    "stream-means-int": (bad_stream(set_tensor("means", lambda m: m.to(torch.int32))), "means"),
    "stream-quats-3": (bad_stream(set_tensor("quats", lambda q: q[:, :3].contiguous())), "quats"),
    "stream-opacity-above-one": (bad_stream(poke("opacities", 5.0)), "opacities"),
    "stream-scale-negative": (bad_stream(poke("scales", -0.1)), "scales"),
    "stream-missing-colors": (bad_stream(lambda t: t.pop("colors")), "colors"),
    "stream-version": (bad_stream(meta=setitem("stream_version", 2)), "stream_version"),
    "stream-camera-k-nan": (bad_stream(meta=lambda d: d["input_cameras"][1]["K"][0].__setitem__(0, NAN),
                                       path="inputs"), "non-finite"),
    "stream-camera-width-fraction": (bad_stream(meta=cam_meta("width", 16.5), path="inputs"), "width"),
    "stream-not-tar": (bad_stream(raw=b"not a frame stream at all " * 40), "frame stream"),
    "stream-empty": (bad_stream(raw=b""), "empty"),
    # PLYs
    "ply-x-nan": (bad_ply(ply_set(["x"], NAN)), "non-finite"),
    "ply-opacity-nan": (bad_ply(ply_set(["opacity"], NAN)), "opacity"),
    "ply-color-nan": (bad_ply(ply_set(["f_dc_1"], NAN)), "f_dc"),
    "ply-sh-nan": (bad_ply(ply_set(["f_rest_4"], NAN)), "f_rest"),
    "ply-scale-inf": (bad_ply(ply_set(["scale_0"], INF)), "scale"),
    "ply-scale-overflow": (bad_ply(ply_set(["scale_2"], 1000.0)), "scale"),
    "ply-rotation-zero": (bad_ply(ply_set(["rot_0", "rot_1", "rot_2", "rot_3"], 0.0)), "rot_"),
    "ply-missing-property": (bad_ply(drop=("opacity",)), "opacity"),
    "ply-no-vertices": (bad_ply(keep_rows=0), "no Gaussians"),
    "ply-not-a-ply": (bad_ply(raw=b"ply\nformat nonsense\n"), "PLY"),
    "ply-rest-not-bands": (bad_ply(drop=("f_rest_8",)), "f_rest"),
    # lifting backends
    "lift-os-system": (lift_args("os:system"), "os:system"),
    "lift-os-getcwd": (lift_args("os:getcwd"), "os:getcwd"),
    "lift-stdlib-class": (lift_args("json:JSONDecoder"), "json:JSONDecoder"),
    "lift-missing-module": (lift_args("no_such_module_here:make"), "no_such_module_here"),
    "lift-unknown-name": (lift_args("eg3d"), "eg3d"),
    # training recipes
    "train-n-inputs-zero": (train_args("data.n_inputs=0"), "data.n_inputs"),
    "train-n-inputs-negative": (train_args("data.n_inputs=-2"), "data.n_inputs"),
    "train-n-inputs-huge": (train_args("data.n_inputs=1000"), "data.n_inputs"),
    "train-n-targets-zero": (train_args("data.n_targets=0"), "data.n_targets"),
    "train-n-targets-huge": (train_args("data.n_targets=100000"), "data.n_targets"),
    "train-workers-negative": (train_args("data.num_workers=-1"), "data.num_workers"),
    "train-loss-nan": (train_args("loss.l1=nan"), "loss"),
    "train-lr-inf": (train_args("optim.lr=inf"), "optim.lr"),
    "train-model-dim-negative": (train_args("model.overrides={dim=-128}"), "dim"),
    "train-model-heads-zero": (train_args("model.overrides={heads=0}"), "heads"),
    "train-model-unknown-field": (train_args("model.overrides={depth=3}"), "depth"),
    "train-model-dim-float": (train_args("model.overrides={dim=128.5}"), "dim"),
}



def out_file(name: str, build):
    """``build`` with its output option's value replaced by the pre-existing file tmp/``name`` (not a folder)."""
    def wrapped(tmp, fx):
        argv, out = build(tmp, fx)
        return [tmp / name if a == out.parent else a for a in argv], tmp / name
    return wrapped


def in_tmp(name: str):
    """An argument: the path tmp/``name`` (made or not by the case)."""
    return lambda tmp: tmp / name


def behind_camera(i: int):
    """Turn camera ``i`` half around its y axis: the head centre ends up behind it."""
    def edit(doc):
        w2c = doc["cameras"][i]["w2c"]
        for row in (0, 2):
            w2c[row] = [-x for x in w2c[row]]
    return edit


def json_edit(path: str, edit):
    """Spoil a JSON file of a checkpoint or photo folder with ``edit(doc)``."""
    def spoil(folder):
        doc = json.loads((folder / path).read_text())
        edit(doc)
        (folder / path).write_text(json.dumps(doc))
    return spoil


def resaved_weights(edit):
    """A checkpoint whose weights were edited as tensors (``edit(dict)``) and config.json's sha256 updated."""
    def spoil(ck):
        from avat3r.model.checkpoint import sha256_bytes

        t = st_load((ck / "model.safetensors").read_bytes())
        edit(t)
        data = st_save(t)
        (ck / "model.safetensors").write_bytes(data)
        config_json(lambda d: d.__setitem__("weights_sha256", sha256_bytes(data)))(ck)
    return spoil


def junk_weights_with_sha(ck):
    from avat3r.model.checkpoint import sha256_bytes

    data = b"not safetensors" * 10
    (ck / "model.safetensors").write_bytes(data)
    config_json(lambda d: d.__setitem__("weights_sha256", sha256_bytes(data)))(ck)


def ck_meta(key, value=None):
    """Spoil the checkpoint's meta: set ``key`` (None: remove it)."""
    return config_json(lambda d: d["meta"].pop(key) if value is None else d["meta"].__setitem__(key, value))


def recon_ckpt(**kw):
    return reconstruct_photos(ckpt=junk_checkpoint(**kw))


def recon_out(name: str):
    def build(tmp, fx):
        folder, cams = photos()(tmp)
        argv, _ = reconstruct_args(folder, cams, fx["ckpt"])
        argv[argv.index("-o") + 1] = tmp / name
        return argv, tmp / name
    return build


def avatar_zip(members=None, drop=(), raw: bytes | None = None, avatar: str = "self"):
    """`animate` of an .avt rebuilt from the good one: ``members`` replace or add members, ``drop`` removes."""
    def build(tmp, fx):
        avt = tmp / "bad.avt"
        if raw is not None:
            avt.write_bytes(raw)
        else:
            with zipfile.ZipFile(fx[avatar]) as zf:
                data = {n: zf.read(n) for n in zf.namelist()}
            data.update(members or {})
            with zipfile.ZipFile(avt, "w") as zf:
                for name, blob in data.items():
                    if name not in drop:
                        zf.writestr(name, blob)
        out = tmp / "frames.tar"
        return ["animate", avt, "--builtin", "neutral", "-o", out, "-q"], out
    return build


def npz_bytes() -> bytes:
    buf = io.BytesIO()
    np.savez(buf, expr=np.zeros((3, E), np.float32), fps=25.0)
    return buf.getvalue()


def table_set(name: str, make):
    """An expr.parquet table edit: column ``name`` replaced by ``make(table)`` (None drops it)."""
    def edit(table):
        if make is None:
            return table.drop_columns([name])
        return table.set_column(table.column_names.index(name), name, make(table))
    return edit


def table_meta(**meta):
    def edit(table):
        return table.replace_schema_metadata({k.encode(): v.encode() for k, v in meta.items()})
    return edit


def pa_array(values, kind=None):
    def make(table):
        import pyarrow as pa

        return pa.array(values, type=kind(pa) if kind else None)
    return make


def truncated_parquet(tmp):
    path = expr_parquet()(tmp)
    path.write_bytes(path.read_bytes()[:60])
    return path


def empty_dir(name: str):
    def make(tmp, *_):
        (tmp / name).mkdir()
        return tmp / name
    return make


def stream_member(name: str, data: bytes, keep_gaussians: bool = True):
    """A frame stream whose frame 0 has the good Gaussians and the member ``name`` holding ``data``."""
    def build(tmp, fx):
        args, out = bad_stream()(tmp, fx)
        src = Path(args[1])
        t = {k: v.clone() for k, v in fx["tensors"].items()}
        blob = tar_member("000000.gaussians.safetensors", st_save(t)) if keep_gaussians else b""
        src.write_bytes(blob + tar_member(name, data) + b"\0" * 10240)
        return args, out
    return build


def truncated_stream(keep: int):
    def build(tmp, fx):
        args, out = bad_stream()(tmp, fx)
        src = Path(args[1])
        src.write_bytes(src.read_bytes()[:keep])
        return args, out
    return build


def render_stdin_empty(tmp, fx):
    return ["render", "-", "--ply", tmp / "copy.ply", "-q"], tmp / "copy.ply"


def render_nothing(tmp, fx):
    return ["render", fx["ply"], "-q"], tmp / "copy.ply"


def render_same_folder(tmp, fx):
    (tmp / "out").mkdir()
    return ["render", fx["ply"], "--frames", tmp / "out", "--ply", tmp / "out", "--size", "8", "-q"], \
        tmp / "out" / "000000.png"


def render_foreign_folder(tmp, fx):
    (tmp / "out").mkdir()
    return ["render", fx["ply"], "--frames", tmp / "out", "--size", "8", "-q"], tmp / "out" / "notes.txt"


def render_frames_is_file(tmp, fx):
    return ["render", fx["ply"], "--frames", tmp / "out", "--size", "8", "-q"], tmp / "out"


def cams_file(raw: bytes):
    def make(tmp, *_):
        (tmp / "path.json").write_bytes(raw)
        return tmp / "path.json"
    return make


def ply_text(header_and_body: bytes):
    return bad_ply(raw=header_and_body)


def garbage(n: int = 4096) -> bytes:
    return np.random.default_rng(7).integers(0, 256, n, dtype=np.uint8).tobytes()


def copy_set(edit):
    """A copy of the tiny set spoiled by ``edit(folder)``; returns its manifest."""
    def make(tmp, fx):
        import shutil

        shutil.copytree(fx["set"], tmp / "set2")
        edit(tmp / "set2")
        return tmp / "set2" / "manifest.parquet"
    return make


def prior_out_is_source(tmp, fx):
    import shutil

    shutil.copytree(fx["set"], tmp / "src")
    return ["prior", tmp / "src", "-o", tmp / "src"], tmp / "src" / "notes.txt"


def checkpoint_path(builder):
    """The checkpoint folder a `bad_checkpoint` builder writes (for model.init)."""
    def make(tmp, fx):
        argv, _ = builder(tmp, fx)
        return argv[argv.index("-c") + 1]
    return make


def with_argv(build, *extra):
    def wrapped(tmp, fx):
        argv, out = build(tmp, fx)
        return argv + list(extra), out
    return wrapped


def set_table(table_fn):
    """A whole new manifest table ``table_fn(pa)``."""
    def edit(_):
        import pyarrow as pa

        return table_fn(pa)
    return rewrite_manifest(edit)


TINY = "model.overrides={dim=32, heads=2, self_layers=1, cross_layers=1, input_res=16, patch=8, expression_hidden=16, upsampler_window=16}"
OTHER = TINY.replace("dim=32", "dim=64")
PLY_HEADER = b"ply\nformat binary_little_endian 1.0\nelement vertex %d\nproperty float x\nend_header\n"

CASES.update({
    # prep synth: sizes, segments, holdouts, outputs
    "synth-persons-zero": (prep_synth_args("--persons", "0"), "--persons"),
    "synth-persons-huge": (prep_synth_args("--persons", "20000"), "persons"),
    "synth-frames-huge": (prep_synth_args("--frames", "200000"), "frames"),
    "synth-cameras-huge": (prep_synth_args("--cameras", "5000"), "cameras"),
    "synth-res-tiny": (prep_synth_args("--res", "4"), "--res"),
    "synth-res-huge": (prep_synth_args("--res", "5000"), "res"),
    "synth-res-not-a-number": (prep_synth_args("--res", "64px"), "--res"),
    "synth-too-many-samples": (prep_synth_args("--persons", "10000", "--frames", "10000", "--cameras", "8"),
                               "samples"),
    "synth-segment-unknown": (prep_synth_args("--segments", "EXP_frown"), "EXP_frown"),
    "synth-segment-twice": (prep_synth_args("--segments", "neutral"), "twice"),
    "synth-holdout-all-val": (prep_synth_args("--persons", "2", "--val-persons", "2"), "holding out"),
    "synth-holdout-too-many": (prep_synth_args("--persons", "3", "--test-persons", "4"), "holding out"),
    "synth-holdout-negative": (prep_synth_args("--test-persons", "-1"), "--test-persons"),
    "synth-rig-unknown": (prep_synth_args("--rig", "studio"), "--rig"),
    "synth-workers-zero": (prep_synth_args("--workers", "0"), "--workers"),
    "synth-shard-mb-zero": (prep_synth_args("--shard-mb", "0"), "--shard-mb"),
    "synth-shard-mb-negative": (prep_synth_args("--shard-mb", "-5"), "--shard-mb"),
    "synth-shard-mb-nan": (prep_synth_args("--shard-mb", "nan"), "--shard-mb"),
    "synth-shard-mb-inf": (prep_synth_args("--shard-mb", "inf"), "--shard-mb"),
    "synth-source-missing": (prep_synth_args("--source", "no_such_heads_module"), "not available"),
    "synth-unknown-option": (prep_synth_args("--colour", "red"), "--colour"),
    "synth-out-is-file": (out_file("set.txt", prep_synth_args()), "is a file"),
    # prep images: the photo folder, cams.json, masks
    "images-folder-missing": (prep_images_args(lambda f: __import__("shutil").rmtree(f) or cams_file(b"{}")(
        f.parent)), "not a folder"),
    "images-cams-missing": (prep_images_args(remove("cams.json")), "cams.json"),
    "images-cams-not-json": (prep_images_args(write_file("cams.json", b"{oops")), "cams.json"),
    "images-cams-version": (prep_images_args(cams_doc(setitem("version", 2))), "version"),
    "images-cams-no-image-name": (prep_images_args(cams_doc(lambda d: d["cameras"][0].pop("image"))), "camera"),
    "images-photo-missing": (prep_images_args(remove("v2.png")), "v2.png"),
    "images-photo-extra": (prep_images_args(png_of_size("extra.png", 64, 64)), "extra.png"),
    "images-photo-not-an-image": (prep_images_args(write_file("v1.png", b"not a png at all")), "v1.png"),
    "images-photo-empty": (prep_images_args(write_file("v0.png", b"")), "v0.png"),
    "images-photo-truncated": (prep_images_args(truncate("v3.png", 40)), "v3.png"),
    "images-photo-wrong-size": (prep_images_args(png_of_size("v3.png", 32, 32)), "v3.png"),
    "images-photo-portrait": (prep_images_args(png_of_size("v2.png", 64, 96)), "64x96"),
    "images-photo-is-a-folder": (prep_images_args(lambda f: (f / "v1.png").unlink() or (f / "v1.png").mkdir()),
                                 "v1.png"),
    "images-name-twice": (prep_images_args(cams_doc(lambda d: d["cameras"][1].__setitem__("image", "v0.png"))),
                          "twice"),
    "images-same-sample-key": (prep_images_args(both(cams_doc(lambda d: d["cameras"][1].__setitem__("image", "v0.jpg")),
                                                     lambda f: (f / "v1.png").rename(f / "v0.jpg"))), "same sample key"),
    "images-head-behind-camera": (prep_images_args(cams_doc(behind_camera(2))), "behind"),
    "images-camera-size-differs": (prep_images_args(cams_doc(lambda d: d["cameras"][0].update(width=128))),
                                   "camera says"),
    "images-masks-folder-missing": (prep_images_args(None, "--masks", in_tmp("nomasks")), "mask folder"),
    "images-mask-wrong-size": (prep_images_args(with_masks(png_of_size("v1.png", 32, 32, gray=True)),
                                                "--masks", in_tmp("masks")), "mask is 32x32"),
    "images-mask-missing": (prep_images_args(with_masks(remove("v2.png")), "--masks", in_tmp("masks")), "no mask"),
    "images-mask-unreadable": (prep_images_args(with_masks(write_file("v0.png", b"junk")), "--masks",
                                                in_tmp("masks")), "v0.png"),
    "images-res-huge": (prep_images_args(None, "--res", "100000"), "--res"),
    "images-res-tiny": (prep_images_args(None, "--res", "2"), "--res"),
    "images-out-is-file": (out_file("set.txt", prep_images_args()), "is a file"),
    # prep synth-photos / synth-video
    "synth-photos-res-huge": (synth_photos_args("--res", "9000"), "--res"),
    "synth-photos-res-tiny": (synth_photos_args("--res", "3"), "--res"),
    "synth-photos-views-zero": (synth_photos_args("--views", "0"), "--views"),
    "synth-photos-views-more-than-cameras": (synth_photos_args("--views", "20", "--cameras", "6"), "20"),
    "synth-photos-cameras-three": (synth_photos_args("--cameras", "3"), "--cameras"),
    "synth-photos-person-negative": (synth_photos_args("--person", "-2"), "--person"),
    "synth-photos-frames-zero": (synth_photos_args("--frames", "0"), "--frames"),
    "synth-photos-rig-unknown": (synth_photos_args("--rig", "dome"), "--rig"),
    "synth-photos-out-is-file": (out_file("photos.txt", synth_photos_args()), "is a file"),
    "synth-video-sequence-unknown": (synth_video_args("--sequence", "grin"), "grin"),
    "synth-video-sequence-other-space": (synth_video_args(sequence=expr_parquet(space="ava256")), "ava256"),
    "synth-video-sequence-wrong-dim": (synth_video_args(sequence=expr_parquet(torch.zeros(3, 5))), "13 values"),
    "synth-video-sequence-nan": (synth_video_args(sequence=expr_parquet(torch.full((2, E), NAN))), "non-finite"),
    "synth-video-sequence-not-parquet": (synth_video_args(sequence=raw_file("expr.parquet", b"frame,expr\n")),
                                         "Parquet"),
    "synth-video-fps-zero": (synth_video_args("--fps", "0"), "--fps"),
    "synth-video-fps-nan": (synth_video_args("--fps", "nan"), "fps"),
    "synth-video-fps-inf": (synth_video_args("--fps", "inf"), "fps"),
    "synth-video-frames-zero": (synth_video_args("--frames", "0"), "--frames"),
    "synth-video-res-huge": (synth_video_args("--res", "8192"), "--res"),
    "synth-video-person-missing": (lambda tmp, fx: (["prep", "synth-video", "-o", tmp / "d.mp4"], tmp / "d.mp4"),
                                   "--person"),
    # prior: the manifest, its shards, the options
    "prior-source-missing": (prior_args(source=lambda f: f.parent / "nowhere"), "cannot read manifest"),
    "prior-manifest-missing": (prior_args(edit=remove("manifest.parquet")), "manifest"),
    "prior-manifest-not-parquet": (prior_args(edit=write_file("manifest.parquet", b"PAR1 but nothing else")),
                                   "cannot read manifest"),
    "prior-manifest-empty-file": (prior_args(edit=write_file("manifest.parquet", b"")), "cannot read manifest"),
    "prior-manifest-truncated": (prior_args(edit=truncate("manifest.parquet", 300)), "cannot read manifest"),
    "prior-manifest-csv": (prior_args(source=lambda f: cams_file(b"key,shard\n")(f) and f / "path.json"),
                           "cannot read manifest"),
    "prior-manifest-wrong-columns": (prior_args(edit=set_table(lambda pa: pa.table({"a": [1], "b": ["x"]}))),
                                     "lacks column"),
    "prior-manifest-no-expr": (prior_args(edit=rewrite_manifest(lambda t: t.drop_columns(["expr"]))), "expr"),
    "prior-manifest-no-metadata": (prior_args(edit=rewrite_manifest(lambda t: t.replace_schema_metadata(None))),
                                   "metadata"),
    "prior-manifest-version-newer": (prior_args(edit=meta_edit(lambda m: m.__setitem__(b"version", b"99"))),
                                     "newer"),
    "prior-manifest-version-text": (prior_args(edit=meta_edit(lambda m: m.__setitem__(b"version", b"one"))),
                                    "version"),
    "prior-manifest-expr-not-fixed": (prior_args(edit=set_column("expr", lambda c: c.cast(
        __import__("pyarrow").list_(__import__("pyarrow").float32())))), "fixed-size"),
    "prior-manifest-offset-negative": (prior_args(edit=set_column("offset", lambda c: __import__("pyarrow").array(
        [-4096] * len(c), __import__("pyarrow").int64()))), "span"),
    "prior-manifest-size-huge": (prior_args(edit=set_column("size", lambda c: __import__("pyarrow").array(
        [1 << 40] * len(c), __import__("pyarrow").int64()))), "span"),
    "prior-manifest-frame-null": (prior_args(edit=set_column("frame", lambda c: __import__("pyarrow").array(
        [None] * len(c), __import__("pyarrow").int32()))), "frame"),
    "prior-manifest-offset-text": (prior_args(edit=set_column("offset", lambda c: __import__("pyarrow").array(
        ["zero"] * len(c)))), "offset"),
    "prior-manifest-shard-elsewhere": (prior_args(edit=set_column("shard", lambda c: __import__("pyarrow").array(
        ["other.tar"] * len(c)))), "other.tar"),
    "prior-shard-missing": (prior_args(edit=remove("shard-000000.tar")), "shard-000000.tar"),
    "prior-shard-truncated": (prior_args(edit=truncate("shard-000000.tar", 9000)), "shard-000000.tar"),
    "prior-shard-empty": (prior_args(edit=truncate("shard-000000.tar", 0)), "shard-000000.tar"),
    "prior-shard-corrupt-header": (prior_args(edit=flip_bytes("shard-000000.tar", 100, 60)), "shard-000000.tar"),
    "prior-shard-corrupt-png": (prior_args(edit=flip_bytes("shard-000000.tar", 512 + 30, 40)), "rgb.png"),
    "prior-shard-is-a-folder": (prior_args(edit=lambda f: (f / "shard-000000.tar").unlink()
                                           or (f / "shard-000000.tar").mkdir()), "shard-000000.tar"),
    "prior-frames-text": (prior_args("--frames", "first"), "--frames"),
    "prior-frames-open-range": (prior_args("--frames", "3-"), "--frames"),
    "prior-frames-negative": (prior_args("--frames", "-1"), "--frames"),
    "prior-frames-reversed": (prior_args("--frames", "5-2"), "--frames"),
    "prior-frames-absent": (prior_args("--frames", "7"), "frames"),
    "prior-segments-unknown": (prior_args("--segments", "EXP_frown"), "EXP_frown"),
    "prior-segments-empty": (prior_args("--segments", ","), "--segments"),
    "prior-position-unknown": (prior_args("--position", "lidar"), "lidar"),
    "prior-features-unknown": (prior_args("--features", "clip"), "clip"),
    "prior-partners-negative": (prior_args("--partners", "-1"), "--partners"),
    "prior-workers-zero": (prior_args("--workers", "0"), "--workers"),
    "prior-sapiens-size-word": (prior_args("--features", "sapiens", "--sapiens-size", "big"), "--sapiens-size"),
    "prior-sapiens-size-three": (prior_args("--features", "sapiens", "--sapiens-size", "1x2x3"), "--sapiens-size"),
    "prior-sapiens-no-weights": (prior_args("--features", "sapiens", "--sapiens-ckpt", in_tmp("none.pt2")),
                                 "none.pt2"),
    "prior-dust3r-no-repo": (prior_args("--position", "dust3r", "--dust3r-repo", in_tmp("no-dust3r")),
                             "dust3r"),
    "prior-ground-truth-no-depth": (prior_args("--position", "ground-truth"), "depth"),
    "prior-out-is-source": (prior_out_is_source, "differ"),
    "prior-out-is-file": (out_file("out.txt", prior_args()), "is a file"),
    # train: recipe files, --set, the data and the initial weights
    "train-recipe-missing": (lambda tmp, fx: (["train", "-r", tmp / "none.toml", "-o", tmp / "run"],
                                              tmp / "run" / "notes.txt"), "does not exist"),
    "train-recipe-not-toml": (train_recipe("model = ["), "TOML"),
    "train-recipe-binary": (train_recipe("\x00\x01\x02"), "TOML"),
    "train-recipe-unknown-section": (train_recipe("[trainer]\nlr = 1\n"), "trainer"),
    "train-recipe-unknown-key": (train_recipe("[optim]\nlearning_rate = 1e-4\n"), "optim.learning_rate"),
    "train-recipe-section-not-table": (train_recipe("optim = 3\n"), "[optim]"),
    "train-recipe-lr-string": (train_recipe('[optim]\nlr = "fast"\n'), "optim.lr"),
    "train-recipe-steps-fraction": (train_recipe("[optim]\nmax_steps = 1.5\n"), "optim.max_steps"),
    "train-recipe-inputs-bool": (train_recipe("[data]\nn_inputs = true\n"), "data.n_inputs"),
    "train-recipe-betas-three": (train_recipe("[optim]\nbetas = [0.9, 0.99, 0.9]\n"), "betas"),
    "train-recipe-betas-one": (train_recipe("[optim]\nbetas = [1.0, 0.9]\n"), "betas"),
    "train-recipe-loss-nan": (train_recipe("[loss]\nssim = nan\n"), "loss.ssim"),
    "train-recipe-grad-clip-inf": (train_recipe("[optim]\ngrad_clip = inf\n"), "optim.grad_clip"),
    "train-recipe-min-lr-minus-inf": (train_recipe("[optim]\nmin_lr = -inf\n"), "optim.min_lr"),
    "train-recipe-options-string": (train_recipe('[data]\noptions = "fast"\n'), "data.options"),
    "train-recipe-overrides-number": (train_recipe("[model]\noverrides = 3\n"), "model.overrides"),
    "train-recipe-preset-unknown": (train_recipe('[model]\npreset = "giant"\n'), "giant"),
    "train-set-no-equals": (train_args("optim.lr"), "section.key=value"),
    "train-set-no-section": (train_args("lr=1e-4"), "section"),
    "train-set-empty-key": (train_args("=3"), "section"),
    "train-set-through-a-value": (train_args("optim.lr.x=1"), "not a table"),
    "train-set-unknown-section": (train_args("trainer.lr=1"), "trainer"),
    "train-set-unknown-key": (train_args("optim.learning_rate=1"), "optim.learning_rate"),
    "train-set-lr-not-a-number": (train_args("optim.lr=1e-4x"), "optim.lr"),
    "train-set-lr-negative": (train_args("optim.lr=-1"), "optim.lr"),
    "train-set-optimizer-unknown": (train_args("optim.optimizer=sgd"), "sgd"),
    "train-set-schedule-unknown": (train_args("optim.schedule=linear"), "linear"),
    "train-set-min-lr-above-lr": (train_args("optim.min_lr=1"), "min_lr"),
    "train-set-batch-zero": (train_args("optim.batch_size=0"), "batch_size"),
    "train-set-max-steps-zero": (train_args("optim.max_steps=0"), "max_steps"),
    "train-set-loss-negative": (train_args("loss.ssim=-1"), "loss"),
    "train-set-lpips-net-unknown": (train_args("loss.lpips_net=resnet"), "resnet"),
    "train-set-precision-unknown": (train_args("run.mixed_precision=fp8"), "fp8"),
    "train-set-checkpoint-every-zero": (train_args("run.checkpoint_every=0"), "checkpoint_every"),
    "train-set-weighting-without-references": (train_args("data.options={}"), "reference_views"),
    "train-set-share-one": (train_args("loss.expression_weight=0", "loss.expression_share=1"), "expression_share"),
    "train-set-share-and-weight": (train_args("loss.expression_share=0.5"), "not both"),
    "train-max-steps-zero": (with_argv(train_args(), "--max-steps", "0"), "--max-steps"),
    "train-time-limit-zero": (with_argv(train_args(), "--time-limit", "0"), "--time-limit"),
    "train-manifest-missing": (train_args(f"data.manifest={'no/such/manifest.parquet'}"), "does not exist"),
    "train-manifest-empty": (train_args('data.manifest=""'), "data.manifest"),
    "train-manifest-not-parquet": (train_data("data.manifest=" + str(ROOT / "recipes" / "synthheads-tiny.toml")),
                                   "cannot read manifest"),
    "train-split-unknown": (train_data("data.split=holdout"), "holdout"),
    "train-split-empty": (train_data("data.split=val"), "val"),
    "train-init-missing": (train_data(init=lambda tmp, fx: tmp / "none"), "none"),
    "train-init-not-a-checkpoint": (train_data(init=empty_dir("empty")), "empty"),
    "train-init-other-architecture": (train_data(OTHER, init=lambda tmp, fx: fx["ckpt"]), "architecture"),
    "train-init-nan-weights": (train_data(init=checkpoint_path(bad_checkpoint(edit_weights=set_first(QKV, NAN)))),
                               "non-finite"),
    "train-resume-nothing": (with_argv(train_data(), "--resume"), "resume"),
    # reconstruct: photos, masks, checkpoint folders, devices, outputs
    "recon-photo-missing": (reconstruct_photos(remove("v3.png")), "v3.png"),
    "recon-photo-extra": (reconstruct_photos(png_of_size("v9.png", 64, 64)), "v9.png"),
    "recon-photo-not-an-image": (reconstruct_photos(write_file("v0.png", b"GIF89a" + b"\0" * 40)), "v0.png"),
    "recon-photo-empty": (reconstruct_photos(write_file("v2.png", b"")), "v2.png"),
    "recon-photo-wrong-size": (reconstruct_photos(png_of_size("v2.png", 48, 48)), "48x48"),
    "recon-photo-landscape": (reconstruct_photos(png_of_size("v1.png", 96, 64)), "96x64"),
    "recon-head-behind-camera": (reconstruct_photos(cams_doc(behind_camera(0))), "behind"),
    "recon-name-twice": (reconstruct_photos(cams_doc(lambda d: d["cameras"][3].__setitem__("image", "v1.png"))),
                         "twice"),
    "recon-cams-missing": (reconstruct_photos(remove("cams.json")), "cams.json"),
    "recon-masks-folder-missing": (reconstruct_photos(None, "--masks", in_tmp("nomasks")), "mask folder"),
    "recon-mask-wrong-size": (reconstruct_photos(with_masks(png_of_size("v0.png", 64, 32, gray=True)),
                                                 "--masks", in_tmp("masks")), "mask is 64x32"),
    "recon-mask-missing": (reconstruct_photos(with_masks(remove("v3.png")), "--masks", in_tmp("masks")), "no mask"),
    "recon-mask-unreadable": (reconstruct_photos(with_masks(write_file("v1.png", b"\x89PNG broken")),
                                                 "--masks", in_tmp("masks")), "v1.png"),
    "recon-device-unknown": (reconstruct_photos(None, "--device", "tpu"), "tpu"),
    "recon-device-bad-index": (reconstruct_photos(None, "--device", "cuda:x"), "cuda:x"),
    "recon-out-not-avt": (recon_out("head.zip"), ".avt"),
    "recon-checkpoint-missing": (reconstruct_photos(ckpt=lambda tmp, fx: tmp / "no-ckpt"), "no-ckpt"),
    "recon-checkpoint-unknown-name": (reconstruct_photos(ckpt=lambda tmp, fx: "synthheads-huge"), "synthheads-huge"),
    "recon-checkpoint-a-file": (reconstruct_photos(ckpt=lambda tmp, fx: fx["ply"]), "scene.ply"),
    "recon-checkpoint-empty-folder": (reconstruct_photos(ckpt=empty_dir("empty-ckpt")), "empty-ckpt"),
    "recon-checkpoint-config-missing": (recon_ckpt(files={"config.json": None}), "config.json"),
    "recon-checkpoint-weights-missing": (recon_ckpt(files={"model.safetensors": None}), "model.safetensors"),
    "recon-checkpoint-config-not-json": (recon_ckpt(files={"config.json": b"{"}), "config.json"),
    "recon-checkpoint-config-a-list": (recon_ckpt(files={"config.json": b"[]"}), "checkpoint"),
    "recon-checkpoint-format": (recon_ckpt(edit=config_json(setitem("format", "pytorch"))), "checkpoint"),
    "recon-checkpoint-version": (recon_ckpt(edit=config_json(setitem("version", 7))), "version"),
    "recon-checkpoint-config-unknown-field": (recon_ckpt(edit=config_json(lambda d: d["config"].update(depth=3))),
                                              "depth"),
    "recon-checkpoint-weights-truncated": (recon_ckpt(edit=truncate("model.safetensors", 1000)), "sha256"),
    "recon-checkpoint-weights-junk": (recon_ckpt(edit=junk_weights_with_sha), "safetensors"),
    "recon-checkpoint-tensor-missing": (recon_ckpt(edit=resaved_weights(lambda t: t.pop(QKV))), QKV),
    "recon-checkpoint-tensor-extra": (recon_ckpt(edit=resaved_weights(lambda t: t.__setitem__(
        "extra.weight", torch.zeros(2)))), "extra.weight"),
    "recon-checkpoint-tensor-shape": (recon_ckpt(edit=resaved_weights(lambda t: t.__setitem__(
        QKV, t[QKV][:-1].contiguous()))), QKV),
    "recon-checkpoint-no-space": (recon_ckpt(edit=ck_meta("expression_space")), "expression_space"),
    "recon-checkpoint-neutral-short": (recon_ckpt(edit=ck_meta("neutral", [0.0] * 5)), "neutral"),
    "recon-checkpoint-more-views": (recon_ckpt(edit=ck_meta("data", {"n_inputs": 6})), "exactly 6"),
    # animate: .avt files, expression files, options
    "animate-avt-missing": (lambda tmp, fx: (["animate", tmp / "none.avt", "--builtin", "neutral", "-o",
                                              tmp / "f.tar"], tmp / "f.tar"), "no such avatar"),
    "animate-avt-not-a-zip": (avatar_zip(raw=b"PK but not really a zip" * 10), "zip"),
    "animate-avt-empty": (avatar_zip(raw=b""), "zip"),
    "animate-avt-truncated-zip": (lambda tmp, fx: avatar_zip(raw=fx["self"].read_bytes()[:-200])(tmp, fx), "zip"),
    "animate-avt-extra-member": (avatar_zip({"run.sh": b"rm -rf ~"}), "run.sh"),
    "animate-avt-no-state": (avatar_zip(drop=("state.safetensors",)), "state.safetensors"),
    "animate-avt-no-meta": (avatar_zip(drop=("meta.json",)), "meta.json"),
    "animate-avt-meta-not-json": (avatar_zip({"meta.json": b"{"}), "meta.json"),
    "animate-avt-meta-a-list": (avatar_zip({"meta.json": b"[1]"}), "meta.json"),
    "animate-avt-meta-format": (bad_avatar(meta=setitem("format", "glb")), "avatar"),
    "animate-avt-meta-version": (bad_avatar(meta=setitem("version", 9)), "version"),
    "animate-avt-meta-no-config": (bad_avatar(meta=lambda m: m.pop("config")), "config"),
    "animate-avt-meta-no-cameras": (bad_avatar(meta=lambda m: m.pop("cameras")), "cameras"),
    "animate-avt-neutral-strings": (bad_avatar(meta=setitem("neutral", ["0"] * E)), "neutral"),
    "animate-avt-neutral-short": (bad_avatar(meta=setitem("neutral", [0.0] * 5)), "neutral"),
    "animate-avt-state-junk": (avatar_zip({"state.safetensors": b"\x08\0\0\0\0\0\0\0{}garbage"}),
                               "state.safetensors"),
    "animate-avt-state-no-tokens": (bad_avatar(state=lambda t: t.pop("tokens")), "tokens"),
    "animate-avt-state-tokens-shape": (bad_avatar(state=lambda t: t.__setitem__("tokens", t["tokens"][..., :5]
                                                                                 .contiguous())), "tokens"),
    "animate-avt-decoder-no-tensor": (bad_avatar(decoder=lambda t: t.pop(next(iter(t)))), "missing"),
    "animate-avt-decoder-junk": (avatar_zip({"decoder.safetensors": b"junk"}), "decoder"),
    "animate-plain-without-checkpoint": (animate_seq(expr_parquet(), avatar="plain"), "checkpoint"),
    "animate-plain-other-checkpoint": (lambda tmp, fx: with_argv(bad_avatar(meta=setitem(
        "checkpoint_sha256", "ab" * 32)), "-c", fx["ckpt"])(tmp, fx), "sha256"),
    "animate-checkpoint-missing": (animate_args("--builtin", "neutral", "-c", in_tmp("no-ckpt")), "no-ckpt"),
    "expr-json": (animate_seq(raw_file("expr.json", b'{"frames": [[0, 0, 0]]}')), "Parquet"),
    "expr-npz": (animate_seq(raw_file("expr.npz", npz_bytes())), "Parquet"),
    "expr-csv": (animate_seq(raw_file("expr.csv", b"frame,expr\n0,0\n")), "Parquet"),
    "expr-empty-file": (animate_seq(raw_file("expr.parquet", b"")), "Parquet"),
    "expr-truncated": (animate_seq(truncated_parquet), "Parquet"),
    "expr-missing": (animate_seq(lambda tmp: tmp / "none.parquet"), "none.parquet"),
    "expr-a-folder": (animate_seq(empty_dir("codes")), "codes"),
    "expr-wrong-dim": (animate_seq(expr_parquet(torch.zeros(3, 5))), "5-d"),
    "expr-other-space": (animate_seq(expr_parquet(space="ava256")), "ava256"),
    "expr-unknown-space": (animate_seq(expr_parquet(space="flame")), "flame"),
    "expr-no-frames": (animate_seq(expr_parquet(torch.zeros(0, E))), "no frames"),
    "expr-inf": (animate_seq(expr_parquet(torch.full((2, E), INF))), "non-finite"),
    "expr-frame-gap": (animate_seq(expr_parquet(table_edit=table_set("frame", pa_array([0, 2, 3],
                                                                                       lambda pa: pa.int32())))),
                       "frame"),
    "expr-frame-twice": (animate_seq(expr_parquet(table_edit=table_set("frame", pa_array([0, 0, 1],
                                                                                         lambda pa: pa.int32())))),
                         "frame"),
    "expr-frame-text": (animate_seq(expr_parquet(table_edit=table_set("frame", pa_array(["a", "b", "c"])))),
                        "frame"),
    "expr-no-frame-column": (animate_seq(expr_parquet(table_edit=table_set("frame", None))), "frame"),
    "expr-no-expr-column": (animate_seq(expr_parquet(table_edit=table_set("expr", None))), "expr"),
    "expr-no-metadata": (animate_seq(expr_parquet(table_edit=lambda t: t.replace_schema_metadata(None))),
                         "metadata"),
    "expr-no-fps": (animate_seq(expr_parquet(table_edit=table_meta(expression_space="synthheads-v1"))), "fps"),
    "expr-fps-text": (animate_seq(expr_parquet(table_edit=table_meta(expression_space="synthheads-v1",
                                                                     fps="fast"))), "fps"),
    "expr-fps-negative": (animate_seq(expr_parquet(table_edit=table_meta(expression_space="synthheads-v1",
                                                                         fps="-25"))), "fps"),
    "expr-fps-inf": (animate_seq(expr_parquet(table_edit=table_meta(expression_space="synthheads-v1", fps="inf"))),
                     "fps"),
    "expr-space-empty": (animate_seq(expr_parquet(space="")), "space"),
    "expr-variable-lists": (animate_seq(expr_parquet(table_edit=table_set("expr", pa_array(
        [[0.0] * E, [0.0] * 3, [0.0] * E], lambda pa: pa.list_(pa.float32()))))), "fixed-size"),
    "expr-int-codes": (animate_seq(expr_parquet(table_edit=table_set("expr", pa_array(
        [[0] * E] * 3, lambda pa: pa.list_(pa.int32(), E))))), "floats"),
    "expr-strings": (animate_seq(expr_parquet(table_edit=table_set("expr", pa_array(["smile"] * 3)))), "expr"),
    "expr-null-code": (animate_seq(expr_parquet(table_edit=table_set("expr", pa_array(
        [[0.0] * E, None, [0.0] * E], lambda pa: pa.list_(pa.float32(), E))))), "missing"),
    "animate-builtin-unknown": (animate_args("--builtin", "smile"), "smile"),
    "animate-builtin-capitalised": (animate_args("--builtin", "Demo"), "Demo"),
    "animate-builtin-empty": (animate_args("--builtin", ""), "built-in"),
    "animate-two-sources": (animate_seq(expr_parquet(), "--builtin", "demo"), "exactly one"),
    "animate-no-source": (animate_args(), "exactly one"),
    "animate-fps-zero": (animate_args("--builtin", "neutral", "--fps", "0"), "--fps"),
    "animate-fps-inf": (animate_args("--builtin", "neutral", "--fps", "inf"), "--fps"),
    "animate-fps-word": (animate_args("--builtin", "neutral", "--fps", "fast"), "--fps"),
    "animate-batch-zero": (animate_args("--builtin", "neutral", "--batch", "0"), "--batch"),
    "animate-batch-negative": (animate_args("--builtin", "neutral", "--batch", "-8"), "--batch"),
    "animate-batch-word": (animate_args("--builtin", "neutral", "--batch", "all"), "--batch"),
    "animate-smooth-zero": (animate_args("--video", in_tmp("v.mp4"), "--smooth", "0"), "--smooth"),
    "animate-device-unknown": (animate_args("--builtin", "neutral", "--device", "tpu"), "tpu"),
    "animate-video-missing": (animate_args("--video", in_tmp("none.mp4")), "none.mp4"),
    "animate-video-not-a-video": (animate_seq(raw_file("clip.mp4", b"not a video" * 50), avatar="self"),
                                  "clip.mp4"),
    "animate-extractor-unknown": (lambda tmp, fx: animate_args("--video", fx["flat_video"], "--extractor",
                                                               "magic")(tmp, fx), "magic"),
    "animate-extractor-weights-missing": (lambda tmp, fx: animate_args(
        "--video", fx["flat_video"], "--extractor", "regressor", "--extractor-weights", tmp / "no-weights")(tmp, fx),
        "no-weights"),
    # render: sources, camera paths, sizes, colours, outputs
    "render-source-missing": (render_src(lambda tmp, fx: tmp / "none.tar"), "none.tar"),
    "render-source-a-folder": (render_src(empty_dir("frames-in")), "frames-in"),
    "render-stdin-empty": (render_stdin_empty, "empty"),
    "render-nothing-to-write": (render_nothing, "nothing to write"),
    "render-path-unknown": (render_src("ply", "--path", "spiral"), "spiral"),
    "render-path-inputs-of-ply": (render_src("ply", "--path", "inputs", output=("--frames", "out")), "input cameras"),
    "render-path-cams-missing": (render_src("ply", "--path", in_tmp("none.json"), output=("--frames", "out")),
                                 "none.json"),
    "render-path-cams-not-json": (lambda tmp, fx: render_src("ply", "--path", cams_file(b"{x")(tmp), output=(
        "--frames", "out"))(tmp, fx), "path.json"),
    "render-path-cams-no-cameras": (lambda tmp, fx: render_src("ply", "--path", cams_file(
        b'{"version": 1, "cameras": []}')(tmp), output=("--frames", "out"))(tmp, fx), "non-empty"),
    "render-path-cams-txt": (render_src("ply", "--path", "cams.txt"), "cams.txt"),
    "render-size-one": (render_src("ply", "--size", "1"), "--size"),
    "render-size-negative": (render_src("ply", "--size", "-512"), "--size"),
    "render-size-huge": (render_src("ply", "--size", "100000", output=("--frames", "out")), "size"),
    "render-size-word": (render_src("ply", "--size", "big"), "--size"),
    "render-background-four": (render_src("ply", "--background", "0,0,0,1"), "--background"),
    "render-background-word": (render_src("ply", "--background", "white"), "--background"),
    "render-background-nan": (render_src("ply", "--background", "nan,0,0"), "--background"),
    "render-background-negative": (render_src("ply", "--background", "-0.5,0,0"), "--background"),
    "render-background-over-one": (render_src("ply", "--background", "255,255,255"), "--background"),
    "render-background-empty": (render_src("ply", "--background", ""), "--background"),
    "render-radius-zero": (render_src("ply", "--radius", "0"), "--radius"),
    "render-radius-negative": (render_src("ply", "--radius", "-1"), "--radius"),
    "render-radius-nan": (render_src("ply", "--radius", "nan"), "--radius"),
    "render-radius-inf": (render_src("ply", "--radius", "inf", output=("--frames", "out")), "--radius"),
    "render-n-frames-zero": (render_src("ply", "--n-frames", "0"), "--n-frames"),
    "render-fps-zero": (render_src("ply", "--fps", "0"), "--fps"),
    "render-fps-inf": (render_src("ply", "--fps", "inf"), "--fps"),
    "render-same-folder-twice": (render_same_folder, "same folder"),
    "render-frames-folder-foreign": (render_foreign_folder, "not empty"),
    "render-frames-is-a-file": (render_frames_is_file, "is a file"),
    "render-expr-unknown": (render_src("self", "--expr", "grin"), "grin"),
    "render-expr-other-space": (lambda tmp, fx: render_src("self", "--expr", expr_parquet(space="ava256")(tmp))(
        tmp, fx), "ava256"),
    "render-expr-wrong-dim": (lambda tmp, fx: render_src("self", "--expr", expr_parquet(torch.zeros(2, 4))(tmp))(
        tmp, fx), "4-d"),
    "render-avt-without-decoder": (render_src("plain"), "checkpoint"),
    "render-avt-other-checkpoint": (lambda tmp, fx: render_src("self", "-c", tmp / "none")(tmp, fx), "none"),
    "render-backend-unknown": (render_src("ply", "--backend", "vulkan", "--size", "8", output=("--frames", "out")),
                               "vulkan"),
    "render-device-unknown": (render_src("ply", "--device", "tpu"), "tpu"),
    "render-unknown-option": (render_src("ply", "--resolution", "8"), "--resolution"),
    "stream-meta-not-json": (stream_member("000000.meta.json", b"{"), "meta.json"),
    "stream-no-meta": (stream_member("000000.notes.txt", b"hello"), "notes.txt"),
    "stream-no-gaussians": (stream_member("000000.meta.json", json.dumps({"stream_version": 1, "frame": 0}).encode(),
                                          keep_gaussians=False), "000000"),
    "stream-gaussians-junk": (stream_member("000001.gaussians.safetensors", b"junk"), "000001"),
    "stream-truncated": (truncated_stream(700), "frame stream"),
    "stream-frame-negative": (bad_stream(meta=setitem("frame", -1)), "frame"),
    "stream-frame-missing": (bad_stream(meta=lambda d: d.pop("frame")), "frame"),
    "stream-frame-text": (bad_stream(meta=setitem("frame", "first")), "frame"),
    "stream-n-frames-zero": (bad_stream(meta=setitem("n_frames", 0)), "n_frames"),
    "stream-fps-negative": (bad_stream(meta=setitem("fps", -25.0)), "fps"),
    "stream-means-rows-differ": (bad_stream(set_tensor("means", lambda m: m[:-1].contiguous())), "shape"),
    "stream-camera-no-k": (bad_stream(meta=lambda d: d["input_cameras"][1].pop("K"), path="inputs"), "K"),
    "ply-empty-file": (bad_ply(raw=b""), "PLY"),
    "ply-garbage": (bad_ply(raw=garbage()), "PLY"),
    "ply-header-only": (bad_ply(raw=PLY_HEADER % 5), "PLY"),
    "ply-claims-trillions": (bad_ply(raw=PLY_HEADER % 10**12 + b"\0" * 64), "PLY"),
    "ply-no-vertex-element": (bad_ply(raw=b"ply\nformat ascii 1.0\nelement face 1\nproperty float a\nend_header\n1\n"),
                              "vertex"),
    "ply-ascii-words": (bad_ply(raw=b"ply\nformat ascii 1.0\nelement vertex 1\nproperty float x\nend_header\nabc\n"),
                        "PLY"),
    "ply-missing-xyz": (bad_ply(drop=("x", "y", "z")), "x"),
    "ply-rest-two-coefficients": (bad_ply(drop=("f_rest_6", "f_rest_7", "f_rest_8")), "f_rest"),
    "ply-y-inf": (bad_ply(ply_set(["y"], INF)), "non-finite"),
    "ply-rotation-nan": (bad_ply(ply_set(["rot_2"], NAN)), "rot_"),
    # eval: checkpoint, manifest and options
    "eval-checkpoint-missing": (eval_args(checkpoint=lambda tmp, fx: tmp / "no-ckpt"), "no-ckpt"),
    "eval-checkpoint-empty-folder": (eval_args(checkpoint=empty_dir("empty-ckpt")), "empty-ckpt"),
    "eval-checkpoint-nan": (eval_args(checkpoint=checkpoint_path(bad_checkpoint(edit_weights=set_first(QKV, NAN)))),
                            "non-finite"),
    "eval-manifest-missing": (eval_args(manifest=lambda tmp, fx: tmp / "none.parquet"), "none.parquet"),
    "eval-manifest-junk": (eval_args(manifest=lambda tmp, fx: raw_file("m.parquet", garbage())(tmp)), "m.parquet"),
    "eval-manifest-wrong-columns": (eval_args(manifest=copy_set(set_table(lambda pa: pa.table({"a": [1]})))),
                                    "lacks column"),
    "eval-manifest-other-space": (eval_args(manifest=copy_set(meta_edit(lambda m: m.__setitem__(
        b"expression_space", b"ava256")))), "ava256"),
    "eval-split-unknown": (eval_args("--split", "holdout"), "holdout"),
    "eval-split-empty": (eval_args("--split", "val"), "val"),
    "eval-examples-zero": (eval_args("-n", "0"), "--examples"),
    "eval-examples-negative": (eval_args("-n", "-5"), "--examples"),
    "eval-examples-word": (eval_args("-n", "many"), "--examples"),
    "eval-inputs-unknown": (eval_args("--inputs", "random"), "--inputs"),
    "eval-inputs-conflict": (eval_args("--inputs", "other", "--consistent-inputs"), "exclude"),
    "eval-inputs-old-flags-conflict": (eval_args("--mixed-inputs", "--other-expression-inputs"), "exclude"),
    "eval-input-segments-empty": (eval_args("--input-segments", " , "), "--input-segments"),
    "eval-input-segments-unknown": (eval_args("--input-segments", "EXP_frown"), "EXP_frown"),
    "eval-baseline-unknown": (eval_args("--baseline", "oracle"), "oracle"),
    "eval-no-model": (eval_args(checkpoint=False), "--baseline"),
    "eval-device-unknown": (eval_args("--device", "tpu"), "tpu"),
    "eval-out-is-file": (out_file("eval.txt", eval_args()), "eval.txt"),
    # lift: sources without a head, unreadable ones, backends, options
    "lift-source-missing": (lift_from(lambda tmp, fx: tmp / "none.mp4"), "none.mp4"),
    "lift-folder-of-text": (lift_from(folder_of(("a.txt", b"x"), ("b.txt", b"y"))), "0 photos"),
    "lift-folder-three-photos": (lift_from(flat_pngs(3)), "at least 4"),
    "lift-folder-flat-photos": (lift_from(flat_pngs(4)), "face"),
    "lift-folder-unreadable-photos": (lift_from(folder_of(*[(f"p{i}.png", b"junk") for i in range(4)])), "p0.png"),
    "lift-video-flat": (lift_from(lambda tmp, fx: fx["flat_video"]), "face"),
    "lift-video-two-frames": (lift_from(lambda tmp, fx: fx["short_video"]), "2 frames"),
    "lift-video-garbage": (lift_from(lambda tmp, fx: raw_file("clip.mp4", garbage())(tmp)), "clip.mp4"),
    "lift-video-empty": (lift_from(lambda tmp, fx: raw_file("clip.mov", b"")(tmp)), "clip.mov"),
    "lift-unknown-kind": (lift_from(lambda tmp, fx: raw_file("notes.txt", b"hello")(tmp)), "notes.txt"),
    "lift-video-backend-on-folder": (lift_from(flat_pngs(4), "--backend", "video"), "video backend"),
    "lift-photos-backend-on-video": (lift_from(lambda tmp, fx: fx["flat_video"], "--backend", "photos"),
                                     "photos backend"),
    "lift-image-no-backend": (lift_from(lambda tmp, fx: raw_file("me.png", b"junk")(tmp)), "backend"),
    "lift-backend-not-a-function": (lift_args("numpy:pi"), "numpy:pi"),
    "lift-backend-no-factory-name": (lift_args("mypackage:"), "mypackage:"),
    "lift-fov-zero": (lift_from(lambda tmp, fx: fx["flat_video"], "--fov", "0"), "field of view"),
    "lift-fov-nan": (lift_from(lambda tmp, fx: fx["flat_video"], "--fov", "nan"), "field of view"),
    "lift-max-frames-two": (lift_from(lambda tmp, fx: fx["flat_video"], "--max-frames", "2"), "--max-frames"),
})


def run_console_script(argv: list[str]) -> tuple[int, str, str, BaseException | None]:
    """(exit code, stdout, stderr, exception other than SystemExit) of `avat3r ARGV`, run in-process through the
    console script's entry point (so a usage error is its one line, as in a shell), with an empty stdin."""
    from avat3r.cli.main import main

    code, exc = 0, None
    with CliRunner().isolation() as (stdout, stderr, _):
        try:
            main(argv)
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
        except BaseException as e:  # noqa: BLE001 — a bug: reported with its traceback below
            exc = e
        sys.stdout.flush()
        sys.stderr.flush()
        out, err = stdout.getvalue().decode(errors="replace"), stderr.getvalue().decode(errors="replace")
    return code, out, err, exc


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_line_error(case, fx, tmp_path, capfd):
    build, fragment = CASES[case]
    argv, out = build(tmp_path, fx)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(SENTINEL)
    capfd.readouterr()
    code, stdout, err, exc = run_console_script([str(a(tmp_path) if callable(a) else a) for a in argv])
    native = capfd.readouterr().err  # what native code (OpenCV, mediapipe, ffmpeg) wrote to fd 2 itself
    assert not native.strip(), f"{case}: native libraries wrote to stderr:\n{native}"
    if exc is not None:
        raise AssertionError(f"{case}: {exc!r}\n{err}") from exc
    assert code != 0, err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("avat3r: error: "), err
    assert "Traceback" not in err + stdout
    assert fragment.lower() in lines[0].lower(), (fragment, lines[0])
    assert out.read_bytes() == SENTINEL, f"{case}: {out} was changed"


# -- library boundaries the CLI does not reach on its own ---------------------------------------------
def test_stream_writer_refuses_non_finite_gaussians(fx):
    from avat3r.stream import FrameStreamWriter, StreamError

    t = {k: v.clone() for k, v in fx["tensors"].items()}
    t["means"][2, 1] = NAN
    buf = io.BytesIO()
    writer = FrameStreamWriter(buf, 25.0, "synthheads-v1")
    with pytest.raises(StreamError, match="frame 000003.*means"):
        writer.write(3, Gaussians(**t))
    assert buf.getvalue() == b""  # nothing half-written


def test_decode_frames_checks_codes_and_output(fx):
    from avat3r.avatar import load_avatar
    from avat3r.stages.animate import decode_frames
    from avat3r.stages.common import StageError

    loaded = load_avatar(fx["self"])
    with pytest.raises(StageError, match="self.avt.*expression code"):
        list(decode_frames(loaded, torch.full((2, E), 1e30)))
    with pytest.raises(StageError, match="non-finite"):
        list(decode_frames(loaded, torch.full((2, E), NAN)))
    broken = dataclasses.replace(loaded, model=Avat3r(CFG, with_encoder=False).eval())
    with torch.no_grad():
        broken.model.decoder.heads.load_state_dict(loaded.model.decoder.heads.state_dict())
        for p in broken.model.decoder.heads.parameters():
            p.fill_(NAN)
    with pytest.raises(StageError, match="self.avt: decoded frame 0 .*non-finite"):
        list(decode_frames(broken, torch.zeros(1, E)))


def test_good_inputs_still_pass(fx, tmp_path):
    """The guards let the files they were spoiled from through."""
    from avat3r.avatar import load_avatar
    from avat3r.cameras import read_cams_json
    from avat3r.gaussians import read_ply
    from avat3r.model.checkpoint import load_checkpoint

    load_checkpoint(fx["ckpt"])
    assert load_avatar(fx["self"]).model is not None
    assert len(read_cams_json(fx["cams"])[0]) == 4
    assert len(read_ply(fx["ply"])) == 40
    args, out = bad_stream()(tmp_path, fx)
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.stderr
    assert len(read_ply(out)) == 40
