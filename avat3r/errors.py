"""One base for the errors a user can cause or fix: bad input, a missing file or weights, a stage run with
options that do not fit. Each message is one line that names the file or field at fault, in the library's
words (no command-line flags; ``param`` names the parameter at fault); the CLI prints it as
``avat3r: error: …`` (with the flag of that parameter) and exits non-zero. Anything else
escaping a stage is a bug and keeps its traceback.

Each error class also keeps the builtin base it had (ValueError, RuntimeError, FileNotFoundError), so code that
catches those still works.
"""

from __future__ import annotations


class Avat3rError(Exception):
    """Bad input or a missing resource, explained in one line.

    ``param`` names the library parameter or option at fault when there is one (``batch``, ``checkpoint``,
    ``overrides``…), so a front end can point at its own spelling of it: the CLI adds the flag."""

    def __init__(self, *args, param: str | None = None):
        super().__init__(*args)
        self.param = param


def user_errors() -> tuple[type[BaseException], ...]:
    """What the CLI reports as one line: our errors, and the OS's for paths that are missing or not allowed."""
    return (Avat3rError, FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError)


def error_line(err: BaseException) -> str:
    """The first line of an error's message (its type's name when it has none)."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
