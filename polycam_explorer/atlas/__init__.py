"""The dataset atlas: an index of a folder of map sets (SQLite, built incrementally) and
aggregates over it. Nothing here imports ipywidgets."""
from .build import AtlasSkipWarning, BuildReport
from .index import Index, Row, build_index, open_index

__all__ = ["AtlasSkipWarning", "BuildReport", "Index", "Row", "build_index", "open_index"]
