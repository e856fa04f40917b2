"""onebyte's on-disk cache of converted models: each folder is written once, under a file lock,
into a temporary folder beside the final one and renamed into place, so concurrent processes never
see a half-written folder and at most one of them does the work.

``<cache>`` is ``$ONEBYTE_CACHE`` when set, else ``$XDG_CACHE_HOME/onebyte``, else
``~/.cache/onebyte``; models live under ``<cache>/models``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from onebyte.tasks.loaded_model import ModelLoadError, one_line

try:  # POSIX advisory locks; the atomic rename alone is still correct without them.
    import fcntl
except ImportError:  # pragma: no cover - non-POSIX
    fcntl = None  # type: ignore[assignment]

__all__ = ["build_cached", "cache_root", "is_complete", "make_readable", "models_dir", "publish"]

COMPLETE_MARKER = "onebyte-cache.json"
CACHE_FORMAT = 1


def cache_root() -> Path:
    """Root of onebyte's on-disk cache (``$ONEBYTE_CACHE``, else ``~/.cache/onebyte``)."""
    env = os.environ.get("ONEBYTE_CACHE")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "onebyte"


def models_dir() -> Path:
    return cache_root() / "models"


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive advisory lock on ``path``, so that only one process writes a folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if fcntl is None:  # pragma: no cover
        yield
        return
    with open(path, "a+") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def is_complete(folder: Path) -> bool:
    """Only a folder with the completion marker counts: anything else may be half-written."""
    return (folder / COMPLETE_MARKER).is_file()


def publish(tmp: Path, final: Path) -> None:
    """Atomically move a fully written ``tmp`` folder to ``final``; a concurrent winner is fine."""
    try:
        os.rename(tmp, final)
        return
    except OSError:
        pass
    if is_complete(final):  # another process won the race: keep theirs
        shutil.rmtree(tmp, ignore_errors=True)
        return
    # ``final`` exists but is not one of ours (left over, or hand-made): move it aside, retry.
    aside = final.with_name(f".{final.name}.stale-{os.getpid()}-{time.time_ns()}")
    try:
        os.rename(final, aside)
    except OSError:
        pass
    try:
        os.rename(tmp, final)
    except OSError:
        if not is_complete(final):
            shutil.rmtree(tmp, ignore_errors=True)
            raise ModelLoadError(f"could not write the model cache folder {final}") from None
        shutil.rmtree(tmp, ignore_errors=True)
    shutil.rmtree(aside, ignore_errors=True)


def make_readable(folder: Path) -> None:
    """mkdtemp and safetensors create owner-only entries; give the cache the usual umask modes."""
    umask = os.umask(0)
    os.umask(umask)
    with contextlib.suppress(OSError):
        os.chmod(folder, 0o777 & ~umask)
        for entry in folder.iterdir():
            os.chmod(entry, (0o777 if entry.is_dir() else 0o666) & ~umask)


def build_cached(final: Path, writer: Callable[[Path], None], source: dict | None = None) -> Path:
    """Return ``final``, creating it with ``writer(tmp_dir)`` once (locked, atomic).

    ``source`` goes into the folder's completion marker; only a folder with the marker counts.
    """
    if is_complete(final):
        return final
    try:
        with file_lock(final.with_name(f".{final.name}.lock")):
            if is_complete(final):
                return final
            tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
            try:
                writer(tmp)
                marker = {"format": CACHE_FORMAT, **(source or {})}
                (tmp / COMPLETE_MARKER).write_text(json.dumps(marker, indent=1) + "\n")
                make_readable(tmp)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
            publish(tmp, final)
    except OSError as exc:
        raise ModelLoadError(
            f"cannot write the model cache folder {final} ({one_line(exc)}); set ONEBYTE_CACHE to a writable folder"
        ) from None
    return final
