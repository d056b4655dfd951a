"""The dataset atlas: an index of a folder of map sets (SQLite, built incrementally, rows read
without loading map sets), aggregates over it as pure functions, two models compared image by
image, and the :class:`Atlas` widget (imported on first use: only it needs ipywidgets)."""
from . import aggregates
from .aggregates import class_means, insdel_table, outside_region
from .build import AtlasSkipWarning, BuildReport
from .compare import Pair, pair_rows
from .index import Index, Row, build_index, open_index


def __getattr__(name: str):
    """``Atlas`` needs the widget extra: imported on first use."""
    if name == "Atlas":
        from .widget import Atlas
        return Atlas
    raise AttributeError(f"module 'polycam_explorer.atlas' has no attribute {name!r}")


__all__ = ["Atlas", "AtlasSkipWarning", "BuildReport", "Index", "Pair", "Row", "aggregates", "build_index",
           "class_means", "insdel_table", "open_index", "outside_region", "pair_rows"]
