"""The Explorer: the composition root. It builds the view state, the store, the jobs, the
controls and the views, lays them out, and keeps the state consistent when the image changes.

Data flows one way: workers write the store, the store tells the views, the views read the state.
Every control change is served from the MapSet's cached P maps: no probing after the sweep.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Optional, Union

import ipywidgets as W
import numpy as np
import torch

from ..mapset import MapSet
from . import frames
from .controls import Controls, descendants
from .jobs import Jobs
from .panels import checked_pins, look, main_panel, panels_for, preset
from .state import ViewState
from .store import Event, MapSets, Store, named_mapsets
from .uploads import free_name, upload_to_image
from .views.baselines import BaselinesView
from .views.export import ExportView
from .views.faithfulness import FaithfulnessView
from .views.main import MainView
from .views.recursion import RecursionView
from .views.sanity import SanityView


def _panel_size(size: object) -> int:
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or not 64 <= size <= 4096:
        raise ValueError(f"size (the longest side of a panel on screen) must be an int of pixels in "
                         f"64..4096, got {size!r}")
    return int(size)


class Explorer(W.VBox):
    """Interactive Poly-CAM explorer for one or several map sets.

    ``explorer.state`` (:class:`~.state.ViewState`) is what is shown: set its traits
    (``explorer.state.variant = "-"``) or observe them; the controls follow and vice versa.

    Args:
        mapsets: a MapSet, a list or dict (name -> MapSet) of them, or a folder of saved map sets.
        model: the classifier (optional): for the faithfulness curves, the sanity check and the
            baselines beside Poly-CAM.
        size: the longest side of a panel on screen, in pixels (64..4096).
        export_dir: where exports are written (None: ``$POLYCAM_EXPLORER_EXPORTS`` or
            ``./polycam_exports``, made absolute).
    """

    def __init__(self, mapsets: MapSets, *, model: Optional[torch.nn.Module] = None, size: int = 320,
                 export_dir: Union[str, Path, None] = None) -> None:
        named, self.panel_size = named_mapsets(mapsets), _panel_size(size)
        self.model = model
        self.store = Store(named)
        self.jobs = Jobs(self.store, model)
        self.state = ViewState(batch=self.jobs.draws.held)
        self.controls = Controls(self.state, self.store, self.jobs)
        self.main = MainView(self.state, self.store, self.jobs, size=self.panel_size)
        self.recursion = RecursionView(self.state, self.store, self.jobs)
        self.curves = FaithfulnessView(self.state, self.store, self.jobs)
        self.sanity = SanityView(self.state, self.store, self.jobs)
        self.baselines = BaselinesView(self.state, self.store, self.jobs)
        self.export = ExportView(self.state, self.store, self.jobs, export_dir=export_dir, size=self.panel_size)
        self._pins_from_preset = False  # the pins follow the compare preset (e.g. the image's top classes)
        self.state.observe(self._on_image, names="image")
        self.state.observe(self._on_compare, names="compare")
        self.store.subscribe(self._on_store)
        self.controls.upload.observe(self._on_upload, names="value")

        c, m = self.controls, self.main
        rows = c.rows() + [
            W.HBox([c.mode, c.other_class, c.cmap, c.opacity, m.legend]),
            W.HBox([c.compare, self.baselines.beside, m.reset_zoom, c.upload]),
            W.HBox([c.progress, c.progress_label, c.stop_button]),
        ]
        tabs = W.Tab(children=[self.recursion.widget, self.curves.widget, self.sanity.widget, self.export.widget])
        for i, title in enumerate(("Recursion", "Faithfulness", "Sanity", "Export")):
            tabs.set_title(i, title)
        super().__init__([W.VBox(rows), m.panels_box, m.hover, m.status, tabs])
        if named:
            self.state.image = next(iter(named))
        else:
            self.main.request()  # "waiting for the first map set…"

    # ----- the widgets and views under the names notebooks and tests use (see the end of the module)
    @property
    def beside(self) -> W.Dropdown:
        return self.baselines.beside

    @property
    def strip(self):
        return self.recursion.strip

    @property
    def teaching(self):
        return self.recursion.teaching

    @property
    def teaching_caption(self) -> W.HTML:
        return self.recursion.caption

    @property
    def export_link(self) -> W.HTML:
        return self.export.link

    @property
    def export_dir(self) -> Path:
        return self.export.export_dir

    @property
    def runner(self):
        return self.jobs.runner

    # ----- state -----------------------------------------------------------------------------------
    @property
    def mapsets(self) -> dict[str, MapSet]:
        """The map sets by name (a copy)."""
        return self.store.mapsets()

    @property
    def ms(self) -> MapSet:
        """The map set on screen."""
        return self.store.mapset(self.state.image)

    @property
    def zoom(self) -> Optional[frames.Box]:
        return self.state.zoom

    @property
    def pins(self) -> list[dict]:
        return list(self.state.pins)

    @property
    def look(self) -> frames.Look:
        return look(self.state)

    def main_panel(self) -> frames.Panel:
        """The panel the main controls describe (depth clamped to what is probed so far)."""
        return main_panel(self.state, self.ms)

    def panels(self) -> list[frames.Panel]:
        """The panels on screen: the main one, or one per pin, and the baseline beside last."""
        return panels_for(self.state, self.ms)

    def pin(self, *overrides: dict) -> None:
        """Compare two to four panels, each fixing some of ``class_idx``, ``variant``, ``depth``,
        ``lnorm``, ``other_class``, ``method``; the rest follow the controls. ``pin()`` goes back to
        a single view.

        Raises:
            ValueError: a wrong number of panels, an unknown field or a bad value, naming it.
        """
        pins = checked_pins(overrides, self.store.get(self.state.image))
        self._pins_from_preset = False
        self.state.pins = pins

    def set_zoom(self, box: Optional[frames.Box]) -> None:
        """Magnify a region ``(top, left, bottom, right)`` of the image in every panel; None resets."""
        self.main.set_zoom(box)

    def _on_compare(self, change) -> None:
        ms = self.store.get(self.state.image)
        if ms is not None:
            self._pins_from_preset = change["new"] != "none"
            self.state.pins = preset(change["new"], ms)

    def _on_image(self, change) -> None:
        """Another image: its classes and depths; its top class at full depth, no zoom."""
        ms = self.store.mapset(change["new"])
        s = self.state
        with self.jobs.draws.held():
            self.controls.show_image(ms)
            with s.hold_trait_notifications():
                s.n_classes, s.n_depths, s.image_size = ms.num_classes, len(ms.layers), ms.size
                top = ms.topk(10)
                s.klass, s.other_class = top[0][0], top[min(1, len(top) - 1)][0]
                s.depth, s.zoom = len(ms.layers), None
                if self._pins_from_preset:  # e.g. "top classes" are this image's top classes
                    s.pins = preset(s.compare, ms)
            self.controls.push()
            self.main.request()  # the same name with a new map set changes no trait

    # ----- map sets arriving ----------------------------------------------------------------------
    def attach_runner(self, runner) -> None:
        """Let the app explain new images (upload control) with ``runner`` (see ``explore``)."""
        self.jobs.runner = runner
        runner.priority = self.jobs.priority  # curves, baselines, sanity: ahead of other images' sweeps
        runner.on_screen = lambda: self.state.image  # the image on screen is swept first
        # switching to an image still queued sweeps it at once; the running sweep pauses
        self.state.observe(lambda change: runner.look_at(change["new"]), "image")
        self.controls.upload.layout.display = None

    def add_mapset(self, name: str, ms: MapSet, *, show: bool = False) -> None:
        """Add a map set (possibly still being filled) to the image picker; show it if it is the
        first one or ``show`` is True.

        Raises:
            TypeError: ``ms`` is not a MapSet. ValueError: ``name`` is not a non-empty str.
        """
        self.store.add_mapset(name, ms, show=show)

    def _on_store(self, event: Event) -> None:
        if event.kind != "mapset":
            return
        self.controls.set_images(self.store.names())
        current = self.state.image
        if not current or event.show or current == event.name:
            if current == event.name:
                self._on_image({"new": event.name})  # replaced: show the new map set
            else:
                self.state.image = event.name

    def wait_for(self, name: str, timeout: Optional[float] = None) -> MapSet:
        """Block until the map set ``name`` is complete (for notebooks and scripts) and return it.

        Raises:
            ValueError: no such image, or its sweep stopped (error or cancel) before completing.
            TimeoutError: after ``timeout`` seconds.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            ms = self.store.get(name)
            if ms is not None and ms.complete:
                return ms
            busy = self.jobs.runner is not None and self.jobs.runner.busy
            if not busy:
                raise ValueError(f"no complete map set {name!r}: the images are {self.store.names()}"
                                 + (" (its sweep stopped before the end)" if ms is not None else ""))
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"map set {name!r} not complete after {timeout} s")
            time.sleep(0.05)

    def refresh(self, name: str) -> None:
        """A finer layer of ``name``'s map set has been probed: redraw if it is on screen."""
        self.store.probed(name)

    def show_progress(self, progress) -> None:
        """``(name, done, total)`` while a sweep runs; None when it is over."""
        self.store.set_progress(progress)

    def show_error(self, exc: BaseException) -> None:
        """Put an exception in the status line (with the last frame of its traceback)."""
        self.store.report_error(exc)

    def _on_upload(self, change) -> None:
        try:
            if change["new"] and self.jobs.runner is not None:
                name, image = upload_to_image(change["new"])
                taken = {*self.store.names(), *self.jobs.runner.names()}
                self.jobs.runner.submit(free_name(name, taken), image, show=True)
        except Exception as exc:  # noqa: BLE001 - shown in the status line
            self.show_error(exc)

    # ----- drawing and exports ---------------------------------------------------------------------
    def render(self) -> None:
        """Draw every view from the state (normally done on every change)."""
        with self.jobs.draws.held():
            self.main.request()
            self.recursion.request()
            self.curves.refresh()
            self.sanity.refresh()

    def hold_render(self):
        """Change several things and draw once, at the end (a context manager)."""
        return self.jobs.draws.held()

    def export_png(self) -> Optional[Path]:
        """Write the panels on screen side by side, with captions, as one PNG; show its path and a
        download link. Errors go to the status line (and None is returned)."""
        try:
            return self.export.png()
        except Exception as exc:  # noqa: BLE001 - shown to the user
            self.show_error(exc)
            return None

    def export_maps(self) -> Optional[Path]:
        """Write the saliency maps on screen (and their descriptions) to one npz."""
        try:
            return self.export.maps()
        except Exception as exc:  # noqa: BLE001 - shown to the user
            self.show_error(exc)
            return None

    def close(self) -> None:
        """Close every widget, stop running work and drop the map sets (frees their GPU memory)."""
        if "jobs" not in self.__dict__:  # the constructor raised; Widget.__del__ still calls close()
            super().close()
            return
        self.jobs.close()
        self.jobs.draws.close()
        self.store.clear()
        for widget in descendants(self):
            if widget is not self:
                widget.close()
        self.main.close()
        self.recursion.close()
        super().close()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def _forward(part: str, name: str) -> property:
    return property(lambda self: getattr(getattr(self, part), name), doc=f"``explorer.{part}.{name}``")


CONTROLS = ("image_picker", "klass", "search", "variant", "depth", "lnorm", "mode", "other_class", "cmap",
            "opacity", "compare", "upload", "progress", "progress_label", "stop_button", "search_note")
MAIN = ("canvases", "captions", "panels_box", "hover", "status", "legend", "reset_zoom")
for _part, _names in (("controls", CONTROLS), ("main", MAIN)):
    for _name in _names:
        setattr(Explorer, _name, _forward(_part, _name))
