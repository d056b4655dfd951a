"""Aggregates over an atlas (issue 12, item 3) as pure functions of rows and maps: no widgets, no
files, no model.

The maps are the index's small predicted-class maps (:meth:`Index.small_maps`): ``[3, S, S]``
per file, variants ``+``, ``-``, ``+-`` at full depth, each image's input frame resampled to
S x S, so maps of images of any size align on the input frame (coordinates in fractions of the
width and height).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

import numpy as np

from ..polycam import canonical_variant
from .index import Row
from .store import VARIANTS


@dataclass(frozen=True)
class ClassMean:
    """The mean maps of one class: correctly classified images, wrongly classified ones, and
    those without a label (None where there are none)."""

    class_key: int | str  # the predicted class index (by="pred") or the label (by="label")
    name: str
    n_correct: int
    n_wrong: int
    n_unlabelled: int
    correct: np.ndarray | None
    wrong: np.ndarray | None
    unlabelled: np.ndarray | None


def _plane(maps: Mapping[str, np.ndarray], file: str, variant: str) -> np.ndarray:
    return np.asarray(maps[file], dtype=np.float64)[VARIANTS.index(canonical_variant(variant))]


def _mean(planes: list[np.ndarray]) -> np.ndarray | None:
    return np.mean(planes, axis=0).astype(np.float32) if planes else None


def class_means(rows: Iterable[Row], maps: Mapping[str, np.ndarray], *, variant: str = "+-",
                by: str = "pred") -> list[ClassMean]:
    """Per class, the mean map of correctly and of wrongly classified images.

    ``by="pred"`` groups by the predicted class: every map in a group is that class's map, so the
    two means say where the model looks when it says "c" rightly and when wrongly (false
    positives). ``by="label"`` groups by the label: the wrong ones are the labelled class's
    misses (their maps are of the class the model predicted instead). Rows without a label count
    as unlabelled. Classes are ordered by their key.

    Raises:
        ValueError: an unknown ``by`` or variant; KeyError: a row without its map in ``maps``.
    """
    if by not in ("pred", "label"):
        raise ValueError(f"by must be 'pred' or 'label', got {by!r}")
    groups: dict = {}
    for row in rows:
        if by == "pred":
            key, name = row.pred_class, row.pred_name
        elif row.label is None:
            continue
        else:
            key, name = row.label, row.label
        kind = "unlabelled" if row.correct is None else ("correct" if row.correct else "wrong")
        groups.setdefault(key, (name, {"correct": [], "wrong": [], "unlabelled": []}))[1][kind].append(
            _plane(maps, row.file, variant))
    return [ClassMean(key, name, len(g["correct"]), len(g["wrong"]), len(g["unlabelled"]),
                      _mean(g["correct"]), _mean(g["wrong"]), _mean(g["unlabelled"]))
            for key, (name, g) in sorted(groups.items(), key=lambda item: (str(type(item[0])), item[0]))]


@dataclass(frozen=True)
class InsDelRow:
    """Mean Ins-Del per variant of one class (None where no image of it was evaluated)."""

    class_index: int | None  # None: all classes together
    name: str
    n: int  # images of the class
    means: dict  # variant -> mean Ins-Del over evaluated images, or None
    counts: dict  # variant -> evaluated images


def insdel_table(rows: Iterable[Row]) -> list[InsDelRow]:
    """Mean Ins-Del per variant for each predicted class (most images first), then all classes."""
    rows = list(rows)
    by_class: dict[int, list[Row]] = {}
    for row in rows:
        by_class.setdefault(row.pred_class, []).append(row)

    def summary(key, name, group) -> InsDelRow:
        values = {v: [r.insdel(v) for r in group if r.insdel(v) is not None] for v in VARIANTS}
        return InsDelRow(key, name, len(group), {v: (float(np.mean(x)) if x else None) for v, x in values.items()},
                         {v: len(x) for v, x in values.items()})
    table = [summary(c, group[0].pred_name, group)
             for c, group in sorted(by_class.items(), key=lambda item: (-len(item[1]), item[0]))]
    return table + [summary(None, "all", rows)]


def region_mask(region, size: int) -> np.ndarray:
    """A region as an ``size x size`` float mask in [0, 1] on the input frame.

    ``region``: a box ``(x0, y0, x1, y1)`` in fractions of the width and height (0..1), or a mask
    array ``H x W`` (bool, or values in [0, 1]) of any size, resampled to the frame.

    Raises:
        ValueError: a box out of order or out of [0, 1]; a mask that is not two-dimensional or
            holds values outside [0, 1].
    """
    if isinstance(region, (tuple, list)) and len(region) == 4 and all(np.isscalar(v) for v in region):
        x0, y0, x1, y1 = map(float, region)
        if not (0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1):
            raise ValueError(f"region box must be (x0, y0, x1, y1) with 0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1 "
                             f"(fractions of the width and height), got {tuple(region)}")
        centres = (np.arange(size) + 0.5) / size
        inside_x = (centres >= x0) & (centres < x1)
        inside_y = (centres >= y0) & (centres < y1)
        return (inside_y[:, None] & inside_x[None, :]).astype(np.float32)
    mask = np.asarray(region, dtype=np.float32)
    if mask.ndim != 2 or mask.size == 0:
        raise ValueError(f"region must be a box (x0, y0, x1, y1) or an H x W mask, got shape {mask.shape}")
    if not np.isfinite(mask).all() or mask.min() < 0 or mask.max() > 1:
        raise ValueError("a region mask must hold values in [0, 1] (or booleans)")
    from PIL import Image

    return np.asarray(Image.fromarray(mask, mode="F").resize((size, size), Image.BILINEAR), dtype=np.float32)


def outside_fraction(saliency: np.ndarray, mask: np.ndarray) -> float:
    """The share of a map's mass outside the mask: ``sum(s * (1 - m)) / sum(s)`` (0 for an empty map)."""
    s = np.clip(np.asarray(saliency, dtype=np.float64), 0, None)
    total = s.sum()
    return float((s * (1.0 - mask)).sum() / total) if total > 0 else 0.0


def outside_region(rows: Iterable[Row], maps: Mapping[str, np.ndarray], region=None, *,
                   masks: Mapping[str, np.ndarray] | None = None, variant: str = "+-",
                   min_fraction: float = 0.5) -> list[tuple[Row, float]]:
    """The images whose map lies mostly outside a region: ``(row, fraction outside)``, most
    outside first, those with at least ``min_fraction`` outside (the "looks at the cast" finder).

    ``region`` (a box or a mask, :func:`region_mask`) applies to every image; ``masks`` (file ->
    mask) gives each image its own and wins where given. Rows with neither are left out.

    Raises:
        ValueError: a bad region or mask, a variant, ``min_fraction`` outside [0, 1].
    """
    if not 0 <= min_fraction <= 1:
        raise ValueError(f"min_fraction must be in [0, 1], got {min_fraction}")
    masks = masks or {}
    shared = {}
    found = []
    for row in rows:
        plane = _plane(maps, row.file, variant)
        size = plane.shape[0]
        if row.file in masks:
            mask = region_mask(masks[row.file], size)
        elif region is not None:
            if size not in shared:
                shared[size] = region_mask(region, size)
            mask = shared[size]
        else:
            continue
        fraction = outside_fraction(plane, mask)
        if fraction >= min_fraction:
            found.append((row, fraction))
    return sorted(found, key=lambda item: (-item[1], item[0].file))


def masks_from_folder(folder, rows: Sequence[Row]) -> dict[str, np.ndarray]:
    """Per-image masks from a folder of images (png, jpg, ...) named like the images (``cat.png``
    for ``cat.jpg`` or for the map set ``cat.mapset.npz``): nonzero pixels are the region."""
    import os
    from pathlib import Path

    from PIL import Image

    files = {p.stem: p for p in Path(folder).iterdir() if p.is_file()} if Path(folder).is_dir() else {}
    out = {}
    for row in rows:
        for key in (row.image, os.path.splitext(row.image)[0], Path(row.file).name.split(".mapset")[0]):
            path = files.get(Path(key).name) or files.get(key)
            if path is not None:
                out[row.file] = (np.asarray(Image.open(path).convert("L")) > 0).astype(np.float32)
                break
    return out
