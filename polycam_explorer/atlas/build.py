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

import hashlib
import io
import json
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Union

import numpy as np
import torch
import torch.nn.functional as F

from .. import render
from ..mapset import MapSet
from . import store
from .labels import SUFFIX, AtlasSkipWarning, Labels, is_correct, label_class, label_source, labels_of
from .store import VARIANTS, transaction

THUMB_SIZE = 128  # longest side of a thumbnail, pixels (smaller images keep their size)
MAP_SIZE = 32  # side of the small stored maps (aggregates), pixels
COMMIT_EVERY = 32  # files per transaction
COMMIT_SECONDS = 2.0  # or this long, whichever comes first

Progress = Union[bool, Callable[[int, int], None]]


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


# ----- one map set -> one row -------------------------------------------------------------
def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def small_maps(ms: MapSet, class_idx: int, *, map_size: int = MAP_SIZE,
               full: dict[str, torch.Tensor] | None = None) -> np.ndarray:
    """The small maps the index stores for one class: its full-depth (the deepest probed) map of
    each variant (``+``, ``-``, ``+-``), area-resampled from the input frame to ``map_size`` square,
    as ``[3, S, S]`` float16. ``full``: those full-depth maps when already made."""
    full = full or {v: ms.saliency(class_idx, v, ms.depth_available) for v in VARIANTS}
    small = torch.stack([F.interpolate(full[v][None, None].float(), size=(map_size, map_size), mode="area")[0, 0]
                         for v in VARIANTS])
    return small.cpu().numpy().astype(np.float16)


def label_columns(ms: MapSet, label: str | None, *, map_size: int = MAP_SIZE) -> tuple[int | None, bytes | None]:
    """``(label_class, label_maps)`` of a row: the class the label names (None: no label, or one
    naming no class of the model) and its :func:`small_maps` bytes when it is not the predicted
    class (None otherwise: the predicted class's ``maps`` are the label's)."""
    c = label_class(label, ms.class_names)
    if c is None or c == ms.topk(1)[0][0]:
        return c, None
    return c, small_maps(ms, c, map_size=map_size).tobytes()


def row_of(ms: MapSet, *, thumb_size: int = THUMB_SIZE, map_size: int = MAP_SIZE) -> dict:
    """The columns read from a loaded map set (everything but the file's identity and the label's)."""
    top = ms.topk(5)
    c = top[0][0]
    if ms.depth_available == 0:
        raise ValueError("the map set has no probed layer (saved before its sweep probed any): nothing to show")
    # H x W in [0, 1] at the full depth (the deepest probed of a map set saved mid-sweep)
    full = {v: ms.saliency(c, v, ms.depth_available) for v in VARIANTS}
    plus, minus = full["+"], full["-"]
    image = render.image_uint8(ms.image, ms.mean, ms.std)
    picture = render.overlay(image, full["+-"], "turbo", 0.5)
    return {
        "model_name": ms.model_name, "model_id": ms.model_id, "height": ms.size[0], "width": ms.size[1],
        "n_layers": len(ms.layers), "n_classes": ms.num_classes, "pred_class": c, "pred_name": top[0][1],
        "confidence": top[0][2], "top5": json.dumps([[i, n, p] for i, n, p in top]),
        "context": float((minus - plus).clamp(min=0).mean()), "plus_minus_diff": float((minus - plus).abs().mean()),
        "layers": json.dumps(ms.layers), "maps": small_maps(ms, c, map_size=map_size, full=full).tobytes(),
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
        relabelled = {}  # kept rows whose label changed: their label maps are made again below
        for f, image, old_label, old_correct, pred, name in rows:
            if f not in found:
                continue
            new_label = label.get(f) if source is not None else old_label
            new = (names[f], new_label, is_correct(new_label, pred, name))
            if new != (image, old_label, old_correct):
                con.execute("UPDATE mapsets SET image=?, label=?, correct=? WHERE file=?", (*new, f))
            if new_label != old_label:
                relabelled[f] = new_label
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

    _relabel(con, folder, {f: v for f, v in relabelled.items() if f not in set(todo)})
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


def _relabel(con, folder: Path, labels: dict[str, str | None]) -> None:
    """Make the label maps of rows whose label changed (the map set is read only for a label)."""
    updates = []
    for f, label in labels.items():
        try:
            columns = label_columns(MapSet.load(folder / f), label) if label is not None else (None, None)
        except (ValueError, OSError) as exc:
            warnings.warn(f"atlas: the label map of {str(folder / f)!r} cannot be made ({exc}); the grid shows "
                          "its picture without one", AtlasSkipWarning, stacklevel=4)
            columns = (None, None)
        updates.append((*columns, f))
    if updates:
        with transaction(con):
            con.executemany("UPDATE blobs SET label_class=?, label_maps=? WHERE file=?", updates)


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
        values["label_class"], values["label_maps"] = label_columns(ms, label)
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
