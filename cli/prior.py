"""`avat3r prior`: add position/confidence maps (geometric, DUSt3R, ground truth) and Sapiens features to samples."""

from __future__ import annotations

from pathlib import Path

import typer

from .common import fail, fail_error, info

HELP = ("Add position/confidence maps (pos.npy, conf.npy) and optional feature maps (feat.npy) to every sample "
        "that can be a model input (cameras that are not back-only), each computed with partner views of the same "
        "frame (recorded as partners.json). Writes shards of the same names plus manifest.parquet to OUT; "
        "rerunning after an interruption skips finished shards.")

# the flag of each library option an error may name
FLAGS = {"feature_options.ckpt": "--sapiens-ckpt", "position_options": "--dust3r-repo, --dust3r-ckpt",
         "segments": "--segments", "frames": "--frames", "downsample": "--downsample"}


def _parse_frames(text: str | None) -> tuple[int, ...] | None:
    """``'0-9,20'`` → (0, …, 9, 20); anything else is one error line naming the flag."""
    if text is None or not text.strip():
        return None
    frames: list[int] = []
    for part in text.split(","):
        lo, dash, hi = part.strip().partition("-")
        if not lo.isdigit() or (dash and not hi.isdigit()):
            fail(f"--frames must be frame numbers and ranges such as '0-9,20', got {text!r}")
        if dash and int(hi) < int(lo):
            fail(f"--frames: the range {part.strip()!r} is empty (write it low-high)")
        frames.extend(range(int(lo), int(hi) + 1) if dash else [int(lo)])
    return tuple(frames)


def _parse_segments(text: str | None) -> tuple[str, ...] | None:
    if text is None or not text.strip():
        return None
    names = tuple(s.strip() for s in text.split(",") if s.strip())
    if not names:
        fail(f"--segments needs at least one segment name (e.g. neutral), got {text!r}")
    return names


def register(app: typer.Typer) -> None:
    @app.command("prior", help=HELP)
    def prior(
        source: Path = typer.Argument(..., help="Shard folder holding manifest.parquet, or a manifest file."),
        out: Path = typer.Option(..., "--out", "-o", help="Output folder for the new shards and manifest."),
        position: str = typer.Option("geometric", help="Position prior: geometric | dust3r | ground-truth | none."),
        features: str = typer.Option("none", help="Feature prior: sapiens | none."),
        partners: int = typer.Option(3, min=0, help="Partner views per sample (paper App. C: 3)."),
        workers: int = typer.Option(1, min=1, help="Shards processed in parallel (one process each)."),
        segments: str | None = typer.Option(None, help="Comma-separated segments to add priors to (default all)."),
        frames: str | None = typer.Option(None, help="Frames to add priors to, e.g. '0-9,20' (default all)."),
        downsample: int = typer.Option(1, min=1, help="Compute the maps on views averaged over N×N blocks and store "
                                       "them at that size: for a model whose input side is 1/N of the stored "
                                       "images (train it with data.options.input_downsample = N), so it learns "
                                       "the priors `reconstruct` computes on photos at its input side."),
        dust3r_repo: Path | None = typer.Option(None, help="DUSt3R checkout (else $AVAT3R_DUST3R_REPO)."),
        dust3r_ckpt: Path | None = typer.Option(None, help="DUSt3R .pth checkpoint (else $AVAT3R_DUST3R_CKPT)."),
        dust3r_alignment: str = typer.Option("global", help="DUSt3R alignment: global (optimiser, known poses) "
                                             "or closed-form."),
        sapiens_ckpt: Path | None = typer.Option(None, help="Sapiens TorchScript file (else $AVAT3R_SAPIENS_CKPT)."),
        sapiens_size: str = typer.Option("1024x1024", help="Sapiens input HxW (the size its export was traced at)."),
        device: str = typer.Option("cpu", help="Device for DUSt3R/Sapiens."),
    ) -> None:
        from tqdm import tqdm

        from avat3r.data.manifest import ManifestError, read_manifest
        from avat3r.data.shards import ShardError
        from avat3r.priors import FEATURE_PRIORS, POSITION_PRIORS, PriorError
        from avat3r.priors.stage import PriorStageConfig, run_prior_stage

        if position not in POSITION_PRIORS:
            fail(f"unknown position prior {position!r}; choose one of {', '.join(POSITION_PRIORS)}")
        if features not in FEATURE_PRIORS:
            fail(f"unknown feature prior {features!r}; choose one of {', '.join(FEATURE_PRIORS)}")
        pos_opts: dict = {}
        if position == "dust3r":
            pos_opts = {"repo": str(dust3r_repo) if dust3r_repo else None,
                        "ckpt": str(dust3r_ckpt) if dust3r_ckpt else None,
                        "alignment": dust3r_alignment, "device": device}
        feat_opts: dict = {}
        if features == "sapiens":
            try:
                size = tuple(int(v) for v in sapiens_size.lower().split("x"))
                assert len(size) == 2
            except (ValueError, AssertionError):
                fail(f"--sapiens-size must look like 1024x768, got {sapiens_size!r}")
            feat_opts = {"ckpt": str(sapiens_ckpt) if sapiens_ckpt else None, "input_size": size, "device": device}
        selected = {"segments": _parse_segments(segments), "frames": _parse_frames(frames)}
        try:
            cfg = PriorStageConfig(position=position, features=features, partners=partners, downsample=downsample,
                                   **selected,
                                   position_options=pos_opts, feature_options=feat_opts)
            # build once here so a missing package or checkpoint fails before any work starts
            from avat3r.priors import get_feature_prior, get_position_prior
            get_position_prior(position, **pos_opts)
            get_feature_prior(features, **feat_opts)
            total = len(read_manifest(source))
            with tqdm(total=total, desc="prior", unit="sample", file=None, disable=None) as bar:
                manifest = run_prior_stage(source, out, cfg, workers=workers, progress=bar.update)
        except (ManifestError, ShardError, PriorError, ValueError, OSError) as err:
            fail_error(err, FLAGS)
        n = int(manifest["has_prior"].sum())
        info(f"avat3r prior: {n} of {len(manifest)} samples have {position} priors; wrote {out}")
