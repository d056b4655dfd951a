"""The atlas index's SQLite file: schema, opening, and the columns a row carries.

One file ``<DIR>/.polycam-atlas.sqlite`` (WAL journal) beside the map sets. Tables:

- ``mapsets``: one row per indexed map-set file, keyed by its path relative to ``DIR`` (POSIX
  separators); what identifies the file's version (size, mtime in ns, SHA-256 of the bytes), the
  model (name and :func:`~polycam_explorer.model_fingerprint` ``model_id``), input size, layers,
  the top-5 classes, the label and whether the top class matches it, per-variant Ins-Del (NULL
  until evaluated) and context reliance (how much PCAM- exceeds PCAM+).
- ``blobs``: per file of ``mapsets``, its layers, small predicted-class maps per variant (float16,
  aligned on the input frame, for aggregates), a thumbnail (JPEG) and the bare image at the
  thumbnail's size (JPEG, for the atlas grid's overlay of any variant), and the class the label
  names (NULL: no label, or one naming no class of the model) with its small maps when it is not
  the predicted class; kept apart so that sorting and filtering scan only the light rows.
- ``skipped``: files that are not readable map sets, with the version seen and the reason, so they
  are not read again until they change.
- ``meta``: the schema version and the remembered label source.

Every change is made inside a transaction, so a reader (or a build interrupted at any point) sees
each row either as it was or as it is now, never half-written.
"""
from __future__ import annotations

import json
import sqlite3
from pathlib import Path

FILE_NAME = ".polycam-atlas.sqlite"
SCHEMA_VERSION = 4
VARIANTS = ("+", "-", "+-")
INSDEL_COLUMN = {"+": "insdel_plus", "-": "insdel_minus", "+-": "insdel_pm"}

# (name, SQL type) of the light columns a Row carries, in order
ROW_COLUMNS = (
    ("file", "TEXT PRIMARY KEY"), ("image", "TEXT NOT NULL"), ("size", "INTEGER NOT NULL"),
    ("mtime_ns", "INTEGER NOT NULL"), ("sha256", "TEXT NOT NULL"), ("model_name", "TEXT NOT NULL"),
    ("model_id", "TEXT NOT NULL"), ("height", "INTEGER NOT NULL"), ("width", "INTEGER NOT NULL"),
    ("n_layers", "INTEGER NOT NULL"), ("n_classes", "INTEGER NOT NULL"),
    ("pred_class", "INTEGER NOT NULL"), ("pred_name", "TEXT NOT NULL"), ("confidence", "REAL NOT NULL"),
    ("top5", "TEXT NOT NULL"), ("label", "TEXT"), ("correct", "INTEGER"),
    ("insdel_plus", "REAL"), ("insdel_minus", "REAL"), ("insdel_pm", "REAL"),
    ("context", "REAL NOT NULL"), ("plus_minus_diff", "REAL NOT NULL"),
)
BLOB_COLUMNS = (("file", "TEXT PRIMARY KEY"), ("layers", "TEXT NOT NULL"), ("maps", "BLOB NOT NULL"), ("map_size", "INTEGER NOT NULL"),
                ("thumbnail", "BLOB NOT NULL"), ("thumb_format", "TEXT NOT NULL"), ("picture", "BLOB NOT NULL"),
                ("label_class", "INTEGER"), ("label_maps", "BLOB"))


def db_path(folder: str | Path) -> Path:
    return Path(folder) / FILE_NAME


def connect(folder: str | Path, *, create: bool) -> sqlite3.Connection:
    """A connection to ``folder``'s index (created, with its schema, when ``create``).

    Raises:
        ValueError: no index there and not ``create``; a file that is not an atlas index.
    """
    path = db_path(folder)
    if not create and not path.is_file():
        raise ValueError(f"{str(folder)!r} has no atlas index ({FILE_NAME}): build one with "
                         "pe.atlas.build_index(folder) or `polycam-explorer index FOLDER`")
    try:
        con = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
        con.execute("PRAGMA journal_mode=WAL")
        con.execute("PRAGMA synchronous=NORMAL")
        version = _schema_version(con)
    except sqlite3.OperationalError as exc:
        raise ValueError(f"the atlas index {str(path)!r} cannot be opened{' for writing' if create else ''} "
                         f"({exc}): is the folder writable?") from exc
    except sqlite3.DatabaseError as exc:
        raise ValueError(f"{str(path)!r} is not a readable atlas index ({exc}): delete it and build the "
                         "index again") from exc
    if version != SCHEMA_VERSION:
        if not create:
            raise ValueError(f"{str(path)!r} is an atlas index of schema {version}, this polycam-explorer "
                             f"reads schema {SCHEMA_VERSION}: build the index again")
        _create(con)
    return con


def _schema_version(con: sqlite3.Connection) -> int | None:
    has_meta = con.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name='meta'").fetchone()
    if not has_meta:
        return None
    row = con.execute("SELECT value FROM meta WHERE key='schema'").fetchone()
    return int(row[0]) if row else None


def _create(con: sqlite3.Connection) -> None:
    """(Re)create the tables: an index of an older schema is rebuilt from the map sets (its
    remembered label source is kept)."""
    with transaction(con):
        kept = (con.execute("SELECT key, value FROM meta WHERE key != 'schema'").fetchall()
                if _schema_version(con) is not None else [])
        for table in ("mapsets", "blobs", "skipped", "meta"):
            con.execute(f"DROP TABLE IF EXISTS {table}")
        con.execute(f"CREATE TABLE mapsets ({', '.join(f'{name} {kind}' for name, kind in ROW_COLUMNS)})")
        con.execute(f"CREATE TABLE blobs ({', '.join(f'{name} {kind}' for name, kind in BLOB_COLUMNS)})")
        con.execute("CREATE TABLE skipped (file TEXT PRIMARY KEY, size INTEGER NOT NULL, "
                    "mtime_ns INTEGER NOT NULL, reason TEXT NOT NULL)")
        con.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        for column in ("pred_class", "confidence", "label", "model_id"):
            con.execute(f"CREATE INDEX mapsets_{column} ON mapsets ({column})")
        con.execute("INSERT INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),))
        con.executemany("INSERT INTO meta VALUES (?, ?)", kept)


class transaction:
    """``BEGIN IMMEDIATE`` ... ``COMMIT``, or ``ROLLBACK`` on any exception (KeyboardInterrupt too)."""

    def __init__(self, con: sqlite3.Connection) -> None:
        self.con = con

    def __enter__(self) -> sqlite3.Connection:
        self.con.execute("BEGIN IMMEDIATE")
        return self.con

    def __exit__(self, kind, exc, tb) -> None:
        self.con.execute("COMMIT" if kind is None else "ROLLBACK")


def get_meta(con: sqlite3.Connection, key: str):
    row = con.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
    return json.loads(row[0]) if row else None


def set_meta(con: sqlite3.Connection, key: str, value) -> None:
    con.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, json.dumps(value)))
