"""The `avat3r` command: one Typer sub-command per stage (each in its own module)."""

from __future__ import annotations

import typer

from . import animate, lift, prep, prior, reconstruct, render, train
from . import eval as eval_

app = typer.Typer(
    name="avat3r",
    help="Avat3r: few posed photos in, an animatable 3D Gaussian head out.\n\n"
    "Stages pass WebDataset shards, Parquet manifests, .avt avatars and frame streams between each other:\n\n"
    "  avat3r reconstruct imgs/ --cams cams.json -o head.avt\n\n"
    "  avat3r animate head.avt expr.parquet | avat3r render --video out.mp4",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

for module in (prep, prior, train, lift, reconstruct, animate, render, eval_):
    module.register(app)


if __name__ == "__main__":
    app()
