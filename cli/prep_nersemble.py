"""`avat3r prep nersemble`: the nersemble release as downloaded → head-centric shards + manifest.parquet."""

from __future__ import annotations

from pathlib import Path

import typer

from avat3r.errors import user_errors

from .common import LazyBar, fail, fail_error, info

FLAGS = {"layout": "--layout", "participants": "--participants", "sequences": "--sequences",
         "cameras": "--cameras", "every": "--every", "frames": "--frames", "split": "--split", "part": "--part"}


def register(prep_app: typer.Typer) -> None:
    """Add the `nersemble` command to `avat3r prep`."""

    @prep_app.command("nersemble")
    def nersemble(
        root: Path = typer.Argument(..., help="The download folder: nersemble-data's ({pid:03d}/…) for --layout "
                                    "v2; nersemble-benchmark's (mono_flame_avatar/, nvs/) for --layout benchmark."),
        out: Path = typer.Option(..., "-o", "--out", help="Output folder for the shards and manifest.parquet."),
        layout: str = typer.Option(..., "--layout", help="'v2' (nersemble-data raw: colour calibration, "
                                   "background plates) or 'benchmark' (alpha maps, FLAME tracking)."),
        participants: list[int] | None = typer.Option(
            None, "--participants", help="Participant ids to convert (repeat the option); default: all."),
        sequences: list[str] | None = typer.Option(
            None, "--sequences", help="Sequence names, e.g. EXP-1-head (repeat the option); default: all."),
        cameras: list[str] | None = typer.Option(
            None, "--cameras", help="Camera serials to keep (repeat the option); default: all 16."),
        every: int = typer.Option(1, "--every", help="Keep every N-th frame (NeRSemble films at 73 fps)."),
        frames: int | None = typer.Option(None, "--frames", help="At most this many frames per sequence."),
        res: int = typer.Option(512, "--res", min=8, help="Resolution of the square head crops."),
        workers: int = typer.Option(1, "--workers", min=1, help="Parallel processes (output does not depend "
                                    "on it)."),
        part: str | None = typer.Option(None, "--part", help="Convert only part i of n (i/n, 0-based) of the "
                                        "captures, e.g. one cluster array job; then run `avat3r prep merge`."),
        split: str = typer.Option("test", "--split", help="Split of every person: 'test' (NeRSemble evaluates "
                                  "a model trained on other data) or 'train'."),
    ) -> None:
        """Convert NeRSemble captures (one participant's sequence each) into head-centric shards.

        Cameras move into each frame's head frame (FLAME tracking where the benchmark has it, else a head
        centre triangulated from the silhouettes and the rig's axes), views are cropped around the head and
        the background blacked out (alpha maps, or background-plate differencing for the raw v2 release)."""
        from avat3r.data.captures import parse_part
        from avat3r.data.nersemble import SPLITS, plan_nersemble, prep_nersemble
        from avat3r.data.prep import MAX_RES

        if res > MAX_RES:
            fail(f"--res must be at most {MAX_RES}, got {res:,}")
        if split not in SPLITS:
            fail(f"--split must be one of {', '.join(SPLITS)}, got {split!r}")
        try:
            part_ = None if part is None else parse_part(part)
            plan = plan_nersemble(root, layout, participants, sequences, cameras, every, frames, part_ or (0, 1))
        except user_errors() as err:
            fail_error(err, FLAGS)
        captures, space = plan
        total = sum(len(jobs) for _, jobs in captures)
        where = "" if part is None else f" (part {part})"
        bar = LazyBar(total=total, unit="frame", desc="prep nersemble", announce=(
            f"avat3r prep nersemble: {len(captures)} capture(s){where}, {total} frames at {res}² → {out}"))
        try:
            result = prep_nersemble(root, layout, out, res=res, workers=workers, part=part_, split=split,
                                    progress=bar.update, plan=plan)
        except user_errors() as err:
            bar.close()
            fail_error(err, FLAGS)
        bar.close()
        skipped = sum(1 for s in result.captures if s.skipped)
        missing_f = sum(s.missing_frames for s in result.captures)
        missing_v = sum(s.missing_views for s in result.captures)
        codes = "FLAME codes (flame2023)" if space != "none" else "no expression codes"
        info(f"converted {len(result.captures) - skipped} capture(s), {skipped} already done; "
             f"{sum(s.samples for s in result.captures)} samples, {codes}; missing: {missing_f} frame(s), "
             f"{missing_v} view(s)")
        if result.manifest is None:
            info(f"part {part} done; when every part has run: avat3r prep merge {out}")
        else:
            info(f"wrote {out}/manifest.parquet: {len(result.manifest)} samples, every person in '{split}'")
