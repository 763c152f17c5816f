"""`avat3r lift`: Turn a video, a folder of photos or one photo into 4 posed views + cams.json."""

from __future__ import annotations

from pathlib import Path

import typer

from .common import fail, fail_error, info

HELP = """Turn a video, a folder of unposed photos or one photo into 4 posed views + cams.json for reconstruct.

  avat3r lift me.mp4 -o views/                  # video backend: 4 frames with diverse head poses
  avat3r lift my_photos/ -o views/              # photos backend: one camera per photo
  avat3r reconstruct views/ --cams views/cams.json -o head.avt

The video and photos backends track the face (mediapipe's face mesh, extra avat3r[face]) and take each
camera as the inverse of the head pose solved against a canonical face (metric scale: iris centres 63 mm
apart). Intrinsics assume --fov degrees across the longer image side unless you know better. lift.json
records the frames picked and their angles from the front.

One photo needs a single-image backend. gan3d is the paper's: your 3D-GAN inversion exported as TorchScript
(none ships; the interface is in avat3r/gan3d.py) renders the photo's head from 4 cameras avat3r chooses
(frontal, 35° left and right, 20° above; 1 m away, --fov 20 degrees, --size pixels square):

  avat3r lift photo.jpg -o views/ --backend gan3d --gan3d inversion.pt   # or set $AVAT3R_GAN3D

Other single-image backends: a package with an 'avat3r.lifters' entry point (see avat3r/lift.py), or a module
path:

  avat3r lift photo.jpg -o views/ --backend mypackage.lifting:make_lifter
"""

FLAGS = {"backend": "--backend", "gan3d": "--gan3d", "size": "--size", "fov_degrees": "--fov",
         "device": "--device"}  # the flag of each library parameter an error may name


def register(app: typer.Typer) -> None:
    @app.command("lift", help=HELP)
    def lift(
        source: Path = typer.Argument(..., help="A video, a folder of photos, or one photo (PNG/JPEG)."),
        out: Path = typer.Option(..., "--out", "-o", help="Folder for view_0..3.png and cams.json."),
        backend: str | None = typer.Option(None, "--backend", help="video, photos, gan3d, an installed "
                                              "single-image backend, or package.module:factory (default: from the "
                                              "source; gan3d for a photo when --gan3d is given)."),
        fov: float | None = typer.Option(None, "--fov", help="Field of view across the longer image side, "
                                          "degrees (video, photos: default 60; gan3d: of the views rendered, "
                                          "default 20)."),
        gan3d: Path | None = typer.Option(None, "--gan3d", help="gan3d: the 3D-GAN inversion as a TorchScript "
                                          "file (default $AVAT3R_GAN3D)."),
        size: int | None = typer.Option(None, "--size", help="gan3d: side of the square views, pixels "
                                        "(default 512)."),
        device: str = typer.Option("auto", "--device", help="gan3d: cpu, cuda, cuda:N or auto."),
        max_frames: int = typer.Option(300, "--max-frames", min=4, help="Video: frames tracked at most "
                                       "(evenly spaced)."),
        list_backends: bool = typer.Option(False, "--list", help="List backends and exit."),
    ) -> None:
        from avat3r.errors import user_errors
        from avat3r.lift import BUILTIN_BACKENDS, available_lifters
        from avat3r.lift import lift as run_lift

        if list_backends:
            names = list(BUILTIN_BACKENDS) + available_lifters()
            typer.echo("\n".join(names))
            return
        if not source.exists():
            fail(f"{source}: no such file or folder")
        warnings: list[str] = []
        try:
            paths = run_lift(source, out, backend, fov_degrees=fov, max_frames=max_frames, warn=warnings.append,
                             gan3d=gan3d, size=size, device=device)
        except user_errors() as e:
            fail_error(e, FLAGS)
        for w in warnings:
            info(f"lift: warning: {w}")
        info(f"lift: wrote {len(paths)} views and cams.json to {out}")
