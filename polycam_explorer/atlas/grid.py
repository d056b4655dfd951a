"""The atlas grid's pixels: a tile per image (its picture with the shown variant's small map laid
over it, and caption lines under it; two of them side by side when comparing models), a page of
tiles, and which tile a click lands on. No widgets: the pixels are ``H x W x 3`` uint8 arrays made
with :mod:`polycam_explorer.render` from the pictures and small maps the index stores."""
from __future__ import annotations

import io
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from .. import render
from ..polycam import canonical_variant
from .compare import Pair
from .index import Index, Row
from .store import VARIANTS

TILE = 112  # longest side of a tile's picture, pixels
PAD = 6  # white gap around tiles, pixels
LINES = 3  # caption lines under each tile
CHAR_W = 6  # pixels a caption character takes, at most (PIL's default font)
MARK = (255, 140, 0)  # the frame around the tile open in the explorer


def decode(jpeg: bytes) -> np.ndarray:
    """JPEG (or PNG) bytes as ``h x w x 3`` uint8."""
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB"))


def overlay_tile(picture: np.ndarray, small_map: np.ndarray | None, *, cmap: str = "turbo", alpha: float = 0.5,
                 size: int = TILE) -> np.ndarray:
    """``picture`` scaled so that its longest side is ``size``, with ``small_map`` (aligned on the
    picture's frame, any resolution; None: the picture alone) resized bilinearly onto it and
    blended with ``cmap`` at opacity ``alpha``; centred on a white ``size x size`` square."""
    nh, nw = render.fitted_size(picture.shape[:2], size)
    shown = render.fit_picture(picture, (nh, nw))
    if small_map is not None:
        shown = render.overlay(shown, render.resize_map(small_map, (nh, nw)), cmap, alpha)
    out = np.full((size, size, 3), 255, np.uint8)
    top, left = (size - nh) // 2, (size - nw) // 2
    out[top: top + nh, left: left + nw] = shown
    return out


def side_by_side(tiles: Sequence[np.ndarray], *, pad: int = PAD) -> np.ndarray:
    """Equally tall tiles in a row, ``pad`` white columns between them (compare mode: A | B)."""
    gap = np.full((tiles[0].shape[0], pad, 3), 255, np.uint8)
    parts = [part for tile in tiles for part in (gap, tile)][1:]
    return np.concatenate(parts, axis=1)


def fit_text(text: str, width: int) -> str:
    """``text`` cut (ending in ``..``) to fit ``width`` pixels of caption."""
    limit = max(3, (width - 4) // CHAR_W)
    return text if len(text) <= limit else text[: limit - 2] + ".."


@dataclass(frozen=True)
class GridLayout:
    """Where tiles of ``tile_w x tile_h`` pixels (captions included) sit on a page of ``columns``:
    tile ``i`` at column ``pad + (i % columns) * (tile_w + pad)`` and row
    ``pad + (i // columns) * (tile_h + pad)``. The page is always ``columns`` tiles wide."""

    columns: int
    tile_w: int
    tile_h: int
    pad: int = PAD

    def origin(self, i: int) -> tuple[int, int]:
        """``(x, y)`` of tile ``i``'s top left corner."""
        row, col = divmod(i, self.columns)
        return self.pad + col * (self.tile_w + self.pad), self.pad + row * (self.tile_h + self.pad)

    def size(self, n: int) -> tuple[int, int]:
        """``(H, W)`` of a page of ``n`` tiles (one empty row when ``n`` is 0)."""
        rows = max(1, math.ceil(n / self.columns))
        return rows * (self.tile_h + self.pad) + self.pad, self.columns * (self.tile_w + self.pad) + self.pad

    def tile_at(self, x: float, y: float, n: int) -> int | None:
        """The tile under the page pixel ``(x, y)`` among ``n`` tiles; None in a gap or beyond."""
        col, dx = divmod(x - self.pad, self.tile_w + self.pad)
        row, dy = divmod(y - self.pad, self.tile_h + self.pad)
        if x < self.pad or y < self.pad or dx >= self.tile_w or dy >= self.tile_h or col >= self.columns:
            return None
        i = int(row) * self.columns + int(col)
        return i if i < n else None


def page(tiles: Sequence[np.ndarray], captions: Sequence[Sequence[str]], *, columns: int,
         marked: int | None = None) -> tuple[np.ndarray, GridLayout]:
    """The page's pixels (white, tiles in rows of ``columns``, each with its :data:`LINES` caption
    lines) and its layout; tile ``marked`` gets a :data:`MARK` frame in the gap around it. All
    tiles must have one size; with no tile the page is one empty row of :data:`TILE` squares."""
    h, w = tiles[0].shape[:2] if tiles else (TILE, TILE)
    captioned = [render.captioned(tile, [fit_text(line, w) for line in (list(lines) + [""] * LINES)[:LINES]])
                 for tile, lines in zip(tiles, captions)]
    layout = GridLayout(columns, w, captioned[0].shape[0] if captioned else h + 4 + 12 * LINES)
    out = np.full((*layout.size(len(tiles)), 3), 255, np.uint8)
    for i, tile in enumerate(captioned):
        x, y = layout.origin(i)
        if i == marked:
            half = layout.pad // 2
            out[y - half: y + layout.tile_h + half, x - half: x + layout.tile_w + half] = MARK
        out[y: y + layout.tile_h, x: x + layout.tile_w] = tile
    return out, layout


def caption(item: Row | Pair, sort: str = "confidence", variant: str = "+-", note: str = "") -> list[str]:
    """The :data:`LINES` lines under a tile: the image name; the prediction (both models' when
    comparing); the label and whether the prediction is right, and the value sorted by when the
    tile does not show it otherwise (Ins-Del, context reliance, disagreement); or, last, ``note``
    (why the tile has no map) when there is one."""
    if isinstance(item, Pair):
        a, b = item.a, item.b
        d = "1 - r undefined" if math.isnan(item.disagreement) else f"1 - r = {item.disagreement:.2f}"
        return [item.image, f"A {a.pred_name} {a.confidence:.2f} | B {b.pred_name} {b.confidence:.2f}",
                note or d + ("" if item.same_class else ", classes differ")]
    if note:
        return [item.image, f"{item.pred_name} {item.confidence:.2f}", note]
    verdict = "" if item.label is None else f"{'ok' if item.correct else 'wrong'}: {item.label}"
    extra = ""
    if sort == "insdel":
        value = item.insdel(variant)
        extra = "ins-del n/a" if value is None else f"ins-del {value:.2f}"
    elif sort == "context":
        extra = f"context {item.context:.3f}"
    return [item.image, f"{item.pred_name} {item.confidence:.2f}", "  ".join(t for t in (extra, verdict) if t)]


def page_of(items: Sequence[Row | Pair], index: Index, other: Index | None = None, *, variant: str = "+-",
            cmap: str = "turbo", sort: str = "confidence", columns: int = 8, marked: int | None = None,
            maps_of: Callable[[Index, list[Row]], Mapping[str, np.ndarray | str]] | None = None,
            ) -> tuple[np.ndarray, GridLayout]:
    """The :func:`page` of ``items`` (rows of ``index``, or pairs of rows of ``index`` and
    ``other``): each picture with ``variant``'s small map, fetched for these items only.
    ``maps_of(index, rows)``: each row's ``[3, S, S]`` maps by file, or the reason it has none
    (the picture is drawn alone, the reason in its caption); default the predicted class's
    (:meth:`Index.small_maps`)."""
    v = VARIANTS.index(canonical_variant(variant))
    maps_of = maps_of or (lambda source, rows: source.small_maps(rows))
    sides = [("A", index, [i.a if isinstance(i, Pair) else i for i in items])]
    if other is not None:
        sides.append(("B", other, [i.b for i in items]))
    per_side, notes = [], [""] * len(items)
    for name, source, rows in sides:
        pictures, maps = source.pictures(rows), maps_of(source, rows)
        per_side.append([])
        for k, r in enumerate(rows):
            shown = maps[r.file]
            if isinstance(shown, str):
                notes[k] = notes[k] or (f"{name}: {shown}" if other is not None else shown)
            per_side[-1].append(overlay_tile(decode(pictures[r.file]), None if isinstance(shown, str) else shown[v],
                                             cmap=cmap))
    tiles = [side_by_side(list(both)) if len(both) > 1 else both[0] for both in zip(*per_side)]
    return page(tiles, [caption(i, sort, variant, note) for i, note in zip(items, notes)], columns=columns,
                marked=marked)
