"""`avat3r animate`: Drive an avatar with an expression sequence; writes a frame stream (tar) to stdout or a file."""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path

import typer

from .common import LazyBar, check_fps, fail, fail_error, info

HELP = """Drive an avatar with an expression sequence; writes a frame stream (tar) to stdout or a file.

Only the expression decoder runs (the identity was encoded by reconstruct), --batch frames per call. Each
frame is written as soon as it is decoded, so a renderer on the other end of a pipe starts at once:

  avat3r animate head.avt expr.parquet | avat3r render --video out.mp4

  avat3r animate head.avt --builtin demo -o frames.tar

  avat3r animate head.avt --video driving.mp4 | avat3r render --video out.mp4

A linear rig (avat3r export head.avt -o head.rig.npz) animates in place of the avatar, without the network:

  avat3r animate head.rig.npz expr.parquet | avat3r render --video out.mp4

--video reads the expressions off a driving video with an extractor for the avatar's expression space:
landmarks (default when the face tracker is installed: face-mesh landmarks measured against the video's most
neutral frame, for spaces with ARKit-named parameters such as synthheads-v1) or regressor (the shipped
synthheads-v1 CNN, models/synthheads-expr, or $AVAT3R_EXPRESSION_REGRESSOR; the face should fill the middle of
the frame). --save-expr keeps the extracted codes as expr.parquet.
"""

# the flag of each library parameter an error may name
FLAGS = {"device": "--device", "checkpoint": "--checkpoint", "batch": "--batch", "extractor": "--extractor",
         "extractor_weights": "--extractor-weights"}
TTY_MESSAGE = ("refusing to write a binary frame stream to a terminal; redirect it (> frames.tar), pipe it "
               "(| avat3r render --video out.mp4) or pass -o FILE")


def _open_output(out: Path | None):
    """(file object, finish(ok)) for -o FILE (written atomically), a FIFO/device, or stdout (never a terminal)."""
    if out is None or str(out) == "-":
        if sys.stdout.isatty():
            fail(TTY_MESSAGE)
        return sys.stdout.buffer, lambda ok: None
    if out.exists() and not stat.S_ISREG(out.stat().st_mode):  # a named pipe or device: write through
        f = open(out, "wb")
        return f, lambda ok: f.close()
    from avat3r.fileio import AtomicFile

    f = AtomicFile(out)
    return f.file, lambda ok: f.close() if ok else f.abort()


def _sequence_from_video(video: Path, extractor: str, weights: Path | None, av, smooth: int, fps: float | None,
                         quiet: bool):
    from avat3r.driving import build_extractor, extract_sequence
    from avat3r.stages.animate import animatable_device

    ex = build_extractor(extractor, weights, device=animatable_device(av), space=av.expression_space)
    bar = LazyBar(desc="read expressions", disable=quiet)
    try:
        seq = extract_sequence(video, ex, expected_space=av.expression_space, smooth=smooth, fps=fps,
                               progress=bar.update)
    finally:
        bar.close()
    rate = getattr(ex, "face_found_rate", None)
    if rate is not None:
        from avat3r.face.expressions import LOW_FACE_RATE

        if rate < LOW_FACE_RATE:
            info(f"animate: warning: a face was found in only {rate:.0%} of the frames of {video} (none in frames "
                 f"{ex.missing_frames()}); those frames repeat the nearest expression found")
    return seq


def register(app: typer.Typer) -> None:
    @app.command("animate", help=HELP)
    def animate(
        avatar: Path = typer.Argument(..., help="The avatar (.avt) from reconstruct, or its rig (.rig.npz) from "
                                      "export."),
        sequence: Path | None = typer.Argument(None, help="Expression sequence (expr.parquet)."),
        builtin: str | None = typer.Option(None, "--builtin", help="Use a built-in sequence instead: demo "
                                              "(neutral → smile → jaw open → tongue → blink) or neutral."),
        out: Path | None = typer.Option(None, "--out", "-o", help="Frame stream file (default: stdout)."),
        fps: float | None = typer.Option(None, "--fps", help="Frame rate (default: the sequence's; 25 for "
                                            "built-ins)."),
        batch: int = typer.Option(8, "--batch", min=1, help="Frames decoded per network call."),
        video: Path | None = typer.Option(None, "--video", help="Driving video: take the expressions from it."),
        extractor: str | None = typer.Option(None, "--extractor", help="Expression extractor for --video: "
                                             "landmarks (the face tracker's landmarks → ARKit-named codes; the "
                                             "default when it is installed) or regressor (the SynthHeads CNN; the "
                                             "default with --extractor-weights)."),
        extractor_weights: Path | None = typer.Option(None, "--extractor-weights", help="The extractor's "
                                                         "weights (regressor: a folder with model.safetensors + "
                                                         "config.json)."),
        smooth: int = typer.Option(3, "--smooth", min=1, help="Moving-average window (odd, frames) over the "
                                   "codes read off --video; 1 = none."),
        save_expr: Path | None = typer.Option(None, "--save-expr", help="Also write the codes read off --video "
                                              "as an expr.parquet."),
        checkpoint: Path | None = typer.Option(None, "--checkpoint", "-c", help="The checkpoint the avatar was "
                                                  "reconstructed with (needed unless it is self-contained)."),
        device: str = typer.Option("auto", "--device", help="cpu, cuda, cuda:N or auto."),
        quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
    ) -> None:
        from avat3r.errors import user_errors
        from avat3r.expressions import builtin_sequence, read_sequence, write_sequence
        from avat3r.stages.animate import animate as run_animate
        from avat3r.stages.animate import load_animatable

        check_fps(fps)
        if (sequence is not None) + (builtin is not None) + (video is not None) != 1:
            fail("give exactly one of: an expression sequence (expr.parquet), --builtin demo, --video driving.mp4")
        if (out is None or str(out) == "-") and sys.stdout.isatty():
            fail(TTY_MESSAGE)  # before any work: the user forgot a redirect
        try:
            av = load_animatable(avatar, checkpoint, device)
            if builtin is not None:
                seq = builtin_sequence(builtin, av.expression_space, fps or 25.0)
            elif video is not None:
                seq = _sequence_from_video(video, extractor, extractor_weights, av, smooth, fps, quiet)
                if save_expr is not None:
                    write_sequence(save_expr, seq)
            else:
                seq = read_sequence(sequence)
                if fps is not None:
                    seq.fps = float(fps)
        except user_errors() as e:
            fail_error(e, FLAGS)
        stream, finish = _open_output(out)
        ok = False
        try:
            bar = LazyBar(total=len(seq), desc="animate", disable=quiet)
            try:
                n = run_animate(av, seq, stream, batch=batch, progress=bar.update)
            finally:
                bar.close()
            ok = True
        except BrokenPipeError:
            # the reader went away; keep Python from complaining again when it flushes stdout at exit
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            fail("the frame stream's reader closed the pipe before the last frame")
        except user_errors() as e:
            fail_error(e, FLAGS)
        finally:
            finish(ok)
        info(f"animate: {n} frames at {seq.fps:g} fps ({seq.space}) → {out if out else 'stdout'}")
