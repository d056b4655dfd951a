"""``pe.Atlas``: a paged grid of a folder's map sets (thumbnails with the chosen variant's map),
sorted and filtered in the index, with the explorer of the clicked image beside it; or two models'
maps of the same images side by side, sorted by how much they disagree."""
from __future__ import annotations

import contextlib
import html
import os
from collections.abc import Iterator
from pathlib import Path

import ipywidgets as W
import torch

from ..explorer import Explorer
from ..explorer.canvas import FrameCanvas
from ..explorer.panels import VARIANT_OPTIONS
from ..explorer.views.export import default_export_dir
from ..render import COLORMAPS
from .compare import Pair
from .grid import GridLayout, page_of
from .index import Index
from .report_panel import ReportPanel
from .selection import DISAGREEMENT, SORTS, Item, Query, Selection, open_or_build
from .tilemaps import MAP_OF, TileMaps, check_map_of

Source = str | os.PathLike | Index
CORRECT_OPTIONS = (("correct or not", "any"), ("correct", "correct"), ("incorrect", "incorrect"),
                   ("unlabelled", "unlabelled"))
_CORRECT_FILTERS = {"any": {}, "correct": {"correct": True}, "incorrect": {"correct": False},
                    "unlabelled": {"labelled": False}}


def as_index(source: Source) -> tuple[Index, bool]:
    """``(index, opened here)``: an Index as given, or a folder's (:func:`~.selection.open_or_build`).

    Raises:
        TypeError: neither. ValueError: not a folder.
    """
    if isinstance(source, Index):
        return source, False
    if not isinstance(source, (str, os.PathLike)):
        raise TypeError(f"the atlas takes a folder of map sets or a pe.atlas.Index, got {type(source).__name__}")
    return open_or_build(source), True


def _positive(name: str, value: object, low: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
    return value


class Atlas(W.HBox):
    """The dataset atlas: a paged grid of thumbnails (each image with the full-depth map of the
    chosen variant for its predicted class, its labelled class, or a chosen class), sorted and
    filtered in the index; a click opens that map set in an
    :class:`~polycam_explorer.explorer.Explorer` beside the grid.

    Args:
        folder_or_index: a folder of map sets (its index is opened; built first if it has none:
            bring a stale one up to date with ``pe.atlas.build_index``) or a ``pe.atlas.Index``.
        model: the classifier that made the map sets, given to the explorer (for its curves,
            sanity check and baselines). Not with ``compare``.
        compare: a second folder or Index (another model on the same images): each tile shows
            both maps (A | B), rows paired by image name and sorted by how much the maps disagree
            (1 - Pearson r of the small maps of the shown variant; see :mod:`.compare`); a click
            opens both map sets in one explorer (its image picker switches model).
        page_size: tiles per page; columns: tiles per row (default 8; 4 comparing); variant:
        ``"+"``, ``"-"`` or ``"+-"``; cmap: the maps' colormap; panel_size: the explorer's;
        export_dir: where the explorer's exports and the HTML report go (default
        ``$POLYCAM_EXPLORER_EXPORTS`` or ``./polycam_exports``). The report is written in the
        background (``atlas.report``, a :class:`~.report_panel.ReportPanel`: progress, time left,
        cancel) while the grid stays usable.
        map_of: whose map each tile shows (the ``map_of`` control; set ``atlas.map_of.value``
            later): ``"predicted"`` (the predicted class, stored in the index), ``"label"`` (the
            class the label names, stored in the index; an image without a label, or whose label
            names no class of its model, is shown without a map and says why) or ``"class"``
            (class ``map_class``, the ``map_class`` control: made from the map sets of the page's
            images when shown, kept in a small LRU; the status line says while it loads).
        map_class: the chosen class index (default: the most predicted class of the index).

    Raises:
        ValueError: a folder that does not exist, a bad size, ``model`` with ``compare``, an
            unknown ``map_of`` or a negative ``map_class``.
        TypeError: something else than a folder or an Index.
    """

    def __init__(self, folder_or_index: Source, *, model: torch.nn.Module | None = None,
                 compare: Source | None = None, page_size: int = 48, columns: int | None = None,
                 variant: str = "+-", cmap: str = "turbo", panel_size: int = 320,
                 export_dir: str | os.PathLike | None = None, map_of: str = "predicted",
                 map_class: int | None = None) -> None:
        if model is not None and compare is not None:
            raise ValueError("model= is for one folder: comparing, the explorer holds two models' map sets "
                             "and computes no curves")
        self.page_size = _positive("page_size", page_size)
        self.columns = _positive("columns", columns if columns is not None else (4 if compare is not None else 8))
        self.model, self.panel_size = model, panel_size
        self.export_dir = Path(export_dir).expanduser().resolve() if export_dir is not None else default_export_dir()
        self._owned: list[Index] = []
        self.index = self._open(folder_or_index)
        self.other = self._open(compare) if compare is not None else None
        self.selection = Selection(self.index, self.other)
        self.tile_maps = {ix: TileMaps(ix) for ix in (self.index, self.other) if ix is not None}
        self.items: list[Item] = []  # the tiles on screen, in order
        self.layout_grid: GridLayout | None = None
        self.explorer: Explorer | None = None
        self.opened: Item | None = None  # the item shown in the explorer
        self._muted = False
        self._build_controls(variant, cmap)
        self._build_map_controls(check_map_of(map_of), map_class)
        self.canvas = FrameCanvas((1, 1), on_click=self.click)
        self.status = W.HTML()
        self.report = ReportPanel(self.export_dir, self.status)
        self.report.button.on_click(lambda _: self.export_report())
        self.explorer_box = W.VBox()
        grid = W.VBox([W.HBox([self.variant, self.cmap]), W.HBox([self.sort, self.descending]),
                       W.HBox([self.map_of, self.map_class]),
                       W.HBox([self.klass, self.label, self.correct]), self.confidence,
                       W.HBox([self.previous, self.page, self.pages_label, self.next, self.count]),
                       self.canvas.canvas, self.report, self.status])
        super().__init__([grid, self.explorer_box],
                         layout=W.Layout(flex_flow="row wrap", align_items="flex-start"))
        self.refresh()

    def _open(self, source: Source) -> Index:
        index, owned = as_index(source)
        if owned:
            self._owned.append(index)
        return index

    def _build_controls(self, variant: str, cmap: str) -> None:
        sorts = ([DISAGREEMENT] if self.other is not None else []) + list(SORTS)
        self.variant = W.ToggleButtons(options=VARIANT_OPTIONS, value=Query(variant=variant).variant,
                                       description="variant", style={"button_width": "70px"})
        self.cmap = W.Dropdown(options=list(COLORMAPS), value=cmap, description="colormap",
                               layout=W.Layout(width="200px"))
        self.sort = W.Dropdown(options=sorts, value=sorts[0][1], description="sort by")
        self.descending = W.Checkbox(value=True, description="highest first", indent=False)
        self.klass = W.Dropdown(options=[("all classes", -1)] + [(f"{name} ({n})", c) for c, name, n in
                                                                 self.index.classes()], description="class")
        self.label = W.Dropdown(options=[("all labels", ())] + [(f"{label} ({n})", (label,)) for label, n in
                                                                self.index.labels()], description="label")
        self.correct = W.Dropdown(options=CORRECT_OPTIONS, value="any", description="correct")
        self.confidence = W.FloatRangeSlider(value=(0.0, 1.0), min=0.0, max=1.0, step=0.01,
                                             description="confidence", continuous_update=False,
                                             layout=W.Layout(width="420px"))
        self.previous = W.Button(description="◀", tooltip="previous page", layout=W.Layout(width="40px"))
        self.next = W.Button(description="▶", tooltip="next page", layout=W.Layout(width="40px"))
        self.page = W.BoundedIntText(value=1, min=1, max=1, description="page", layout=W.Layout(width="130px"))
        self.pages_label, self.count = W.HTML(), W.HTML()
        for control in (self.sort, self.descending, self.klass, self.label, self.correct, self.confidence):
            control.observe(lambda _: self.refresh(), names="value")
        for control in (self.variant, self.cmap):
            control.observe(lambda _: self.refresh(keep_page=True), names="value")
        self.page.observe(lambda _: None if self._muted else self.draw(), names="value")
        self.previous.on_click(lambda _: self._turn(-1))
        self.next.on_click(lambda _: self._turn(+1))

    def _build_map_controls(self, map_of: str, map_class: int | None) -> None:
        classes = [(f"{name} ({c})", c) for c, name, _ in self.index.classes()]
        if map_class is not None:
            if isinstance(map_class, bool) or not isinstance(map_class, int) or map_class < 0:
                raise ValueError(f"map_class must be a class index >= 0, got {map_class!r}")
            if map_class not in [c for _, c in classes]:
                classes.append((f"class {map_class}", map_class))
        self.map_of = W.Dropdown(options=MAP_OF, value=map_of, description="map of",
                                 tooltip="whose map each thumbnail shows")
        classes = classes or [("no class", 0)]
        self.map_class = W.Dropdown(options=classes, value=map_class if map_class is not None else classes[0][1],
                                    description="of class", disabled=map_of != "class")
        self.map_of.observe(lambda _: self._map_changed(), names="value")
        self.map_class.observe(lambda _: self.draw() if self.map_of.value == "class" else None, names="value")

    def _map_changed(self) -> None:
        self.map_class.disabled = self.map_of.value != "class"
        if self.other is not None:  # the pairs' order follows the maps compared
            self.refresh()
        else:
            self.draw()

    # ----- what is shown ---------------------------------------------------------------------
    def query(self) -> Query:
        """The controls as a :class:`~.selection.Query`."""
        filters = dict(_CORRECT_FILTERS[self.correct.value])
        if self.klass.value != -1:
            filters["pred_class"] = self.klass.value
        if self.label.value:
            filters["label"] = list(self.label.value)
        low, high = self.confidence.value
        if low > 0.0:
            filters["min_confidence"] = low
        if high < 1.0:
            filters["max_confidence"] = high
        # comparing: sorted by the disagreement of the maps shown, the label's or the predictions'
        # (a chosen class's would load every map set: the predictions' then)
        return Query(self.sort.value, self.descending.value, self.variant.value, filters,
                     maps_of="label" if self.map_of.value == "label" else "predicted")

    def refresh(self, keep_page: bool = False) -> None:
        """Count the matching images again and draw the first page (``keep_page``: the same page)."""
        query = self.query()
        matching, total = self.selection.count(query), self.selection.total()
        what = "pairs of images" if self.other is not None else "images"
        self.count.value = f"<b>{matching}</b> of {total} {what}"
        pages = self.selection.pages(query, self.page_size)
        with self._mute():
            self.page.max = pages
            if not keep_page:
                self.page.value = 1
        self.pages_label.value = f"of {pages}"
        self.draw()

    def draw(self) -> None:
        """Fetch and draw the current page's tiles (their pictures and small maps only)."""
        query = self.query()
        self.items = self.selection.page(query, self.page.value, self.page_size)
        marked = next((i for i, item in enumerate(self.items) if _same(item, self.opened)), None)
        map_of, c = self.map_of.value, self.map_class.value
        sides = [(self.index, [i.a if isinstance(i, Pair) else i for i in self.items])]
        sides += [(self.other, [i.b for i in self.items])] if self.other is not None else []
        loading = sum(self.tile_maps[ix].to_load(rows, map_of, c) for ix, rows in sides)
        if loading:
            self.status.value = f"loading {loading} map sets for the maps of class {c}…"
        pixels, self.layout_grid = page_of(self.items, self.index, self.other, variant=query.variant,
                                           cmap=self.cmap.value, sort=query.sort, columns=self.columns,
                                           marked=marked,
                                           maps_of=lambda ix, rows: self.tile_maps[ix].maps(rows, map_of, c))
        if loading:
            self.status.value = f"maps of class {c} made from {loading} map sets"
        self.canvas.resize(pixels.shape[:2])
        self.canvas.draw(pixels)
        self.previous.disabled = self.page.value <= 1
        self.next.disabled = self.page.value >= self.page.max

    def _turn(self, step: int) -> None:
        self.page.value = min(max(1, self.page.value + step), self.page.max)

    @contextlib.contextmanager
    def _mute(self) -> Iterator[None]:
        self._muted = True
        try:
            yield
        finally:
            self._muted = False

    def export_report(self, *, block: bool = False) -> Path | None:
        """Write the HTML report (``pe.atlas.report``) of the images matching the filters, in the
        grid's order, with the variant shown (model A's rows when comparing) into ``export_dir``,
        in the background unless ``block`` (:meth:`.ReportPanel.start`; ``atlas.report.wait()``
        waits for it); its path and a download button show when it is written. Errors and a
        cancel go to the status line. Returns the path when ``block`` (None on error or cancel)."""
        query = self.query()
        rows = [item.a if isinstance(item, Pair) else item for item in self.selection.items(query)]
        return self.report.start(self.index, rows, query.variant, block=block)

    # ----- opening an image ------------------------------------------------------------------
    def click(self, x: float, y: float) -> None:
        """A click on the grid at page pixel ``(x, y)``: open the tile under it, if any."""
        if self.layout_grid is None:
            return
        i = self.layout_grid.tile_at(x, y, len(self.items))
        if i is not None:
            self.explore(self.items[i])

    def explore(self, item: Item | int) -> Explorer | None:
        """Open an item (a row, a pair, or a tile's place on the page) in a new explorer beside the
        grid, closing the previous one. Errors (a map set gone since indexing) go to the status line."""
        item = self.items[item] if isinstance(item, int) else item
        sides = [(self.index, item.a), (self.other, item.b)] if isinstance(item, Pair) else [(self.index, item)]
        changed = [text for index, row in sides if (text := index.changed(row)) is not None]
        try:
            if isinstance(item, Pair):
                named = {f"{item.image} (A: {item.a.model_name})": self.index.open_mapset(item.a),
                         f"{item.image} (B: {item.b.model_name})": self.other.open_mapset(item.b)}
            else:
                named = {item.image: self.index.open_mapset(item)}
        except (ValueError, OSError) as exc:
            self.status.value = f"<span style='color:#b00'>cannot open {html.escape(f'{item.image}: {exc}')}</span>"
            return None
        self._close_explorer()
        self.explorer = Explorer(named, model=self.model, size=self.panel_size, export_dir=self.export_dir)
        self.explorer.state.variant = self.variant.value
        shown = self._class_shown(item)
        if shown is not None and shown < self.explorer.state.n_classes:
            self.explorer.state.klass = shown  # the class the tile showed
        self.opened = item
        self.explorer_box.children = (self.explorer,)
        self.status.value = f"opened <b>{html.escape(item.image)}</b>" + "".join(
            f"<br><span style='color:#b00'>{html.escape(text)}: its tile may show the indexed map, not this "
            "one</span>" for text in changed)
        self.draw()  # its tile framed
        return self.explorer

    def _class_shown(self, item: Item) -> int | None:
        """The class whose map the item's tile shows when it is not the predicted one."""
        if self.map_of.value == "class":
            return self.map_class.value
        if self.map_of.value == "label" and not isinstance(item, Pair):
            return self.index.label_classes([item]).get(item.file)
        return None

    def _close_explorer(self) -> None:
        if self.explorer is not None:
            self.explorer_box.children = ()
            self.explorer.close()
            self.explorer, self.opened = None, None

    def close(self) -> None:
        """Stop a report being written, close the explorer, the controls and the indexes this atlas
        opened."""
        if "report" in self.__dict__:
            self.report.close()  # before the indexes: its worker reads them
        for index in self.__dict__.get("_owned", []):
            index.close()
        self._owned = []
        if "canvas" not in self.__dict__:  # the constructor raised; Widget.__del__ still calls close()
            super().close()
            return
        self._close_explorer()
        for widget in (self.variant, self.cmap, self.map_of, self.map_class, self.sort, self.descending, self.klass,
                       self.label, self.correct, self.confidence, self.previous, self.next, self.page, self.pages_label, self.count,
                       self.canvas.canvas, self.status, self.explorer_box):
            widget.close()
        super().close()


def _same(item: Item, opened: Item | None) -> bool:
    if opened is None or type(item) is not type(opened):
        return False
    return item.a.file == opened.a.file if isinstance(item, Pair) else item.file == opened.file
