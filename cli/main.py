"""The `avat3r` command: one Typer sub-command per stage (each in its own module)."""

from __future__ import annotations

import sys

import typer

from . import animate, export, lift, prep, prior, reconstruct, render, train
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

for module in (prep, prior, train, lift, reconstruct, animate, render, export, eval_):
    module.register(app)


# the click exceptions Typer raises (Typer may carry its own copy of click, so take them from where it lives)
_click = sys.modules[typer.BadParameter.__module__]
_NoArgsIsHelp = getattr(_click, "NoArgsIsHelpError", ())


def main(argv: list[str] | None = None) -> None:
    """The console script: a usage error is one `avat3r: error:` line (naming the command's --help), not a box."""
    try:
        code = app(args=argv, prog_name="avat3r", standalone_mode=False)
    except _NoArgsIsHelp as e:  # bare `avat3r` / `avat3r prep`: the help itself
        print(e.ctx.get_help() if e.ctx is not None else e.format_message(), file=sys.stderr)
        sys.exit(2)
    except _click.UsageError as e:
        where = e.ctx.command_path if e.ctx is not None else "avat3r"
        print(f"avat3r: error: {e.format_message()} (see `{where} --help`)", file=sys.stderr)
        sys.exit(2)
    except _click.ClickException as e:
        print(f"avat3r: error: {e.format_message()}", file=sys.stderr)
        sys.exit(e.exit_code)
    except typer.Abort:
        print("avat3r: error: aborted", file=sys.stderr)
        sys.exit(1)
    sys.exit(code or 0)


if __name__ == "__main__":
    main()
