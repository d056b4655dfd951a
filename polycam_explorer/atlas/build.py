"""Building the atlas index: scan a folder of map sets, read only the new and changed ones.

A file's version is its size and mtime; when those change but the bytes (SHA-256) do not, the row
is kept and only its stat is updated (no map set is read). Files that are not readable map sets
are skipped with an :class:`AtlasSkipWarning` naming the file and remembered (with their size
and mtime) so the next build does not read them again unless they change. Rows of files that
are gone are dropped. Work is committed every few files in one transaction each, so an
interrupted build leaves a consistent index (each row old or new, never half) and the next build
goes on from there.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Union

import numpy as np
import torch
import torch.nn.functional as F

from .. import render
from ..mapset import MapSet
from . import store
from .store import VARIANTS, transaction

SUFFIX = ".mapset.npz"
THUMB_SIZE = 128  # longest side of a thumbnail, pixels (smaller images keep their size)
MAP_SIZE = 32  # side of the small stored maps (aggregates), pixels
COMMIT_EVERY = 32  # files per transaction
COMMIT_SECONDS = 2.0  # or this long, whichever comes first

Labels = Union[None, str, os.PathLike, Mapping[str, str]]
Progress = Union[bool, Callable[[int, int], None]]


class AtlasSkipWarning(UserWarning):
    """A file in the folder is not a readable map set; it was left out of the index."""


@dataclass
class BuildReport:
    """What one build did: counts, and the files skipped in this build with the reason."""

    rows: int = 0
    added: int = 0
    refreshed: int = 0
    dropped: int = 0
    unchanged: int = 0
    skipped: int = 0
    skipped_before: int = 0  # files skipped in an earlier build and unchanged since (not read again)
    skipped_files: dict[str, str] = field(default_factory=dict)

    def summary(self) -> str:
        return (f"{self.rows} map sets indexed: {self.added} added, {self.refreshed} refreshed, "
                f"{self.dropped} dropped, {self.unchanged} unchanged, {self.skipped} skipped"
                + (f" ({self.skipped_before} skipped earlier, unchanged)" if self.skipped_before else ""))


def scan(folder: Path) -> dict[str, os.stat_result]:
    """Every ``*.mapset.npz`` under ``folder`` (hidden files and folders excluded: the index,
    temporary files, generate's ``.parts``), by POSIX path relative to ``folder``."""
    found = {}
    for root, dirs, files in os.walk(folder, followlinks=False):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in files:
            if name.endswith(SUFFIX) and not name.startswith("."):
                path = Path(root) / name
                try:
                    found[path.relative_to(folder).as_posix()] = path.stat()
                except OSError:  # removed while scanning
                    continue
    return dict(sorted(found.items()))


def image_names(folder: Path, files: list[str]) -> dict[str, str]:
    """Each file's image name: from ``index.json`` beside it (``generate --save-mapsets`` writes
    image -> file name there), else the file name without ``.mapset.npz``."""
    names = {f: Path(f).name[: -len(SUFFIX)] for f in files}
    for parent in {Path(f).parent for f in files}:
        listing = folder / parent / "index.json"
        if not listing.is_file():
            continue
        try:
            mapping = json.loads(listing.read_text())
        except (OSError, ValueError) as exc:
            warnings.warn(f"{str(listing)!r} is not a readable image index ({exc}); map sets there are "
                          "named by their file names", AtlasSkipWarning, stacklevel=3)
            continue
        if isinstance(mapping, dict):
            for image, name in mapping.items():
                rel = (parent / str(name)).as_posix()
                if rel in names:
                    names[rel] = str(image)
    return names


# ----- labels -----------------------------------------------------------------------------
def label_source(labels: Labels) -> dict | None:
    """The label source as stored in the index (so a later build without ``labels`` reuses it).

    Raises:
        ValueError: a csv that does not exist, or an unknown kind of ``labels``.
    """
    if labels is None:
        return None
    if isinstance(labels, Mapping):
        return {"kind": "dict", "labels": {str(k): str(v) for k, v in labels.items()}}
    if isinstance(labels, (str, os.PathLike)):
        if str(labels) == "folders":
            return {"kind": "folders"}
        path = Path(labels)
        if not path.is_file():
            raise ValueError(f"labels file {str(labels)!r} does not exist (give a csv of image,label rows, "
                             "'folders' for class-named subfolders, or a dict)")
        return {"kind": "csv", "path": str(path.resolve())}
    raise ValueError(f"labels must be None, a csv path, 'folders' or a dict image -> label, got {labels!r}")


def read_labels_csv(path: str | os.PathLike) -> dict[str, str]:
    """``image,label`` rows (a header row ``image,label`` is allowed; blank lines are ignored).

    Raises:
        ValueError: a row without two fields (the line is named).
    """
    labels = {}
    with open(path, newline="", encoding="utf-8-sig") as f:
        for number, row in enumerate(csv.reader(f), 1):
            if not row or not any(cell.strip() for cell in row):
                continue
            if len(row) < 2:
                raise ValueError(f"{str(path)!r} line {number}: expected image,label, got {row!r}")
            image, label = row[0].strip(), row[1].strip()
            if number == 1 and (image.lower(), label.lower()) == ("image", "label"):
                continue
            labels[image] = label
    return labels


def labels_of(source: dict | None, files: Mapping[str, str]) -> dict[str, str | None] | None:
    """The label of each file (``files``: file -> image name), or None without a source.

    A csv (or dict) entry matches the image name, the image name without its extension, or the
    file name without ``.mapset.npz``; with ``folders``, a file's label is its first folder.
    """
    if source is None:
        return None
    if source["kind"] == "folders":
        return {f: (f.split("/")[0] if "/" in f else None) for f in files}
    if source["kind"] == "csv":
        try:
            table = read_labels_csv(source["path"])
        except OSError as exc:
            warnings.warn(f"the labels file {source['path']!r} cannot be read ({exc.strerror or exc}); "
                          "labels are left as they were", AtlasSkipWarning, stacklevel=3)
            return None
    else:
        table = source["labels"]
    table = dict(table)
    for key, value in list(table.items()):
        table.setdefault(_drop_extension(key), value)
    out = {}
    for f, image in files.items():
        stem = Path(f).name[: -len(SUFFIX)]
        out[f] = next((table[k] for k in (image, _drop_extension(image), stem) if k in table), None)
    return out


def _drop_extension(name: str) -> str:
    base, ext = os.path.splitext(name)
    return base if ext and len(ext) <= 6 else name


def _norm(text: str) -> str:
    return " ".join(text.replace("_", " ").replace("-", " ").lower().split())


def is_correct(label: str | None, pred_class: int, pred_name: str) -> int | None:
    """1 when the label names the predicted class (its name, ignoring case, ``_`` and ``-``, or its
    index), 0 when not, None without a label."""
    if label is None:
        return None
    return int(_norm(label) == _norm(pred_name) or label.strip() == str(pred_class))


# ----- one map set -> one row -------------------------------------------------------------
def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def row_of(ms: MapSet, *, thumb_size: int = THUMB_SIZE, map_size: int = MAP_SIZE) -> dict:
    """The columns read from a loaded map set (everything but the file's identity and label)."""
    top = ms.topk(5)
    c = top[0][0]
    if ms.depth_available == 0:
        raise ValueError("the map set has no probed layer (saved before its sweep probed any): nothing to show")
    # H x W in [0, 1] at the full depth (the deepest probed of a map set saved mid-sweep)
    full = {v: ms.saliency(c, v, ms.depth_available) for v in VARIANTS}
    plus, minus = full["+"], full["-"]
    small = torch.stack([F.interpolate(full[v][None, None].float(), size=(map_size, map_size), mode="area")[0, 0]
                         for v in VARIANTS])
    image = render.image_uint8(ms.image, ms.mean, ms.std)
    picture = render.overlay(image, full["+-"], "turbo", 0.5)
    return {
        "model_name": ms.model_name, "model_id": ms.model_id, "height": ms.size[0], "width": ms.size[1],
        "n_layers": len(ms.layers), "n_classes": ms.num_classes, "pred_class": c, "pred_name": top[0][1],
        "confidence": top[0][2], "top5": json.dumps([[i, n, p] for i, n, p in top]),
        "context": float((minus - plus).clamp(min=0).mean()), "plus_minus_diff": float((minus - plus).abs().mean()),
        "layers": json.dumps(ms.layers), "maps": small.cpu().numpy().astype(np.float16).tobytes(),
        "map_size": map_size, "thumbnail": thumbnail_bytes(picture, thumb_size), "thumb_format": "jpeg",
        "picture": thumbnail_bytes(image, thumb_size),
    }


def thumbnail_bytes(pixels: np.ndarray, size: int = THUMB_SIZE) -> bytes:
    """``H x W x 3`` uint8 pixels as a JPEG whose longest side is at most ``size``."""
    from PIL import Image

    picture = Image.fromarray(pixels)
    picture.thumbnail((size, size), Image.BILINEAR)
    buffer = io.BytesIO()
    picture.save(buffer, format="JPEG", quality=85)
    return buffer.getvalue()


# ----- the build --------------------------------------------------------------------------
def build(folder: Path, labels: Labels = None, progress: Progress = True, *,
          thumb_size: int = THUMB_SIZE) -> BuildReport:
    """Bring ``folder``'s index up to date (see the module docstring); returns what was done."""
    con = store.connect(folder, create=True)
    try:
        return _build(con, folder, labels, progress, thumb_size)
    finally:
        con.close()


def _build(con, folder: Path, labels: Labels, progress: Progress, thumb_size: int) -> BuildReport:
    report = BuildReport()
    source = label_source(labels)
    with transaction(con):
        if source is not None:
            store.set_meta(con, "labels", source)
        source = store.get_meta(con, "labels")
    found = scan(folder)
    names = image_names(folder, list(found))
    label = labels_of(source, names)
    if label is None:  # no source, or its csv is gone: rows keep their labels, new rows get none
        label, source = {}, None
    known = {f: (size, mtime, digest) for f, size, mtime, digest in
             con.execute("SELECT file, size, mtime_ns, sha256 FROM mapsets")}
    skipped = {f: (size, mtime) for f, size, mtime in con.execute("SELECT file, size, mtime_ns FROM skipped")}

    gone = [f for f in known if f not in found]
    with transaction(con):  # removed files, and labels of rows kept, at once
        con.executemany("DELETE FROM mapsets WHERE file=?", [(f,) for f in gone])
        con.executemany("DELETE FROM blobs WHERE file=?", [(f,) for f in gone])
        con.executemany("DELETE FROM skipped WHERE file=?", [(f,) for f in skipped if f not in found])
        rows = con.execute("SELECT file, image, label, correct, pred_class, pred_name FROM mapsets").fetchall()
        for f, image, old_label, old_correct, pred, name in rows:
            if f not in found:
                continue
            new_label = label.get(f) if source is not None else old_label
            new = (names[f], new_label, is_correct(new_label, pred, name))
            if new != (image, old_label, old_correct):
                con.execute("UPDATE mapsets SET image=?, label=?, correct=? WHERE file=?", (*new, f))
    report.dropped = len(gone)

    todo = []
    for f, st in found.items():
        version = (st.st_size, st.st_mtime_ns)
        if f in known and known[f][:2] == version:
            report.unchanged += 1
        elif f in skipped and skipped[f] == version:
            report.skipped_before += 1
        else:
            todo.append(f)

    bar = _progress_bar(progress, len(todo))
    try:
        pending, last = [], time.monotonic()
        for done, f in enumerate(todo, 1):
            pending.append(_read_one(folder, f, found[f], known.get(f), names[f], label.get(f), thumb_size, report))
            if len(pending) >= COMMIT_EVERY or time.monotonic() - last > COMMIT_SECONDS:
                _commit(con, pending)
                pending, last = [], time.monotonic()
            bar(done, len(todo))
        _commit(con, pending)
    finally:
        bar(None, None)
    report.rows = con.execute("SELECT COUNT(*) FROM mapsets").fetchone()[0]
    return report


def _read_one(folder: Path, f: str, st: os.stat_result, old: tuple | None, image: str, label: str | None,
              thumb_size: int, report: BuildReport) -> tuple[str, tuple]:
    """What to write for one new or changed file: ``("touch" | "row" | "skip", values)``."""
    path = folder / f
    try:
        digest = sha256(path)
        if old is not None and old[2] == digest:  # same bytes, new stat (copied, touched)
            report.unchanged += 1
            return "touch", (st.st_size, st.st_mtime_ns, f)
        ms = MapSet.load(path)
        values = row_of(ms, thumb_size=thumb_size)
    except (ValueError, OSError) as exc:
        reason = str(exc) if isinstance(exc, ValueError) else f"cannot be read: {exc.strerror or exc}"
        warnings.warn(f"atlas: skipped {str(path)!r}: {reason}", AtlasSkipWarning, stacklevel=4)
        report.skipped += 1
        report.skipped_files[f] = reason
        return "skip", (f, st.st_size, st.st_mtime_ns, reason)
    if old is None:
        report.added += 1
    else:
        report.refreshed += 1
    values.update(file=f, image=image, size=st.st_size, mtime_ns=st.st_mtime_ns, sha256=digest, label=label,
                  correct=is_correct(label, values["pred_class"], values["pred_name"]),
                  insdel_plus=None, insdel_minus=None, insdel_pm=None)  # a changed file's Ins-Del is stale
    return "row", (tuple(values[name] for name, _ in store.ROW_COLUMNS),
                   tuple(values[name] for name, _ in store.BLOB_COLUMNS))


def _insert(table: str, columns) -> str:
    return (f"INSERT OR REPLACE INTO {table} ({', '.join(n for n, _ in columns)}) "
            f"VALUES ({', '.join('?' * len(columns))})")


_INSERT_ROW, _INSERT_BLOBS = _insert("mapsets", store.ROW_COLUMNS), _insert("blobs", store.BLOB_COLUMNS)


def _commit(con, pending: list[tuple[str, tuple]]) -> None:
    if not pending:
        return
    with transaction(con):
        for kind, values in pending:
            if kind == "row":
                con.execute("DELETE FROM skipped WHERE file=?", (values[0][0],))
                con.execute(_INSERT_ROW, values[0])
                con.execute(_INSERT_BLOBS, values[1])
            elif kind == "skip":
                con.execute("DELETE FROM mapsets WHERE file=?", (values[0],))
                con.execute("DELETE FROM blobs WHERE file=?", (values[0],))
                con.execute("INSERT OR REPLACE INTO skipped VALUES (?, ?, ?, ?)", values)
            else:
                con.execute("UPDATE mapsets SET size=?, mtime_ns=? WHERE file=?", values)


def _progress_bar(progress: Progress, total: int) -> Callable:
    """``update(done, total)``; ``update(None, None)`` closes. tqdm for True, the callback as given."""
    if callable(progress):
        return lambda done, total: None if done is None else progress(done, total)
    if not progress or total == 0:
        return lambda done, total: None
    from tqdm.auto import tqdm

    bar = tqdm(total=total, desc="atlas index", unit="map set")

    def update(done, _total):
        if done is None:
            bar.close()
        else:
            bar.update(done - bar.n)
    return update
