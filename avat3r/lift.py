"""Video, photos or a single image → 4 posed views + cams.json: the "lifting" step in front of ``reconstruct``.

Two backends ship, built on the face tracker (:mod:`avat3r.face.lift`, extra ``avat3r[face]``): ``video`` (a
video of the head turning; the default for video files) and ``photos`` (a folder of unposed photos; the default
for folders). Their cameras are the inverse head poses the tracker solves.

The paper turns one photo into the model's 4 inputs with a 3D GAN inversion. The ``gan3d`` backend
(:mod:`avat3r.gan3d`) runs one the user exports as TorchScript (none, and no weights, ship with avat3r) at 4
cameras avat3r chooses; it is the default for one photo when a ``gan3d`` model is given. A plug-in single-image
backend is any callable

    lifter(image: torch.Tensor (H, W, 3) float in [0, 1]) -> (views (4, H', W', 3) float in [0, 1], Cameras (4))

with cameras in avat3r's conventions (OpenCV axes, head-centric world in metres, DESIGN §2) and a black
background. Backends are found, in this order:

1. registered in-process: ``avat3r.lift.register_lifter("name", factory)``;
2. installed packages that declare an entry point in the group ``avat3r.lifters``, e.g. in their
   ``pyproject.toml``::

       [project.entry-points."avat3r.lifters"]
       mygan = "mypackage.lifting:make_lifter"

3. a module path given directly as the backend name: ``--backend mypackage.lifting:make_lifter`` (a Python
   function of that package; standard-library modules are refused, so ``os:system`` never runs).

In each case the object named is a *factory*: called with no arguments, it returns the lifter (so weights are
loaded only when the backend is used).
"""

from __future__ import annotations

import inspect
import os
import sys
from collections.abc import Callable
from importlib import import_module
from importlib.metadata import entry_points
from pathlib import Path

import torch

from .cameras import Cameras, write_cams_json
from .errors import Avat3rError

ENTRY_POINT_GROUP = "avat3r.lifters"
N_VIEWS = 4

Lifter = Callable[[torch.Tensor], tuple[torch.Tensor, Cameras]]
_REGISTRY: dict[str, Callable[[], Lifter]] = {}


class LiftError(Avat3rError, RuntimeError):
    """No usable lifting backend, or a backend returned something malformed; one-line message."""


def register_lifter(name: str, factory: Callable[[], Lifter]) -> None:
    _REGISTRY[name] = factory


def _entry_points() -> dict:
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def available_lifters() -> list[str]:
    """Names of the registered and installed backends."""
    return sorted(set(_REGISTRY) | set(_entry_points()))


def _no_backend_message(name: str | None) -> str:
    installed = available_lifters()
    how = ("use the gan3d backend with a 3D-GAN inversion exported as TorchScript, install a package that "
           f"registers an '{ENTRY_POINT_GROUP}' entry point, or pass --backend package.module:factory")
    if not installed:
        asked = f" (asked for {name!r})" if name else ""
        return f"no lifting backend installed{asked}; {how}"
    return f"unknown lifting backend {name!r}; installed: {', '.join(installed)} (or {how})"


def get_lifter(name: str | None = None) -> Lifter:
    """Build the named backend (or the only installed one when ``name`` is None)."""
    if name is None:
        installed = available_lifters()
        if len(installed) != 1:
            raise LiftError(_no_backend_message(None) if not installed else
                            f"several lifting backends are installed ({', '.join(installed)}); pick one by name",
                            param="backend")
        name = installed[0]
    if name in _REGISTRY:
        factory = _REGISTRY[name]
    elif name in (eps := _entry_points()):
        try:
            factory = eps[name].load()
        except Exception as err:  # a broken third-party package can fail in any way on import
            raise LiftError(f"lifting backend {name!r} failed to load ({type(err).__name__}: {err})") from None
    elif ":" in name:
        factory = _module_factory(name)
    else:
        raise LiftError(_no_backend_message(name))
    try:
        lifter = factory()
    except Exception as err:  # third-party code can fail in any way
        raise LiftError(f"lifting backend {name!r}: its factory failed ({type(err).__name__}: {err})") from None
    if not callable(lifter):
        raise LiftError(f"lifting backend {name!r}: its factory returned {type(lifter).__name__}, not a callable")
    return lifter


def _module_factory(name: str) -> Callable[[], Lifter]:
    """The factory named by ``package.module:function``. Only a plain Python function defined in a module
    outside the standard library is accepted: the name comes from the command line and is called at once,
    so ``os:system`` or ``shutil:rmtree`` must be refused, not run."""
    module, _, attr = name.partition(":")
    if not module or not attr.isidentifier():
        raise LiftError(f"lifting backend {name!r}: expected package.module:factory")
    if module.split(".")[0] in sys.stdlib_module_names:
        raise LiftError(f"lifting backend {name!r}: {module} is a standard-library module, not a lifting "
                        "backend")
    try:
        factory = getattr(import_module(module), attr)
    except (ImportError, AttributeError) as err:
        raise LiftError(f"cannot import lifting backend {name!r} ({err})") from None
    except Exception as err:  # importing third-party code can fail in any way
        raise LiftError(f"lifting backend {name!r} failed to load ({type(err).__name__}: {err})") from None
    package = module.split(".")[0]
    if not inspect.isfunction(factory) or str(factory.__module__).split(".")[0] != package:
        raise LiftError(f"lifting backend {name!r}: {attr} is not a factory function defined in {package}")
    return factory


def check_lifted(views: torch.Tensor, cameras: Cameras, name: str = "backend") -> None:
    if views.ndim != 4 or views.shape[0] != N_VIEWS or views.shape[-1] != 3:
        raise LiftError(f"lifting {name} returned views of shape {tuple(views.shape)}, expected ({N_VIEWS}, H, W, 3)")
    if len(cameras) != N_VIEWS:
        raise LiftError(f"lifting {name} returned {len(cameras)} cameras, expected {N_VIEWS}")
    H, W = views.shape[1:3]
    if cameras.image_size != (W, H):
        raise LiftError(f"lifting {name}: cameras are {cameras.image_size[0]}x{cameras.image_size[1]} but the "
                        f"views are {W}x{H}")
    cameras.validate([f"view {i}" for i in range(N_VIEWS)])
    if not bool(torch.isfinite(views).all()):
        raise LiftError(f"lifting {name} returned non-finite pixels")


def lift_image(image_path: str | os.PathLike, out_dir: str | os.PathLike, backend: str | None = None) -> list[Path]:
    """Lift one photo to ``out_dir``/view_0.png … view_3.png + cams.json; returns the written image paths."""
    from .imageio import read_image as read_png
    from .imageio import write_png

    lifter = get_lifter(backend)  # fail before touching any file when no backend is available
    image = torch.from_numpy(read_png(image_path).copy()).float() / 255.0
    views, cameras = lifter(image)
    views = torch.as_tensor(views).float().clamp(0, 1)
    check_lifted(views, cameras, repr(backend))
    out = Path(out_dir)
    names = [f"view_{i}.png" for i in range(N_VIEWS)]
    paths = []
    for name, view in zip(names, views):
        write_png(out / name, view)
        paths.append(out / name)
    write_cams_json(out / "cams.json", cameras.to("cpu"), names)
    return paths


# -- sources: a video, a folder of photos, or one image ---------------------------------------------
SOURCE_BACKENDS = ("video", "photos")
BUILTIN_BACKENDS = (*SOURCE_BACKENDS, "gan3d")


def source_kind(source: str | os.PathLike) -> str:
    """``video``, ``photos`` (a folder) or ``image``, from the path."""
    from .face.lift import IMAGE_SUFFIXES, VIDEO_SUFFIXES

    path = Path(source)
    if path.is_dir():
        return "photos"
    if not path.exists():
        raise LiftError(f"{path}: no such file or folder")
    suffix = path.suffix.lower()
    if suffix in VIDEO_SUFFIXES:
        return "video"
    if suffix in IMAGE_SUFFIXES:
        return "image"
    raise LiftError(f"{path}: not a video ({', '.join(VIDEO_SUFFIXES)}), an image or a folder of photos")


def lift(source: str | os.PathLike, out_dir: str | os.PathLike, backend: str | None = None,
         fov_degrees: float | None = None, max_frames: int = 300, warn: Callable[[str], None] | None = None,
         gan3d: str | os.PathLike | None = None, size: int | None = None, device: str | None = "cpu"
         ) -> list[Path]:
    """Lift ``source`` to ``out_dir``/view_0..3.png + cams.json with ``backend`` (None: ``video`` for a video,
    ``photos`` for a folder; for an image ``gan3d`` when its model ``gan3d`` is given, else the installed
    single-image backend); returns the image paths. ``gan3d``, ``size`` and ``device`` are the gan3d backend's
    (:mod:`avat3r.gan3d`: its TorchScript file, else ``$AVAT3R_GAN3D``; the views' side in pixels)."""
    from .face.tracker import DEFAULT_FOV_DEGREES

    kind = source_kind(source)
    if backend is None:
        backend = kind if kind in SOURCE_BACKENDS else "gan3d" if gan3d is not None else None
    if backend != "gan3d" and (gan3d is not None or size is not None):
        raise LiftError(f"a gan3d {'model' if gan3d is not None else 'view size'} is for the gan3d backend, "
                        f"not {backend or 'a plug-in backend'}", param="gan3d" if gan3d is not None else "size")
    if backend == "gan3d":
        if kind != "image":
            raise LiftError(f"the gan3d backend lifts one image; {source} is {'a folder' if kind == 'photos' else 'a video'}")
        from . import gan3d as gan

        return gan.lift_gan3d(source, out_dir, gan3d, size=gan.DEFAULT_SIZE if size is None else size,
                              fov_degrees=gan.DEFAULT_FOV_DEGREES if fov_degrees is None else float(fov_degrees),
                              device=device)
    fov = DEFAULT_FOV_DEGREES if fov_degrees is None else float(fov_degrees)
    if backend in SOURCE_BACKENDS:
        if kind != backend:
            want = "a video file" if backend == "video" else "a folder of photos"
            raise LiftError(f"the {backend} backend lifts {want}; {source} is {'a folder' if kind == 'photos' else f'an {kind}' if kind == 'image' else 'a video'}")
        from .face import lift as face_lift

        if backend == "video":
            return face_lift.lift_video(source, out_dir, fov, max_frames=max_frames, warn=warn)
        return face_lift.lift_photos(source, out_dir, fov, warn=warn)
    if kind != "image":
        raise LiftError(f"lifting backend {backend!r} lifts one image; {source} is {'a folder' if kind == 'photos' else 'a video'}")
    return lift_image(source, out_dir, backend)
