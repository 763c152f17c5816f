"""`avat3r prep`: prepare data as WebDataset shards + manifest.parquet (`synth`, `images`)."""

from __future__ import annotations

import math
from pathlib import Path

import typer

from avat3r.errors import user_errors

from .common import LazyBar, check_fps, fail, fail_error, info

HELP = ("Prepare data as WebDataset shards + manifest.parquet: `synth` (procedural SynthHeads), "
        "`images` (your photos + cams.json), `ava256` / `nersemble` (multi-view captures as released; `merge` "
        "joins the parts of a cluster array job); `synth-photos` / `synth-video` film one SynthHeads person as "
        "input photos for `reconstruct` / a driving video for `animate --video`.")


def _check_res(res: int) -> None:
    """A sane image size: a typo such as --res 100000 would otherwise try to allocate tens of GB."""
    from avat3r.data.prep import MAX_RES

    if res > MAX_RES:
        fail(f"--res must be at most {MAX_RES}, got {res:,}")


def register(app: typer.Typer) -> None:
    prep_app = typer.Typer(help=HELP, no_args_is_help=True, add_completion=False)
    app.add_typer(prep_app, name="prep")
    from . import prep_ava256, prep_nersemble

    prep_ava256.register(prep_app)
    prep_nersemble.register(prep_app)

    @prep_app.command("synth")
    def synth(
        out: Path = typer.Option(..., "-o", "--out", help="Output folder for shard-*.tar and manifest.parquet."),
        persons: int = typer.Option(8, "--persons", min=1, help="Number of identities."),
        frames: int = typer.Option(4, "--frames", min=1, help="Frames per segment."),
        cameras: int = typer.Option(16, "--cameras", min=1, help="Cameras in the rig."),
        res: int = typer.Option(128, "--res", min=8, help="Image resolution (square)."),
        seed: int = typer.Option(0, "--seed", help="Seed of the whole set; equal arguments give equal bytes."),
        segments: list[str] | None = typer.Option(
            None, "--segments", help="Segments to render (repeat the option); default: all."),
        workers: int = typer.Option(1, "--workers", min=1, help="Parallel processes (output does not depend on it)."),
        val_persons: int | None = typer.Option(
            None, "--val-persons", min=0, help="Persons held out for validation (default ≈10 %, ≥1 from 3 persons)."),
        test_persons: int | None = typer.Option(
            None, "--test-persons", min=0, help="Persons held out for testing (default ≈10 %, ≥1 from 3 persons)."),
        depth: bool = typer.Option(True, "--depth/--no-depth", help="Store depth.npy (for ground-truth priors)."),
        rig: str = typer.Option("person", "--rig", help="'person': every person filmed by its own rig (layout, "
                                "distance, focal length, aim and head pose jittered, as across real captures); "
                                "'shared': one rig for the whole set."),
        supersample: int = typer.Option(1, "--supersample", min=1, max=8, help="Render at N× the side and average "
                                        "N×N blocks: camera-like images (at 1, splats below a pixel come out "
                                        "brighter and coarser than in a downscaled photo)."),
        preview: Path | None = typer.Option(None, "--preview", help="Also write a contact sheet PNG here."),
        maxsize_mb: float = typer.Option(1024, "--shard-mb", help="Largest shard size in MB."),
        source: str = typer.Option("avat3r.data.synthheads", "--source", hidden=True,
                                   help="Module with the SynthHeads API (module or module:object)."),
    ) -> None:
        """Render SynthHeads identities × segments × frames × cameras into shards + manifest.parquet.

        Persons are split by id: the last --test-persons are `test`, the --val-persons before them `val`
        (--test-persons equal to --persons writes an evaluation-only set). Segment `random` gives every
        person and frame its own expression code."""
        from avat3r.data.prep import check_size, load_source, prep_synth

        if rig not in ("person", "shared"):
            fail(f"--rig must be 'person' or 'shared', got {rig!r}")
        if not (math.isfinite(maxsize_mb) and maxsize_mb > 0):
            fail(f"--shard-mb must be a positive number, got {maxsize_mb:g}")
        try:
            src = load_source(source)
        except (ImportError, AttributeError) as err:
            fail(f"the SynthHeads generator is not available ({err})")
        n_seg = len(segments) if segments else len(src.SEGMENTS)
        try:
            check_size(persons, frames, cameras, res, n_seg)
        except user_errors() as err:
            fail_error(err)
        total = persons * n_seg * frames * cameras
        # the plan and the bar appear with the first frame done: a request refused before that (segments,
        # held-out counts, the output folder) prints its error line only
        bar = LazyBar(total=total, unit="sample", desc="prep synth", announce=(
            f"avat3r prep synth: {persons} persons × {n_seg} segments × {frames} frames × {cameras} cameras "
            f"at {res}² = {total} samples → {out}"))

        try:
            summary = prep_synth(out, persons, frames, cameras, res, seed=seed, segments=segments,
                                 workers=workers, n_val=val_persons, n_test=test_persons, depth=depth, source=source,
                                 maxsize=max(1, int(maxsize_mb * 1e6)), person_rig=rig == "person",
                                 supersample=supersample, progress=bar.update)
        except ValueError as err:
            bar.close()
            fail_error(err, {"person_rig": "--rig shared", "supersample": "--supersample"})
        bar.close()
        counts = {s: sum(1 for v in summary.splits.values() if v == s) for s in ("train", "val", "test")}
        info(f"wrote {summary.n_samples} samples in {len(summary.shards)} shard(s), {summary.bytes / 1e6:.1f} MB; "
             f"persons train/val/test = {counts['train']}/{counts['val']}/{counts['test']}")
        if preview is not None:
            from avat3r.imageio import write_png

            write_png(preview, src.contact_sheet(seed, list(range(min(persons, 8))), res, cameras))
            info(f"contact sheet → {preview}")

    @prep_app.command("synth-photos")
    def synth_photos(
        out: Path = typer.Option(..., "-o", "--out", help="Folder for view_*.png, cams.json and truth.json."),
        person: int = typer.Option(..., "--person", min=0, help="SynthHeads person id (held-out ids are the last)."),
        seed: int = typer.Option(0, "--seed", help="Seed of the SynthHeads set."),
        res: int = typer.Option(128, "--res", min=8, help="Image resolution (square). Take the photos above the "
                                "model's input side (64² for the shipped model) and let `reconstruct` resize them, "
                                "as a camera's would be: SynthHeads renders are not anti-aliased, so a render at "
                                "the input side is not what a downscaled photo looks like."),
        cameras: int = typer.Option(12, "--cameras", min=4, help="Cameras in the rig the views are drawn from."),
        views: int = typer.Option(4, "--views", min=1, help="Number of photos."),
        frames: int = typer.Option(2, "--frames", min=1, help="Frames per segment to draw expressions from."),
        mixed: bool = typer.Option(True, "--mixed/--neutral", help="Each photo at a random expressive frame, or "
                                   "all neutral."),
        view_seed: int = typer.Option(0, "--view-seed", help="Seed of the view and timestep choice."),
        rig: str = typer.Option("person", "--rig", help="'person': the person's own rig (as `prep synth --rig "
                                "person`); 'shared': the set's one rig."),
        supersample: int = typer.Option(1, "--supersample", min=1, max=8, help="Render at N× the side and average "
                                        "N×N blocks (as `prep synth --supersample`)."),
    ) -> None:
        """Write posed photos of one SynthHeads person (PNGs + cams.json), ready for `avat3r reconstruct`."""
        from avat3r.data.synth.photos import write_synth_photos

        if rig not in ("person", "shared"):
            fail(f"--rig must be 'person' or 'shared', got {rig!r}")
        _check_res(res)
        try:
            names = write_synth_photos(out, person, seed, res, cameras, views, frames, mixed, view_seed,
                                       person_rig=rig == "person", supersample=supersample)
        except (*user_errors(), ValueError) as err:
            fail_error(err)
        info(f"avat3r prep synth-photos: {len(names)} photos of person {person} → {out}")

    @prep_app.command("synth-video")
    def synth_video(
        out: Path = typer.Option(..., "-o", "--out", help="Driving video to write (.mp4); its ground-truth codes "
                                 "go beside it as <name>.expr.parquet."),
        person: int = typer.Option(..., "--person", min=0, help="SynthHeads person id who makes the expressions."),
        sequence: str = typer.Option("demo", "--sequence", help="Built-in sequence (demo, neutral) or an "
                                     "expr.parquet in synthheads-v1."),
        frames: int | None = typer.Option(None, "--frames", min=1, help="Resample the sequence to this many frames."),
        fps: float = typer.Option(25.0, "--fps", min=1.0, help="Frame rate of the video."),
        seed: int = typer.Option(0, "--seed", help="Seed of the SynthHeads set."),
        res: int = typer.Option(96, "--res", min=8, help="Video resolution (square; the shipped regressor reads "
                                "96²)."),
        quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
    ) -> None:
        """Film a SynthHeads person making an expression sequence: a driving video for `animate --video`."""
        from avat3r.data.synth.expressions import EXPRESSION_SPACE
        from avat3r.data.synth.photos import write_synth_video
        from avat3r.expressions import check_space, load_sequence, resample_codes

        check_fps(fps)
        _check_res(res)
        try:
            seq = load_sequence(sequence, EXPRESSION_SPACE, fps)
            check_space(seq, EXPRESSION_SPACE)
            if frames is not None:
                seq.codes = resample_codes(seq.codes, frames)
            bar = LazyBar(total=len(seq), desc="synth-video", disable=quiet)
            try:
                write_synth_video(out, person, seq.codes, seq.fps, seed, res, progress=bar.update)
            finally:
                bar.close()
        except (*user_errors(), ValueError) as err:
            fail_error(err)
        info(f"avat3r prep synth-video: {len(seq)} frames of person {person} at {seq.fps:g} fps → {out}")

    @prep_app.command("merge")
    def merge(
        out: Path = typer.Argument(..., help="Output folder of `prep ava256` / `prep nersemble` runs (--part)."),
        holdout: Path | None = typer.Option(None, "--holdout", help="Persons held out as `test` (one per line, "
                                            "or a CSV whose first or `sid` column names them); default: the "
                                            "split each capture's conversion recorded."),
        val: Path | None = typer.Option(None, "--val", help="Persons held out as `val` (same format)."),
    ) -> None:
        """Join the captures converted by `--part i/n` runs into one manifest.parquet (+ prep.json counts).

        The result equals that of one run over all captures, byte for byte."""
        from avat3r.data.captures import merge_captures, read_list, recorded_holdout

        try:
            test_persons, val_persons = recorded_holdout(out)
            if holdout is not None:
                test_persons = read_list(holdout)
            if val is not None:
                val_persons = read_list(val)
            manifest = merge_captures(out, test_persons, val_persons)
        except user_errors() as err:
            fail_error(err)
        counts = {s: len(manifest.persons(s)) for s in ("train", "val", "test")}
        info(f"merged {len(manifest)} samples of {len(set(manifest['person'].tolist()))} persons into "
             f"{out}/manifest.parquet; persons train/val/test = {counts['train']}/{counts['val']}/{counts['test']}")

    @prep_app.command("images")
    def images(
        image_dir: Path = typer.Argument(..., help="Folder with the photos named in cams.json."),
        cams: Path = typer.Option(..., "--cams", help="cams.json (OpenCV, world-to-camera, metres; head at origin)."),
        out: Path = typer.Option(..., "-o", "--out", help="Output folder for shard-*.tar and manifest.parquet."),
        res: int = typer.Option(512, "--res", min=8, help="Output resolution of the square, head-centred crops."),
        masks: Path | None = typer.Option(
            None, "--masks", help="Folder of foreground masks (same file stems); default: GrabCut from the head box."),
    ) -> None:
        """Crop your photos to the head, resize, black out the background, and write shards + manifest."""
        from avat3r.data.images import prep_images

        _check_res(res)
        try:
            prepared = prep_images(image_dir, cams, out, res=res, masks=masks)
        except user_errors() as err:
            fail_error(err)
        for warning in prepared.warnings:
            info(f"avat3r: warning: {warning}")
        how = "the given masks" if prepared.mask_source == "given" else "GrabCut seeded by the head box"
        info(f"wrote {len(prepared.names)} views at {res}² to {out}; background removed with {how}")
