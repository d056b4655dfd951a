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

STRIP_TILE, STRIP_PAD = 72, 4  # recursion strip: a thumbnail's longest side and the gap around each
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
        # (key, strip pixels without the depth frame, the picture: kept so its id stays its own)
        self._strip_cache: tuple = (None, None, None)
        self._tile_width = STRIP_TILE
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
        # the photo at the map's resolution, its own aspect ratio (the map set's image when square)
        size = frames.full_resolution(ms.size, self.store.frame_size(self.state.image)).work_size
        self.render(ms, panel, self.store.picture(self.state.image, size), self.state.cmap)

    def render(self, ms: MapSet, panel: frames.Panel, picture: np.ndarray, cmap: str) -> None:
        """Draw the strip and the teaching view of ``panel`` (``picture``: the photo as uint8, any
        size; its aspect ratio is the thumbnails')."""
        self.render_strip(ms, panel, picture, cmap)
        self.render_teaching(ms, panel, cmap)

    def render_strip(self, ms: MapSet, panel: frames.Panel, picture: np.ndarray, cmap: str) -> None:
        """Thumbnails of every depth at the photo's aspect ratio, longest side :data:`STRIP_TILE`
        (built once per class, variant, LNorm, colormap and picture); the current depth is framed.
        Photo and maps are sampled onto the thumbnail by nearest neighbour."""
        size, pad = render.fitted_size(picture.shape[:2], STRIP_TILE), STRIP_PAD
        key = (ms, panel.class_idx, panel.variant, panel.lnorm, cmap, ms.revision, id(picture))
        if self._strip_cache[0] != key:
            rows, cols = frames.nearest_indices(picture.shape[:2], size)
            small = picture[rows, cols]
            rows, cols = frames.nearest_indices(ms.size, size)
            thumbs = [render.overlay(small, ms.saliency(panel.class_idx, panel.variant, depth, panel.lnorm)
                                     .cpu().numpy()[rows, cols], cmap, 0.6)
                      for depth in range(1, ms.depth_available + 1)]
            self._strip_cache = (key, render.strip(thumbs, len(ms.layers), pad=pad), picture)
        self._depths_drawn, self._tile_width = ms.depth_available, size[1]
        strip = render.mark_tile(self._strip_cache[1], panel.depth - 1, size[1], pad=pad)
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
        # thumbnail d starts at STRIP_PAD + (d - 1) * (width + STRIP_PAD); split the gaps evenly
        depth = int((x - STRIP_PAD / 2) // (self._tile_width + STRIP_PAD)) + 1
        if 1 <= depth <= self._depths_drawn:
            self.state.depth = depth

    def close(self) -> None:
        """Close the widgets and forget the cached pixels (and the map sets their keys hold)."""
        self._strip_cache, self._teaching_key, self._depths_drawn = (None, None, None), None, 0
        for widget in self.widget.children:
            widget.close()
        self.strip.canvas.close()
        self.teaching.canvas.close()
        self.widget.close()
