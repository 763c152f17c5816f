"""`avat3r export`: Fit a linear Gaussian rig to an avatar (.rig.npz) and optionally write a browser viewer."""

from __future__ import annotations

from pathlib import Path

import typer

from .common import LazyBar, fail, fail_error, info

HELP = """Fit a linear Gaussian rig to an avatar: neutral Gaussians plus one delta per expression parameter.

The avatar is decoded at sampled codes across its expression space (neutral, each parameter swept alone,
random mixtures) and every Gaussian's position, colour, opacity (logit), scales (log) and rotation get a
least-squares linear fit. The rig animates without the network (animate, render and the browser viewer take it
in place of the .avt); the fit error on held-out codes is printed and stored in the file.

  avat3r export head.avt -o head.rig.npz --html viewer.html

  avat3r animate head.rig.npz expr.parquet | avat3r render --video out.mp4

--html writes one self-contained page (no network needed to view it): drag to turn, wheel to zoom, one slider
per expression parameter, and playback of --expr (default: the built-in demo for synthheads-v1).
"""

FLAGS = {"device": "--device", "checkpoint": "--checkpoint", "samples": "--samples", "prune": "--prune",
         "size": "--size"}


def register(app: typer.Typer) -> None:
    @app.command("export", help=HELP)
    def export(
        avatar: Path = typer.Argument(..., help="The avatar (.avt) from reconstruct, or a rig (.rig.npz) to "
                                      "write a viewer for."),
        out: Path | None = typer.Option(None, "--out", "-o", help="The rig file (.rig.npz)."),
        samples: int = typer.Option(128, "--samples", min=1, help="Codes decoded to fit on."),
        prune: float = typer.Option(0.0, "--prune", min=0.0, help="Zero deltas whose largest change over the "
                                    "parameter's range is below this (metres, colour, logit, log scale, "
                                    "quaternion units); 0 keeps all."),
        held_out: int = typer.Option(16, "--held-out", min=0, help="Held-out random codes rendered to measure "
                                     "the fit (0: skip)."),
        seed: int = typer.Option(0, "--seed", help="Seed of the sampled codes."),
        html: Path | None = typer.Option(None, "--html", help="Also write a self-contained browser viewer."),
        expr: str | None = typer.Option(None, "--expr", help="Sequence the viewer plays: a built-in (demo) or an "
                                        "expr.parquet (default: demo for synthheads-v1, none otherwise)."),
        size: int = typer.Option(512, "--size", min=16, max=4096, help="Viewer canvas size in pixels."),
        checkpoint: Path | None = typer.Option(None, "--checkpoint", "-c", help="The checkpoint the avatar was "
                                                  "reconstructed with (needed unless it is self-contained)."),
        device: str = typer.Option("auto", "--device", help="cpu, cuda, cuda:N or auto."),
        quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
    ) -> None:
        from avat3r.errors import user_errors
        from avat3r.rig import Rig, rig_from_avatar, save_rig
        from avat3r.stages.animate import load_animatable

        if out is None and html is None:
            fail("nothing to write: pass -o head.rig.npz and/or --html viewer.html")
        try:
            source = load_animatable(avatar, checkpoint, device)
            if isinstance(source, Rig):
                rig = source
            else:
                bar = LazyBar(total=samples + held_out, desc="fit rig", unit="code", disable=quiet)
                try:
                    rig = rig_from_avatar(source, n_samples=samples, prune=prune, seed=seed, n_eval=held_out,
                                          progress=bar.update)
                finally:
                    bar.close()
                fit = rig.meta["fit"]
                if held_out:
                    rms = ", ".join(f"{k} {v:.2g}" for k, v in fit["rms"].items())
                    info(f"export: rig vs network on {held_out} held-out codes: PSNR mean {fit['psnr_mean']:.1f} dB, "
                         f"worst {fit['psnr_worst']:.1f} dB; parameter RMS {rms}")
            if out is not None:
                n = save_rig(out, rig)
                info(f"export: {len(rig)} Gaussians × {rig.dim} expression parameters → {out} ({n / 1e6:.1f} MB)")
            if html is not None:
                from avat3r.expressions import load_sequence
                from avat3r.viewer import write_viewer

                seq = None
                if expr is not None:
                    seq = load_sequence(expr, rig.space, None)
                elif rig.space == "synthheads-v1":
                    seq = load_sequence("demo", rig.space, None)
                n = write_viewer(html, rig, seq, size=size, title=Path(avatar).name)
                info(f"export: viewer → {html} ({n / 1e6:.1f} MB, self-contained)")
        except user_errors() as e:
            fail_error(e, FLAGS)
