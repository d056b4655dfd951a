"""What a panel shows, as pixels: pure functions of a MapSet and a panel/look description.

No widgets here, so every frame the explorer draws can be checked in plain tests.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from functools import lru_cache
from typing import Optional

import numpy as np
import torch
from PIL import Image

from .. import render
from ..mapset import MapSet
from ..polycam import lnorm, resize
from .state import MODES

# the colour scales live in render (the one place that makes pixels); these names are kept
diverging = render.diverging
insertion_deletion_colors = render.insertion_deletion_colors
legend_2d = render.legend_2d

Box = tuple[int, int, int, int]  # (top, left, bottom, right) in image pixels, bottom/right exclusive


@dataclass(frozen=True)
class Panel:
    """What one panel maps: a class, a variant, a depth (1..L), LNorm on/off, for the contrast
    view a second class, and ``method``: None for Poly-CAM, else a baseline's name (its map is
    computed outside and passed to :func:`frame` as ``values``)."""

    class_idx: int
    variant: str = "+-"
    depth: int = 1
    lnorm: bool = True
    other_class: Optional[int] = None
    method: Optional[str] = None


@dataclass(frozen=True)
class Look:
    """How every panel is drawn: mode, colormap, opacity and zoom box."""

    mode: str = "overlay"
    cmap: str = "turbo"
    opacity: float = 0.5
    zoom: Optional[Box] = None


def panel_map(ms: MapSet, panel: Panel) -> torch.Tensor:
    """The ``H x W`` values a panel shows: the saliency in [0, 1]."""
    return ms.saliency(panel.class_idx, panel.variant, panel.depth, panel.lnorm)


def contrast_map(ms: MapSet, panel: Panel) -> torch.Tensor:
    """Class A against class B, in [-1, 1]: where A's saliency exceeds B's (>0) and the reverse."""
    other = panel.other_class if panel.other_class is not None else ms.topk(2)[-1][0]
    mine = ms.saliency(panel.class_idx, panel.variant, panel.depth, panel.lnorm)
    theirs = ms.saliency(other, panel.variant, panel.depth, panel.lnorm)
    return mine - theirs


@lru_cache(maxsize=None)
def legend_html(mode: str) -> str:
    """A small legend for the two views with their own colour scales ('' for the others)."""
    import base64

    if mode == "ins-vs-del":
        square, text = render.legend_2d(48), ("→ PCAM+ (showing keeps the class)<br>↑ PCAM- (hiding removes it)"
                                              "<br>yellow: both agree · black: neither")
    elif mode == "contrast":
        square, text = render.diverging_bar(), "blue: the other class · white: equal · red: this class"
    else:
        return ""
    data = base64.b64encode(render.png_bytes(square)).decode()
    return (f"<div style='display:flex;gap:6px;align-items:center;font-size:80%'>"
            f"<img src='data:image/png;base64,{data}'/><span>{text}</span></div>")


def frame(ms: MapSet, panel: Panel, look: Look, image: np.ndarray | None = None,
          values: torch.Tensor | None = None) -> np.ndarray:
    """The ``H x W x 3`` uint8 pixels of one panel (before zoom and display scaling).

    A baseline panel (``panel.method``) shows ``values`` (its map in [0, 1]; the image alone while
    they are None) in the overlay, heatmap or masked view; the two Poly-CAM-only views fall back
    to the overlay."""
    picture = image if image is not None else render.image_uint8(ms.image, ms.mean, ms.std)
    mode = look.mode
    if panel.method is not None:
        if values is None:
            return picture
        mode = mode if mode in ("heatmap", "masked", "original") else "overlay"
    if mode == "original":
        return picture
    if mode == "contrast":
        tint = render.diverging(contrast_map(ms, panel))
        return render.blend(picture, tint, look.opacity)
    if mode == "ins-vs-del":
        plus = ms.saliency(panel.class_idx, "+", panel.depth, panel.lnorm)
        minus = ms.saliency(panel.class_idx, "-", panel.depth, panel.lnorm)
        return render.blend(picture, render.insertion_deletion_colors(plus, minus), look.opacity)
    values = panel_map(ms, panel) if values is None else values
    if mode == "heatmap":
        return render.heatmap(values, look.cmap)
    if mode == "masked":
        return render.masked(picture, values)
    if mode == "overlay":
        return render.overlay(picture, values, look.cmap, look.opacity)
    raise ValueError(f"mode must be one of {MODES}, got {mode!r}")


def zoom_and_fit(pixels: np.ndarray, zoom: Box | None, size: tuple[int, int]) -> np.ndarray:
    """Crop to the zoom box and scale (nearest neighbour, so pixels stay visible) to ``size``."""
    if zoom is not None:
        top, left, bottom, right = zoom
        pixels = pixels[top:bottom, left:right]
    h, w = size
    if pixels.shape[:2] == (h, w):
        return np.ascontiguousarray(pixels)
    return np.asarray(Image.fromarray(pixels).resize((w, h), Image.NEAREST))


def nearest_indices(size: tuple[int, int], shown: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Row and column indices (broadcastable) that :func:`zoom_and_fit` picks to scale ``size`` to
    ``shown`` without zoom: indexing with them equals the nearest-neighbour resize, pixel for pixel."""
    h, w = size
    index = np.arange(h * w, dtype=np.int32).reshape(h, w)
    picked = np.asarray(Image.fromarray(index, mode="I").resize((shown[1], shown[0]), Image.NEAREST))
    return picked // w, picked % w


def display_size(image_size: tuple[int, int], longest: int) -> tuple[int, int]:
    """The on-screen size of a panel: the image's aspect ratio, longest side ``longest`` pixels."""
    h, w = image_size
    scale = longest / max(h, w)
    return max(1, round(h * scale)), max(1, round(w * scale))


def image_pixel(ms_size: tuple[int, int], shown: tuple[int, int], zoom: Box | None, x: float, y: float
                ) -> tuple[int, int] | None:
    """The image pixel ``(row, col)`` under canvas position ``(x, y)``, or None outside."""
    top, left, bottom, right = zoom if zoom is not None else (0, 0, *ms_size)
    h, w = shown
    if not (0 <= x < w and 0 <= y < h):
        return None
    row = top + int(y * (bottom - top) / h)
    col = left + int(x * (right - left) / w)
    return min(row, ms_size[0] - 1), min(col, ms_size[1] - 1)


def teaching_step(ms: MapSet, panel: Panel) -> list[tuple[str, torch.Tensor]]:
    """The four maps of one recursion step ``P_l = ReLU(LNorm(CAM_l) * up(P_l+1))`` (eq. [3]) for
    the panel's depth (>= 2), each at the layer's resolution, with a caption."""
    if panel.depth < 2:
        raise ValueError("the recursion starts at depth 2 (depth 1 is the coarse CAM itself)")
    index = len(ms.layers) - panel.depth  # layer l of P at this depth
    cam = ms.layer_cam(panel.class_idx, panel.variant, index)
    prev = ms.poly_maps(panel.class_idx, panel.variant, panel.lnorm)[panel.depth - 2]
    local = lnorm(cam, prev.shape[-2:]) if panel.lnorm else cam
    up = resize(prev, cam.shape[-2:])
    name = ms.layers[index]
    return [(f"CAM of {name}", cam), ("LNorm(CAM)" if panel.lnorm else "CAM (no LNorm)", local),
            (f"P from depth {panel.depth - 1}, upsampled", up),
            (f"product = P at depth {panel.depth}", torch.relu(local * up))]


def with_depth(panel: Panel, depth: int) -> Panel:
    return replace(panel, depth=depth)
