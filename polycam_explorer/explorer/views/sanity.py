"""The Sanity tab: cascading randomisation (Adebayo et al. 2018; the paper's Figure 26), on demand.

The model's parameter groups (by default one per resolution stage) are re-initialised from the
output side to the input side on a copy (:func:`robustness.iter_cascading_randomization`); after
each group the current image's map of the main panel's class and variant is recomputed (a probe
sweep per step) and compared with the intact model's map. Each step is shown as soon as it is
scored: the strip and the table fill step by step. A faithful map should change: Spearman and
SSIM falling towards 0 (:data:`ABOUT` says what the numbers mean).
"""
from __future__ import annotations

import html
import importlib.util
import math
import threading
from typing import Optional, Sequence

import ipywidgets as W
import torch

from ... import render
from ...cache import default_batch_size
from ...layers import module_device
from ...compute import compute_mapset
from ...extras import EVAL_HINT
from ...robustness import (Group, RandomizationStep, iter_cascading_randomization, randomization_groups,
                           randomization_strip)
from ..jobs import Jobs, JobTab
from ..panels import VARIANT_NAMES
from ..state import ViewState
from ..store import Store

GRANULARITY_OPTIONS = [("resolution stages", "stages"), ("blocks", "blocks"), ("layers", "layers")]
ABOUT = (
    "<b>Cascading randomisation</b> (Adebayo et al. 2018; the Poly-CAM paper's Figure 26). The model's "
    "weights are re-initialised from the output side down, one group at a time and cumulatively "
    "(<i>resolution stages</i>: the classifier head, then each stage of the network, coarsest first), on a "
    "copy; after each step the map of the main panel's class and variant (full depth) is recomputed and "
    "compared with the intact model's map.<br>"
    "<b>Spearman ρ</b>: rank correlation of the two maps' pixels (1: the same pixels rank highest; 0: "
    "unrelated). <b>SSIM</b>: structural similarity of the two maps scaled to [0, 1] (1: identical).<br>"
    "<b>Passing</b> looks like both falling well below their first values as the cascade goes down, "
    "towards 0 once the whole network is random, with maps that no longer single out the object "
    "(Adebayo et al.: gradients and Grad-CAM pass; Guided Backprop stays near 1 and fails). Values that "
    "stay high mean the map reflects the image or the method more than what the model learned. Poly-CAM "
    "builds its masks from activations and shows the image through them, so a random network still "
    "yields maps that follow the image's edges: read ρ against the same check of a baseline (README, "
    "\"Sanity check\").")
STEP = 100  # progress units per map: the sweep of each map advances the bar within its step


def _missing_eval() -> list[str]:
    """The packages of the ``[eval]`` extra the check needs that are not installed."""
    return [name for module, name in (("scipy", "scipy"), ("skimage", "scikit-image"))
            if importlib.util.find_spec(module) is None]


class SanityView(JobTab):
    """Runs the check (in a background thread, cancellable) and keeps its steps per
    (image, class, variant, granularity); the main panel's result, if any, is shown.

    Args:
        seed: seeds the re-initialisation (same seed, same steps).
    """

    what = "sanity"
    watches = ("image", "klass", "variant", "cmap")

    def __init__(self, state: ViewState, store: Store, jobs: Jobs, *, seed: int = 0) -> None:
        self.seed = seed
        self._shown: object = False  # (key, colormap, steps shown) on screen; None: nothing; False: unknown
        self._partial: dict[tuple, tuple[list[Group], list[RandomizationStep]]] = {}  # a run's steps so far
        self._partial_lock = threading.Lock()
        self.granularity = W.Dropdown(description="randomise", options=GRANULARITY_OPTIONS, value="stages")
        self.strip = W.Image(format="png", layout=W.Layout(display="none"))
        self.table = W.HTML()
        super().__init__(state, store, jobs, label="run sanity check")
        self.granularity.observe(lambda _: self.refresh(), names="value")
        about = W.HTML(ABOUT)
        self.controls = W.VBox([about, W.HBox([self.granularity, self.button, self.stop_button, self.progress, self.time_left]),
                                self.strip, self.table])
        missing = _missing_eval()
        if jobs.model is None:
            self.controls.layout.display = "none"
            self.job.message = "<i>pass model= to the Explorer to run the sanity check</i>"
        elif missing:
            self.job.message = (f"<i>the sanity check needs {' and '.join(missing)}: "
                                f"<code>{EVAL_HINT}</code></i>")
        self.widget = W.VBox([self.message, self.controls])

    def available(self) -> bool:
        return self.jobs.model is not None and not _missing_eval()

    def key(self, panel) -> tuple:
        """What a result depends on: image, class, variant and granularity."""
        return (self.state.image, panel.class_idx, panel.variant, self.granularity.value)

    def check_available(self) -> None:
        """Raises: ValueError: the Explorer has no model. ImportError: SciPy or scikit-image missing."""
        if self.jobs.model is None:
            raise ValueError("the Explorer has no model: pass model= to run the sanity check")
        missing = _missing_eval()
        if missing:
            raise ImportError(f"the sanity check needs {' and '.join(missing)}: {EVAL_HINT}")

    def busy_message(self, key: tuple, ms) -> str:
        return (f"<i>randomising ({html.escape(key[3])}) for "
                f"{html.escape(ms.class_names[key[1]])} · {VARIANT_NAMES[key[2]]}…</i>")

    def partial(self, key: tuple) -> Optional[tuple[list[Group], list[RandomizationStep]]]:
        """The groups and the steps scored so far of the run for ``key`` under way, or None."""
        with self._partial_lock:
            found = self._partial.get(key)
            return None if found is None else (found[0], list(found[1]))

    def show(self, steps: Optional[list], key) -> None:
        """Show the result for ``key`` if there is one, else the steps of a run under way, else
        nothing (drawn once per change)."""
        groups = None
        if steps is None and key is not None:
            running = self.partial(key)
            if running is not None:
                groups, steps = running
        shown = (key, self.state.cmap, len(steps), groups is None) if steps is not None else None
        if shown == self._shown:
            return
        self._shown = shown
        if steps is None:
            self.strip.layout.display = "none"
            self.strip.value, self.table.value = b"", ""
            return
        if steps:
            pixels = randomization_strip(steps, self.store.image(key[0]), cmap=self.state.cmap,
                                         frame=self.store.frame_size(key[0]))
            self.strip.value = render.png_bytes(pixels)
            self.strip.layout.display = None
        else:
            self.strip.layout.display = "none"
            self.strip.value = b""
        ms = self.store.mapset(key[0])
        pending = [] if groups is None else list(reversed(groups))[len(steps):]
        self.table.value = _table(steps, f"{html.escape(ms.class_names[key[1]])} · {VARIANT_NAMES[key[2]]} · "
                                         f"{key[3]}", pending)

    def run(self, key: tuple, ms, panel) -> list[RandomizationStep]:
        _, class_idx, variant, granularity = key
        model, layers, maps_done = self.jobs.model, list(ms.layers), 0
        self.job.report(0, STEP)
        groups = randomization_groups(model, ms.image, granularity)
        self.job.report(0, STEP * (len(groups) + 1))

        def sweep(done: int, total: int) -> None:  # within one map
            self.job.done = STEP * maps_done + (STEP * done) // max(1, total)

        def explain(m: torch.nn.Module, x: torch.Tensor, c: int) -> torch.Tensor:
            return compute_mapset(m, x, layers, batch_size=default_batch_size(module_device(m)), progress=sweep,
                                  cancel=self.job.stop).saliency(c, variant)

        def step(done: int, _total: int) -> None:  # after each map
            nonlocal maps_done
            maps_done = done
            self.job.report(STEP * done)

        steps: list[RandomizationStep] = []
        with self._partial_lock:
            self._partial[key] = (groups, steps)
        self.refresh()  # the stages to come are listed at once
        try:
            for found in iter_cascading_randomization(model, ms.image, class_idx, explain, groups=groups,
                                                      seed=self.seed, progress=step):
                with self._partial_lock:
                    steps.append(found)
                self.refresh()  # the strip and the table gain this step now
        finally:
            with self._partial_lock:
                self._partial.pop(key, None)
            if len(steps) < len(groups):  # stopped (cancelled, failed): the partial strip goes
                self.refresh()
        return steps


def _table(steps: Sequence[RandomizationStep], title: str, pending: Sequence[Group] = ()) -> str:
    """One row per step: the group randomised last (with every group after it), its output size,
    the number of modules, Spearman and SSIM; the groups still to come as rows with "…"."""
    def fmt(value: float) -> str:
        return "n/a" if math.isnan(value) else f"{value:.3f}"

    def size(resolution) -> str:
        return "head" if resolution is None else f"{resolution[0]}×{resolution[1]}"

    rows = "".join(f"<tr><td>{i + 1}</td><td><code>{html.escape(s.name)}</code></td><td>{size(s.resolution)}</td>"
                   f"<td>{len(s.modules)}</td><td>{fmt(s.spearman)}</td><td>{fmt(s.ssim)}</td></tr>"
                   for i, s in enumerate(steps))
    rows += "".join(f"<tr style='color:#888'><td>{len(steps) + i + 1}</td><td><code>{html.escape(g.name)}</code></td>"
                    f"<td>{size(g.resolution)}</td><td>{len(g.modules)}</td><td>…</td><td>…</td></tr>"
                    for i, g in enumerate(pending))
    note = ""
    if steps and not pending:
        last = steps[-1]
        note = (f"<p>With every group random: ρ = {fmt(last.spearman)}, SSIM = {fmt(last.ssim)} "
                f"(a map that passes ends near 0; see above).</p>")
    return (f"<p>{title}</p><table><thead><tr><th>step</th><th>randomised (output side first)</th><th>output</th>"
            f"<th>modules</th><th>Spearman ρ</th><th>SSIM</th></tr></thead><tbody>{rows}</tbody></table>{note}")
