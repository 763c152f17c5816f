"""Small shared pieces of file handling: all-or-nothing writers and versioned JSON headers."""

from __future__ import annotations


class AbortOnError:
    """Context manager for writers with ``close()`` (finish, publish) and ``abort()`` (drop partial output):
    an exception inside the ``with`` block never leaves a half-written file behind."""

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def check_format(doc, fmt: str, version: int, source: str, what: str, error: type[Exception]) -> dict:
    """Raise ``error`` (one line naming ``source``) unless ``doc`` is a dict with this format and version."""
    if not isinstance(doc, dict) or doc.get("format") != fmt:
        raise error(f"{source} does not describe {what}")
    if doc.get("version") != version:
        raise error(f"{source}: {what} version {doc.get('version')!r} is not supported (expected {version})")
    return doc
