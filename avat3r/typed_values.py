"""Values read from JSON/TOML checked against the type of a dataclass field's default: one rule for model
configs and training recipes."""

from __future__ import annotations

from typing import Any

_KINDS = {"bool": "true or false", "float": "a number", "int": "an integer", "str": "a string", "tuple": "a list",
          "dict": "a table"}


def coerce_like(value: Any, default: Any) -> Any:
    """``value`` if it has ``default``'s type (an int where a float is expected becomes a float, a list where a
    tuple is expected a tuple; a bool is never a number); TypeError naming the expected type otherwise."""
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(default, str):
        ok = isinstance(value, str)
    elif isinstance(default, tuple):
        ok = isinstance(value, (list, tuple))
        value = tuple(value) if ok else value
    elif isinstance(default, dict):
        ok = isinstance(value, dict)
    else:
        ok = True
    if not ok:
        raise TypeError(f"must be {_KINDS.get(type(default).__name__, type(default).__name__)}, got {value!r}")
    return value


def table_to_dataclass(cls, values: Any, name: str, source: str, error: type[Exception]):
    """``cls(**values)`` for a TOML table ``[name]`` of ``source``: a non-table, an unknown key or a value of
    the wrong type raises ``error`` with one line naming ``name.key`` (recipes of training and evaluation)."""
    from dataclasses import fields

    if not isinstance(values, dict):
        raise error(f"{source}: [{name}] must be a table")
    known = [f.name for f in fields(cls)]
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise error(f"{source}: unknown key {name}.{unknown[0]} (known in [{name}]: {', '.join(known)})")
    defaults = cls()
    kwargs = {}
    for key, value in values.items():
        try:
            kwargs[key] = coerce_like(value, getattr(defaults, key))
        except TypeError as err:
            raise error(f"{source}: {name}.{key} {err}") from None
    return cls(**kwargs)
