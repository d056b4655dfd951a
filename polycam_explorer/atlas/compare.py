"""Two models on the same images: rows paired by image name, and how much their maps disagree.

The measure: for a pair of rows (model A, model B) of one image and a variant ``v``,

    disagreement = 1 - r(M_A, M_B)

where ``M_A``, ``M_B`` are the index's small maps (``S x S`` float, full depth, aligned on the input
frame; see :meth:`Index.small_maps`) of variant ``v`` and ``r`` is Pearson's correlation of their
pixels. It is 0 for maps that agree up to a gain and an offset, 1 for unrelated maps, 2 for
opposite ones; NaN when one map is constant (r undefined). The atlas sorts pairs by it, most
first (:func:`sort_pairs`).

The maps are of each model's own predicted class (``maps_of="predicted"``): when A and B predict
the same class (the usual case for one model before and after fine-tuning) this is the
disagreement on that class; when they predict different classes the pair compares each model's
own prediction, and :attr:`Pair.same_class` is False. Or of the class the image's label names
(``maps_of="label"``, both sides the same class; NaN for an image without a usable label). Pure
functions: no index, no widgets.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import NamedTuple

import numpy as np

from ..polycam import canonical_variant
from ..render import resize_map
from .index import Row
from .store import VARIANTS


class Pair(NamedTuple):
    """One image seen by two models."""

    image: str
    a: Row
    b: Row
    disagreement: float  # 1 - Pearson r of the two small maps of the shown variant; NaN if undefined
    maps_of: str = "predicted"  # whose maps were compared: each model's predicted class's, or the label's

    @property
    def same_class(self) -> bool:
        """The two maps compared are of one class: the label's, or a prediction both models make."""
        return self.maps_of == "label" or self.a.pred_name == self.b.pred_name


def pair_rows(rows_a: Sequence[Row], rows_b: Sequence[Row]) -> list[tuple[Row, Row]]:
    """``(a, b)`` for each image name in both, in ``rows_a``'s order; an image named twice on one
    side is paired by its first row there."""
    first_b: dict[str, Row] = {}
    for row in rows_b:
        first_b.setdefault(row.image, row)
    seen: set[str] = set()
    pairs = []
    for row in rows_a:
        if row.image in first_b and row.image not in seen:
            seen.add(row.image)
            pairs.append((row, first_b[row.image]))
    return pairs


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson's r of two arrays' values (NaN when either is constant).

    Raises:
        ValueError: the arrays differ in shape.
    """
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    if a.shape != b.shape:
        raise ValueError(f"maps of different shapes cannot be correlated: {a.shape} and {b.shape}")
    da, db = a - a.mean(), b - b.mean()
    norm = math.sqrt(float(da @ da) * float(db @ db))
    return float(da @ db) / norm if norm > 0 else math.nan


def disagreement(map_a: np.ndarray, map_b: np.ndarray) -> float:
    """``1 - r`` of two maps; a map of another size is resampled (bilinear) to ``map_a``'s first."""
    if map_b.shape != map_a.shape:
        map_b = resize_map(map_b, map_a.shape)
    return 1.0 - pearson(map_a, map_b)


def compare(rows_a: Sequence[Row], rows_b: Sequence[Row], maps_a: Mapping[str, np.ndarray | None],
            maps_b: Mapping[str, np.ndarray | None], variant: str = "+-", maps_of: str = "predicted") -> list[Pair]:
    """The pairs of :func:`pair_rows` (in their order) with their disagreement for ``variant``.
    ``maps_a``, ``maps_b``: each side's small maps of the class ``maps_of`` says
    (:meth:`Index.small_maps` or :meth:`Index.label_maps`: file -> ``[3, S, S]``, variants in the
    index's order ``+``, ``-``, ``+-``; None where there are none: the disagreement is NaN).

    Raises:
        ValueError: an unknown variant. KeyError: a paired row missing from the maps.
    """
    v = VARIANTS.index(canonical_variant(variant))
    return [Pair(a.image, a, b, math.nan if maps_a[a.file] is None or maps_b[b.file] is None else
                 disagreement(maps_a[a.file][v], maps_b[b.file][v]), maps_of)
            for a, b in pair_rows(rows_a, rows_b)]


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def sort_pairs(pairs: Sequence[Pair], key: str, *, descending: bool = False, variant: str = "+-") -> list[Pair]:
    """Pairs sorted by ``"disagreement"`` or a column of model A's rows (``"insdel"``: its
    Ins-Del of ``variant``); missing values (NaN, no label, not evaluated) last either way, ties
    by image name (as :meth:`Index.query` orders one model's rows, ties there by file).

    Raises:
        ValueError: an unknown key.
    """
    if key not in ("disagreement", "insdel") and key not in Row._fields:
        raise ValueError(f"cannot sort pairs by {key!r}: use 'disagreement', 'insdel' or a column of {Row._fields}")

    def value(pair: Pair):
        if key == "disagreement":
            return pair.disagreement
        return pair.a.insdel(variant) if key == "insdel" else getattr(pair.a, key)

    by_image = sorted(pairs, key=lambda p: p.image)
    present = [p for p in by_image if not _missing(value(p))]
    present.sort(key=value, reverse=descending)  # stable, also reversed: ties keep the image order
    return present + [p for p in by_image if _missing(value(p))]
