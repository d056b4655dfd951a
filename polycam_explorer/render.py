"""Pixels: colormaps, overlays, masked images, the explorer's colour scales and legends, and
figure grids with captions, as ``H x W x 3`` uint8 arrays.

The single place where maps leave the device and become images.
"""
from __future__ import annotations

import os
from functools import lru_cache
from typing import Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw

from .files import atomic_write

COLORMAPS = ("turbo", "viridis", "inferno", "jet", "magma", "plasma", "gray")


@lru_cache(maxsize=None)
def colormap(name: str = "turbo") -> np.ndarray:
    """A 256 x 3 uint8 lookup table of a matplotlib colormap (the explorer offers :data:`COLORMAPS`).

    Raises:
        ValueError: for a name matplotlib does not know.
    """
    from matplotlib import colormaps

    if name not in colormaps:
        raise ValueError(f"colormap must be a matplotlib colormap such as {COLORMAPS}, got {name!r}")
    lut = colormaps[name](np.linspace(0.0, 1.0, 256))[:, :3]
    return (lut * 255.0 + 0.5).astype(np.uint8)


def _as_numpy(values: torch.Tensor | np.ndarray) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        return values.detach().float().cpu().numpy()
    return np.asarray(values, dtype=np.float32)


def image_uint8(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """Undo the model's normalisation: ``1 x C x H x W`` -> ``H x W x 3`` uint8 (gray is repeated)."""
    x = x.detach().float().cpu()[0]
    x = x * torch.tensor(std)[:, None, None] + torch.tensor(mean)[:, None, None]
    rgb = x.clamp(0.0, 1.0).permute(1, 2, 0).numpy()
    if rgb.shape[2] == 1:
        rgb = np.repeat(rgb, 3, axis=2)
    return (rgb * 255.0 + 0.5).astype(np.uint8)


def heatmap(saliency: torch.Tensor | np.ndarray, cmap: str = "turbo") -> np.ndarray:
    """Colour a map in [0, 1] (``H x W``) with ``cmap``."""
    s = np.clip(_as_numpy(saliency), 0.0, 1.0)
    return colormap(cmap)[(s * 255.0 + 0.5).astype(np.uint8)]


def overlay(image: np.ndarray, saliency: torch.Tensor | np.ndarray, cmap: str = "turbo",
            alpha: float = 0.5) -> np.ndarray:
    """Blend the coloured map over the image with opacity ``alpha`` in [0, 1]."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    blend = (1.0 - alpha) * image.astype(np.float32) + alpha * heatmap(saliency, cmap).astype(np.float32)
    return (blend + 0.5).astype(np.uint8)


def masked(image: np.ndarray, saliency: torch.Tensor | np.ndarray) -> np.ndarray:
    """The image multiplied by the map: what the map keeps (the paper's Figure 4)."""
    s = np.clip(_as_numpy(saliency), 0.0, 1.0)[..., None]
    return (image.astype(np.float32) * s + 0.5).astype(np.uint8)


def diverging(values: torch.Tensor | np.ndarray) -> np.ndarray:
    """Colour values in [-1, 1]: blue (negative), white (0), red (positive)."""
    v = _as_numpy(values)
    return colormap("coolwarm")[np.clip((v + 1.0) * 127.5 + 0.5, 0, 255).astype(np.uint8)]


def grey(picture: np.ndarray) -> np.ndarray:
    """An ``H x W x 3`` uint8 picture in grey (luma, ITU-R BT.601 weights), still 3 channels."""
    luma = picture.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    return np.repeat((luma + 0.5).astype(np.uint8)[..., None], 3, axis=2)


def contrast(picture: np.ndarray, difference: torch.Tensor | np.ndarray, opacity: float = 0.5) -> np.ndarray:
    """The class-contrast view: the picture in grey (:func:`grey`) under the end colours of
    :func:`diverging` (red where ``difference``, class A's map minus class B's in [-1, 1], is
    positive, blue where negative), each pixel's alpha ``min(1, 2 * opacity * |difference|)``:
    where neither class dominates the photo shows untinted; the more one does, the more its
    colour covers it (``opacity`` 0.5: alpha = ``|difference|``; 1: full colour from 0.5 up)."""
    if not 0.0 <= opacity <= 1.0:
        raise ValueError(f"opacity must be in [0, 1], got {opacity}")
    d = _as_numpy(difference)
    alpha = np.minimum(1.0, 2.0 * opacity * np.abs(d))[..., None]
    mixed = (1.0 - alpha) * grey(picture) + alpha * diverging(np.sign(d))
    return (mixed + 0.5).astype(np.uint8)


def insertion_deletion_colors(plus: torch.Tensor | np.ndarray, minus: torch.Tensor | np.ndarray) -> np.ndarray:
    """A two-dimensional colour scale: PCAM+ (showing the region keeps the class) in red, PCAM-
    (hiding it removes the class) in green, both in yellow, neither in black."""
    a, b = np.clip(_as_numpy(plus), 0, 1), np.clip(_as_numpy(minus), 0, 1)
    rgb = np.stack([a, b, 0.5 * np.minimum(a, b) + 0.25 * np.abs(a - b)], axis=-1)
    return (rgb * 255.0 + 0.5).astype(np.uint8)


def blend(picture: np.ndarray, tint: np.ndarray, alpha: float) -> np.ndarray:
    """``(1 - alpha) * picture + alpha * tint``, rounded to uint8."""
    return ((1.0 - alpha) * picture + alpha * tint + 0.5).astype(np.uint8)


def legend_2d(size: int = 64) -> np.ndarray:
    """The insertion-vs-deletion colour square: PCAM+ grows to the right, PCAM- upwards."""
    ramp = np.linspace(0.0, 1.0, size, dtype=np.float32)
    return insertion_deletion_colors(ramp[None, :].repeat(size, 0), ramp[::-1, None].repeat(size, 1))


def diverging_bar(width: int = 96, height: int = 12) -> np.ndarray:
    """The contrast view's colour bar: -1 (left, blue) .. 0 (white) .. +1 (right, red)."""
    return diverging(np.linspace(-1.0, 1.0, width, dtype=np.float32)[None, :].repeat(height, 0))


def resize_map(values: torch.Tensor | np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A map (``h x w``) resized bilinearly to ``size`` (``H x W``), as float32 numpy: the map
    computed at the model's input size laid over another frame (the original photo's). Pixel
    centres are aligned (``align_corners=False``), no antialiasing, so the value at frame pixel
    ``(r, c)`` is the bilinear sample of the map at ``((r + .5) h / H - .5, (c + .5) w / W - .5)``."""
    t = values if isinstance(values, torch.Tensor) else torch.from_numpy(np.asarray(values, dtype=np.float32))
    t = t.detach().float()
    if tuple(t.shape[-2:]) != tuple(size):
        t = torch.nn.functional.interpolate(t[None, None], size=tuple(int(v) for v in size), mode="bilinear",
                                            align_corners=False)[0, 0]
    return t.cpu().numpy()


def fitted_size(size: tuple[int, int], longest: int) -> tuple[int, int]:
    """``size`` (H, W) scaled to the longest side ``longest``, keeping its aspect ratio."""
    h, w = size
    scale = longest / max(h, w)
    return max(1, round(h * scale)), max(1, round(w * scale))


def fit_picture(pixels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """An ``H x W x 3`` uint8 picture resized to ``size`` (bilinear, antialiased when shrinking)."""
    h, w = size
    if pixels.shape[:2] == (h, w):
        return pixels
    return np.asarray(Image.fromarray(pixels).resize((int(w), int(h)), Image.BILINEAR))


def colorbar(cmap: str = "turbo", length: int = 128, *, thickness: int = 12,
             labels: tuple[str, str] = ("0", "1"), label_width: int = 16) -> np.ndarray:
    """A vertical colour scale: the gradient of ``cmap`` (rows ``0 .. length - 1``, columns
    ``0 .. thickness - 1``; top row = the colormap's last entry, bottom row = its first) and the
    ``labels`` of its low and high ends written beside the bottom and the top, black on white.

    The explorer shows it beside the overlay and heatmap views (``"coolwarm"`` with labels
    ``("-1", "+1")`` is the contrast view's scale: :func:`diverging`) and exports include it.
    """
    if length < 12 or thickness < 1:
        raise ValueError(f"a colorbar needs length >= 12 and thickness >= 1, got {length}, {thickness}")
    ramp = np.linspace(1.0, 0.0, length, dtype=np.float32)
    bar = colormap(cmap)[(ramp * 255.0 + 0.5).astype(np.uint8)]
    out = Image.new("RGB", (thickness + 3 + label_width, length), "white")
    out.paste(Image.fromarray(np.ascontiguousarray(np.repeat(bar[:, None], thickness, axis=1))), (0, 0))
    draw = ImageDraw.Draw(out)
    low, high = labels
    draw.text((thickness + 3, -2), high, fill="black")
    draw.text((thickness + 3, length - 11), low, fill="black")
    return np.asarray(out)


def beside(left: np.ndarray, right: np.ndarray, *, pad: int = 4) -> np.ndarray:
    """``right`` placed ``pad`` pixels to the right of ``left``, top edges ``pad`` apart from the
    top, on white (``left`` keeps its pixels at its place)."""
    h = max(left.shape[0], right.shape[0] + 2 * pad)
    out = np.full((h, left.shape[1] + right.shape[1] + pad, 3), 255, np.uint8)
    out[: left.shape[0], : left.shape[1]] = left
    out[pad: pad + right.shape[0], left.shape[1]: left.shape[1] + right.shape[1]] = right
    return out


def png_bytes(pixels: np.ndarray) -> bytes:
    """An ``H x W x 3`` uint8 array encoded as PNG bytes (for an image widget or a data: URL)."""
    import io

    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def captioned(pixels: np.ndarray, lines: Sequence[str], *, width: int | None = None) -> np.ndarray:
    """``pixels`` with text lines written under it (black on white), padded to ``width``."""
    h, w = pixels.shape[:2]
    width = max(w, width or 0)
    line_h = 12
    canvas = Image.new("RGB", (width, h + 4 + line_h * len(lines)), "white")
    canvas.paste(Image.fromarray(pixels), (0, 0))
    draw = ImageDraw.Draw(canvas)
    for i, line in enumerate(lines):
        draw.text((2, h + 2 + i * line_h), line, fill="black")
    return np.asarray(canvas)


def strip(tiles: Sequence[np.ndarray], slots: int, *, pad: int = 4) -> np.ndarray:
    """Equally sized tiles in a row of ``slots`` places on white, ``pad`` pixels around each
    (tile ``i`` starts at column ``pad + i * (w + pad)``); places beyond the tiles stay white."""
    h, w = tiles[0].shape[:2] if tiles else (1, 1)
    out = np.full((h + 2 * pad, slots * (w + pad) + pad, 3), 255, np.uint8)
    for i, tile in enumerate(tiles):
        x = pad + i * (w + pad)
        out[pad: pad + h, x: x + w] = tile
    return out


def mark_tile(row: np.ndarray, index: int, width: int, *, pad: int = 4,
              color: tuple[int, int, int] = (255, 140, 0)) -> np.ndarray:
    """A copy of a :func:`strip` with a frame of ``color`` in the gap around tile ``index``."""
    out = row.copy()
    x = pad + index * (width + pad)
    frame = out[:, x - pad // 2: x + width + pad // 2]
    inner = frame[pad: out.shape[0] - pad, pad // 2: pad // 2 + width].copy()
    frame[:] = color
    frame[pad: out.shape[0] - pad, pad // 2: pad // 2 + width] = inner
    return out


def grid(tiles: Sequence[Sequence[np.ndarray]], *, row_labels: Sequence[str] = (),
         col_labels: Sequence[str] = (), pad: int = 4) -> np.ndarray:
    """Arrange equally sized ``H x W x 3`` tiles in rows, with optional text labels."""
    h, w = tiles[0][0].shape[:2]
    left = 90 if row_labels else 0
    top = 16 if col_labels else 0
    n_rows, n_cols = len(tiles), max(len(r) for r in tiles)
    canvas = Image.new("RGB", (left + n_cols * (w + pad) + pad, top + n_rows * (h + pad) + pad), "white")
    draw = ImageDraw.Draw(canvas)
    for r, row in enumerate(tiles):
        y = top + pad + r * (h + pad)
        if r < len(row_labels):
            draw.text((4, y + h // 2 - 6), row_labels[r], fill="black")
        for c, tile in enumerate(row):
            canvas.paste(Image.fromarray(tile), (left + pad + c * (w + pad), y))
    for c, label in enumerate(col_labels):
        draw.text((left + pad + c * (w + pad) + 2, 2), label, fill="black")
    return np.asarray(canvas)


def save_png(pixels: np.ndarray, path: str | os.PathLike) -> None:
    """Write an ``H x W x 3`` uint8 array as PNG, atomically (temp file, then rename)."""
    with atomic_write(path) as f:
        Image.fromarray(pixels).save(f, format="PNG")
