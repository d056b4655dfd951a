"""Where files go and how they are written: the cache folder, and atomic writes (a temporary file
beside the target, renamed into place when complete)."""
from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path
from typing import BinaryIO, Callable, Iterator


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


def write_new(save: Callable[[Path], None], next_name: Callable[[], Path]) -> Path:
    """Write a file under a name no other writer holds, and return that name.

    ``save(tmp)`` writes the whole file to a private temporary path in ``next_name()``'s folder;
    the file is then hard-linked to ``next_name()`` (``os.link`` never replaces), which is asked
    again whenever another process or thread took that name in the meantime. Where the folder has
    no hard links (FAT, some network folders) the name is reserved by an exclusive create and the
    file renamed onto it. Nothing is left behind on failure (:func:`atomic_write`'s terms).

    Raises:
        OSError: the folder cannot be written, or 1000 names in a row were taken.
    """
    first = next_name()
    tmp = first.with_name(f".{first.name}.{secrets.token_hex(8)}.new")
    try:
        save(tmp)
        for _ in range(1000):
            path = next_name()
            try:
                os.link(tmp, path)
            except FileExistsError:
                continue
            except OSError:  # no hard links on this file system
                try:
                    os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
                except FileExistsError:
                    continue
                os.replace(tmp, path)
            return path
        raise FileExistsError(f"no free name near {first} after 1000 tries")
    finally:
        tmp.unlink(missing_ok=True)


def cache_dir(path: str | os.PathLike | None = None) -> Path:
    """``path``, else ``$POLYCAM_EXPLORER_CACHE``, else the user cache folder."""
    if path is not None:
        return Path(path)
    if os.environ.get("POLYCAM_EXPLORER_CACHE"):
        return Path(os.environ["POLYCAM_EXPLORER_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "polycam-explorer"
