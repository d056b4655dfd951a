"""Filling the atlas index's Ins-Del from an ``evaluate`` run (issue 12, item 1): each image's
insertion AUC minus deletion AUC of its full-depth PCAM+, PCAM- and PCAM± maps, written into the
rows of the map sets those maps came from."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping

from ..polycam import canonical_variant
from .index import Index
from .store import db_path


@dataclass(frozen=True)
class Score:
    """One image's evaluated map: the class it explains, the map's size, its Ins-Del."""

    class_index: int
    size: tuple[int, int]  # (H, W) of the map scored: the map set's input size
    insdel: float


def record_insdel(folders: Iterable[str | os.PathLike], model_id: str,
                  scores: Mapping[str, Mapping[str, Score]]) -> dict[Path, int]:
    """Write ``scores`` (variant -> image name -> :class:`Score`) into the index of each folder
    that has one (others are passed over); returns the rows updated per index.

    A row takes an image's score only when it is the same image (``Row.image``), the same model
    (``model_id``), the same class (its predicted class) and the same input size, so the number
    recorded is the Ins-Del of the row's own map. Variants an image was not evaluated for keep
    what the row had.

    Raises:
        ValueError: an unknown variant.
    """
    by_image: dict[str, dict[str, Score]] = {}
    for variant, images in scores.items():
        variant = canonical_variant(variant)
        for image, score in images.items():
            by_image.setdefault(image, {})[variant] = score
    updated = {}
    for folder in dict.fromkeys(Path(f).resolve() for f in folders):
        if not db_path(folder).is_file():
            continue
        with Index(folder) as index:
            count = 0
            for row in index.query(model_id=model_id):
                values = {v: s.insdel for v, s in by_image.get(row.image, {}).items()
                          if s.class_index == row.pred_class and tuple(s.size) == (row.height, row.width)}
                if values:
                    index.set_insdel(row, values)
                    count += 1
            updated[folder] = count
    return updated
