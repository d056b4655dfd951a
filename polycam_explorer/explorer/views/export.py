"""Export what the explorer shows: the panels as one PNG with their captions, the maps on screen
as one npz; into a folder the user keeps, under names that never overwrite an earlier export."""
from __future__ import annotations

import base64
import html
import os
import re
from dataclasses import asdict
from pathlib import Path
from typing import Optional, Union

import ipywidgets as W
import numpy as np

from ... import render
from ...files import atomic_write
from .. import frames
from ..jobs import Jobs
from ..panels import VARIANT_NAMES, baseline_name, look, panel_display_size, panels_for
from ..state import ViewState
from ..store import Store

EXPORT_DIR_ENV = "POLYCAM_EXPLORER_EXPORTS"


def default_export_dir() -> Path:
    """``$POLYCAM_EXPLORER_EXPORTS`` if set, else ``polycam_exports`` in the working folder;
    always absolute, so the path shown is the one written."""
    return Path(os.environ.get(EXPORT_DIR_ENV) or "polycam_exports").expanduser().resolve()


def unique_path(folder: Path, stem: str, suffix: str) -> Path:
    """``folder/stem_N.suffix`` with N one more than any export of that stem already there."""
    taken = [int(m.group(1)) for p in folder.glob(f"{glob_escape(stem)}_*{suffix}")
             if (m := re.fullmatch(re.escape(stem) + r"_(\d+)" + re.escape(suffix), p.name))]
    return folder / f"{stem}_{max(taken, default=0) + 1}{suffix}"


def glob_escape(text: str) -> str:
    return re.sub(r"([\[\]*?])", r"[\1]", text)


def caption_lines(ms, panel, against: Optional[int] = None) -> list[str]:
    """The plain-text caption of a panel in an exported figure: method or variant, class and
    probability, depth and layer."""
    klass = f"{ms.class_names[panel.class_idx]} ({float(ms.probs[panel.class_idx]):.3f})"
    if panel.method is not None:
        return [baseline_name(panel.method), klass]
    layer = ms.layers[len(ms.layers) - panel.depth]
    first = VARIANT_NAMES[panel.variant] + ("" if panel.lnorm else ", no LNorm")
    lines = [first, klass, f"depth {panel.depth}/{len(ms.layers)}: {layer}"]
    if against is not None:
        lines.append(f"against {ms.class_names[against]}")
    return lines


class ExportView:
    """The Export tab: PNG and npz buttons and the link to what was written last.

    Args:
        export_dir: the folder written to (made if missing); None: :func:`default_export_dir`.
        size: the panel size on screen (the PNG has the panels at screen size).
    """

    def __init__(self, state: ViewState, store: Store, jobs: Jobs, *, export_dir: Union[str, Path, None],
                 size: int) -> None:
        self.state, self.store, self.jobs, self.size = state, store, jobs, size
        self.export_dir = Path(export_dir).expanduser().resolve() if export_dir is not None else default_export_dir()
        self.png_button = W.Button(description="export PNG")
        self.npz_button = W.Button(description="export maps (npz)")
        self.link = W.HTML(f"<span style='font-size:90%'>exports go to <code>{html.escape(str(self.export_dir))}"
                           f"</code></span>")
        self.png_button.on_click(lambda _: self._guarded(self.png))
        self.npz_button.on_click(lambda _: self._guarded(self.maps))
        self.widget = W.VBox([W.HBox([self.png_button, self.npz_button]), self.link])

    def _guarded(self, action) -> None:
        try:
            action()
        except Exception as exc:  # noqa: BLE001 - shown in the status line
            self.store.report_error(exc)

    def _stem(self) -> str:
        ms = self.store.mapset(self.state.image)
        panel = panels_for(self.state, ms)[0]
        variant = {"+": "pcam+", "-": "pcam-", "+-": "pcam+-"}[panel.variant]
        safe = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in self.state.image)
        return f"{safe}_class{panel.class_idx}_{variant}_depth{panel.depth}"

    def tiles(self) -> list[np.ndarray]:
        """The pixels of the panels on screen, at screen size, as the main view draws them (the
        photo's aspect ratio, the map resized onto its frame)."""
        name = self.state.image
        ms = self.store.mapset(name)
        panels, how = panels_for(self.state, ms), look(self.state)
        geo = frames.geometry(ms.size, self.store.frame_size(name), self.size)
        zoom = geo.box(how.zoom) if how.zoom is not None else None
        size = panel_display_size(geo.work_size, zoom, len(panels), self.size)
        picture = self.store.picture(name, geo.work_size)
        out = []
        for panel in panels:
            values = None if panel.method is None else self.jobs.baseline(name, panel.class_idx, panel.method)
            out.append(frames.panel_pixels(ms, panel, how, picture, values, geo, size))
        return out

    def png(self) -> Path:
        """All panels on screen side by side, at screen size, each with its caption (variant,
        class, depth and layer), and the view's colour scale on the right (the colorbar of the
        overlay and heatmap, the contrast's bar, the ins-vs-del square); a single panel's frame
        sits at the top left."""
        if not self.store.get(self.state.image):
            raise ValueError("nothing is drawn yet: there is no view to export")
        ms = self.store.mapset(self.state.image)
        against = self.state.other_class if self.state.mode == "contrast" else None
        panels = panels_for(self.state, ms)
        texts = [caption_lines(ms, p, against) for p in panels]
        depth = max(len(t) for t in texts)
        shown = self.tiles()
        tiles = [render.captioned(t, lines + [""] * (depth - len(lines)), width=t.shape[1] + 0)
                 for t, lines in zip(shown, texts)]
        pixels = render.grid([tiles])
        scale = frames.scale_pixels(self.state.mode, self.state.cmap, max(12, shown[0].shape[0]))
        if scale is not None:
            pixels = render.beside(pixels, scale)
        path = unique_path(self.export_dir, self._stem(), ".png")
        render.save_png(pixels, path)
        self.link.value = download_link(path, "image/png")
        return path

    def maps(self) -> Path:
        """The saliency maps of the panels on screen (full image size, float32) and their panels."""
        name = self.state.image
        ms = self.store.mapset(name)
        panels = panels_for(self.state, ms)
        arrays = {}
        for i, panel in enumerate(panels):
            values = (frames.panel_map(ms, panel) if panel.method is None else
                      self.jobs.baseline(name, panel.class_idx, panel.method))
            if values is None:
                raise ValueError(f"the {baseline_name(panel.method)} map is still being computed")
            arrays[f"panel{i}_saliency"] = values.detach().float().cpu().numpy().astype(np.float32)
            arrays[f"panel{i}_description"] = np.array(repr(asdict(panel)))
        arrays["image"] = np.array(name)
        arrays["frame_size"] = np.array(self.store.frame_size(name))  # the photo's (H, W): maps resize onto it
        arrays["class_names"] = np.array([ms.class_names[p.class_idx] for p in panels])
        path = unique_path(self.export_dir, self._stem(), ".maps.npz")
        with atomic_write(path) as f:
            np.savez_compressed(f, **arrays)
        self.link.value = download_link(path, "application/octet-stream")
        return path


def download_link(path: Path, mime: str) -> str:
    """HTML naming the full ``path`` with a link that downloads its bytes (a data: URL, no server)."""
    data = base64.b64encode(path.read_bytes()).decode()
    return (f"saved <code>{html.escape(str(path.resolve()))}</code> · "
            f"<a download='{html.escape(path.name)}' href='data:{mime};base64,{data}'>download</a>")
