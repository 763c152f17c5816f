"""Bad numbers on the command line end with one `avat3r: error:` line and a non-zero exit, before any work."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from cli.main import app

runner = CliRunner()


@pytest.mark.parametrize("args, message", [
    (["render", "x.avt", "--fps", "0", "--video", "o.mp4"], "--fps must be a positive number, got 0"),
    (["render", "x.avt", "--fps", "nan", "--video", "o.mp4"], "--fps must be a positive number, got nan"),
    (["animate", "x.avt", "--builtin", "demo", "--fps", "inf", "-o", "o.tar"], "--fps must be a positive number"),
    (["train", "-r", "recipes/synthheads-tiny.toml", "--max-steps", "-1"], "--max-steps must be at least 1"),
])
def test_bad_numbers_are_one_line_errors(args, message, tmp_path):
    result = runner.invoke(app, args)
    assert result.exit_code == 1
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("avat3r: error: ") and message in lines[0], result.output
