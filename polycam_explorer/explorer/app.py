"""The Explorer widget: controls, panels, hover and zoom; the tabs (recursion, faithfulness,
export) and the baselines beside Poly-CAM live in their own modules.

Every control change is served from the MapSet's cached P maps: no probing after the sweep.
"""
from __future__ import annotations

import contextlib
import functools
import html
import math
import traceback
from pathlib import Path
from typing import Callable, Iterator, Mapping, Optional, Sequence, Union

import ipywidgets as W
import numpy as np
import torch
import traitlets

from .. import render
from ..mapset import MapSet
from . import frames
from .baseline_maps import BaselineMaps
from .canvas import FrameCanvas
from .export import download_link, export_maps, export_png
from .faithfulness import FaithfulnessPanel
from .panels import (BASELINES, COMPARE_OPTIONS, VARIANT_OPTIONS, arrange, caption, checked_pins, depth_options,
                     preset)
from .recursion import RecursionView
from .sanity import SanityPanel

MapSets = Union[MapSet, Sequence[MapSet], Mapping[str, MapSet], str, Path]


def _guarded(method: Callable) -> Callable:
    """Show an exception raised in a callback in the widget's status line; keep the controls alive."""
    @functools.wraps(method)
    def wrapper(self: "Explorer", *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - shown to the user, not swallowed
            self.show_error(exc)
    return wrapper


def _named(mapsets: MapSets) -> dict[str, MapSet]:
    if isinstance(mapsets, MapSet):
        return {"image": mapsets}
    if isinstance(mapsets, (str, Path)):
        files = sorted(Path(mapsets).glob("*.npz"))
        if not files:
            raise ValueError(f"no map-set files (*.npz) in {str(mapsets)!r}")
        return {f.name.removesuffix(".npz").removesuffix(".mapset"): MapSet.load(f) for f in files}
    if isinstance(mapsets, Mapping):
        named = dict(mapsets)
    elif isinstance(mapsets, Sequence):
        named = {f"image {i + 1}": ms for i, ms in enumerate(mapsets)}
    else:
        raise TypeError("Explorer takes a MapSet, a list or dict of them, or a folder of saved map sets; "
                        f"got {type(mapsets).__name__}")
    if not all(isinstance(ms, MapSet) for ms in named.values()):
        raise TypeError("Explorer takes MapSet objects (a MapSet, a list or a dict of them)")
    return named


class OpacitySlider(W.FloatSlider):
    """A FloatSlider that refuses NaN and infinities (a plain one stores NaN and the view breaks)."""

    @traitlets.validate("value")
    def _validate_value(self, proposal):  # replaces the slider's own validator (one per trait)
        value = proposal["value"]
        if not math.isfinite(value):
            raise traitlets.TraitError(f"opacity must be a number in [0, 1], got {value!r}")
        return min(max(value, self.min), self.max)


def _panel_size(size: object) -> int:
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or not 64 <= size <= 4096:
        raise ValueError(f"size (the longest side of a panel on screen) must be an int of pixels in "
                         f"64..4096, got {size!r}")
    return int(size)


class Explorer(W.VBox):
    """Interactive Poly-CAM explorer for one or several map sets.

    Args:
        mapsets: a MapSet, a list or dict (name -> MapSet) of them, or a folder of saved map sets.
        model: the classifier (optional): for the faithfulness curves, the sanity check and the
            baselines beside Poly-CAM.
        size: the longest side of a panel on screen, in pixels.
        export_dir: where exports are written.
    """

    def __init__(self, mapsets: MapSets, *, model: Optional[torch.nn.Module] = None, size: int = 320,
                 export_dir: Union[str, Path] = "polycam_exports") -> None:
        self.mapsets = _named(mapsets)
        self.model = model
        self.panel_size = _panel_size(size)
        self.export_dir = Path(export_dir)
        self.zoom: Optional[frames.Box] = None
        self.pins: list[dict] = []
        self._pinned_preset: Optional[str] = None  # the compare preset the pins come from, if any
        self._images: dict[str, np.ndarray] = {}
        self._drawing = False

        self.image_picker = W.Dropdown(description="image", options=list(self.mapsets))
        self.klass = W.Dropdown(description="class")
        self.search = W.Combobox(placeholder="type any class name", ensure_option=True,
                                 layout=W.Layout(width="220px"))
        self.variant = W.ToggleButtons(options=VARIANT_OPTIONS, value="+-", description="variant",
                                       style={"button_width": "70px"})
        self.depth = W.SelectionSlider(description="depth", options=[("1", 1)], continuous_update=True,
                                       layout=W.Layout(width="520px"), style={"description_width": "initial"})
        self.lnorm = W.Checkbox(value=True, description="LNorm", indent=False, layout=W.Layout(width="90px"))
        self.mode = W.Dropdown(description="view", options=list(frames.MODES), value="overlay")
        self.other_class = W.Dropdown(description="against")
        self.cmap = W.Dropdown(description="colormap", options=list(render.COLORMAPS), value="turbo")
        self.opacity = OpacitySlider(description="opacity", min=0.0, max=1.0, step=0.05, value=0.5)
        self.compare = W.Dropdown(description="compare", options=COMPARE_OPTIONS, value="none")
        self.beside = W.Dropdown(description="beside", value="", options=[("no baseline", "")] + [
            (name, name) for name in BASELINES], layout=W.Layout(display=None if model is not None else "none"))
        self.baseline_maps = BaselineMaps(on_ready=self.render, on_error=self.show_error)
        self.reset_zoom = W.Button(description="reset zoom", icon="search-minus", disabled=True)
        self.status = W.HTML()
        self.legend = W.HTML(layout=W.Layout(display="none"))
        self.hover = W.HTML("&nbsp;")
        self.panels_box = W.HBox()
        self.canvases: list[FrameCanvas] = []
        self.captions: list[W.HTML] = []
        self.recursion = RecursionView(on_depth=self._select_depth)
        # the recursion tab's canvases and caption, under the names tests and notebooks use
        self.strip, self.teaching = self.recursion.strip, self.recursion.teaching
        self.teaching_caption = self.recursion.caption
        self.curves = FaithfulnessPanel(self)
        self.sanity = SanityPanel(self)
        self.export_png_button = W.Button(description="export PNG", icon="image")
        self.export_npz_button = W.Button(description="export maps (npz)", icon="download")
        self.export_link = W.HTML()
        self.progress = W.IntProgress(min=0, max=1, layout=W.Layout(width="240px", display="none"))
        self.progress_label = W.HTML()
        self.upload = W.FileUpload(accept="image/*", multiple=False, description="explain an image",
                                   layout=W.Layout(display="none"))
        self.stop_button = W.Button(description="cancel", icon="stop", layout=W.Layout(display="none"))
        self.runner = None

        for control in (self.klass, self.variant, self.depth, self.lnorm, self.mode, self.other_class,
                        self.cmap, self.opacity, self.compare, self.beside):
            control.observe(self._on_control, names="value")
        self.image_picker.observe(self._on_image, names="value")
        self.search.observe(self._on_search, names="value")
        self.reset_zoom.on_click(lambda _: self.set_zoom(None))
        self.export_png_button.on_click(lambda _: self.export_png())
        self.export_npz_button.on_click(lambda _: self.export_maps())

        controls = W.VBox([
            W.HBox([self.image_picker, self.klass, self.search]),
            W.HBox([self.variant, self.lnorm]),
            self.depth,
            W.HBox([self.mode, self.other_class, self.cmap, self.opacity, self.legend]),
            W.HBox([self.compare, self.beside, self.reset_zoom, self.upload]),
            W.HBox([self.progress, self.progress_label, self.stop_button]),
        ])
        extras = W.Tab(children=[self.recursion.widget, self.curves.widget, self.sanity.widget,
                                 W.VBox([W.HBox([self.export_png_button, self.export_npz_button]),
                                         self.export_link])])
        for i, title in enumerate(("Recursion", "Faithfulness", "Sanity", "Export")):
            extras.set_title(i, title)
        super().__init__([controls, self.panels_box, self.hover, self.status, extras])
        self.upload.observe(self._on_upload, names="value")
        self.stop_button.on_click(lambda _: self.runner and self.runner.cancel())
        if self.mapsets:
            self._select_image(next(iter(self.mapsets)))
        else:
            self.status.value = "<i>waiting for the first map set…</i>"

    # ----- state ------------------------------------------------------------------------------
    @property
    def ms(self) -> MapSet:
        return self.mapsets[self.image_picker.value]

    @property
    def look(self) -> frames.Look:
        return frames.Look(self.mode.value, self.cmap.value, float(self.opacity.value), self.zoom)

    def main_panel(self) -> frames.Panel:
        """The panel the main controls describe (depth clamped to what is probed so far)."""
        depth = min(int(self.depth.value), max(1, self.ms.depth_available))
        return frames.Panel(int(self.klass.value), self.variant.value, depth, bool(self.lnorm.value),
                            self.other_class.value)

    def panels(self) -> list[frames.Panel]:
        """The panels on screen: the main one, or one per pin of the comparison, and the baseline
        chosen in *beside* (if any) last."""
        return arrange(self.main_panel(), self.pins, self.beside.value or None, self.ms.depth_available)

    def pin(self, *overrides: dict) -> None:
        """Compare two to four panels, each fixing some of ``class_idx``, ``variant``, ``depth``,
        ``lnorm``; the rest follow the controls. ``pin()`` goes back to a single view."""
        self.pins = checked_pins(overrides, self.ms if self.mapsets else None)
        self._pinned_preset = None
        self.render()

    # ----- map sets arriving from a running sweep ---------------------------------------------
    def attach_runner(self, runner) -> None:
        """Let the app explain new images (upload control) with ``runner`` (see ``explore``)."""
        self.runner = runner
        self.upload.layout.display = None

    def add_mapset(self, name: str, ms: MapSet, *, show: bool = False) -> None:
        """Add a map set (possibly still being filled) to the image picker; show it if it is the
        first one or ``show`` is True."""
        if not isinstance(ms, MapSet):
            raise TypeError(f"add_mapset takes a MapSet (from pe.compute_mapset or pe.MapSet.load), "
                            f"got {type(ms).__name__}")
        if not isinstance(name, str) or not name:
            raise ValueError(f"the name of a map set must be a non-empty str, got {name!r}")
        first, current = not self.mapsets or show, self.image_picker.value
        self.mapsets[name] = ms
        # a map set replacing one of the same name: forget what was derived from the old one
        self._images.pop(name, None)
        self.curves.cache = {k: v for k, v in self.curves.cache.items() if k[0] != name}
        self.sanity.forget(name)
        # new options reset a Dropdown to its first option: keep the image on screen instead
        self.image_picker.unobserve(self._on_image, names="value")
        try:
            self.image_picker.options = list(self.mapsets)
            self.image_picker.value = name if first else current
        finally:
            self.image_picker.observe(self._on_image, names="value")
        if first or current == name:
            self._select_image(name)

    def wait_for(self, name: str, timeout: Optional[float] = None) -> MapSet:
        """Block until the map set ``name`` is complete (for notebooks and scripts) and return it.

        Raises:
            ValueError: no such image, or its sweep stopped (error or cancel) before completing.
            TimeoutError: after ``timeout`` seconds.
        """
        import time

        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            ms = self.mapsets.get(name)
            if ms is not None and ms.complete:
                return ms
            busy = self.runner is not None and self.runner.busy
            if not busy and (ms is None or not ms.complete):
                raise ValueError(f"no complete map set {name!r}: the images are {list(self.mapsets)}"
                                 + (" (its sweep stopped before the end)" if ms is not None else ""))
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"map set {name!r} not complete after {timeout} s")
            time.sleep(0.05)

    def refresh(self, name: str) -> None:
        """Redraw if ``name`` is on screen (a finer layer of its map set has been probed)."""
        if self.mapsets and self.image_picker.value == name:
            self.render()

    def show_progress(self, state) -> None:
        """``(name, done, total)`` while a sweep runs; None when it is over."""
        visible = "none" if state is None else None
        self.progress.layout.display = self.stop_button.layout.display = visible
        if state is None:
            self.progress_label.value = ""
            return
        name, done, total = state
        self.progress.max, self.progress.value = max(1, total), done
        self.progress_label.value = f"probing <b>{html.escape(name)}</b>: {done} / {total} forward passes"

    @_guarded
    def _on_upload(self, change) -> None:
        from .explore import upload_to_image

        if not change["new"] or self.runner is None:
            return
        name, image = upload_to_image(change["new"])
        self.runner.submit(name, image, show=True)

    # ----- callbacks --------------------------------------------------------------------------
    @_guarded
    def _on_control(self, change) -> None:
        if change["owner"] is self.compare:
            self.pins = preset(change["new"], self.ms)
            self._pinned_preset = change["new"]
        if change["owner"] is self.klass and self.search.value != self.ms.class_names[change["new"]]:
            self.search.value = ""
        self.render()

    @_guarded
    def _on_image(self, change) -> None:
        self._select_image(change["new"])

    @_guarded
    def _on_search(self, change) -> None:
        name = change["new"]
        if name and name in self.ms.class_names:
            self.klass.value = self.ms.class_names.index(name)

    def _select_depth(self, depth: int) -> None:
        """A thumbnail of the recursion strip was clicked: show that depth, if probed."""
        if self.mapsets and 1 <= depth <= self.ms.depth_available:
            self.depth.value = depth

    def _hover(self, index: int, x: float, y: float) -> None:
        try:
            panel = self.panels()[index]
            shown = self.canvases[index].size
            pixel = frames.image_pixel(self.ms.size, shown, self.zoom, x, y)
            if pixel is None:
                return
            value = float(frames.panel_map(self.ms, panel)[pixel])
            self.hover.value = f"pixel (row {pixel[0]}, col {pixel[1]}): saliency {value:.3f}"
        except Exception as exc:  # noqa: BLE001
            self.show_error(exc)

    def _drag(self, index: int, x0: float, y0: float, x1: float, y1: float) -> None:
        shown = self.canvases[index].size
        a = frames.image_pixel(self.ms.size, shown, self.zoom, min(x0, x1), min(y0, y1))
        b = frames.image_pixel(self.ms.size, shown, self.zoom, max(x0, x1) - 1, max(y0, y1) - 1)
        if a is not None and b is not None:
            self.set_zoom((a[0], a[1], b[0] + 1, b[1] + 1))

    def set_zoom(self, box: Optional[frames.Box]) -> None:
        """Magnify a region ``(top, left, bottom, right)`` of the image in every panel; None resets."""
        if box is not None:
            top, left, bottom, right = (int(v) for v in box)
            h, w = self.ms.size
            if not (0 <= top < bottom <= h and 0 <= left < right <= w):
                raise ValueError(f"zoom box must lie inside the {h} x {w} image, got {box}")
            box = (top, left, bottom, right)
        self.zoom = box
        self.reset_zoom.disabled = box is None
        self.render()

    # ----- drawing ----------------------------------------------------------------------------
    def _select_image(self, name: str) -> None:
        ms = self.mapsets[name]
        self.zoom = None
        self.reset_zoom.disabled = True
        top = ms.topk(10)
        options = [(f"{n} ({p:.3f})", i) for i, n, p in top]
        options += sorted(((n, i) for i, n in enumerate(ms.class_names) if i not in {t[0] for t in top}))
        with self.hold_render():
            self.klass.options = options
            self.klass.value = top[0][0]
            self.other_class.options = options
            self.other_class.value = top[min(1, len(top) - 1)][0]
            self.search.options = sorted(set(ms.class_names))
            self.depth.options = depth_options(ms)
            self.depth.value = len(ms.layers)
            if self._pinned_preset is not None:  # e.g. "top classes" are this image's top classes
                self.pins = preset(self._pinned_preset, self.ms)
        self.render()

    @contextlib.contextmanager
    def hold_render(self) -> Iterator[None]:
        """Change several controls without drawing after each one."""
        previous, self._drawing = self._drawing, True
        try:
            yield
        finally:
            self._drawing = previous

    def _image(self) -> np.ndarray:
        name = self.image_picker.value
        if name not in self._images:
            self._images[name] = render.image_uint8(self.ms.image, self.ms.mean, self.ms.std)
        return self._images[name]

    def _ensure_canvases(self, n: int) -> None:
        h, w = self.ms.size
        box = self.zoom or (0, 0, h, w)
        size = frames.display_size((box[2] - box[0], box[3] - box[1]), self.panel_size if n == 1
                                   else max(160, int(self.panel_size * (0.75 if n > 2 else 0.9))))
        while len(self.canvases) < n:
            i = len(self.canvases)
            self.canvases.append(FrameCanvas(size, on_hover=functools.partial(self._hover, i),
                                             on_drag=functools.partial(self._drag, i)))
            self.captions.append(W.HTML())
        for c in self.canvases[:n]:
            c.resize(size)
        children = tuple(W.VBox([c.canvas, t]) for c, t in zip(self.canvases[:n], self.captions[:n]))
        if len(self.panels_box.children) != n:
            self.panels_box.children = children

    def caption(self, panel: frames.Panel) -> str:
        """The HTML caption of ``panel`` on screen."""
        ms, method = self.ms, panel.method
        return caption(ms, panel, against=self.other_class.value if self.mode.value == "contrast" else None,
                       computing=method is not None and not self.baseline_maps.ready(ms, panel.class_idx, method))

    @_guarded
    def render(self) -> None:
        """Draw every panel from the current controls (one frame per panel)."""
        if self._drawing or not self.mapsets:
            return
        self.other_class.layout.display = None if self.mode.value == "contrast" else "none"
        self.legend.value = frames.legend_html(self.mode.value)
        self.legend.layout.display = None if self.legend.value else "none"
        ms = self.ms
        if ms.depth_available == 0:
            self.status.value = "<i>probing the coarsest layer…</i>"
            return
        panels = self.panels()
        self._ensure_canvases(len(panels))
        look, image = self.look, self._image()
        for canvas, label, panel in zip(self.canvases, self.captions, panels):
            values = (None if panel.method is None else
                      self.baseline_maps.values(ms, panel.class_idx, panel.method, self.model))
            pixels = frames.frame(ms, panel, look, image, values)
            canvas.draw(frames.zoom_and_fit(pixels, look.zoom, canvas.size))
            label.value = f"<span style='font-size:90%'>{self.caption(panel)}</span>"
        # a successful draw replaces any earlier message (an error the user has moved past included)
        self.status.value = ("" if ms.complete else
                             f"<i>probing… depths 1..{ms.depth_available} of {len(ms.layers)} ready</i>")
        self.recursion.render(ms, panels[0], image, self.cmap.value)
        main = self.main_panel()  # the tabs' buttons compute for the controls' panel: show that one's
        self.curves.show_cached(main)
        self.sanity.show_cached(main)

    # ----- actions ----------------------------------------------------------------------------
    def show_error(self, exc: BaseException) -> None:
        """Put an exception in the status line (with the last frame of its traceback)."""
        where = traceback.extract_tb(exc.__traceback__)[-1] if exc.__traceback__ else None
        loc = f" ({Path(where.filename).name}:{where.lineno})" if where else ""
        self.status.value = (f"<span style='color:#b00020'><b>{type(exc).__name__}</b>: "
                             f"{html.escape(str(exc))}{loc}</span>")

    @_guarded
    def export_png(self) -> Path:
        """Write the panels on screen side by side as one PNG; show a download link."""
        path = export_png(self)
        self.export_link.value = download_link(path, "image/png")
        return path

    @_guarded
    def export_maps(self) -> Path:
        """Write the saliency maps on screen (and their descriptions) to one npz."""
        path = export_maps(self)
        self.export_link.value = download_link(path, "application/octet-stream")
        return path

    def close(self) -> None:
        """Close every widget, stop running work and drop the map sets (frees their GPU memory)."""
        if not hasattr(self, "sanity"):  # the constructor raised; Widget.__del__ still calls close()
            super().close()
            return
        self.curves.cancel()
        self.sanity.cancel()
        if self.runner is not None:
            self.runner.cancel()
        for ms in self.mapsets.values():
            ms._cache.clear()
        self.mapsets = {}
        self._images.clear()
        self.baseline_maps.clear()
        for widget in _descendants(self) + self.captions:  # captions of panels no longer shown too
            if widget is not self:
                widget.close()
        for c in self.canvases:
            c.canvas.close()
        self.recursion.close()
        super().close()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def _descendants(root: W.Widget) -> list[W.Widget]:
    """Every widget reachable from ``root`` through its public synced traits (children, layout,
    style, a figure's marks, axes and scales): closing a Box does not close what it holds.
    Private traits are skipped: they hold shared singletons such as ipycanvas's canvas manager."""
    found: dict[int, W.Widget] = {}
    stack = [root]
    while stack:
        widget = stack.pop()
        if id(widget) in found:
            continue
        found[id(widget)] = widget
        for key in (k for k in widget.keys if not k.startswith("_")):
            value = getattr(widget, key, None)
            if isinstance(value, dict):
                value = list(value.values())
            stack.extend(v for v in (value if isinstance(value, (list, tuple)) else [value])
                         if isinstance(v, W.Widget))
    return list(found.values())
