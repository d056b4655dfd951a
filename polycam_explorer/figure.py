"""Figures for print: panels side by side with their captions and a colour scale, written as SVG,
PDF or PNG at a chosen dpi (matplotlib, no pyplot: no global figure state, safe in threads).

Each panel is embedded as a raster at its own pixel size (``interpolation="none"``: SVG and PDF
carry the pixels as they are, the viewer scales them); captions, ticks and labels are real text
(SVG ``<text>``, embedded TrueType fonts in PDF) and the colour bar is vector. The layout is fixed
in inches, so a PNG at ``dpi`` is ``round(width * dpi) x round(height * dpi)`` pixels
(:func:`figure_size`). The explorer's Export tab uses it; any caller with ``H x W x 3`` uint8
panels can.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Sequence, Union

import numpy as np

from .files import atomic_write

FORMATS = ("png", "svg", "pdf")
PANEL_INCHES = 3.0  # the longest side of a panel
FONT_PT = 8.0  # captions
TICK_PT = 7.0  # the colour scale's ticks and label
MARGIN, GAP = 0.1, 0.15  # inches: around the figure, between panels
BAR_INCHES = 0.15  # the colour bar's thickness
TEXT_RC = {"svg.fonttype": "none", "pdf.fonttype": 42, "ps.fonttype": 42}  # text stays text


@dataclass(frozen=True)
class ColourScale:
    """A vertical colour bar beside the panels: ``cmap`` from ``low`` (bottom) to ``high`` (top),
    ``ticks`` labelled ``tick_labels`` (empty: the numbers) and an axis ``label``."""

    cmap: str
    low: float = 0.0
    high: float = 1.0
    ticks: tuple[float, ...] = (0.0, 0.5, 1.0)
    tick_labels: tuple[str, ...] = ()
    label: str = "saliency"


@dataclass(frozen=True)
class LegendSquare:
    """A two-dimensional colour legend (``pixels``, ``n x n x 3`` uint8) with its axis labels."""

    pixels: np.ndarray
    xlabel: str
    ylabel: str


Scale = Union[ColourScale, LegendSquare, None]


def _text_inches(texts: Sequence[str], points: float) -> float:
    """A generous estimate of the width of the longest of ``texts`` at ``points`` (DejaVu Sans)."""
    return max((len(t) for t in texts), default=0) * 0.62 * points / 72.0


def _scale_inches(scale: Scale) -> float:
    """The width the colour scale takes right of the panels, gap included."""
    if scale is None:
        return 0.0
    if isinstance(scale, LegendSquare):
        return GAP + 0.25 + 0.8
    labels = scale.tick_labels or tuple(f"{t:g}" for t in scale.ticks)
    return GAP + BAR_INCHES + 0.08 + _text_inches(labels, TICK_PT) + 0.25


def _panel_inches(tile: np.ndarray, panel_inches: float) -> tuple[float, float]:
    h, w = tile.shape[:2]
    return panel_inches * h / max(h, w), panel_inches * w / max(h, w)


def _caption_inches(captions: Sequence[Sequence[str]]) -> float:
    return 0.05 + max((len(c) for c in captions), default=0) * FONT_PT * 1.3 / 72.0


def figure_size(tiles: Sequence[np.ndarray], captions: Sequence[Sequence[str]], scale: Scale = None, *,
                panel_inches: float = PANEL_INCHES) -> tuple[float, float]:
    """The ``(width, height)`` in inches of :func:`figure` for these panels."""
    ph, pw = _panel_inches(tiles[0], panel_inches)
    width = 2 * MARGIN + len(tiles) * pw + (len(tiles) - 1) * GAP + _scale_inches(scale)
    return width, 2 * MARGIN + ph + _caption_inches(captions)


def figure(tiles: Sequence[np.ndarray], captions: Sequence[Sequence[str]], scale: Scale = None, *,
           panel_inches: float = PANEL_INCHES):
    """A matplotlib ``Figure``: the equally sized ``tiles`` (``H x W x 3`` uint8) in a row, each
    ``panel_inches`` on its longest side with its caption lines under it, and ``scale`` on the
    right (as tall as the panels).

    Raises:
        ValueError: no tiles, tiles of different sizes, or not one caption per tile.
    """
    from matplotlib import colormaps
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize
    from matplotlib.figure import Figure

    if not tiles or any(t.shape != tiles[0].shape or t.ndim != 3 for t in tiles):
        raise ValueError("tiles must be one or more H x W x 3 arrays of the same size")
    if len(captions) != len(tiles):
        raise ValueError(f"captions must hold one list of lines per tile: {len(tiles)} tiles, "
                         f"{len(captions)} captions")
    width, height = figure_size(tiles, captions, scale, panel_inches=panel_inches)
    fig = Figure(figsize=(width, height))
    ph, pw = _panel_inches(tiles[0], panel_inches)
    bottom = MARGIN + _caption_inches(captions)
    for i, (tile, lines) in enumerate(zip(tiles, captions)):
        left = MARGIN + i * (pw + GAP)
        ax = fig.add_axes((left / width, bottom / height, pw / width, ph / height))
        ax.imshow(tile, interpolation="none", aspect="auto")
        ax.set_axis_off()
        for j, line in enumerate(lines):
            y = bottom - 0.05 - j * FONT_PT * 1.3 / 72.0
            fig.text(left / width, y / height, line, fontsize=FONT_PT, va="top", ha="left")
    x = MARGIN + len(tiles) * pw + (len(tiles) - 1) * GAP + GAP
    if isinstance(scale, ColourScale):
        cax = fig.add_axes((x / width, bottom / height, BAR_INCHES / width, ph / height))
        bar = fig.colorbar(ScalarMappable(Normalize(scale.low, scale.high), colormaps[scale.cmap]), cax=cax,
                           ticks=list(scale.ticks))
        bar.solids.set_rasterized(False)  # matplotlib rasterises bars of >= 50 colours; keep it vector
        if scale.tick_labels:
            bar.ax.set_yticklabels(list(scale.tick_labels))
        bar.ax.tick_params(labelsize=TICK_PT)
        bar.set_label(scale.label, fontsize=TICK_PT)
    elif isinstance(scale, LegendSquare):
        side = 0.8
        ax = fig.add_axes(((x + 0.25) / width, (bottom + ph - side) / height, side / width, side / height))
        ax.imshow(scale.pixels, interpolation="none", aspect="auto")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_xlabel(scale.xlabel, fontsize=TICK_PT)
        ax.set_ylabel(scale.ylabel, fontsize=TICK_PT)
    return fig


def save(fig, path: Union[str, os.PathLike], fmt: str, *, dpi: int = 300) -> None:
    """Write ``fig`` as ``fmt`` (one of :data:`FORMATS`) to ``path`` atomically; ``dpi`` sets the
    PNG's pixels (and its pHYs metadata) and the resolution of rasters matplotlib must resample.

    Raises:
        ValueError: an unknown format or a dpi below 10.
    """
    from matplotlib import rc_context

    if fmt not in FORMATS:
        raise ValueError(f"fmt must be one of {FORMATS}, got {fmt!r}")
    if isinstance(dpi, bool) or not isinstance(dpi, int) or dpi < 10:
        raise ValueError(f"dpi must be an int >= 10, got {dpi!r}")
    with rc_context(TEXT_RC), atomic_write(path) as f:
        fig.savefig(f, format=fmt, dpi=dpi)
