"""`avat3r prep ava256`: the ava256 release as downloaded → head-centric shards + manifest.parquet."""

from __future__ import annotations

from pathlib import Path

import typer

from avat3r.errors import user_errors

from .common import LazyBar, fail, fail_error, info

FLAGS = {"root": "ROOT", "captures": "--captures", "cameras": "--cameras", "segments": "--segments",
         "codes": "--codes", "encoder": "--encoder", "head_frame": "--head-frame",
         "holdout": "--holdout"}


def register(prep_app: typer.Typer) -> None:
    """Add the `ava256` command to `avat3r prep`."""

    @prep_app.command("ava256")
    def ava256(
        root: Path = typer.Argument(..., help="The download: one {mcd}--{mct}--{sid}/decoder/ folder per capture."),
        out: Path = typer.Option(..., "-o", "--out", help="Output folder for the shards and manifest.parquet."),
        captures: list[str] | None = typer.Option(
            None, "--captures", help="Captures to convert (repeat): folder names, subject ids, or a file listing "
            "either (also mcd,sid,mct rows); default: every capture under ROOT."),
        cameras: list[str] | None = typer.Option(None, "--cameras", help="Camera ids to keep (repeat); default: "
                                                 "all calibrated cameras."),
        every: int = typer.Option(1, "--every", min=1, help="Keep every N-th frame of each segment."),
        segments: list[str] | None = typer.Option(None, "--segments", help="Segments to keep (repeat); default: "
                                                  "all."),
        res: int = typer.Option(512, "--res", min=8, help="Resolution of the square head crops."),
        codes: Path | None = typer.Option(
            None, "--codes", help="Expression codes: parquet with columns capture (or person), segment, frame, "
            "expr (256 float32)."),
        encoder: Path | None = typer.Option(
            None, "--encoder", help="Expression codes from a TorchScript encoder of tracked-mesh offsets from the "
            "neutral frame ((B, V, 3) mm → (B, 256))."),
        head_frame: Path | None = typer.Option(
            None, "--head-frame", help="JSON 4x4 canonical → head-pose transform (mm) for every capture; default: "
            "estimated per capture from the rig and the tracked mesh (recorded in captures/NAME.json)."),
        workers: int = typer.Option(1, "--workers", min=1, help="Parallel processes (output does not depend on "
                                    "it)."),
        part: str | None = typer.Option(None, "--part", help="Convert only part i of n (0-based, e.g. 3/16) for an "
                                        "array job; then run `avat3r prep merge OUT`."),
        holdout: Path | None = typer.Option(
            None, "--holdout", help="Persons of the test split (mcd,sid,mct rows or names); default: the 12 of "
            "recipes/ava256-heldout.csv."),
    ) -> None:
        """Convert the Ava-256 release into head-centric training shards: head pose folded into the cameras
        (metres, +y up, +z out of the face), square head crops with the background blacked out by the
        release's segmentation, one resumable set of shards per capture, then manifest.parquet."""
        from avat3r.data import ava256 as A
        from avat3r.data.captures import parse_part
        from avat3r.data.prep import MAX_RES

        if res > MAX_RES:
            fail(f"--res must be at most {MAX_RES}, got {res:,}")
        if codes is not None and encoder is not None:
            fail("give --codes or --encoder, not both")
        try:
            part_in = parse_part(part) if part is not None else None
            opts = A.Options(res=res, cameras=cameras or None, every=every, segments=segments or None,
                             workers=workers)
            if head_frame is not None:
                opts.head_frame = A.read_head_frame(head_frame)
            if codes is not None:
                opts.codes = A.CodeTable(codes)
            if encoder is not None:
                opts.encoder = A.MeshEncoder(encoder)
            test = A.heldout_persons(holdout)
        except user_errors() as err:
            fail_error(err, FLAGS)
        if opts.expression_space == A.PLACEHOLDER_SPACE:
            info("avat3r prep ava256: no expression codes (neither --codes nor --encoder): the manifest's "
                 "expression_space is 'none'")
        bars: list[LazyBar] = []

        def on_capture(plan, name):
            if plan is None:
                info(f"{name}: already converted, skipped")
                return None
            est = plan.info
            how = (f"estimated at {est['reference_frame']} ({est['head_frame_tilt_deg']:.1f}° from the head-pose "
                   f"axes)" if est["head_frame_source"] == "estimated" else "given")
            info(f"{name}: {len(plan.jobs)} frames × {est['cameras']} cameras at {res}²; head frame {how}")
            bar = LazyBar(total=len(plan.jobs), desc=plan.person, unit="frame")
            bars.append(bar)
            return bar.update

        def done(summary):
            for bar in bars:
                bar.close()
            bars.clear()
            if not summary.skipped:
                info(f"{summary.capture}: {summary.samples} samples from {summary.frames} frames; missing "
                     f"{summary.missing_frames} frame(s), {summary.missing_views} view(s)")

        try:
            result = A.prep_ava256(root, out, captures, opts, part=part_in, heldout=test, on_capture=on_capture,
                                   done=done)
        except user_errors() as err:
            for bar in bars:
                bar.close()
            fail_error(err, FLAGS)
        converted = sum(not s.skipped for s in result.summaries)
        missing_f = sum(s.missing_frames for s in result.summaries)
        missing_v = sum(s.missing_views for s in result.summaries)
        info(f"converted {converted} capture(s), {len(result.summaries) - converted} already done; missing "
             f"{missing_f} frame(s) and {missing_v} view(s) in all")
        if part_in is None:
            info(f"manifest → {out / 'manifest.parquet'}: {result.samples} samples, expression space "
                 f"{result.expression_space!r}, {len(result.test_persons)} held-out person(s) as the test split")
        else:
            info(f"part {part_in[0]}/{part_in[1]} done; once every part has finished, run `avat3r prep merge {out}`")
