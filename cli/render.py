"""`avat3r render`: Render a frame stream, an .avt or a .ply along a camera path to MP4, PNG frames or PLY files."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from .common import LazyBar, check_fps, fail, fail_error, info

HELP = """Render a frame stream, an .avt or a .ply along a camera path to MP4, PNG frames or PLY files.

SOURCE is a frame stream (a file, or - / nothing for stdin, rendered as frames arrive), an avatar (.avt,
shown with --expr), its linear rig (.rig.npz from export, shown with --expr) or a 3DGS .ply (static).
Camera paths: frontal, orbit (one turn over the sequence), inputs (cycles the avatar's input cameras) or a
cams.json (cycles its cameras).

  avat3r animate head.avt expr.parquet | avat3r render --path orbit --video out.mp4

  avat3r render head.avt --ply head.ply

  avat3r render scene.ply --path orbit --n-frames 90 --frames frames/
"""

# the flag of each library parameter an error may name
FLAGS = {"device": "--device", "checkpoint": "--checkpoint", "background": "--background", "size": "--size",
         "radius": "--radius", "path": "--path", "n_frames": "--n-frames", "outputs": "--video, --frames, --ply"}


def register(app: typer.Typer) -> None:
    @app.command("render", help=HELP)
    def render(
        source: str | None = typer.Argument(None, help="Frame stream file, - for stdin (default), .avt, .rig.npz "
                                            "or .ply."),
        path: str = typer.Option("frontal", "--path", help="Camera path: frontal, orbit, inputs or a cams.json."),
        video: Path | None = typer.Option(None, "--video", help="Write an H.264 MP4 here."),
        frames: Path | None = typer.Option(None, "--frames", help="Write PNG frames (000000.png, …) into this "
                                              "folder."),
        ply: Path | None = typer.Option(None, "--ply", help="Write 3DGS PLYs: a folder gets one per frame, a "
                                           "name ending in .ply gets the first (or only) frame."),
        size: int = typer.Option(512, "--size", min=2, help="Image width in pixels (height follows the cameras' "
                                 "aspect; square for frontal/orbit)."),
        background: str = typer.Option("0,0,0", "--background", help="Background colour r,g,b in [0,1]."),
        fps: float | None = typer.Option(None, "--fps", help="Video frame rate (default: the stream's, else 25)."),
        radius: float = typer.Option(1.0, "--radius", help="Camera distance from the head centre in metres "
                                     "(frontal/orbit)."),
        n_frames: int | None = typer.Option(None, "--n-frames", min=1, help="Frames for a static source (.ply, "
                                               ".avt at neutral) (default: 60 for orbit, 1 for frontal, one "
                                               "pass over cycled cameras)."),
        expr: str = typer.Option("neutral", "--expr", help="For .avt and .rig.npz sources: neutral, a built-in "
                                 "sequence (demo) or an expr.parquet."),
        checkpoint: Path | None = typer.Option(None, "--checkpoint", "-c", help="For .avt sources without "
                                                  "decoder weights: the checkpoint they were made with."),
        backend: str = typer.Option("auto", "--backend", help="Rasterizer: auto, torch, gsplat or dense."),
        device: str = typer.Option("auto", "--device", help="cpu, cuda, cuda:N or auto."),
        quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
    ) -> None:
        from avat3r.errors import user_errors
        from avat3r.stages.render import parse_background
        from avat3r.stages.render import render as run_render
        from avat3r.stages.sources import open_render_source

        check_fps(fps)
        if video is None and frames is None and ply is None:
            fail("nothing to write: pass --video out.mp4, --frames DIR and/or --ply DIR|file.ply")
        if (source is None or source == "-") and sys.stdin.isatty():
            fail("no frame stream on stdin; pipe one in (avat3r animate … | avat3r render …) or name a source")
        try:
            bg = parse_background(background)
            src = open_render_source(source, expr=expr, checkpoint=checkpoint, device=device, fps=fps)
            bar = LazyBar(total=src.n_frames if src.static is None else n_frames, desc="render", disable=quiet)
            try:
                n = run_render(src, path, {"video": video, "frames_dir": frames, "ply": ply}, size=size,
                               background=bg, fps=fps, radius=radius, n_frames=n_frames, backend=backend,
                               device=device, progress=bar.update)
            finally:
                bar.close()
        except user_errors() as e:
            fail_error(e, FLAGS)
        written = ", ".join(str(p) for p in (video, frames, ply) if p is not None)
        info(f"render: {n} frames → {written}")
