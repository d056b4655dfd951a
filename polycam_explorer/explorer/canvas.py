"""A canvas that shows one frame of pixels, reports hover and drag, and redraws when displayed."""
from __future__ import annotations

import contextlib
from typing import Callable, Iterator, Optional

import numpy as np
from ipycanvas import Canvas, hold_canvas
from ipywidgets import Layout


@contextlib.contextmanager
def held() -> Iterator[None]:
    """Batch canvas commands into one message; flushed even when drawing raises."""
    hold = hold_canvas()
    hold.__enter__()
    try:
        yield
    finally:
        hold.__exit__(None, None, None)


class FrameCanvas:
    """An ipycanvas Canvas of a fixed size that draws whole frames (``H x W x 3`` uint8).

    ``frames_sent`` counts the frames pushed; ``pixels`` is the last one, for tests and export.
    A frame equal to the one on screen (same pixels, same box) is not pushed again.
    """

    def __init__(self, size: tuple[int, int], *, on_hover: Optional[Callable[[float, float], None]] = None,
                 on_drag: Optional[Callable[[float, float, float, float], None]] = None,
                 on_click: Optional[Callable[[float, float], None]] = None) -> None:
        self.canvas = Canvas()
        self.pixels: Optional[np.ndarray] = None
        self.frames_sent = 0
        self._shown: Optional[np.ndarray] = None  # a copy of the frame on screen: callers may reuse arrays
        self._box: Optional[tuple[float, float, float, float]] = None
        self._press: Optional[tuple[float, float]] = None
        self._on_drag, self._on_click = on_drag, on_click
        self.resize(size)
        self.canvas.on_client_ready(self._redraw)
        if on_hover is not None:
            self.canvas.on_mouse_move(lambda x, y: on_hover(x, y))
        if on_drag is not None or on_click is not None:
            self.canvas.on_mouse_down(self._down)
            self.canvas.on_mouse_up(self._up)

    def resize(self, size: tuple[int, int]) -> None:
        h, w = size
        if (self.canvas.height, self.canvas.width) != (h, w):
            self.canvas.width, self.canvas.height = w, h
            self._shown = None  # a resized canvas is blank
            # an explicit layout size: without it the canvas element stretches to the page width
            self.canvas.layout = Layout(width=f"{w}px", height=f"{h}px", min_width=f"{w}px")

    @property
    def size(self) -> tuple[int, int]:
        return self.canvas.height, self.canvas.width

    def draw(self, pixels: np.ndarray, *, box: Optional[tuple[float, float, float, float]] = None) -> None:
        """Push a frame (and optionally a selection rectangle ``x0, y0, x1, y1``) unless it is
        the one on screen."""
        if (self._shown is not None and box == self._box and pixels.shape == self._shown.shape
                and np.array_equal(pixels, self._shown)):
            return
        self._push(pixels, box)

    def _push(self, pixels: np.ndarray, box: Optional[tuple[float, float, float, float]]) -> None:
        self.pixels, self._shown, self._box = pixels, np.array(pixels), box
        with held():
            self.canvas.put_image_data(pixels, 0, 0)
            if box is not None:
                x0, y0, x1, y1 = box
                self.canvas.stroke_style = "white"
                self.canvas.line_width = 1.5
                self.canvas.stroke_rect(min(x0, x1), min(y0, y1), abs(x1 - x0), abs(y1 - y0))
        self.frames_sent += 1

    def _redraw(self) -> None:
        # a frame drawn before the browser view existed may not show: draw it again. ipycanvas
        # (0.14) names the canvas to draw on only when it differs from the last one drawn on, and
        # a new view missed that: forget it, or a page with one canvas stays blank
        self.canvas._canvas_manager._current_canvas = None
        if self._shown is not None:
            self._push(self._shown, self._box)

    def _down(self, x: float, y: float) -> None:
        self._press = (x, y)

    def _up(self, x: float, y: float) -> None:
        if self._press is None:
            return
        x0, y0 = self._press
        self._press = None
        if abs(x - x0) >= 4 and abs(y - y0) >= 4 and self._on_drag is not None:
            self._on_drag(x0, y0, x, y)
        elif self._on_click is not None:
            self._on_click(x, y)
