"""The atlas index: one light row per map set of a folder, sorted and filtered in SQLite.

Reading rows never loads a map set; :meth:`Index.open_mapset` loads one when it is asked for.
"""
from __future__ import annotations

import io
import json
import os
import threading
import warnings
from pathlib import Path
from typing import Iterable, Mapping, NamedTuple, Sequence

import numpy as np

from ..mapset import MapSet
from ..polycam import canonical_variant
from . import build as _build
from . import store
from .store import INSDEL_COLUMN, ROW_COLUMNS, transaction

SORTABLE = tuple(name for name, _ in ROW_COLUMNS if name not in ("top5", "sha256"))


class Row(NamedTuple):
    """One indexed map set (no pixels, no arrays: those are fetched on demand). A named tuple:
    2,000 of them are made in a few milliseconds."""

    file: str  # path relative to the index's folder, POSIX separators
    image: str  # generate's image name (mapsets/index.json), else the file name without .mapset.npz
    size: int
    mtime_ns: int
    sha256: str
    model_name: str
    model_id: str  # pe.model_fingerprint of the model that made the map set
    height: int
    width: int
    n_layers: int
    n_classes: int
    pred_class: int
    pred_name: str
    confidence: float  # probability of the predicted class
    top5: tuple  # ((class_index, class_name, probability), ...)
    label: str | None
    correct: bool | None  # the label names the predicted class; None without a label
    insdel_plus: float | None  # Ins-Del of the predicted class's full-depth map; None until evaluated
    insdel_minus: float | None
    insdel_pm: float | None
    context: float  # mean of max(PCAM- - PCAM+, 0): hiding hurts where showing alone does not help
    plus_minus_diff: float  # mean |PCAM- - PCAM+| (full depth, predicted class)

    def insdel(self, variant: str = "+-") -> float | None:
        return getattr(self, INSDEL_COLUMN[canonical_variant(variant)])


_SELECT = f"SELECT {', '.join(name for name, _ in ROW_COLUMNS)} FROM mapsets"


_TOP5, _CORRECT = Row._fields.index("top5"), Row._fields.index("correct")
if Row._fields != tuple(name for name, _ in ROW_COLUMNS):  # the table and the row must agree
    raise RuntimeError("atlas Row fields differ from the index's columns")


def _row(values: tuple) -> Row:
    values = list(values)
    values[_TOP5] = tuple(map(tuple, json.loads(values[_TOP5])))
    values[_CORRECT] = None if values[_CORRECT] is None else bool(values[_CORRECT])
    return Row._make(values)


def _as_list(value) -> list:
    return list(value) if isinstance(value, (list, tuple, set, frozenset)) else [value]


_FILTERS = ("pred_class", "class_name", "label", "correct", "min_confidence", "max_confidence", "model_id",
            "image", "evaluated", "min_insdel", "max_insdel", "variant", "min_context", "labelled")


class Index:
    """The index of a folder of map sets (``<folder>/.polycam-atlas.sqlite``), opened for reading.

    Raises:
        ValueError: the folder has no index (build one with :func:`build_index`).
    """

    def __init__(self, folder: str | os.PathLike) -> None:
        self.folder = Path(folder)
        self._con = store.connect(self.folder, create=False)
        self._lock = threading.Lock()
        self.last_build: _build.BuildReport | None = None

    # ----- reading rows ----------------------------------------------------------------------
    def __len__(self) -> int:
        return self._one("SELECT COUNT(*) FROM mapsets")[0]

    def query(self, *, sort: str | Sequence[str] | None = None, limit: int | None = None, offset: int = 0,
              **filters) -> list[Row]:
        """Rows matching every filter given, sorted.

        ``sort``: a column name (:data:`SORTABLE`; ``"insdel"`` means the ``variant``'s Ins-Del),
        ``"-name"`` for descending, or a list of them; missing values (no label, not evaluated)
        come last either way; ties keep file order. ``limit`` and ``offset`` page the result.

        Filters (all optional, combined with AND): ``pred_class``, ``class_name``, ``label``,
        ``model_id`` and ``image`` (generate's image name) take one value or several; ``correct``,
        ``labelled``, ``evaluated`` (Ins-Del of ``variant`` recorded) take True or False;
        ``min_confidence``, ``max_confidence``, ``min_insdel``, ``max_insdel`` (of ``variant``,
        default ``"+-"``) and ``min_context`` take numbers.

        Raises:
            ValueError: an unknown sort column, filter or variant, a negative limit or offset.
        """
        sql, params = self._sql(_SELECT, sort, limit, offset, filters)
        with self._lock:
            return [_row(values) for values in self._con.execute(sql, params)]

    def files(self, *, sort: str | Sequence[str] | None = None, limit: int | None = None, offset: int = 0,
              **filters) -> list[str]:
        """The files of :meth:`query`'s rows, in its order, without making rows (a grid sorts and
        pages with this, then fetches the rows of the page)."""
        sql, params = self._sql("SELECT file FROM mapsets", sort, limit, offset, filters)
        with self._lock:
            return [f for (f,) in self._con.execute(sql, params)]

    def _sql(self, select: str, sort, limit, offset, filters: dict) -> tuple[str, list]:
        unknown = sorted(set(filters) - set(_FILTERS))
        if unknown:
            raise ValueError(f"unknown filter(s) {unknown}; accepted: {list(_FILTERS)}")
        return self._build_sql(select, sort, limit, offset, **filters)

    def _build_sql(self, select: str, sort, limit, offset, *, pred_class=None, class_name=None, label=None,
                   correct=None, min_confidence=None, max_confidence=None, model_id=None, image=None,
                   evaluated=None, min_insdel=None, max_insdel=None, variant="+-", min_context=None,
                   labelled=None) -> tuple[str, list]:
        insdel = INSDEL_COLUMN[canonical_variant(variant)]
        clauses, params = [], []

        def one_of(column: str, values) -> None:
            values = _as_list(values)
            clauses.append(f"{column} IN ({', '.join('?' * len(values))})")
            params.extend(values)

        def bound(column: str, op: str, value) -> None:
            clauses.append(f"{column} {op} ?")
            params.append(float(value))

        if pred_class is not None:
            one_of("pred_class", [int(c) for c in _as_list(pred_class)])
        if class_name is not None:
            one_of("pred_name", class_name)
        if label is not None:
            one_of("label", label)
        if model_id is not None:
            one_of("model_id", model_id)
        if image is not None:
            one_of("image", image)
        if correct is not None:
            clauses.append("correct = ?")
            params.append(int(bool(correct)))
        if labelled is not None:
            clauses.append("label IS NOT NULL" if labelled else "label IS NULL")
        if evaluated is not None:
            clauses.append(f"{insdel} IS NOT NULL" if evaluated else f"{insdel} IS NULL")
        for column, op, value in (("confidence", ">=", min_confidence), ("confidence", "<=", max_confidence),
                                  (insdel, ">=", min_insdel), (insdel, "<=", max_insdel),
                                  ("context", ">=", min_context)):
            if value is not None:
                bound(column, op, value)
        sql = select + (f" WHERE {' AND '.join(clauses)}" if clauses else "") + self._order(sort, insdel)
        if limit is not None or offset:
            if (limit is not None and limit < 0) or offset < 0:
                raise ValueError(f"limit and offset must be >= 0, got {limit}, {offset}")
            sql += " LIMIT ? OFFSET ?"
            params += [-1 if limit is None else int(limit), int(offset)]
        return sql, params

    def rows(self, sort: str | Sequence[str] | None = None, where: Mapping | None = None, **filters) -> list[Row]:
        """:meth:`query` with the filters as a dict (``where``) or keywords."""
        return self.query(sort=sort, **dict(where or {}), **filters)

    @staticmethod
    def _order(sort, insdel: str) -> str:
        keys = [] if sort is None else [s.strip() for s in (sort.split(",") if isinstance(sort, str) else sort)]
        terms = []
        for key in keys:
            descending = key.startswith("-")
            name = key.lstrip("-+")
            name = insdel if name == "insdel" else name
            if name not in SORTABLE:
                raise ValueError(f"cannot sort by {key!r}: sort by one of {list(SORTABLE) + ['insdel']} "
                                 "('-name' for descending)")
            terms.append(f"({name} IS NULL), {name}{' DESC' if descending else ''}")
        return " ORDER BY " + ", ".join(terms + ["file"])

    def row(self, file: str) -> Row:
        """The row of one file (path relative to the folder).

        Raises:
            KeyError: the file is not in the index.
        """
        with self._lock:
            values = self._con.execute(_SELECT + " WHERE file=?", (str(file),)).fetchone()
        if values is None:
            raise KeyError(f"{file!r} is not in the atlas index of {str(self.folder)!r}")
        return _row(values)

    # ----- what the grid and aggregates fetch ------------------------------------------------
    def thumbnails(self, rows: Iterable[Row | str]) -> dict[str, bytes]:
        """JPEG bytes of each row's thumbnail (the image with its predicted class's full-depth
        PCAM± overlay), by file."""
        return self._blobs("thumbnail", rows)

    def pictures(self, rows: Iterable[Row | str]) -> dict[str, bytes]:
        """JPEG bytes of each row's bare image at its thumbnail's size (no overlay), by file: the
        atlas grid lays any variant's small map over it."""
        return self._blobs("picture", rows)

    def thumbnail(self, row: Row | str) -> np.ndarray:
        """One thumbnail decoded: ``h x w x 3`` uint8."""
        from PIL import Image

        data = self.thumbnails([row])
        file = _file(row)
        if file not in data:
            raise KeyError(f"{file!r} is not in the atlas index of {str(self.folder)!r}")
        return np.asarray(Image.open(io.BytesIO(data[file])).convert("RGB"))

    def small_maps(self, rows: Iterable[Row | str]) -> dict[str, np.ndarray]:
        """Each row's predicted-class maps at full depth, ``[3, S, S]`` float32 (variants ``+``,
        ``-``, ``+-``; the input frame resampled to S x S), by file: for aggregates."""
        return {f: _maps(b, size) for f, b, size in self._fetch("SELECT file, maps, map_size FROM blobs", rows)}

    def map_sizes(self, rows: Iterable[Row | str]) -> dict[str, int]:
        """The side S of each row's stored small maps, by file."""
        return self._blobs("map_size", rows)

    def label_maps(self, rows: Iterable[Row | str]) -> dict[str, np.ndarray | None]:
        """Each row's maps (as :meth:`small_maps`) of the class its label names, by file; None for
        a row without a label or whose label names no class of its model."""
        sql = ("SELECT blobs.file, label_class, pred_class, maps, label_maps, map_size FROM blobs "
               "JOIN mapsets ON mapsets.file = blobs.file")
        return {f: None if c is None else _maps(maps if c == pred else extra, size)
                for f, c, pred, maps, extra, size in self._fetch(sql, rows, "blobs.file")}

    def label_classes(self, rows: Iterable[Row | str]) -> dict[str, int | None]:
        """The class each row's label names, by file; None for a row without a usable label."""
        return self._blobs("label_class", rows)

    def _blobs(self, column: str, rows) -> dict[str, bytes]:
        return dict(self._fetch(f"SELECT file, {column} FROM blobs", rows))

    def _fetch(self, select: str, rows, key: str = "file") -> list[tuple]:
        """``select`` for the files of ``rows`` (``key``: the file column)."""
        files = [_file(r) for r in rows]
        out = []
        with self._lock:
            for start in range(0, len(files), 500):  # SQLite's parameter limit
                chunk = files[start: start + 500]
                out += self._con.execute(f"{select} WHERE {key} IN ({', '.join('?' * len(chunk))})", chunk)
        return out

    def open_mapset(self, row: Row | str, device=None) -> MapSet:
        """Load the row's map set (the only place the atlas reads one after indexing).

        Warns when the file changed since it was indexed (:meth:`changed`).
        """
        changed = self.changed(row)
        if changed is not None:
            warnings.warn(changed, RuntimeWarning, stacklevel=2)
        return MapSet.load(self.folder / _file(row), device)

    def changed(self, row: Row | str) -> str | None:
        """Why the row's file is no longer the one indexed (its size or modification time
        differ), or None: unchanged, or gone (loading it says so)."""
        file = _file(row)
        path = self.folder / file
        indexed = self.row(file)
        try:
            st = path.stat()
        except OSError:
            return None
        if (st.st_size, st.st_mtime_ns) == (indexed.size, indexed.mtime_ns):
            return None
        return (f"{str(path)!r} changed since it was indexed: its row may be stale (refresh the index with "
                "pe.atlas.build_index)")

    # ----- summaries -------------------------------------------------------------------------
    def models(self) -> list[tuple[str, str, int]]:
        """``(model_id, model_name, rows)`` of every model in the index."""
        return self._all("SELECT model_id, model_name, COUNT(*) FROM mapsets GROUP BY model_id, model_name "
                         "ORDER BY COUNT(*) DESC, model_name")

    def classes(self) -> list[tuple[int, str, int]]:
        """``(class_index, class_name, rows)`` of every predicted class, most frequent first."""
        return self._all("SELECT pred_class, pred_name, COUNT(*) FROM mapsets GROUP BY pred_class, pred_name "
                         "ORDER BY COUNT(*) DESC, pred_class")

    def labels(self) -> list[tuple[str, int]]:
        """``(label, rows)`` of every label given."""
        return self._all("SELECT label, COUNT(*) FROM mapsets WHERE label IS NOT NULL GROUP BY label "
                         "ORDER BY COUNT(*) DESC, label")

    def skipped(self) -> dict[str, str]:
        """Files left out (not readable map sets) and why; read again only once they change."""
        return dict(self._all("SELECT file, reason FROM skipped ORDER BY file"))

    # ----- writing ---------------------------------------------------------------------------
    def set_insdel(self, row: Row | str, values: Mapping[str, float | None]) -> None:
        """Record Ins-Del per variant (``{"+": 0.41, "+-": 0.52}``) of a row's predicted class.

        Raises:
            ValueError: an unknown variant; KeyError: the file is not in the index.
        """
        sets = {INSDEL_COLUMN[canonical_variant(v)]: (None if x is None else float(x)) for v, x in values.items()}
        if not sets:
            return
        with self._lock, transaction(self._con) as con:
            cursor = con.execute(f"UPDATE mapsets SET {', '.join(f'{c}=?' for c in sets)} WHERE file=?",
                                 [*sets.values(), _file(row)])
            if cursor.rowcount == 0:
                raise KeyError(f"{_file(row)!r} is not in the atlas index of {str(self.folder)!r}")

    def refresh(self, labels=None, progress=True) -> _build.BuildReport:
        """Bring the index up to date with the folder (:func:`build_index`'s work)."""
        self.last_build = _build.build(self.folder, labels, progress)
        return self.last_build

    def close(self) -> None:
        with self._lock:
            self._con.close()

    def __enter__(self) -> "Index":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Index({str(self.folder)!r}, {len(self)} map sets)"

    def _one(self, sql: str, params=()):
        with self._lock:
            return self._con.execute(sql, params).fetchone()

    def _all(self, sql: str, params=()) -> list:
        with self._lock:
            return self._con.execute(sql, params).fetchall()


def _maps(data: bytes, size: int) -> np.ndarray:
    return np.frombuffer(data, np.float16).reshape(3, size, size).astype(np.float32)


def _file(row: Row | str) -> str:
    return row.file if isinstance(row, Row) else str(row)


def build_index(folder: str | os.PathLike, labels=None, progress=True, *,
                thumb_size: int = _build.THUMB_SIZE) -> Index:
    """Index the map sets (``*.mapset.npz``) under ``folder``, or bring its index up to date:
    new files are added, changed ones read again, removed ones dropped; files that are not map
    sets are skipped with an :class:`AtlasSkipWarning` (never fatal). The result's
    ``last_build`` says what was done.

    ``labels``: a csv of ``image,label`` rows, ``"folders"`` (each map set's first subfolder
    names its class), a dict image -> label, or None to keep the labels source of the previous
    build. ``progress``: True for a tqdm bar, False for none, or a callback ``(done, total)``.

    Raises:
        ValueError: ``folder`` is not a folder; a labels file that does not exist.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"{str(folder)!r} is not a folder of map sets")
    if isinstance(thumb_size, bool) or not isinstance(thumb_size, int) or thumb_size < 8:
        raise ValueError(f"thumb_size must be an int >= 8, got {thumb_size!r}")
    report = _build.build(folder, labels, progress, thumb_size=thumb_size)
    index = Index(folder)
    index.last_build = report
    return index


def open_index(folder: str | os.PathLike) -> Index:
    """The existing index of ``folder``, without scanning the folder (fast)."""
    return Index(folder)
