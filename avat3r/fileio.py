"""Small shared pieces of file handling: all-or-nothing writers (files written aside and renamed in), versioned
JSON headers, JSON-safe metadata, output locks and folders built aside and swapped in whole."""

from __future__ import annotations

import contextlib
import fcntl
import glob
import os
import shutil
import sys
import tarfile
import tempfile
from collections.abc import Callable
from pathlib import Path

from .errors import Avat3rError


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


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


class AtomicFile(AbortOnError):
    """A file written aside, as the hidden temp ``.NAME.<random>.tmp`` in the same folder, and renamed over
    ``path`` by ``close()``: a crash or ``abort()`` never leaves a half-written ``path``. ``file`` is the open
    binary file to write to."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, self.tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.", suffix=".tmp")
        self.file = os.fdopen(fd, "wb")

    def write(self, data: bytes) -> int:
        return self.file.write(data)

    def close(self) -> None:
        try:
            self.file.close()
            os.chmod(self.tmp, 0o666 & ~_umask())  # mkstemp makes 0600; a published file gets the usual mode
            os.replace(self.tmp, self.path)
        except BaseException:
            self.abort()
            raise

    def abort(self) -> None:
        self.file.close()
        if os.path.exists(self.tmp):
            os.unlink(self.tmp)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` all or nothing (see AtomicFile)."""
    with AtomicFile(path) as f:
        f.write(data)


def json_safe(value):
    """``value`` with tensors as (nested) lists and tuples as lists, as JSON stores it."""
    import torch

    if isinstance(value, torch.Tensor):
        return value.detach().cpu().tolist()
    if isinstance(value, (list, tuple)):
        return [json_safe(x) for x in value]
    if isinstance(value, dict):
        return {str(k): json_safe(x) for k, x in value.items()}
    return value


# -- deterministic tar (shards, frame streams) -------------------------------------------------------------
def tar_member(name: str, data: bytes, mode: int = 0o644) -> bytes:
    """One ustar member as bytes: header, data, zero padding to the 512-byte block. Fixed mtime and owner, so
    the bytes depend on name, mode and content only; written as they come, so a pipe's reader sees each member
    at once."""
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = mode
    info.mtime = 0
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info.tobuf(format=tarfile.USTAR_FORMAT) + data + b"\0" * ((-len(data)) % tarfile.BLOCKSIZE)


def tar_end(written: int) -> bytes:
    """What ends an archive of ``written`` bytes: two zero blocks, padded to a whole record as tar(1) expects."""
    end = 2 * tarfile.BLOCKSIZE
    return b"\0" * (end + (-(written + end)) % tarfile.RECORDSIZE)


def check_format(doc, fmt: str, version: int, source: str, what: str, error: type[Exception]) -> dict:
    """Raise ``error`` (one line naming ``source``) unless ``doc`` is a dict with this format and version."""
    if not isinstance(doc, dict) or doc.get("format") != fmt:
        raise error(f"{source} does not describe {what}")
    if doc.get("version") != version:
        raise error(f"{source}: {what} version {doc.get('version')!r} is not supported (expected {version})")
    return doc


# -- outputs that other runs must not share, and folders built aside ------------------------------------------
class OutputError(Avat3rError, ValueError):
    """An output cannot be written safely: another run is writing it, or it is a folder of other things."""


def hidden_sibling(path: str | os.PathLike, tag: str) -> Path:
    """``dir/.NAME.TAG`` for ``dir/NAME``: working files of an output live beside it, on the same file system."""
    path = Path(path)
    return path.parent / f".{path.name}.{tag}"


class OutputLock:
    """Exclusive lock on an output path, held on the hidden sibling file ``.NAME.lock``. It is an flock, so the
    system drops it when a killed run's process ends; a second run on the same output fails with OutputError."""

    def __init__(self, target: str | os.PathLike):
        self.target = Path(target)
        self.path = hidden_sibling(self.target, "lock")
        self._fd: int | None = None

    def acquire(self) -> OutputLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise OutputError(f"{self.target} is being written by another run (it holds {self.path.name}); "
                                  "wait for it to finish") from None
            # the previous holder removes the file when done: only a lock on the file still there counts
            try:
                if os.stat(self.path).st_ino == os.fstat(fd).st_ino:
                    self._fd = fd
                    return self
            except FileNotFoundError:
                pass
            os.close(fd)

    def release(self) -> None:
        if self._fd is not None:
            os.unlink(self.path)  # while still locked, so no run can lock the removed file unnoticed
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> OutputLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


class StagedFolder(AbortOnError):
    """Build a folder's new content in the hidden sibling ``.NAME.partial`` (``self.path``) and swap it in on
    ``close()``: the old folder stays whole until the new one is complete, and a killed run leaves only the
    sibling, which the next run clears (or continues, with ``resume``). The output's lock is held meanwhile.

    ``ours(name)`` tells the files this stage writes. A non-empty folder holding none of them is refused (it is
    not this stage's output); files that are not ours move over into the new folder, so nothing else is lost.
    """

    def __init__(self, target: str | os.PathLike, ours: Callable[[str], bool], what: str = "output",
                 resume: bool = False):
        self.target = Path(os.path.realpath(target))  # through links: build beside the real folder
        self.path = hidden_sibling(self.target, "partial")
        self.resume = resume
        self._ours = ours
        self._old = hidden_sibling(self.target, "old")
        if self.target == Path.cwd().resolve():
            raise OutputError(f"{target} is the current folder, which cannot be replaced; name another folder")
        self._lock = OutputLock(self.target).acquire()
        try:
            if self._old.exists():  # a run killed while swapping: the old folder is still whole there
                if self.target.exists():
                    shutil.rmtree(self._old)
                else:
                    os.rename(self._old, self.target)
            if self.target.exists() and not self.target.is_dir():
                raise OutputError(f"{target} is a file, not a folder")
            names = [p.name for p in self.target.iterdir()] if self.target.is_dir() else []
            if names and not any(ours(n) for n in names):
                raise OutputError(f"{target} is not empty and holds no {what}; name a new or empty folder")
            if self.path.exists() and not resume:
                shutil.rmtree(self.path)
            self.path.mkdir(exist_ok=True)
            for tmp in self.path.glob(".*.tmp"):  # a killed run's half-written files
                tmp.unlink()
        except BaseException:
            self._lock.release()
            raise

    def close(self) -> None:
        try:
            if self.target.is_dir():
                for entry in self.target.iterdir():
                    if not self._ours(entry.name) and not (self.path / entry.name).exists():
                        os.rename(entry, self.path / entry.name)  # not ours: keep it
                os.rename(self.target, self._old)
                os.rename(self.path, self.target)
                shutil.rmtree(self._old)
            else:
                os.rename(self.path, self.target)
        finally:
            self._lock.release()

    def abort(self) -> None:
        """Drop the new content (kept for the next run with ``resume``); the old folder is untouched."""
        if not self.resume:
            shutil.rmtree(self.path, ignore_errors=True)
        self._lock.release()


def partial_file(path: str | os.PathLike, suffix: str = "") -> tuple[int, str]:
    """Create the temp file ``.NAME.<random>.partial<suffix>`` beside ``path``, to write ``path`` aside and
    rename it when complete. Returns (fd, temp path); the fd holds an flock on the file: keep it open until the
    file is renamed or removed. Such temp files of the same ``path`` whose writers were killed (nobody holds
    their lock) are removed first, so killed runs leave nothing behind for long."""
    path = Path(path)
    prefix = f".{path.name}."
    for stale in path.parent.glob(glob.escape(prefix) + "*.partial" + glob.escape(suffix)):
        try:
            fd = os.open(stale, os.O_RDONLY)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            stale.unlink(missing_ok=True)
        except BlockingIOError:
            pass  # its writer is alive
        finally:
            os.close(fd)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=prefix, suffix=".new")
    fcntl.flock(fd, fcntl.LOCK_EX)
    final = tmp[: -len(".new")] + ".partial" + suffix  # renamed once locked, so no run takes it for stale
    os.rename(tmp, final)
    return fd, final


@contextlib.contextmanager
def native_logs_silenced(env: str = "AVAT3R_NATIVE_LOGS"):
    """Send what native libraries write straight to file descriptor 2 (mediapipe's and TensorFlow Lite's C++
    logs, which ignore Python's streams and their own log-level variables) to /dev/null meanwhile, so a user
    sees our lines only. Setting ``env`` (to anything) keeps those logs, for debugging."""
    if os.environ.get(env):
        yield
        return
    try:
        sys.stderr.flush()
    except (AttributeError, OSError, ValueError):
        pass
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def opencv():
    """The cv2 module with OpenCV's own log silenced (unless OPENCV_LOG_LEVEL asks for it): a bad image or video
    then reaches the user as our one-line error only, without ``[ WARN ]`` lines around it."""
    import cv2

    if "OPENCV_LOG_LEVEL" not in os.environ:
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
    return cv2
