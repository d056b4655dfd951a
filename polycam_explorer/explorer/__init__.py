"""The ipywidgets layer: ``Explorer`` (a widget over map sets) and ``explore`` (image -> widget)."""
from .app import Explorer

__all__ = ["Explorer"]
