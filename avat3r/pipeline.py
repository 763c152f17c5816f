"""The inference stages as library calls: reconstruct (photos → .avt), animate (.avt + expressions → frame
stream) and render (frame stream / .avt / .ply → MP4, PNGs, PLYs along a camera path).

The CLI modules only parse arguments and call these. Nothing here prints; progress is reported through an
optional ``progress(n)`` callback so the CLI can drive tqdm on stderr.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import torch

from .cameras import Cameras, frontal_path, intrinsics_from_fov, look_at, read_cams_json
from .errors import Avat3rError, error_line, user_errors  # noqa: F401  (the CLI's names)
from .expressions import ExpressionSequence, check_space
from .fileio import StagedFolder
from .gaussians import Gaussians
from .stream import FrameStreamWriter, frame_cameras, read_frame_stream

Progress = Callable[[int], None] | None
CAMERA_PATHS = ("frontal", "orbit", "inputs")
DEFAULT_FOV_DEGREES = 18.0  # a 0.32 m field at 1 m: the whole head with hair, like the input crops
DEFAULT_STATIC_FRAMES = 60  # orbit/frontal length for a static .ply / neutral avatar
PAPER_INPUT_VIEWS = 4  # the paper's model reconstructs from 4 posed views (§4.1)


class PipelineError(Avat3rError, ValueError):
    """A stage cannot run on these inputs; the message is one line that says why."""


def resolve_device(device: str | None) -> torch.device:
    if device in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise PipelineError(f"unknown device {device!r}; use cpu, cuda, cuda:N or auto") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise PipelineError("device cuda was requested but no CUDA GPU is available; use --device cpu")
    return dev


def _load_checkpoint(checkpoint, device):
    """(model, meta) from a checkpoint folder or a training run directory (→ its latest checkpoint)."""
    from .model.checkpoint import load_checkpoint
    from .train.checkpointing import resolve_checkpoint

    model, meta = load_checkpoint(resolve_checkpoint(checkpoint), device)
    return model.eval(), meta


def _checkpoint_space(ck_meta: dict, dim: int, checkpoint) -> tuple[str, list[str], list[float]]:
    """The checkpoint's expression space with its names and neutral code (from the registry if not stored)."""
    from .expressions import ExpressionError, get_space

    space = ck_meta.get("expression_space")
    if not space:
        raise PipelineError(f"checkpoint {checkpoint} does not declare its expression_space")
    names, neutral = ck_meta.get("expression_names"), ck_meta.get("neutral")
    if not names or neutral is None:
        try:
            sp = get_space(space)
        except ExpressionError:
            raise PipelineError(f"checkpoint {checkpoint} lacks expression_names/neutral for its unknown "
                                f"expression space {space!r}") from None
        names, neutral = names or list(sp.names), list(sp.neutral) if neutral is None else neutral
    if len(names) != dim or len(neutral) != dim:
        raise PipelineError(f"checkpoint {checkpoint}: expression space {space!r} has {len(names)} names and a "
                            f"{len(neutral)}-d neutral code, but the model takes {dim}-d codes")
    return space, [str(n) for n in names], [float(x) for x in neutral]


def _check_view_count(cams_json, ck_meta: dict, checkpoint) -> None:
    """Refuse photo counts the model was not trained on. The network would run on any count (every view's
    tokens join one attention sequence and the views share one positional embedding), but it learned to
    fuse exactly data.n_inputs views (the paper's model: 4); with fewer or more, cross-view matching sees
    token sets it never saw and the avatar degrades without any sign. Older checkpoints that do not record
    the count were all trained on PAPER_INPUT_VIEWS."""
    data = ck_meta.get("data")
    want = data.get("n_inputs") if isinstance(data, dict) else None
    if not isinstance(want, int) or want < 1:
        want = PAPER_INPUT_VIEWS
    names, _ = read_cams_json(cams_json)
    if len(names) != want:
        hint = (f"pick {want} that see the head from different sides" if len(names) > want else
                f"add photos from other sides, or make {want} views from one photo with `avat3r lift`")
        raise PipelineError(f"{cams_json} lists {len(names)} photo(s), but checkpoint {checkpoint} takes exactly "
                            f"{want} views (the number it was trained on); {hint}")


def reconstruct(image_dir: str | os.PathLike, cams_json: str | os.PathLike, checkpoint: str | os.PathLike,
                output: str | os.PathLike, masks_dir: str | os.PathLike | None = None, device: str = "cpu",
                self_contained: bool = False, on_warning: Callable[[str], None] | None = None) -> dict:
    """Photos + cams.json → ``output`` (.avt). Returns the avatar's meta. ``on_warning`` receives notes about
    the inputs (e.g. a camera that does not aim at the head)."""
    from .avatar import save_avatar
    from .data.images import load_user_images
    from .priors import compute_priors

    dev = resolve_device(device)
    model, ck_meta = _load_checkpoint(checkpoint, dev)
    cfg = model.config
    space, names_e, neutral = _checkpoint_space(ck_meta, cfg.expression_dim, checkpoint)
    position = ck_meta.get("position_prior") or "geometric"
    features = (ck_meta.get("feature_prior") or "none") if cfg.use_features else "none"
    if cfg.use_features and features == "none":
        raise PipelineError(f"checkpoint {checkpoint}: the model uses image features but names no feature prior")
    _check_view_count(cams_json, ck_meta, checkpoint)
    rgb, masks, cameras, names = load_user_images(image_dir, cams_json, cfg.input_res, masks=masks_dir,
                                                  on_warning=on_warning)
    rgb, masks = torch.as_tensor(rgb, dtype=torch.float32), torch.as_tensor(masks, dtype=torch.float32)
    pos, conf, feats = compute_priors(rgb, cameras, masks, position=position, features=features)
    with torch.inference_mode():
        state = model.encode(rgb[None].to(dev), cameras.to(dev), pos[None].to(dev), conf[None].to(dev),
                             None if feats is None else feats[None].to(dev))
    meta = {
        "expression_space": space,
        "expression_names": names_e,
        "neutral": neutral,
        "checkpoint_sha256": ck_meta["sha256"],
        "position_prior": position,
        "feature_prior": features,
        "config": cfg.to_dict(),
        "camera_names": list(names),  # the input cameras themselves are stored from the state
    }
    save_avatar(output, state.to("cpu"), meta, model if self_contained else None)
    return meta


# -- animate -------------------------------------------------------------------------------------
@dataclass
class LoadedAvatar:
    """An encoded identity together with a model that can decode it."""

    state: object  # IdentityState (batch of 1)
    meta: dict
    model: object  # Avat3r
    source: str = "avatar"  # the .avt it came from, for error messages

    @property
    def expression_space(self) -> str:
        return self.meta["expression_space"]

    @property
    def input_cameras(self) -> Cameras:
        return self.state.cameras(0).to("cpu")

    def neutral_code(self) -> torch.Tensor:
        return torch.tensor(self.meta["neutral"], dtype=torch.float32)


def load_animatable(avatar_path: str | os.PathLike, checkpoint: str | os.PathLike | None = None,
                    device: str = "cpu") -> LoadedAvatar:
    """An avatar with a model that can decode it: the checkpoint it was made with when given (its sha256 must
    match the one the avatar records), else the decoder weights the avatar carries."""
    from .avatar import load_avatar

    dev = resolve_device(device)
    avatar = load_avatar(avatar_path)
    model = avatar.model
    if checkpoint is not None:
        model, ck_meta = _load_checkpoint(checkpoint, dev)
        want = avatar.meta.get("checkpoint_sha256")
        if want and want != ck_meta["sha256"]:
            raise PipelineError(f"{avatar_path} was reconstructed with checkpoint sha256 {want[:12]}…, but "
                                f"{checkpoint} is {ck_meta['sha256'][:12]}…; pass the checkpoint it was made with")
    if model is None:
        raise PipelineError(f"{avatar_path} carries no decoder weights; pass --checkpoint (the checkpoint it was "
                            "reconstructed with) or reconstruct it with --self-contained")
    return LoadedAvatar(avatar.state.to(dev), dict(avatar.meta), model.to(dev).eval(), str(avatar_path))


def decode_frames(avatar: LoadedAvatar, codes: torch.Tensor, batch: int = 8) -> Iterator[Gaussians]:
    """Decode ``codes`` (T,E) in batches of ``batch`` frames; yields each frame's valid Gaussians (CPU)."""
    from .expressions import ExpressionError, check_codes

    if batch < 1:
        raise PipelineError(f"--batch must be at least 1, got {batch}")
    try:
        check_codes(codes)
    except ExpressionError as err:
        raise PipelineError(f"{avatar.source}: {err}") from None
    dev = avatar.state.tokens.device
    for start in range(0, codes.shape[0], batch):
        with torch.inference_mode():
            g = avatar.model.decode(avatar.state, codes[start:start + batch].to(dev))
        for f in range(g.means.shape[0]):
            frame = g[f].compact().to("cpu")
            bad = frame.nonfinite_field()
            if bad is not None:  # NaN Gaussians render as nothing: a black frame instead of an error
                raise PipelineError(f"{avatar.source}: decoded frame {start + f} has non-finite Gaussians.{bad} "
                                    "(the decoder weights or the identity state are broken)")
            yield frame


def animate(avatar: LoadedAvatar, seq: ExpressionSequence, out: IO[bytes], batch: int = 8,
            progress: Progress = None) -> int:
    """Write one frame-stream sample per code of ``seq`` to ``out`` as frames are decoded; returns the count."""
    check_space(seq, avatar.expression_space, avatar.model.config.expression_dim)
    writer = FrameStreamWriter(out, seq.fps, seq.space, avatar.input_cameras, n_frames=len(seq))
    with writer:
        for i, g in enumerate(decode_frames(avatar, seq.codes, batch)):
            writer.write(i, g, seq.codes[i])
            if progress:
                progress(1)
    return writer.frames_written


# -- render: camera paths ------------------------------------------------------------------------
def parse_background(text: str | None) -> tuple[float, float, float]:
    """``"r,g,b"`` with components in [0, 1] (``"1,1,1"`` is white)."""
    if text is None:
        return (0.0, 0.0, 0.0)
    try:
        parts = tuple(float(x) for x in str(text).split(","))
    except ValueError:
        raise PipelineError(f"--background must be r,g,b in [0,1], got {text!r}") from None
    if len(parts) != 3 or not all(0.0 <= x <= 1.0 for x in parts):
        raise PipelineError(f"--background must be three comma-separated values in [0,1], got {text!r}")
    return parts


class CameraPath:
    """One render camera per frame index: ``frontal``, ``orbit`` (one turn over the sequence), ``inputs``
    (cycles the avatar's input cameras) or a cams.json (cycles its cameras)."""

    def __init__(self, spec: str, size: int = 512, radius: float = 1.0, input_cameras: Cameras | None = None,
                 fov_degrees: float = DEFAULT_FOV_DEGREES, elevation_degrees: float = 0.0):
        if size < 2:
            raise PipelineError(f"--size must be at least 2 pixels, got {size}")
        if not radius > 0:
            raise PipelineError(f"--radius must be positive, got {radius}")
        self.spec, self.size, self.radius = spec, int(size), float(radius)
        self.fov, self.elevation = fov_degrees, elevation_degrees
        self.cycle: Cameras | None = None
        if spec in ("frontal", "orbit"):
            return
        if spec == "inputs":
            if input_cameras is None or len(input_cameras) == 0:
                raise PipelineError("--path inputs needs the avatar's input cameras, and this source has none")
            self.cycle = self._fit(input_cameras)
        elif spec.endswith(".json"):
            _, cams = read_cams_json(spec)
            self.cycle = self._fit(cams)
        else:
            raise PipelineError(f"unknown camera path {spec!r}; use frontal, orbit, inputs or a cams.json file")

    def _fit(self, cams: Cameras) -> Cameras:
        """Scale cameras to --size pixels wide (height by the first camera's aspect), so all frames share a size."""
        w, h = int(cams.width[0]), int(cams.height[0])
        return cams.resized(self.size, max(1, round(self.size * h / w)))

    @property
    def static_frames(self) -> int:
        """Frames for a static source: one turn of the orbit, one pass over the cycled cameras, or one frame."""
        if self.cycle is not None:
            return len(self.cycle)
        return DEFAULT_STATIC_FRAMES if self.spec == "orbit" else 1

    def camera(self, index: int, n_frames: int | None = None) -> Cameras:
        if self.cycle is not None:
            return self.cycle[index % len(self.cycle)]
        if self.spec == "frontal":
            return frontal_path(1, self.radius, self.size, self.size, self.fov)
        period = n_frames if n_frames and n_frames > 0 else DEFAULT_STATIC_FRAMES
        az = 2 * math.pi * (index % period) / period
        el = math.radians(self.elevation)
        eye = torch.tensor([[self.radius * math.cos(el) * math.sin(az), self.radius * math.sin(el),
                             self.radius * math.cos(el) * math.cos(az)]])
        K = intrinsics_from_fov(self.fov, self.size, self.size)[None]
        return Cameras(K, look_at(eye), self.size, self.size)


# -- render: sources -----------------------------------------------------------------------------
@dataclass
class Frame:
    index: int
    n_frames: int | None
    gaussians: Gaussians


@dataclass
class Source:
    """What ``render`` draws: a sequence of frames (a stream, a decoded sequence) or one static set."""

    frames: Iterable[Frame] | None
    input_cameras: Cameras | None
    fps: float | None = None
    n_frames: int | None = None  # the sequence length when known
    static: Gaussians | None = None  # shown on every frame of the camera path
    closer: Callable[[], None] | None = None

    def frame_iter(self, n_static: int) -> Iterable[Frame]:
        if self.static is not None:
            return (Frame(i, n_static, self.static) for i in range(n_static))
        return self.frames

    def close(self) -> None:
        if self.closer is not None:
            self.closer()


def stream_source(fileobj: IO[bytes], closer: Callable[[], None] | None = None) -> Source:
    """Frames of a frame stream. Blocks until the first frame arrives (it carries the input cameras and fps)."""
    it = read_frame_stream(fileobj)
    first_meta, first_g = next(it)

    def frames() -> Iterator[Frame]:
        yield Frame(int(first_meta["frame"]), first_meta.get("n_frames"), first_g)
        for meta, g in it:
            yield Frame(int(meta["frame"]), meta.get("n_frames"), g)

    return Source(frames(), frame_cameras(first_meta), first_meta.get("fps"), first_meta.get("n_frames"),
                  closer=closer)


def avatar_source(avatar: LoadedAvatar, seq: ExpressionSequence | None, batch: int = 8) -> Source:
    """Neutral (``seq`` None: decoded once, static) or a sequence, decoded in batches as frames are drawn."""
    cams = avatar.input_cameras
    if seq is None:
        g = next(decode_frames(avatar, avatar.neutral_code()[None], 1))
        return Source(None, cams, static=g)
    check_space(seq, avatar.expression_space, avatar.model.config.expression_dim)
    n = len(seq)
    frames = (Frame(i, n, g) for i, g in enumerate(decode_frames(avatar, seq.codes, batch)))
    return Source(frames, cams, seq.fps, n)


# -- render: sinks -------------------------------------------------------------------------------
def _frame_files(ext: str) -> Callable[[str], bool]:
    """The files a frame folder of ``ext`` files holds (000000.png, …, and temp files of its writes)."""
    return lambda name: bool(re.fullmatch(rf"\d{{6}}\{ext}|\..*\.tmp", name))


class RenderOutputs:
    """Fan each rendered frame out to an MP4, a PNG folder and/or PLY files.

    Folders are built aside and swapped in by ``close()`` (see StagedFolder): an older render's frames never
    stay beside the new ones, and a killed render leaves only a ``.NAME.partial`` folder."""

    def __init__(self, video: str | os.PathLike | None = None, frames_dir: str | os.PathLike | None = None,
                 ply: str | os.PathLike | None = None, fps: float = 25.0):
        from .video import FrameDirWriter, VideoWriter

        if video is None and frames_dir is None and ply is None:
            raise PipelineError("nothing to write: pass --video, --frames and/or --ply")
        self.ply_file = Path(ply) if ply is not None and str(ply).endswith(".ply") else None
        ply_dir = Path(ply) if ply is not None and self.ply_file is None else None
        if frames_dir is not None and ply_dir is not None and \
                os.path.realpath(frames_dir) == os.path.realpath(ply_dir):
            raise PipelineError("--frames and --ply name the same folder; give each its own")
        self._stages: list[StagedFolder] = []
        try:
            if frames_dir is not None:
                self._stages.append(StagedFolder(frames_dir, _frame_files(".png"), "rendered frames"))
            if ply_dir is not None:
                self._stages.append(StagedFolder(ply_dir, _frame_files(".ply"), "PLY frames"))
        except BaseException:
            for stage in self._stages:
                stage.abort()
            raise
        self.frames = FrameDirWriter(self._stages[0].path) if frames_dir is not None else None
        self.ply_dir = self._stages[-1].path if ply_dir is not None else None
        self.video = VideoWriter(video, fps) if video is not None else None
        self.count = 0

    @property
    def needs_images(self) -> bool:
        return self.video is not None or self.frames is not None

    def write(self, frame: Frame, rgb: torch.Tensor | None) -> None:
        from .gaussians import write_ply

        if self.video is not None:
            self.video.write(rgb)
        if self.frames is not None:
            self.frames.write(rgb, self.count)
        if self.ply_dir is not None:
            write_ply(self.ply_dir / f"{frame.index:06d}.ply", frame.gaussians)
        elif self.ply_file is not None and self.count == 0:
            write_ply(self.ply_file, frame.gaussians)
        self.count += 1

    def close(self, ok: bool = True) -> None:
        """Publish every output, or on failure drop them all (no folder is swapped in beside a failed video)."""
        try:
            if self.video is not None:
                self.video.close() if ok else self.video.abort()
        except BaseException:
            ok = False
            raise
        finally:
            for stage in self._stages:
                stage.close() if ok else stage.abort()


def render_image(g: Gaussians, camera: Cameras, background, backend: str = "auto",
                 device: torch.device | str = "cpu") -> torch.Tensor:
    """(H, W, 3) float image of one unbatched set seen from one camera."""
    from .render import rasterize

    g = g.to(device)
    if len(g) == 0:  # everything masked out: the background only
        w, h = camera.image_size
        return torch.tensor(background, dtype=torch.float32).expand(h, w, 3).clone()
    with torch.inference_mode():
        rgb, _, _ = rasterize(g, camera.to(device), background=torch.tensor(background, device=device),
                              backend=backend)
    return rgb[0].clamp(0, 1).cpu()


def render(source: Source, path: str, outputs_kw: dict, size: int = 512, background=(0.0, 0.0, 0.0),
           fps: float | None = None, radius: float = 1.0, n_frames: int | None = None, backend: str = "auto",
           device: str = "auto", progress: Progress = None) -> int:
    """Render every frame of ``source`` along ``path`` into the outputs as frames arrive; returns the count.

    A static source is shown for ``n_frames`` frames (default: one orbit turn, one pass over the cycled
    cameras, or one frontal frame)."""
    dev = resolve_device(device)
    cams = CameraPath(path, size, radius, source.input_cameras)
    outputs = RenderOutputs(fps=fps or source.fps or 25.0, **outputs_kw)
    ok = False
    try:
        n_static = n_frames if n_frames is not None else cams.static_frames
        if source.static is not None and not outputs.needs_images:
            n_static = 1  # PLY export only: one file, no camera path to follow
        if n_static < 1:
            raise PipelineError(f"--n-frames must be at least 1, got {n_static}")
        for frame in source.frame_iter(n_static):
            cam = cams.camera(frame.index, frame.n_frames or source.n_frames)
            rgb = render_image(frame.gaussians, cam, background, backend, dev) if outputs.needs_images else None
            outputs.write(frame, rgb)
            if progress:
                progress(1)
        ok = True
    finally:
        outputs.close(ok)
        source.close()
    return outputs.count


def open_render_source(src: str | None, expr: str = "neutral", checkpoint=None, device: str = "auto",
                       batch: int = 8, fps: float | None = None, stdin: IO[bytes] | None = None) -> Source:
    """``src``: None/``-`` (a frame stream on stdin), a frame-stream file, an ``.avt`` or a ``.ply``."""
    import sys

    from .gaussians import read_ply

    if src is None or src == "-":
        return stream_source(stdin if stdin is not None else sys.stdin.buffer)
    p = Path(src)
    if not p.is_file():
        raise PipelineError(f"{src}: no such file")
    if p.suffix.lower() == ".ply":
        return Source(None, None, static=read_ply(p))
    if p.suffix.lower() == ".avt":
        from .expressions import load_sequence

        avatar = load_animatable(p, checkpoint, device)
        seq = None if expr == "neutral" else load_sequence(expr, avatar.expression_space, fps)
        return avatar_source(avatar, seq, batch)
    f = open(p, "rb")
    try:
        return stream_source(f, closer=f.close)
    except BaseException:
        f.close()
        raise
