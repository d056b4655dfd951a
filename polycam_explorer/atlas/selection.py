"""What the atlas grid shows: the rows (or, comparing two models, the pairs) that match the filters,
sorted, one page at a time. Built on :meth:`Index.query`: no map set is loaded. No widgets."""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

from ..polycam import canonical_variant
from .compare import Pair, compare, sort_pairs
from .index import Index, Row, build_index, open_index

Item = Row | Pair

# what the grid sorts by: (title, key); "class" sorts by the predicted class's name
SORTS = (("confidence", "confidence"), ("class", "pred_name"), ("label", "label"),
         ("correct / incorrect", "correct"), ("Ins-Del", "insdel"),
         ("context reliance (PCAM- over PCAM+)", "context"), ("image name", "image"))
DISAGREEMENT = ("disagreement of the two models (1 - r)", "disagreement")


def open_or_build(folder: str | os.PathLike, progress=True) -> Index:
    """``folder``'s index as it is (not scanned: fast), or built first (``progress``: see
    :func:`build_index`) when the folder has none or one of an older schema; ``last_build`` says
    which (None: opened as it was).

    Raises:
        ValueError: ``folder`` is not a folder; an index that cannot be (re)built there.
    """
    if not Path(folder).is_dir():
        raise ValueError(f"{str(folder)!r} is not a folder of map sets")
    try:
        return open_index(folder)
    except ValueError:  # no index yet, or one of an older schema: (re)build it
        return build_index(folder, progress=progress)


@dataclass(frozen=True)
class Query:
    """A sort key (``SORTS``' keys, or ``"disagreement"`` for pairs), its direction, the variant
    (of the maps shown, of ``"insdel"`` and of the disagreement), :meth:`Index.query` filters and,
    comparing two models, whose maps the disagreement is of (``"predicted"``: each model's own
    prediction; ``"label"``: the labelled class, on both sides)."""

    sort: str = "confidence"
    descending: bool = True
    variant: str = "+-"
    filters: dict = field(default_factory=dict)
    maps_of: str = "predicted"

    def __post_init__(self) -> None:
        object.__setattr__(self, "variant", canonical_variant(self.variant))


class Selection:
    """The matching items of one index, or of two (``other``: pairs by image name; see
    :mod:`.compare`), for a :class:`Query`."""

    def __init__(self, index: Index, other: Index | None = None) -> None:
        self.index, self.other = index, other
        self._pairs: dict[tuple[str, str], list[Pair]] = {}  # (variant, maps_of) -> every pair, in image order
        self._maps: dict[str, tuple[dict, dict]] = {}  # maps_of -> both sides' small maps

    @property
    def comparing(self) -> bool:
        return self.other is not None

    def total(self) -> int:
        """Every row (every pair when comparing), with no filter."""
        return len(self.pairs("+-")) if self.comparing else len(self.index)

    def pairs(self, variant: str, maps_of: str = "predicted") -> list[Pair]:
        """Every pair of images in both indexes with its disagreement for ``variant``, on each
        model's predicted class or on the labelled class (``maps_of``; computed once per variant
        from the small maps, fetched once)."""
        variant = canonical_variant(variant)
        if maps_of not in ("predicted", "label"):
            raise ValueError(f"the disagreement is of the 'predicted' or the 'label' class's maps, not {maps_of!r}")
        if (variant, maps_of) not in self._pairs:
            rows_a, rows_b = self.index.query(), self.other.query()
            if maps_of not in self._maps:
                fetch = "small_maps" if maps_of == "predicted" else "label_maps"
                self._maps[maps_of] = getattr(self.index, fetch)(rows_a), getattr(self.other, fetch)(rows_b)
            self._pairs[variant, maps_of] = compare(rows_a, rows_b, *self._maps[maps_of], variant, maps_of)
        return self._pairs[variant, maps_of]

    def count(self, query: Query) -> int:
        """How many items match ``query``'s filters."""
        if not self.comparing:
            return len(self.index.files(**query.filters))
        return len(self._matching_pairs(query))

    def items(self, query: Query, start: int = 0, size: int | None = None) -> list[Item]:
        """The matching items, sorted, from ``start`` on (``size`` of them; all without).

        Raises:
            ValueError: an unknown sort key (``"disagreement"`` sorts pairs only).
        """
        if not self.comparing:
            sort = ("-" if query.descending else "") + query.sort
            return self.index.query(sort=sort, limit=size, offset=start, variant=query.variant, **query.filters)
        ordered = sort_pairs(self._matching_pairs(query), query.sort, descending=query.descending,
                             variant=query.variant)
        return ordered[start: None if size is None else start + size]

    def page(self, query: Query, number: int, size: int) -> list[Item]:
        """Page ``number`` (from 1) of ``size`` items."""
        return self.items(query, (number - 1) * size, size)

    def pages(self, query: Query, size: int) -> int:
        """How many pages the matching items fill (at least 1)."""
        return max(1, math.ceil(self.count(query) / size))

    def _matching_pairs(self, query: Query) -> list[Pair]:
        pairs = self.pairs(query.variant, query.maps_of)
        if not query.filters:
            return pairs
        keep = set(self.index.files(**query.filters))
        return [p for p in pairs if p.a.file in keep]
