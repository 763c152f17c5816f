"""`avat3r reconstruct`: Reconstruct an animatable avatar (.avt) from a folder of posed photos and their cams.json."""

from __future__ import annotations

from pathlib import Path

import typer

from .common import fail, fail_error, info

HELP = """Reconstruct an animatable avatar (.avt) from a folder of posed photos and their cams.json.

The photos are cropped/resized to the checkpoint's input resolution, the position (and feature) priors the
checkpoint was trained with are computed, and the identity is encoded once; animate then only decodes.

  avat3r reconstruct imgs/ --cams imgs/cams.json -o head.avt                       # the shipped model
  avat3r reconstruct imgs/ --cams imgs/cams.json -o head.avt --checkpoint runs/tiny # your own
"""

FLAGS = {"device": "--device", "checkpoint": "--checkpoint"}  # the flag of each library parameter an error may name


def register(app: typer.Typer) -> None:
    @app.command("reconstruct", help=HELP)
    def reconstruct(
        images: Path = typer.Argument(..., help="Folder with the input photos (black background, or pass --masks)."),
        cams: Path = typer.Option(..., "--cams", help="cams.json describing the photos (DESIGN §2)."),
        out: Path = typer.Option(..., "--out", "-o", help="Avatar file to write (.avt)."),
        checkpoint: Path = typer.Option("synthheads-tiny", "--checkpoint", "-c", help="Checkpoint folder, a "
                                        "training run directory (its latest checkpoint) or a shipped model's name."),
        masks: Path | None = typer.Option(None, "--masks", help="Folder of foreground masks named like the photos."),
        self_contained: bool = typer.Option(False, "--self-contained", help="Also store the decoder weights, so "
                                            "the avatar animates without the checkpoint."),
        device: str = typer.Option("auto", "--device", help="cpu, cuda, cuda:N or auto."),
    ) -> None:
        from avat3r.errors import user_errors
        from avat3r.stages.reconstruct import reconstruct as run_reconstruct

        if out.suffix.lower() != ".avt":
            fail(f"{out}: the avatar file name must end in .avt")
        try:  # no progress line first: a refused input is then exactly one error line
            meta = run_reconstruct(images, cams, checkpoint, out, masks_dir=masks, device=device,
                                   self_contained=self_contained, on_warning=lambda w: info(f"warning: {w}"))
        except user_errors() as e:
            fail_error(e, FLAGS)
        info(f"wrote {out} ({len(meta.get('camera_names', []))} views, expression space "
             f"{meta['expression_space']}, position prior {meta['position_prior']}"
             f"{', self-contained' if self_contained else ''})")
