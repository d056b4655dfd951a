"""What a panel shows, as pixels: pure functions of a MapSet and a panel/look description.

No widgets here, so every frame the explorer draws can be checked in plain tests.
"""
from __future__ import annotations

import base64
import html
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import Optional

import numpy as np
import torch
from PIL import Image

from .. import figure, render
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


def contrast_classes(ms: MapSet, panel: Panel) -> tuple[int, int]:
    """The contrast view's class A (the panel's) and class B (its ``other_class``, else the
    runner-up of the top two)."""
    other = panel.other_class if panel.other_class is not None else ms.topk(2)[-1][0]
    return panel.class_idx, other


def contrast_map(ms: MapSet, panel: Panel) -> torch.Tensor:
    """Class A against class B, in [-1, 1]: where A's saliency exceeds B's (>0) and the reverse."""
    mine, other = contrast_classes(ms, panel)
    return (ms.saliency(mine, panel.variant, panel.depth, panel.lnorm)
            - ms.saliency(other, panel.variant, panel.depth, panel.lnorm))


def contrast_key(names: tuple[str, str]) -> str:
    """Plain text saying which colour is which class in the contrast view (``names``: A, B)."""
    return f"red: {names[0]} (A) · blue: {names[1]} (B)"


@lru_cache(maxsize=64)
def legend_html(mode: str, classes: tuple[str, str] | None = None) -> str:
    """A small legend for the two views with their own colour scales ('' for the others); the
    contrast view's bar is labelled with its two class names ``classes`` (A, B)."""
    if mode == "ins-vs-del":
        square, text = render.legend_2d(48), ("→ red: PCAM+ (showing keeps the class)<br>↑ green: PCAM- (hiding "
                                              "removes it)<br>yellow: both agree · black: neither")
    elif mode == "contrast":
        a, b = (html.escape(c) for c in (classes or ("this class", "the other class")))
        data = base64.b64encode(render.png_bytes(render.diverging_bar())).decode()
        return (f"<div style='font-size:80%'><div style='display:flex;gap:6px;align-items:center'>"
                f"<span>← {b}</span><img src='data:image/png;base64,{data}'/><span>{a} →</span></div>"
                f"<div>grey photo: neither map dominates; colour strength follows |A − B|</div></div>")
    else:
        return ""
    data = base64.b64encode(render.png_bytes(square)).decode()
    return (f"<div style='display:flex;gap:6px;align-items:center;font-size:80%'>"
            f"<img src='data:image/png;base64,{data}'/><span>{text}</span></div>")


SCALE_THICKNESS = 12  # the colorbar's width beside a panel, in pixels


def scale_pixels(mode: str, cmap: str, length: int) -> np.ndarray | None:
    """The colour scale of a view as pixels: the colorbar of ``cmap`` (0..1) for the overlay and
    the heatmap, the diverging bar for the contrast view (B at the bottom, A on top: its legend
    and captions name the classes), the two-dimensional square (captioned) for ins-vs-del; None
    for the views without a colour scale."""
    if mode in ("overlay", "heatmap"):
        return render.colorbar(cmap, length, thickness=SCALE_THICKNESS)
    if mode == "contrast":
        return render.colorbar("coolwarm", length, thickness=SCALE_THICKNESS, labels=("B", "A"))
    if mode == "ins-vs-del":
        return render.captioned(render.legend_2d(48), ["x: PCAM+ (red)", "y: PCAM- (green)"], width=100)
    return None


def print_scale(mode: str, cmap: str, classes: tuple[str, str]) -> figure.Scale:
    """The colour scale of a view in a printed figure (:mod:`polycam_explorer.figure`): the
    colorbar of ``cmap`` for the overlay and heatmap, the diverging bar with the contrast's
    class names ``classes`` (A, B) at its ends, the ins-vs-del square; None for the others."""
    if mode in ("overlay", "heatmap"):
        return figure.ColourScale(cmap, label="saliency")
    if mode == "contrast":
        return figure.ColourScale("coolwarm", -1.0, 1.0, (-1.0, 0.0, 1.0),
                                  (f"{classes[1]} (B)", "equal", f"{classes[0]} (A)"), "saliency A − B")
    if mode == "ins-vs-del":
        return figure.LegendSquare(render.legend_2d(64), "PCAM+ (red) →", "PCAM- (green) →")
    return None


@lru_cache(maxsize=64)
def scale_png(mode: str, cmap: str, length: int) -> bytes:
    """:func:`scale_pixels` as PNG bytes for the overlay, heatmap and contrast views (b'' else)."""
    if mode not in ("overlay", "heatmap", "contrast"):
        return b""
    return render.png_bytes(scale_pixels(mode, cmap, length))


def frame(ms: MapSet, panel: Panel, look: Look, image: np.ndarray | None = None,
          values: torch.Tensor | None = None, *, size: tuple[int, int] | None = None) -> np.ndarray:
    """The ``H x W x 3`` uint8 pixels of one panel (before zoom and display scaling).

    ``size``: the frame drawn, ``(H, W)`` (None: the map's own size, ``ms.size``); every map is
    resized bilinearly to it (:func:`render.resize_map`) and ``image`` must be the picture at that
    size (None: the model's input, resized). A baseline panel (``panel.method``) shows ``values``
    (its map in [0, 1]; the image alone while they are None) in the overlay, heatmap or masked
    view; the two Poly-CAM-only views fall back to the overlay."""
    size = tuple(size) if size is not None else tuple(ms.size)

    def fit(m: torch.Tensor) -> torch.Tensor | np.ndarray:
        return m if tuple(m.shape[-2:]) == size else render.resize_map(m, size)

    picture = image if image is not None else render.fit_picture(render.image_uint8(ms.image, ms.mean, ms.std), size)
    mode = look.mode
    if panel.method is not None:
        if values is None:
            return picture
        mode = mode if mode in ("heatmap", "masked", "original") else "overlay"
    if mode == "original":
        return picture
    if mode == "contrast":
        return render.contrast(picture, fit(contrast_map(ms, panel)), look.opacity)
    if mode == "ins-vs-del":
        plus = fit(ms.saliency(panel.class_idx, "+", panel.depth, panel.lnorm))
        minus = fit(ms.saliency(panel.class_idx, "-", panel.depth, panel.lnorm))
        return render.blend(picture, render.insertion_deletion_colors(plus, minus), look.opacity)
    values = fit(panel_map(ms, panel) if values is None else values)
    if mode == "heatmap":
        return render.heatmap(values, look.cmap)
    if mode == "masked":
        return render.masked(picture, values)
    if mode == "overlay":
        return render.overlay(picture, values, look.cmap, look.opacity)
    raise ValueError(f"mode must be one of {MODES}, got {mode!r}")


@dataclass(frozen=True)
class Geometry:
    """Where a panel's pixels come from: the map (``map_size``, the model's input: the zoom box
    of the view state is in these pixels), the original photo (``frame_size``, its own aspect
    ratio: hover reports these pixels) and the frame drawn (``work_size``: the photo's aspect
    ratio, at least the map's and the panel's resolution; equal to ``map_size`` when the photo
    is the map's size). Maps are resized bilinearly from ``map_size`` to ``work_size``."""

    map_size: tuple[int, int]
    frame_size: tuple[int, int]
    work_size: tuple[int, int]

    def box(self, zoom: Box | None) -> Box:
        """The zoom box (map pixels; None: all) in pixels of the frame drawn (covering it)."""
        (h, w), (H, W) = self.map_size, self.work_size
        top, left, bottom, right = zoom if zoom is not None else (0, 0, h, w)
        return top * H // h, left * W // w, -(-bottom * H // h), -(-right * W // w)

    def zoom_of(self, first: tuple[int, int], last: tuple[int, int]) -> Box:
        """The zoom box (map pixels) covering the drawn-frame pixels ``first`` .. ``last`` (inclusive)."""
        (h, w), (H, W) = self.map_size, self.work_size
        return first[0] * h // H, first[1] * w // W, -(-(last[0] + 1) * h // H), -(-(last[1] + 1) * w // W)

    def original_pixel(self, pixel: tuple[int, int]) -> tuple[int, int]:
        """The photo's pixel at the centre of a drawn-frame pixel."""
        (H0, W0), (H, W) = self.frame_size, self.work_size
        return min(int((pixel[0] + 0.5) * H0 / H), H0 - 1), min(int((pixel[1] + 0.5) * W0 / W), W0 - 1)


def geometry(map_size: tuple[int, int], frame_size: tuple[int, int] | None, longest: int) -> Geometry:
    """The :class:`Geometry` of a map set shown with panels of longest side ``longest``:
    a photo of another shape than the map is drawn at its own aspect ratio, its longest side the
    larger of the map's and ``longest``."""
    map_size = (int(map_size[0]), int(map_size[1]))
    frame_size = map_size if frame_size is None else (int(frame_size[0]), int(frame_size[1]))
    if frame_size == map_size:
        return Geometry(map_size, frame_size, map_size)
    return Geometry(map_size, frame_size, render.fitted_size(frame_size, max(max(map_size), int(longest))))


def full_resolution(map_size: tuple[int, int], frame_size: tuple[int, int] | None) -> Geometry:
    """The :class:`Geometry` of a printed panel: the smallest frame at the photo's aspect ratio
    that holds the map at its full resolution (each side at least the map's)."""
    map_size = (int(map_size[0]), int(map_size[1]))
    frame_size = map_size if frame_size is None else (int(frame_size[0]), int(frame_size[1]))
    scale = max(map_size[0] / frame_size[0], map_size[1] / frame_size[1])
    work = (max(map_size[0], round(frame_size[0] * scale)), max(map_size[1], round(frame_size[1] * scale)))
    return Geometry(map_size, frame_size, work)


def shown_map(values: torch.Tensor | np.ndarray, geo: Geometry) -> np.ndarray | torch.Tensor:
    """The map as the frame drawn shows it (resized to ``geo.work_size``; itself when equal)."""
    return values if tuple(values.shape[-2:]) == geo.work_size else render.resize_map(values, geo.work_size)


def panel_pixels(ms: MapSet, panel: Panel, look: Look, picture: np.ndarray, values: torch.Tensor | None,
                 geo: Geometry, shown: tuple[int, int]) -> np.ndarray:
    """What a canvas of size ``shown`` shows: :func:`frame` at ``geo.work_size`` (``picture`` at
    that size), cropped to the zoom box and scaled to ``shown`` (the main view and exports)."""
    pixels = frame(ms, panel, look, picture, values, size=geo.work_size)
    return zoom_and_fit(pixels, geo.box(look.zoom) if look.zoom is not None else None, shown)


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


def image_pixel(ms_size: tuple[int, int], shown: tuple[int, int], zoom: Box | None, x: float, y: float
                ) -> tuple[int, int] | None:
    """The pixel ``(row, col)`` of a frame of size ``ms_size`` under canvas position ``(x, y)`` of a
    canvas of size ``shown`` showing the box ``zoom`` of that frame (None: all of it), or None
    outside. With a :class:`Geometry`, pass ``geo.work_size`` and ``geo.box(zoom)``."""
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
