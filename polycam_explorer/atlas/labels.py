"""Labels of an atlas index's rows: where they come from (a csv of ``image,label``, class-named
subfolders, or a dict), which file each names, and which class of the model a label names."""
from __future__ import annotations

import csv
import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Union

SUFFIX = ".mapset.npz"
Labels = Union[None, str, os.PathLike, Mapping[str, str]]


class AtlasSkipWarning(UserWarning):
    """A file in the folder is not a readable map set (or label source); it was left out of the index."""


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


def label_class(label: str | None, class_names: list[str]) -> int | None:
    """The class of the model that ``label`` names (its name, ignoring case, ``_`` and ``-``, or its
    index, as :func:`is_correct` reads it), or None: no label, or one naming no class."""
    if label is None:
        return None
    wanted = _norm(label)
    named = next((i for i, name in enumerate(class_names) if _norm(name) == wanted), None)
    if named is not None:
        return named
    text = label.strip()
    return int(text) if text.isdigit() and int(text) < len(class_names) else None


def is_correct(label: str | None, pred_class: int, pred_name: str) -> int | None:
    """1 when the label names the predicted class (its name, ignoring case, ``_`` and ``-``, or its
    index), 0 when not, None without a label."""
    if label is None:
        return None
    return int(_norm(label) == _norm(pred_name) or label.strip() == str(pred_class))
