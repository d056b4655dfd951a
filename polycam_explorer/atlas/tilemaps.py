"""Which small map each atlas tile shows: the predicted class's or the labelled class's (both
stored in the index), or a chosen class's, made on demand from the rows' map sets with the code
that makes the index's maps (:func:`~.build.small_maps`) and kept in a small LRU, so that paging
back is instant. No widgets."""
from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import numpy as np

from .build import small_maps
from .index import Index, Row

# the grid's "map of" choices: (title, value); "class" shows the chosen class's maps
MAP_OF = (("predicted class", "predicted"), ("labelled class", "label"), ("a chosen class", "class"))
CAPACITY = 512  # chosen-class maps kept (about 12 KiB each at 32 x 32)

Maps = dict[str, "np.ndarray | str"]  # by file: ``[3, S, S]`` float32 maps, or why there are none


def check_map_of(map_of: str) -> str:
    """``map_of`` as given when it is one of :data:`MAP_OF`'s values.

    Raises:
        ValueError: anything else.
    """
    if map_of not in [value for _, value in MAP_OF]:
        raise ValueError(f"map_of must be one of {[value for _, value in MAP_OF]}, got {map_of!r}")
    return map_of


class TileMaps:
    """The small maps of one index's rows for the grid (``[3, S, S]``: variants ``+``, ``-``,
    ``+-``, as :meth:`Index.small_maps`), with an LRU of ``capacity`` chosen-class maps keyed by
    file, its indexed SHA-256 and the class: a result never depends on what was asked before."""

    def __init__(self, index: Index, capacity: int = CAPACITY) -> None:
        self.index, self.capacity = index, capacity
        self._lru: OrderedDict[tuple[str, str, int], np.ndarray] = OrderedDict()

    def to_load(self, rows: Sequence[Row], map_of: str, class_idx: int | None = None) -> int:
        """How many of ``rows``' map sets :meth:`maps` would load (0 unless ``map_of`` is ``"class"``)."""
        if check_map_of(map_of) != "class":
            return 0
        return sum(_key(r, class_idx) not in self._lru for r in rows if class_idx < r.n_classes)

    def maps(self, rows: Sequence[Row], map_of: str, class_idx: int | None = None) -> Maps:
        """Each row's maps of its predicted class, its labelled class, or class ``class_idx``
        (``map_of``: ``"predicted"``, ``"label"``, ``"class"``), by file; a row without them gets
        the reason instead (no label, a label naming no class, no such class, map set unreadable).

        Raises:
            ValueError: an unknown ``map_of``; ``"class"`` without a class index >= 0.
        """
        map_of = check_map_of(map_of)
        if map_of == "predicted":
            return dict(self.index.small_maps(rows))
        if map_of == "label":
            found = self.index.label_maps(rows)
            return {r.file: ("no label" if r.label is None else "label not a class") if found[r.file] is None
                    else found[r.file] for r in rows}
        if isinstance(class_idx, bool) or not isinstance(class_idx, int) or class_idx < 0:
            raise ValueError(f"a chosen class must be a class index >= 0, got {class_idx!r}")
        sizes = self.index.map_sizes([r for r in rows if _key(r, class_idx) not in self._lru])
        return {r.file: self._class_maps(r, class_idx, sizes.get(r.file)) for r in rows}

    def _class_maps(self, row: Row, class_idx: int, map_size: int | None) -> np.ndarray | str:
        if class_idx >= row.n_classes:
            return "no such class"
        key = _key(row, class_idx)
        if key in self._lru:
            self._lru.move_to_end(key)
            return self._lru[key]
        try:
            ms = self.index.open_mapset(row)
        except (ValueError, OSError):
            return "map set unreadable"
        maps = small_maps(ms, class_idx, map_size=map_size).astype(np.float32)
        self._lru[key] = maps
        while len(self._lru) > self.capacity:
            self._lru.popitem(last=False)
        return maps


def _key(row: Row, class_idx: int) -> tuple[str, str, int]:
    return row.file, row.sha256, class_idx
