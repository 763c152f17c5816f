"""Bad inputs at every boundary where numbers enter (checkpoints, cams.json, .avt, expression codes, frame
streams, PLYs, recipes, lifting backends): each ends with exactly one `avat3r: error:` line, a non-zero exit,
no traceback, and an output file that was there before is left as it was."""

from __future__ import annotations

import dataclasses
import io
import json
import math
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
    return {"dir": d, "model": model, "ckpt": d / "ckpt", "self": d / "self.avt", "plain": d / "plain.avt",
            "cams": d / "cams.json", "ply": d / "scene.ply", "tensors": tensors}


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


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_line_error(case, fx, tmp_path):
    build, fragment = CASES[case]
    argv, out = build(tmp_path, fx)
    out.write_bytes(SENTINEL)
    result = CliRunner().invoke(app, argv)
    err = result.stderr
    assert isinstance(result.exception, SystemExit), f"{case}: {result.exception!r}\n{err}"
    assert result.exit_code != 0, err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("avat3r: error: "), err
    assert "Traceback" not in err + result.stdout
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
