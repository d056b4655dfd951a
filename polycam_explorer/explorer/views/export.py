"""Export what the explorer shows: the panels with their captions and colour scale as a figure
(PNG at screen pixels or at a print dpi, SVG, PDF), the maps on screen as one npz; into a folder
the user keeps, under names that never overwrite an earlier export, each with a download button.

The download button is an ``<a download href="data:...;base64,...">`` in an HTML widget: it needs
no server route, works offline and the same way in Voila, JupyterLab and Notebook 7. Its bytes
travel once to the page (about 4/3 of the file); files over :data:`DOWNLOAD_LIMIT` get the path
only."""
from __future__ import annotations

import base64
import html
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Optional, Union

import ipywidgets as W
import numpy as np

from ... import figure, render
from ...files import atomic_write, write_new
from ...mapset import MapSet
from .. import frames
from ..jobs import Jobs
from ..panels import VARIANT_NAMES, baseline_name, look, panel_display_size, panels_for
from ..state import ViewState
from ..store import Store

EXPORT_DIR_ENV = "POLYCAM_EXPLORER_EXPORTS"
DOWNLOAD_LIMIT = 32 * 2 ** 20  # bytes: larger files are not sent to the page (path shown only)
FORMAT_OPTIONS = [("PNG", "png"), ("SVG (vector)", "svg"), ("PDF (vector)", "pdf")]
DPI_OPTIONS = [("screen pixels", 0), ("150 dpi", 150), ("300 dpi", 300), ("600 dpi", 600)]
MIME = {".png": "image/png", ".svg": "image/svg+xml", ".pdf": "application/pdf", ".npz": "application/zip"}
NAME_BYTES = 96  # UTF-8 bytes of the image's name kept in an export's file name (a file name holds 255)
BUTTON_STYLE = ("display:inline-block;padding:3px 12px;margin-left:6px;border-radius:3px;background:#1976d2;"
                "color:white;text-decoration:none;font-weight:600")


def default_export_dir() -> Path:
    """``$POLYCAM_EXPLORER_EXPORTS`` if set, else ``polycam_exports`` in the working folder;
    always absolute, so the path shown is the one written."""
    return Path(os.environ.get(EXPORT_DIR_ENV) or "polycam_exports").expanduser().resolve()


def export_folder(folder: Path) -> Path:
    """``folder``, made if missing, to write exports into.

    Raises:
        ValueError: it, or a folder on the way to it, is a file; or it cannot be made (saying why).
    """
    existing = next((p for p in (folder, *folder.parents) if p.exists()), None)
    if existing is not None and not existing.is_dir():
        raise ValueError(f"cannot export to {str(folder)!r}: {str(existing)!r} is a file, not a folder; give "
                         f"export_dir (or ${EXPORT_DIR_ENV}) a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ValueError(f"cannot make the export folder {str(folder)!r}: {exc.strerror or exc}") from exc
    return folder


def unique_path(folder: Path, stem: str, suffix: str) -> Path:
    """``folder/stem_N.suffix`` with N one more than any export of that stem already there."""
    taken = [int(m.group(1)) for p in folder.glob(f"{glob_escape(stem)}_*{suffix}")
             if (m := re.fullmatch(re.escape(stem) + r"_(\d+)" + re.escape(suffix), p.name))]
    return folder / f"{stem}_{max(taken, default=0) + 1}{suffix}"


def save_numbered(folder: Path, stem: str, suffix: str, save: Callable[[Path], object]) -> Path:
    """Write a new export ``folder/stem_N.suffix`` (:func:`unique_path`) with ``save(path)``; two
    explorers exporting the same name at the same instant get two numbers, never one file."""
    return write_new(save, lambda: unique_path(folder, stem, suffix))


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


@dataclass(frozen=True)
class Shot:
    """One view to export, read once: the image's name, its map set, a copy of the state and the
    panels it shows (so a file's name, captions and pixels are of the same view)."""

    name: str
    ms: MapSet
    view: ViewState
    panels: list[frames.Panel]


class ExportView:
    """The Export tab: a figure (format, dpi) and an npz button, the full path of what was
    written last and its download button (``link``).

    Args:
        export_dir: the folder written to (made if missing); None: :func:`default_export_dir`.
        size: the panel size on screen (a PNG at screen pixels has the panels at that size).
    """

    def __init__(self, state: ViewState, store: Store, jobs: Jobs, *, export_dir: Union[str, Path, None],
                 size: int) -> None:
        self.state, self.store, self.jobs, self.size = state, store, jobs, size
        self.export_dir = Path(export_dir).expanduser().resolve() if export_dir is not None else default_export_dir()
        self.format = W.Dropdown(description="format", options=FORMAT_OPTIONS, value="png",
                                 layout=W.Layout(width="210px"))
        self.dpi = W.Dropdown(description="resolution", options=DPI_OPTIONS, value=300,
                              layout=W.Layout(width="230px"))
        self.figure_button = W.Button(description="export figure")
        self.npz_button = W.Button(description="export maps (npz)")
        self.link = W.HTML(f"<span style='font-size:90%'>exports go to <code>{html.escape(str(self.export_dir))}"
                           f"</code></span>")
        self.format.observe(self._on_format, names="value")
        self.figure_button.on_click(lambda _: self._guarded(lambda: self.figure(self.format.value, self.dpi.value)))
        self.npz_button.on_click(lambda _: self._guarded(self.maps))
        self.widget = W.VBox([W.HBox([self.format, self.dpi, self.figure_button, self.npz_button]), self.link])

    def _on_format(self, change) -> None:
        self.dpi.layout.visibility = "visible" if change["new"] == "png" else "hidden"  # vector: no dpi

    def _guarded(self, action) -> None:
        try:
            action()
        except Exception as exc:  # noqa: BLE001 - shown in the status line
            self.store.report_error(exc)

    def shot(self) -> Shot:
        """The view on screen, read once (:meth:`ViewState.snapshot`).

        Raises:
            ValueError: nothing is drawn yet.
        """
        view = self.state.snapshot()
        ms = self.store.get(view.image)
        if ms is None or ms.depth_available == 0:
            raise ValueError("nothing is drawn yet: there is no view to export")
        return Shot(view.image, ms, view, panels_for(view, ms))

    def _stem(self, shot: Shot) -> str:
        panel = shot.panels[0]
        variant = {"+": "pcam+", "-": "pcam-", "+-": "pcam+-"}[panel.variant]
        safe = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in shot.name)
        safe = safe.encode()[:NAME_BYTES].decode(errors="ignore")  # whole characters only
        return f"{safe}_class{panel.class_idx}_{variant}_depth{panel.depth}"

    def tiles(self, shot: Optional[Shot] = None) -> list[np.ndarray]:
        """The pixels of the panels on screen (or of ``shot``), at screen size, as the main view
        draws them (the photo's aspect ratio, the map resized onto its frame)."""
        shot = shot or self.shot()
        geo = frames.geometry(shot.ms.size, self.store.frame_size(shot.name), self.size)
        zoom = geo.box(shot.view.zoom) if shot.view.zoom is not None else None
        return self._pixels(shot, geo, panel_display_size(geo.work_size, zoom, len(shot.panels), self.size))

    def print_tiles(self, shot: Optional[Shot] = None) -> list[np.ndarray]:
        """The panels on screen (or of ``shot``) for print: each the map at its full resolution on
        a frame of the photo's aspect ratio (:func:`frames.full_resolution`), zoomed as on screen,
        unscaled."""
        shot = shot or self.shot()
        geo = frames.full_resolution(shot.ms.size, self.store.frame_size(shot.name))
        top, left, bottom, right = geo.box(shot.view.zoom)
        return self._pixels(shot, geo, (bottom - top, right - left))

    def _pixels(self, shot: Shot, geo: frames.Geometry, size: tuple[int, int]) -> list[np.ndarray]:
        """Every panel of ``shot`` drawn on ``geo``'s frame, zoomed and scaled to ``size``."""
        how, picture = look(shot.view), self.store.picture(shot.name, geo.work_size)
        out = []
        for panel in shot.panels:
            values = None if panel.method is None else self.jobs.baseline(shot.name, panel.class_idx, panel.method)
            out.append(frames.panel_pixels(shot.ms, panel, how, picture, values, geo, size))
        return out

    def captions(self, shot: Optional[Shot] = None) -> list[list[str]]:
        """The caption lines of each panel on screen (or of ``shot``; :func:`caption_lines`); in
        the contrast view also which colour is which class."""
        shot = shot or self.shot()
        ms = shot.ms
        if shot.view.mode != "contrast":
            return [caption_lines(ms, p) for p in shot.panels]
        out = []
        for p in shot.panels:
            a, b = frames.contrast_classes(ms, p)
            out.append(caption_lines(ms, p, b) + ([frames.contrast_key((ms.class_names[a], ms.class_names[b]))]
                                                   if p.method is None else []))
        return out

    def figure(self, fmt: str = "png", dpi: int = 300) -> Path:
        """The panels on screen with their captions (variant, class and probability, depth and
        layer) and the view's colour scale as ``fmt`` ("png", "svg" or "pdf"): a PNG with ``dpi``
        0 is :meth:`png` (screen pixels); else :mod:`polycam_explorer.figure` draws it, each panel
        at the map's full resolution, text as text, the colour bar as a vector bar."""
        if fmt == "png" and dpi == 0:
            return self.png()
        if fmt not in figure.FORMATS:
            raise ValueError(f"fmt must be one of {figure.FORMATS}, got {fmt!r}")
        shot = self.shot()
        ms = shot.ms
        a, b = frames.contrast_classes(ms, shot.panels[0])
        scale = frames.print_scale(shot.view.mode, shot.view.cmap, (ms.class_names[a], ms.class_names[b]))
        fig = figure.figure(self.print_tiles(shot), self.captions(shot), scale)
        stem = self._stem(shot) + (f"_{dpi}dpi" if fmt == "png" else "")
        path = save_numbered(export_folder(self.export_dir), stem, f".{fmt}",
                             lambda tmp: figure.save(fig, tmp, fmt, dpi=dpi))
        self.link.value = download_link(path)
        return path

    def png(self) -> Path:
        """All panels on screen side by side, at screen size, each with its caption (variant,
        class, depth and layer), and the view's colour scale on the right (the colorbar of the
        overlay and heatmap, the contrast's bar, the ins-vs-del square); a single panel's frame
        sits at the top left."""
        shot = self.shot()
        texts = self.captions(shot)
        depth = max(len(t) for t in texts)
        shown = self.tiles(shot)
        tiles = [render.captioned(t, lines + [""] * (depth - len(lines)), width=t.shape[1] + 0)
                 for t, lines in zip(shown, texts)]
        pixels = render.grid([tiles])
        scale = frames.scale_pixels(shot.view.mode, shot.view.cmap, max(12, shown[0].shape[0]))
        if scale is not None:
            pixels = render.beside(pixels, scale)
        path = save_numbered(export_folder(self.export_dir), self._stem(shot), ".png",
                             lambda tmp: render.save_png(pixels, tmp))
        self.link.value = download_link(path)
        return path

    def maps(self) -> Path:
        """The saliency maps of the panels on screen (full image size, float32) and their panels."""
        shot = self.shot()
        name, ms, panels = shot.name, shot.ms, shot.panels
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
        path = save_numbered(export_folder(self.export_dir), self._stem(shot), ".maps.npz",
                             lambda tmp: _save_npz(tmp, arrays))
        self.link.value = download_link(path)
        return path


def _save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    with atomic_write(path) as f:
        np.savez_compressed(f, **arrays)


def download_link(path: Path) -> str:
    """HTML naming the full ``path`` and a download button for its bytes: an anchor with a
    ``data:`` URL (no server route, offline), or a note when the file is over :data:`DOWNLOAD_LIMIT`."""
    shown = f"saved <code>{html.escape(str(path.resolve()))}</code>"
    size = path.stat().st_size
    if size > DOWNLOAD_LIMIT:
        return f"{shown} · {size / 2 ** 20:.0f} MB: too large to download from the page, copy it from that path"
    mime = MIME.get(path.suffix, "application/octet-stream")
    data = base64.b64encode(path.read_bytes()).decode()
    return (f"{shown} <a class='polycam-download' download='{html.escape(path.name)}' "
            f"href='data:{mime};base64,{data}' style='{BUTTON_STYLE}' title='{html.escape(path.name)}'>"
            f"⬇ download ({_size_text(size)})</a>")


def _size_text(size: int) -> str:
    return f"{size / 2 ** 20:.1f} MB" if size >= 2 ** 20 else f"{max(1, round(size / 1024))} kB"
