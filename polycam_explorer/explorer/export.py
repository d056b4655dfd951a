"""Export what the explorer shows: the panels as one PNG, the maps on screen as one npz."""
from __future__ import annotations

import base64
import html
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .. import render
from ..files import atomic_write
from . import frames

if TYPE_CHECKING:
    from .app import Explorer


def _stem(explorer: "Explorer") -> str:
    panel = explorer.main_panel()
    variant = {"+": "pcam+", "-": "pcam-", "+-": "pcam+-"}[panel.variant]
    safe = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in explorer.image_picker.value)
    return f"{safe}_class{panel.class_idx}_{variant}_depth{panel.depth}"


def export_png(explorer: "Explorer") -> Path:
    """All panels on screen side by side, at screen size, with their captions."""
    tiles = [c.pixels for c in explorer.canvases[: len(explorer.panels())] if c.pixels is not None]
    if not tiles:
        raise ValueError("nothing is drawn yet: there is no view to export")
    h = max(t.shape[0] for t in tiles)
    tiles = [np.pad(t, ((0, h - t.shape[0]), (0, 0), (0, 0)), constant_values=255) for t in tiles]
    labels = [f"{i + 1}" for i in range(len(tiles))]
    pixels = render.grid([tiles], col_labels=labels if len(tiles) > 1 else ())
    path = explorer.export_dir / f"{_stem(explorer)}.png"
    render.save_png(pixels, path)
    return path


def export_maps(explorer: "Explorer") -> Path:
    """The saliency maps of the panels on screen (full image size, float32) and their panels."""
    arrays = {}
    for i, panel in enumerate(explorer.panels()):
        arrays[f"panel{i}_saliency"] = frames.panel_map(explorer.ms, panel).cpu().numpy().astype(np.float32)
        arrays[f"panel{i}_description"] = np.array(repr(asdict(panel)))
    arrays["image"] = np.array(explorer.image_picker.value)
    arrays["class_names"] = np.array([explorer.ms.class_names[p.class_idx] for p in explorer.panels()])
    path = explorer.export_dir / f"{_stem(explorer)}.maps.npz"
    with atomic_write(path) as f:
        np.savez_compressed(f, **arrays)
    return path


def download_link(path: Path, mime: str) -> str:
    """HTML naming ``path`` with a link that downloads its bytes (a data: URL, no server needed)."""
    data = base64.b64encode(path.read_bytes()).decode()
    return (f"saved <code>{html.escape(str(path))}</code> · "
            f"<a download='{html.escape(path.name)}' href='data:{mime};base64,{data}'>download</a>")
