"""The Recursion tab: a thumbnail per depth (the paper's Figure 1) and one step of eq. 3.

It observes the view state and draws the first panel on screen; a click on a thumbnail sets the
state's depth. Both views are cached, so redrawing with nothing changed pushes no pixels.
"""
from __future__ import annotations

import html
from typing import Optional

import ipywidgets as W
import numpy as np
import torch

from ... import render
from ...mapset import MapSet
from .. import frames
from ..canvas import FrameCanvas
from ..jobs import Jobs
from ..panels import panels_for
from ..state import ViewState
from ..store import Event, Store

DRAWN_BY = ("image", "klass", "other_class", "variant", "depth", "lnorm", "cmap", "pins", "beside")

STRIP_TILE, STRIP_PAD = 72, 4  # recursion strip: thumbnail size and the gap around each
TEACHING_TILE = 140  # one map of the teaching view, on screen


def render_unit(values: torch.Tensor) -> torch.Tensor:
    """Scale a map to [0, 1] by its maximum for display in the teaching view."""
    top = float(values.max())
    return values / top if top > 0 else values


class RecursionView:
    """The strip of every depth and the teaching view of one recursion step of the first panel
    on screen; a click on a thumbnail sets ``state.depth``."""

    def __init__(self, state: ViewState, store: Store, jobs: Jobs) -> None:
        self.state, self.store, self.jobs = state, store, jobs
        self.strip = FrameCanvas((STRIP_TILE, STRIP_TILE), on_click=self.click)
        self.teaching = FrameCanvas((150, 600))
        self.caption = W.HTML()
        self._strip_cache: tuple = (None, None)  # (key, strip pixels without the depth frame)
        self._teaching_key: Optional[tuple] = None
        self._depths_drawn = 0
        self.widget = W.VBox([W.HTML("<b>Recursion strip</b> (depth 1 = coarsest; click a map to select "
                                     "its depth)"), self.strip.canvas,
                              W.HTML("<b>One step of the recursion</b> (eq. 3 of the paper)"),
                              self.teaching.canvas, self.caption])
        state.observe(lambda _: self.request(), names=list(DRAWN_BY))
        store.subscribe(self._on_store)

    def request(self) -> None:
        self.jobs.draws.request(self.draw)

    def _on_store(self, event: Event) -> None:
        if event.kind == "probed" and event.name == self.state.image:
            self.request()

    def draw(self) -> None:
        """Draw the strip and the teaching view of the first panel on screen (if any)."""
        ms = self.store.get(self.state.image)
        if ms is None or ms.depth_available == 0:
            return
        panel = panels_for(self.state, ms)[0]
        self.render(ms, panel, self.store.image(self.state.image), self.state.cmap)

    def render(self, ms: MapSet, panel: frames.Panel, image: np.ndarray, cmap: str) -> None:
        """Draw the strip and the teaching view of ``panel`` (``image``: the map set's uint8 image)."""
        self.render_strip(ms, panel, image, cmap)
        self.render_teaching(ms, panel, cmap)

    def render_strip(self, ms: MapSet, panel: frames.Panel, image: np.ndarray, cmap: str) -> None:
        """Thumbnails of every depth (built once per class, variant, LNorm and colormap); the
        current depth is framed."""
        tile, pad = STRIP_TILE, STRIP_PAD
        key = (ms, panel.class_idx, panel.variant, panel.lnorm, cmap, ms.revision)
        if self._strip_cache[0] != key:
            rows, cols = frames.nearest_indices(ms.size, (tile, tile))
            small = image[rows, cols]
            thumbs = [render.overlay(small, ms.saliency(panel.class_idx, panel.variant, depth, panel.lnorm)
                                     .cpu().numpy()[rows, cols], cmap, 0.6)
                      for depth in range(1, ms.depth_available + 1)]
            self._strip_cache = (key, render.strip(thumbs, len(ms.layers), pad=pad))
        self._depths_drawn = ms.depth_available
        strip = render.mark_tile(self._strip_cache[1], panel.depth - 1, tile, pad=pad)
        self.strip.resize(strip.shape[:2])
        self.strip.draw(strip)

    def render_teaching(self, ms: MapSet, panel: frames.Panel, cmap: str) -> None:
        """CAM_l, LNorm(CAM_l), upsampled P_l+1 and their product for the panel's depth."""
        key = (ms, panel, cmap, ms.revision)
        if self._teaching_key == key:
            return
        self._teaching_key = key
        if panel.depth < 2:
            self.caption.value = "Depth 1 is the coarsest CAM itself; choose depth ≥ 2 to see a step."
            self.teaching.draw(np.full((*self.teaching.size, 3), 255, np.uint8))
            return
        steps = frames.teaching_step(ms, panel)
        tiles = [frames.zoom_and_fit(render.heatmap(render_unit(m), cmap), None, (TEACHING_TILE, TEACHING_TILE))
                 for _, m in steps]
        row = render.grid([tiles], pad=5)
        self.teaching.resize(row.shape[:2])
        self.teaching.draw(row)
        self.caption.value = "  ×  ".join(
            f"<b>{i + 1}</b>. {html.escape(c)}" for i, (c, _) in enumerate(steps)).replace(
            "  ×  <b>4</b>", "  =  <b>4</b>")

    def click(self, x: float, y: float) -> None:
        """A click at ``(x, y)`` on the strip: report the depth of the thumbnail under it, if drawn."""
        # thumbnail d starts at STRIP_PAD + (d - 1) * (STRIP_TILE + STRIP_PAD); split the gaps evenly
        depth = int((x - STRIP_PAD / 2) // (STRIP_TILE + STRIP_PAD)) + 1
        if 1 <= depth <= self._depths_drawn:
            self.state.depth = depth

    def close(self) -> None:
        """Close the widgets and forget the cached pixels (and the map sets their keys hold)."""
        self._strip_cache, self._teaching_key, self._depths_drawn = (None, None), None, 0
        for widget in self.widget.children:
            widget.close()
        self.strip.canvas.close()
        self.teaching.canvas.close()
        self.widget.close()
