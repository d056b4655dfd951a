"""The controls: widgets linked to the view state, and the options that follow the image on screen.

Each control is bound to one trait of :class:`~.state.ViewState` in both directions
(:class:`Bindings`); options (classes, depths, images) are refreshed with the bindings paused, so
a changed option list never moves the state by itself.
"""
from __future__ import annotations

import contextlib
import html
import math
from typing import Any, Callable, Iterator, Optional

import ipywidgets as W
import traitlets as T

from .. import render
from ..mapset import MapSet
from ..scheduler import Clock
from .jobs import Jobs
from .panels import COMPARE_OPTIONS, VARIANT_OPTIONS, depth_options
from .state import MODES, ViewState
from .store import Event, Store


TOP_CLASSES = 10  # the class dropdown's top predictions; every class is found by the search box


class OpacitySlider(W.FloatSlider):
    """A FloatSlider that refuses NaN and infinities (a plain one stores NaN and the view breaks)."""

    @T.validate("value")
    def _validate_value(self, proposal):  # replaces the slider's own validator (one per trait)
        value = proposal["value"]
        if not math.isfinite(value):
            raise T.TraitError(f"opacity must be a number in [0, 1], got {value!r}")
        return min(max(value, self.min), self.max)


class Bindings:
    """Two-way links between traits of the state and ``value`` of widgets, with a pause."""

    def __init__(self, state: ViewState) -> None:
        self.state = state
        self._pairs: list[tuple[str, W.ValueWidget, Callable[[Any], Any]]] = []
        self._paused = 0

    def bind(self, name: str, widget: W.ValueWidget, *, to_widget: Callable[[Any], Any] = lambda v: v) -> None:
        """Keep ``widget.value`` and ``state.<name>`` equal (``to_widget`` maps a state value to
        the widget's, e.g. a depth clamped to those probed)."""
        def widget_to_state(change) -> None:
            if not self._paused:
                setattr(self.state, name, change["new"])

        def state_to_widget(change) -> None:
            if not self._paused:
                with self.paused():
                    widget.value = to_widget(change["new"])

        widget.observe(widget_to_state, names="value")
        self.state.observe(state_to_widget, names=name)
        self._pairs.append((name, widget, to_widget))

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        self._paused += 1
        try:
            yield
        finally:
            self._paused -= 1

    def push(self) -> None:
        """Set every widget from the state (after its options changed)."""
        with self.paused():
            for name, widget, to_widget in self._pairs:
                widget.value = to_widget(getattr(self.state, name))


class Controls:
    """The control widgets of the explorer, bound to ``state``.

    Attributes: ``image_picker``, ``klass``, ``search`` (+ ``search_note``), ``variant``,
    ``depth``, ``lnorm``, ``mode``, ``other_class``, ``cmap``, ``opacity``, ``compare``,
    ``upload``, and the sweep's ``progress``, ``progress_label``, ``stop_button``.
    """

    def __init__(self, state: ViewState, store: Store, jobs: Jobs) -> None:
        self.state, self.store, self.jobs = state, store, jobs
        self.image_picker = W.Dropdown(description="image", options=store.names())
        self.klass = W.Dropdown(description="class")
        self.search = W.Combobox(placeholder="type any class name", ensure_option=False, continuous_update=False,
                                 layout=W.Layout(width="220px"))
        self.search_note = W.HTML()
        self.variant = W.ToggleButtons(options=VARIANT_OPTIONS, value="+-", description="variant",
                                       style={"button_width": "70px"})
        self.depth = W.SelectionSlider(description="depth", options=[("1", 1)], continuous_update=True,
                                       layout=W.Layout(width="560px"), style={"description_width": "initial"},
                                       readout=False)
        self.depth_label = W.HTML()  # the whole label: the slider's readout is cut at its width
        self.lnorm = W.Checkbox(value=True, description="LNorm", indent=False, layout=W.Layout(width="90px"))
        self.mode = W.Dropdown(description="view", options=list(MODES), value="overlay")
        self.other_class = W.Dropdown(description="against", layout=W.Layout(display="none"))
        self.cmap = W.Dropdown(description="colormap", options=list(render.COLORMAPS), value="turbo")
        self.opacity = OpacitySlider(description="opacity", min=0.0, max=1.0, step=0.05, value=0.5)
        self.compare = W.Dropdown(description="compare", options=COMPARE_OPTIONS, value="none")
        self.upload = W.FileUpload(accept="image/*", multiple=False, description="explain an image",
                                   layout=W.Layout(display="none", width="auto"))
        self.progress = W.IntProgress(min=0, max=1, layout=W.Layout(width="240px", display="none"))
        self.progress_label = W.HTML()
        self._sweeping: Optional[str] = None  # the image whose sweep the label follows
        self._other_options: tuple = ()  # the image's class options, for "against" once shown
        self._top_options: list[tuple[str, int]] = []  # the image's top predictions, for the class list
        self._clock = Clock()
        self.stop_button = W.Button(description="cancel", layout=W.Layout(display="none"))

        self.bindings = Bindings(state)
        for name in ("image", "other_class", "variant", "lnorm", "mode", "cmap", "opacity", "compare"):
            widget = self.image_picker if name == "image" else getattr(self, name)
            self.bindings.bind(name, widget)
        self.bindings.bind("klass", self.klass, to_widget=self._listed_class)
        self.bindings.bind("depth", self.depth, to_widget=self._shown_depth)
        state.observe(self._on_mode, names="mode")
        state.observe(self._on_klass, names="klass")
        state.observe(self._on_depth, names="depth")
        self.search.observe(self._on_search, names="value")
        self.stop_button.on_click(lambda _: jobs.runner is not None and jobs.runner.cancel())
        store.subscribe(self._on_store)

    # ----- options that follow the store and the image ------------------------------------------
    def _shown_depth(self, depth: int) -> int:
        options = [v for _, v in self.depth.options]
        return min(depth, max(options)) if options else depth

    def _listed_class(self, klass: int) -> int:
        """The class dropdown lists the top predictions (a short list: re-listing all 1,000
        ImageNet names cost the browser ~15 ms per image switch); a class chosen otherwise (the
        search box, the state) joins it, after them."""
        ms = self.store.get(self.state.image)
        if ms is not None and 0 <= klass < len(ms.class_names) and klass not in {v for _, v in self.klass.options}:
            self.klass.options = [*self._top_options, (f"{ms.class_names[klass]} ({float(ms.probs[klass]):.3f})", klass)]
        return klass

    def show_image(self, ms: MapSet) -> None:
        """Set the class, search and depth options for ``ms`` (the state is not touched)."""
        top = ms.topk(TOP_CLASSES)
        ranked = {t[0] for t in top}
        self._top_options = [(f"{n} ({p:.3f})", i) for i, n, p in top]
        options = self._top_options + sorted((n, i) for i, n in enumerate(ms.class_names) if i not in ranked)
        with self.bindings.paused():
            self.klass.options = self._top_options
            self._listed_class(self.state.klass)
            # the hidden "against" list follows when shown: re-listing every class costs the
            # browser tens of ms per image switch; a list of other classes is replaced at once
            self._other_options = tuple(options)
            if self.state.mode == "contrast" or len(self.other_class.options) != len(options):
                self.other_class.options = options
            self.search.options = sorted(set(ms.class_names))
            self.search.value = ""
            self.search_note.value = ""
            self.depth.options = depth_options(ms)

    def probed(self, ms: MapSet) -> None:
        """A finer layer of the image on screen was probed: offer its depth."""
        with self.bindings.paused():
            self.depth.options = depth_options(ms)
            self.depth.value = self._shown_depth(self.state.depth)
        self._on_depth()

    def push(self) -> None:
        """Set every control from the state."""
        self.bindings.push()
        self._on_depth()

    def set_images(self, names: list[str]) -> None:
        with self.bindings.paused():
            self.image_picker.options = names
            if self.state.image in names:
                self.image_picker.value = self.state.image

    def _on_store(self, event: Event) -> None:
        if event.kind == "progress":
            self._show_progress(event.value)
        elif event.kind == "probed" and event.name == self.state.image:
            self.probed(self.store.mapset(event.name))

    def _show_progress(self, progress) -> None:
        visible = "none" if progress is None else None
        self.progress.layout.display = self.stop_button.layout.display = visible
        if progress is None:
            self.progress_label.value = ""
            return
        name, done, total = progress
        if done == 0 or name != self._sweeping:
            self._sweeping = name
            self._clock.restart()
        self.progress.max, self.progress.value = max(1, total), done
        left = self._clock.left(done, total)
        self.progress_label.value = (f"probing <b>{html.escape(name)}</b>: {done} / {total} forward passes"
                                     + (f" · {left}" if left else ""))

    # ----- reactions -----------------------------------------------------------------------------
    def _on_mode(self, change) -> None:
        shown = change["new"] == "contrast"
        self.other_class.layout.display = None if shown else "none"
        if shown and self.other_class.options != self._other_options:
            with self.bindings.paused():
                self.other_class.options = self._other_options
                self.other_class.value = self.state.other_class

    def _on_depth(self, _change=None) -> None:
        label = dict((v, k) for k, v in self.depth.options).get(self.depth.value, "")
        wanted = self.state.depth
        more = (f" <i>(depth {wanted} once probed)</i>" if wanted > self.depth.value else "")
        self.depth_label.value = f"<span style='font-size:90%'>{html.escape(label)}{more}</span>"

    def _on_klass(self, change) -> None:
        ms = self.store.get(self.state.image)
        if ms is not None and self.search.value != ms.class_names[change["new"]]:
            with self.bindings.paused():
                self.search.value = ""
        self.search_note.value = ""

    def _on_search(self, change) -> None:
        text = change["new"].strip()
        ms = self.store.get(self.state.image)
        if not text or ms is None:
            self.search_note.value = ""
            return
        names = ms.class_names
        if text in names:
            found = [names.index(text)]
        else:  # a unique part of a name (any case) is enough
            found = [i for i, n in enumerate(names) if text.lower() in n.lower()]
        if len(found) == 1:
            self.state.klass = found[0]
            self.search_note.value = ""
            return
        if found:
            hint = ", ".join(html.escape(names[i]) for i in found[:3]) + (" …" if len(found) > 3 else "")
            self.search_note.value = (f"<span style='color:#b00020'>{len(found)} classes match "
                                      f"“{html.escape(text)}”: {hint}</span>")
        else:
            self.search_note.value = (f"<span style='color:#b00020'>no class named “{html.escape(text)}” "
                                      f"(among {len(names)})</span>")

    def rows(self) -> list[W.Widget]:
        """The control rows, top to bottom."""
        return [
            W.HBox([self.image_picker, self.klass, self.search, self.search_note]),
            W.HBox([self.variant, self.lnorm]),
            W.HBox([self.depth, self.depth_label]),
        ]


def descendants(root: W.Widget) -> list[W.Widget]:
    """Every widget reachable from ``root`` through its public synced traits (children, layout,
    style, a figure's marks, axes and scales): closing a Box does not close what it holds.
    Private traits are skipped: they hold shared singletons such as ipycanvas's canvas manager."""
    found: dict[int, W.Widget] = {}
    stack = [root]
    while stack:
        widget = stack.pop()
        if id(widget) in found:
            continue
        found[id(widget)] = widget
        for key in (k for k in widget.keys if not k.startswith("_")):
            value = getattr(widget, key, None)
            if isinstance(value, dict):
                value = list(value.values())
            stack.extend(v for v in (value if isinstance(value, (list, tuple)) else [value])
                         if isinstance(v, W.Widget))
    return list(found.values())
