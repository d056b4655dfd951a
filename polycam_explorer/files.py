"""Where files go and how they are written: the cache folder, and atomic writes (a temporary file
beside the target, renamed into place when complete)."""
from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import BinaryIO, Iterator


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _umask()  # read once at import: os.umask can only be read by setting it


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike) -> Iterator[BinaryIO]:
    """Open a temporary file for writing; on success it replaces ``path``, on failure it is removed,
    so no half-written file is ever left at ``path`` nor beside it. The data reaches the disk
    (``fsync``) before the rename, so a crash leaves the old file or the new one, whole; a full disk
    surfaces as an ``OSError`` here, not as a truncated file later. The file gets the permissions a
    plain ``open(path, "wb")`` would give (the user's umask), not the temporary file's private 0600.
    Only a process killed outright (SIGKILL, power loss) can leave its ``.NAME.XXXX.tmp`` beside
    ``path``: never at ``path``; ``generate`` and ``evaluate`` remove such leftovers when they start.

    Raises:
        OSError: the folder cannot be created or written, or the disk is full (nothing is left).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def cache_dir(path: str | os.PathLike | None = None) -> Path:
    """``path``, else ``$POLYCAM_EXPLORER_CACHE``, else the user cache folder."""
    if path is not None:
        return Path(path)
    if os.environ.get("POLYCAM_EXPLORER_CACHE"):
        return Path(os.environ["POLYCAM_EXPLORER_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "polycam-explorer"
