"""The main view: one canvas per panel with its caption, hover readout, drag-to-zoom, the colour
scale beside the panels (``scale``), the legend of the two-colour views and the status line.

Photos keep their aspect ratio: each panel draws the map resized bilinearly onto the photo's frame
(:class:`frames.Geometry`); the zoom box stays in map pixels, hover reports the photo's pixels.
The colour scale and the legend keep their place in every view (hidden, never removed), so the
layout does not move when the view changes."""
from __future__ import annotations

import functools
import html
import traceback
from pathlib import Path
from typing import Optional

import ipywidgets as W

from .. import frames
from ..canvas import FrameCanvas
from ..jobs import Jobs
from ..panels import caption, look, panel_display_size, panels_for
from ..state import ViewState
from ..store import Event, Store

DRAWN_BY = ("image", "klass", "other_class", "variant", "depth", "lnorm", "mode", "cmap", "opacity", "zoom",
            "pins", "beside")


class MainView:
    """The panels side by side (``panels_box``; the last one carries ``scale``, the colorbar),
    ``hover``, ``legend``, ``status`` and ``reset_zoom``.

    Args:
        size: the longest side of a single panel on screen, in pixels.
    """

    def __init__(self, state: ViewState, store: Store, jobs: Jobs, *, size: int) -> None:
        self.state, self.store, self.jobs, self.size = state, store, jobs, size
        self.canvases: list[FrameCanvas] = []
        self.captions: list[W.HTML] = []
        self.panels_box = W.HBox()
        self.hover = W.HTML("&nbsp;")
        self.status = W.HTML()
        # fixed sizes, hidden rather than removed: changing the view never moves the layout
        self.legend = W.HTML(layout=W.Layout(visibility="hidden", height="56px", width="330px", overflow="hidden"))
        self.scale = W.Image(format="png", layout=W.Layout(visibility="hidden", width="0px", height="0px",
                                                           margin="0 0 0 4px"))
        self._scale_key: tuple = ()
        self.reset_zoom = W.Button(description="reset zoom", disabled=True)
        self.reset_zoom.on_click(lambda _: self.set_zoom(None))
        state.observe(lambda _: self.request(), names=list(DRAWN_BY))
        state.observe(self._on_image, names="image")
        state.observe(self._on_zoom, names="zoom")
        store.subscribe(self._on_store)

    def request(self) -> None:
        """Ask for a draw (now, or once the changes under way are done)."""
        self.jobs.draws.request(self.draw)

    # ----- events -----------------------------------------------------------------------------
    def _on_image(self, _change) -> None:
        self.hover.value = "&nbsp;"  # the value under the pointer belonged to the previous image

    def _on_zoom(self, change) -> None:
        self.reset_zoom.disabled = change["new"] is None

    def _on_store(self, event: Event) -> None:
        if event.kind == "error":
            self.show_error(event.value)
        elif event.kind == "probed" and event.name == self.state.image:
            self.request()
        elif event.kind == "result" and event.what == "baseline" and event.key[0] == self.state.image:
            self.request()

    # ----- drawing ----------------------------------------------------------------------------
    def draw(self) -> None:
        """Draw every panel from the state (one frame per panel)."""
        mode = self.state.mode
        ms = self.store.get(self.state.image)
        self.legend.value = frames.legend_html(mode, self._contrast_names(ms) if mode == "contrast" else None)
        self.legend.layout.visibility = "visible" if self.legend.value else "hidden"
        if ms is None or ms.depth_available == 0:
            self.jobs.keep_baselines(())  # another image's baselines are not on screen any more
            self.status.value = ("<i>waiting for the first map set…</i>" if ms is None else
                                 "<i>probing the coarsest layer…</i>")
            return
        panels, name = panels_for(self.state, ms), self.state.image
        self.jobs.keep_baselines((name, p.class_idx, p.method) for p in panels if p.method is not None)
        geo = self.geometry()
        self._ensure_canvases(len(panels), geo)
        how, picture = look(self.state), self.store.picture(name, geo.work_size)
        for canvas, label, panel in zip(self.canvases, self.captions, panels):
            values = None if panel.method is None else self.jobs.baseline(name, panel.class_idx, panel.method)
            canvas.draw(frames.panel_pixels(ms, panel, how, picture, values, geo, canvas.size))
            text = caption(ms, panel, against=self.state.other_class if mode == "contrast" else None,
                           computing=panel.method is not None and values is None)
            if mode == "contrast" and panel.method is None:
                text += f"<br>{html.escape(frames.contrast_key(self._contrast_names(ms, panel)))}"
            label.value = f"<span style='font-size:90%'>{text}</span>"
        self._draw_scale(mode)  # after the panels: their pixels go out first
        # a successful draw replaces any earlier message (an error the user has moved past included)
        self.status.value = ("" if ms.complete else
                             f"<i>probing… depths 1..{ms.depth_available} of {len(ms.layers)} ready</i>")

    def _contrast_names(self, ms, panel: Optional[frames.Panel] = None) -> Optional[tuple[str, str]]:
        """The contrast view's class names (A, B) of ``panel`` (None: the first on screen)."""
        if ms is None or ms.depth_available == 0:
            return None
        a, b = frames.contrast_classes(ms, panel or panels_for(self.state, ms)[0])
        return ms.class_names[a], ms.class_names[b]

    def geometry(self) -> frames.Geometry:
        """The map, photo and drawn-frame sizes of the image on screen."""
        name = self.state.image
        return frames.geometry(self.store.mapset(name).size, self.store.frame_size(name), self.size)

    def _draw_scale(self, mode: str) -> None:
        """The colorbar beside the last panel: as tall as the canvases, hidden in the views
        without one (its space kept)."""
        length = max(12, self.canvases[0].size[0]) if self.canvases else 12
        key = (mode, self.state.cmap, length)
        if key == self._scale_key:
            return
        self._scale_key = key
        data = frames.scale_png(mode, self.state.cmap, length)
        width = frames.SCALE_THICKNESS + 3 + 16
        self.scale.layout.width, self.scale.layout.height = f"{width}px", f"{length}px"
        self.scale.layout.min_width = f"{width}px"
        if data:
            self.scale.value = data
        self.scale.layout.visibility = "visible" if data else "hidden"

    def _ensure_canvases(self, n: int, geo: frames.Geometry) -> None:
        zoom = geo.box(self.state.zoom) if self.state.zoom is not None else None
        size = panel_display_size(geo.work_size, zoom, n, self.size)
        while len(self.canvases) < n:
            i = len(self.canvases)
            self.canvases.append(FrameCanvas(size, on_hover=functools.partial(self.hover_at, i),
                                             on_drag=functools.partial(self.drag, i)))
            self.captions.append(W.HTML())
        for c in self.canvases[:n]:
            c.resize(size)
        if len(self.panels_box.children) != n:
            boxes = [W.VBox([c.canvas, t]) for c, t in zip(self.canvases[:n], self.captions[:n])]
            last = self.canvases[n - 1]
            boxes[-1] = W.VBox([W.HBox([last.canvas, self.scale]), self.captions[n - 1]])
            self.panels_box.children = tuple(boxes)

    # ----- pointer ------------------------------------------------------------------------------
    def hover_at(self, index: int, x: float, y: float) -> None:
        """Show the saliency under canvas position ``(x, y)`` of panel ``index``."""
        try:
            ms = self.store.mapset(self.state.image)
            panel = panels_for(self.state, ms)[index]
            found = self.pixel_at(index, x, y)
            if found is None:
                return
            pixel, photo = found
            values = (frames.panel_map(ms, panel) if panel.method is None else
                      self.jobs.baseline(self.state.image, panel.class_idx, panel.method))
            if values is None:
                return
            value = float(frames.shown_map(values, self.geometry())[pixel])
            self.hover.value = f"pixel (row {photo[0]}, col {photo[1]}): saliency {value:.3f}"
        except Exception as exc:  # noqa: BLE001
            self.show_error(exc)

    def pixel_at(self, index: int, x: float, y: float) -> Optional[tuple[tuple[int, int], tuple[int, int]]]:
        """Under canvas position ``(x, y)`` of panel ``index``: the pixel of the frame drawn and the
        photo's pixel ``(row, col)``; None outside the canvas."""
        geo = self.geometry()
        zoom = geo.box(self.state.zoom) if self.state.zoom is not None else None
        pixel = frames.image_pixel(geo.work_size, self.canvases[index].size, zoom, x, y)
        return None if pixel is None else (pixel, geo.original_pixel(pixel))

    def drag(self, index: int, x0: float, y0: float, x1: float, y1: float) -> None:
        """Zoom to the region dragged on panel ``index`` (the zoom box is kept in map pixels)."""
        a = self.pixel_at(index, min(x0, x1), min(y0, y1))
        b = self.pixel_at(index, max(x0, x1) - 1, max(y0, y1) - 1)
        if a is not None and b is not None:
            self.set_zoom(self.geometry().zoom_of(a[0], b[0]))

    def set_zoom(self, box: Optional[frames.Box]) -> None:
        """Magnify a region ``(top, left, bottom, right)`` of the image in every panel; None resets.

        Raises:
            ValueError: the box is not inside the image.
        """
        if box is not None:
            top, left, bottom, right = (int(v) for v in box)
            h, w = self.state.image_size
            if not (0 <= top < bottom <= h and 0 <= left < right <= w):
                raise ValueError(f"zoom box must lie inside the {h} x {w} image, got {box}")
            box = (top, left, bottom, right)
        self.state.zoom = box

    # ----- messages -----------------------------------------------------------------------------
    def show_error(self, exc: BaseException) -> None:
        """Put an exception in the status line (with the last frame of its traceback)."""
        where = traceback.extract_tb(exc.__traceback__)[-1] if exc.__traceback__ else None
        loc = f" ({Path(where.filename).name}:{where.lineno})" if where else ""
        self.status.value = (f"<span style='color:#b00020'><b>{type(exc).__name__}</b>: "
                             f"{html.escape(str(exc))}{loc}</span>")

    def close(self) -> None:
        for widget in [c.canvas for c in self.canvases] + self.captions + [self.scale]:
            widget.close()
