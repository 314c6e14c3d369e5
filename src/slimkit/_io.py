"""Atomic file writes (a crash mid-write never leaves a half-written file where a good one was) and the cache's
place."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any


def file_mode_mask() -> int:
    """The user's umask (read without changing it for long)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _staging(target: Path, suffix: str) -> tuple[int, str]:
    """(open descriptor, name) of a fresh empty file next to ``target`` under a hidden unique name, with the
    permissions any program's new file gets (0666 minus the user's umask), not the private 0600 of a temporary
    file."""
    fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=suffix, dir=target.parent)
    os.chmod(name, 0o666 & ~file_mode_mask())
    return fd, name


def staging_file(target: Path, suffix: str) -> Path:
    """A fresh empty file next to ``target`` (see :func:`_staging`) for a writer that takes a file name — an
    exporter — to fill before it is renamed over ``target``: a fixed name could be the user's file."""
    fd, name = _staging(target, suffix)
    os.close(fd)
    return Path(name)


def replace_file(staged: str | os.PathLike[str], target: str | os.PathLike[str]) -> None:
    """Rename the finished ``staged`` file over ``target``. A ``target`` that exists and is neither a regular file
    nor a link (a device such as /dev/null, a pipe, a socket) is refused: renaming over it would delete the node,
    and as root that includes the system's devices."""
    target = Path(target)
    if target.exists() and not target.is_symlink() and not target.is_file():
        raise FileExistsError(errno.EEXIST, "not a regular file (a device, a pipe or a folder): it is never "
                              "replaced", str(target))
    os.replace(staged, target)


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike[str], mode: str = "wb") -> Iterator[IO]:
    """Open a temporary file next to ``path`` (:func:`_staging`: a new file's usual permissions); on success fsync
    and rename it over ``path``."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _staging(target, ".tmp")
    try:
        with os.fdopen(fd, mode) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        replace_file(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def read_json_object(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The JSON object in ``path``, or None when it is missing, unreadable or not an object: a damaged record a run
    wrote is treated as absent (the step runs again; a folder is not taken for a run)."""
    try:
        value = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def write_text_atomic(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` to ``path`` atomically (UTF-8)."""
    with atomic_write(path, "w") as handle:
        handle.write(text)


def copy_atomic(source: str | os.PathLike[str], target: str | os.PathLike[str]) -> None:
    """Copy ``source`` to ``target`` through a fresh temporary file renamed over it: a symbolic link at ``target`` is
    replaced, never written through (``shutil.copyfile`` opens the target and follows a link planted there)."""
    with open(source, "rb") as read, atomic_write(target) as write:
        shutil.copyfileobj(read, write)


def is_inside(path: str | os.PathLike[str], folder: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is ``folder`` or lies under it, links resolved."""
    path, folder = Path(path).resolve(), Path(folder).resolve()
    return path == folder or folder in path.parents


def refuse_links(folder: str | os.PathLike[str]) -> None:
    """Raise :class:`ConfigError` when a symbolic link lies anywhere under ``folder`` (links are not followed).
    slimkit writes a run folder's files by paths under it, so a link planted there (``stages`` → elsewhere) would
    send those writes, and a ``--force`` restart's deletions, outside it."""
    from slimkit._errors import ConfigError

    for root, dirs, files in os.walk(folder, followlinks=False):
        for name in dirs + files:
            if os.path.islink(os.path.join(root, name)):
                raise ConfigError(f"output folder '{folder}' holds a symbolic link ({os.path.join(root, name)}): "
                                  "slimkit writes only inside its output folder and never through a link; remove the "
                                  "link, or choose a new --out")


def cache_root() -> Path:
    """Where slimkit caches what it derives (tokenizers, token ids, decoded MNIST, trained baselines, latency
    tables): ``$SLIMKIT_CACHE`` or ``~/.cache/slimkit``."""
    return Path(os.environ.get("SLIMKIT_CACHE", Path.home() / ".cache" / "slimkit"))
