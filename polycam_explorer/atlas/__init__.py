"""The dataset atlas: an index of a folder of map sets (SQLite, built incrementally, rows read
without loading map sets) and aggregates over it as pure functions. Nothing here imports
ipywidgets."""
from . import aggregates
from .aggregates import class_means, insdel_table, outside_region
from .build import AtlasSkipWarning, BuildReport
from .index import Index, Row, build_index, open_index

__all__ = ["AtlasSkipWarning", "BuildReport", "Index", "Row", "aggregates", "build_index", "class_means",
           "insdel_table", "open_index", "outside_region"]
