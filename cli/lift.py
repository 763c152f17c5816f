"""`avat3r lift`: Turn one photo into 4 posed views + cams.json with a pluggable 3D lifting backend."""

from __future__ import annotations

from pathlib import Path

import typer

from .common import fail, info

HELP = """Turn one photo into 4 posed views + cams.json with a pluggable 3D lifting backend.

The paper lifts a single image with a 3D GAN; avat3r ships no such backend or weights. A backend is a
package with an 'avat3r.lifters' entry point (see avat3r/lift.py), or a module path:

  avat3r lift photo.jpg -o views/ --backend mypackage.lifting:make_lifter

  avat3r reconstruct views/ --cams views/cams.json -o head.avt --checkpoint CKPT
"""


def register(app: typer.Typer) -> None:
    @app.command("lift", help=HELP)
    def lift(
        image: Path = typer.Argument(..., help="The photo (PNG/JPEG), head on a black background."),
        out: Path = typer.Option(..., "--out", "-o", help="Folder for view_0..3.png and cams.json."),
        backend: str | None = typer.Option(None, "--backend", help="Installed backend name, or "
                                              "package.module:factory (default: the only installed one)."),
        list_backends: bool = typer.Option(False, "--list", help="List installed backends and exit."),
    ) -> None:
        from avat3r.errors import error_line, user_errors
        from avat3r.lift import available_lifters, lift_image

        if list_backends:
            names = available_lifters()
            typer.echo("\n".join(names) if names else "(no lifting backend installed)")
            return
        if not image.is_file():
            fail(f"{image}: no such image")
        try:
            paths = lift_image(image, out, backend)
        except user_errors() as e:
            fail(error_line(e))
        info(f"lift: wrote {len(paths)} views and cams.json to {out}")
