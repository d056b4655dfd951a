"""Where files go and how they are written: the cache folder, and atomic writes (a temporary file
beside the target, renamed into place when complete)."""
from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path
from typing import BinaryIO, Iterator


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike) -> Iterator[BinaryIO]:
    """Open a temporary file for writing; on success it replaces ``path``, on failure it is removed,
    so no half-written file is ever left at ``path`` nor beside it. The data reaches the disk
    (``fsync``) before the rename, so a crash leaves the old file or the new one, whole; a full disk
    surfaces as an ``OSError`` here, not as a truncated file later. The file gets the permissions a
    plain ``open(path, "wb")`` would give (the user's umask). An interrupt (Ctrl-C, SIGTERM turned
    into an exception) removes the temporary file wherever it lands; only a process killed outright
    (SIGKILL, power loss) can leave its ``.NAME.XXXX.tmp`` beside ``path``: never at ``path``;
    ``generate`` and ``evaluate`` remove such leftovers when they start.

    Raises:
        OSError: the folder cannot be created or written, or the disk is full (nothing is left).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # the name is chosen before the file is made, inside the try: an interrupt (Ctrl-C) at any
    # point after the file exists finds it by name and removes it (64 random bits: no clash)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    try:
        with open(tmp, "xb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def cache_dir(path: str | os.PathLike | None = None) -> Path:
    """``path``, else ``$POLYCAM_EXPLORER_CACHE``, else the user cache folder."""
    if path is not None:
        return Path(path)
    if os.environ.get("POLYCAM_EXPLORER_CACHE"):
        return Path(os.environ["POLYCAM_EXPLORER_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "polycam-explorer"
