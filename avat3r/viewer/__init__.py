"""The browser viewer: one self-contained HTML file (rig data base64-inlined, script inlined, nothing fetched at
view time) that animates a linear Gaussian rig with a WebGL2 splat renderer of our own (``viewer.js``; why not
an npm library is said at its top), one slider per expression parameter and playback of an embedded sequence.

``chromium`` drives headless Chromium for the tests, the benchmark and the README screenshot."""

from __future__ import annotations

import base64
import html
import json
import os
from importlib import resources

import numpy as np

from ..expressions import ExpressionSequence, check_space
from ..fileio import atomic_write_bytes
from ..rig import Rig
from ..stages.camera_path import CameraPath

DEFAULT_SIZE = 512
DEFAULT_RADIUS = 1.0


def _package_text(name: str) -> str:
    return resources.files(__package__).joinpath(name).read_text(encoding="utf-8")


def viewer_data(rig: Rig, sequence: ExpressionSequence | None = None, size: int = DEFAULT_SIZE,
                radius: float = DEFAULT_RADIUS, float16: bool = True) -> dict:
    """What the page embeds: the rig (base float32, deltas float16 as in the file, both base64), its expression
    space, names, ranges and neutral code, the start camera (the render stage's frontal view) and, when given, a
    sequence (its codes as JSON numbers, its frame rate)."""
    if sequence is not None:
        check_space(sequence, rig.space, rig.dim)
    cam = CameraPath("frontal", size, radius).camera(0, 1)
    deltas = rig.deltas.detach().cpu().numpy().astype(np.float16 if float16 else np.float32)
    return {
        "space": rig.space, "names": list(rig.names), "count": len(rig),
        "neutral": [float(x) for x in rig.neutral], "ranges": rig.ranges.tolist(),
        "base": base64.b64encode(rig.base.detach().cpu().numpy().astype("<f4").tobytes()).decode("ascii"),
        "deltas": base64.b64encode(deltas.astype(deltas.dtype.newbyteorder("<")).tobytes()).decode("ascii"),
        "deltas_dtype": "float16" if float16 else "float32",
        "camera": {"K": cam.K[0].tolist(), "w2c": cam.w2c[0].tolist(), "width": int(cam.width[0]),
                   "height": int(cam.height[0]), "radius": float(radius)},
        "sequence": None if sequence is None else {
            "fps": float(sequence.fps), "codes": [[round(float(v), 4) for v in row] for row in sequence.codes]},
    }


def viewer_html(rig: Rig, sequence: ExpressionSequence | None = None, size: int = DEFAULT_SIZE,
                title: str = "avat3r", radius: float = DEFAULT_RADIUS) -> str:
    """The page as one string. The JSON is made safe to sit inside a script element (no ``</``)."""
    data = json.dumps(viewer_data(rig, sequence, size, radius), separators=(",", ":")).replace("</", "<\\/")
    script = _package_text("viewer.js")
    if "</script" in script.lower():
        raise AssertionError("viewer.js must not contain a closing script tag")
    page = _package_text("page.html").replace("__TITLE__", html.escape(title))
    head, rest = page.split("__DATA__")
    middle, tail = rest.split("__SCRIPT__")
    return head + data + middle + script + tail


def write_viewer(path: str | os.PathLike, rig: Rig, sequence: ExpressionSequence | None = None,
                 size: int = DEFAULT_SIZE, title: str = "avat3r", radius: float = DEFAULT_RADIUS) -> int:
    """Write the page atomically; returns its size in bytes."""
    data = viewer_html(rig, sequence, size, title, radius).encode("utf-8")
    atomic_write_bytes(path, data)
    return len(data)
