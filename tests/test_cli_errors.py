"""Bad numbers on the command line end with one `avat3r: error:` line and a non-zero exit, before any work."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from avat3r.cli.main import app

runner = CliRunner()
REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("args, message", [
    (["render", "x.avt", "--fps", "0", "--video", "o.mp4"], "--fps must be a positive number, got 0"),
    (["render", "x.avt", "--fps", "nan", "--video", "o.mp4"], "--fps must be a positive number, got nan"),
    (["animate", "x.avt", "--builtin", "demo", "--fps", "inf", "-o", "o.tar"], "--fps must be a positive number"),
    (["train", "-r", "recipes/synthheads-tiny.toml", "--max-steps", "-1"], "--max-steps must be at least 1"),
    # library errors name the library's parameter; the CLI adds its flag
    (["render", "x.ply", "--background", "2,0,0", "--video", "o.mp4"],
     "background must be three comma-separated values in [0,1], got '2,0,0' (--background)"),
    (["train", "-r", str(REPO / "recipes" / "synthheads-tiny.toml"), "--set", "oops"],
     "override 'oops': expected section.key=value (--set section.key=value)"),
])
def test_bad_numbers_are_one_line_errors(args, message, tmp_path):
    result = runner.invoke(app, args)
    assert result.exit_code == 1
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("avat3r: error: ") and message in lines[0], result.output


@pytest.mark.parametrize("argv, message, where", [
    (["train"], "Missing option '--recipe'", "avat3r train --help"),
    (["train", "--recipe", "r.toml", "--bogus"], "No such option: --bogus", "avat3r train --help"),
    (["prep", "nope"], "No such command 'nope'", "avat3r prep --help"),
])
def test_usage_errors_are_one_line_from_the_console_script(argv, message, where, capsys):
    from avat3r.cli.main import main

    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1 and err[0].startswith("avat3r: error: ") and message in err[0] and where in err[0], err


def test_help_exits_zero(capsys):
    from avat3r.cli.main import main

    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--help"])
    assert exit_info.value.code == 0 and "--recipe" in capsys.readouterr().out
