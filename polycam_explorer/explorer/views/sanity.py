"""The Sanity tab: cascading randomisation (Adebayo et al. 2018; the paper's Figure 26), on demand.

The model's parameter groups are re-initialised from the output side to the input side on a copy
(:func:`robustness.cascading_randomization`); after each group the current image's map of the
main panel's class and variant is recomputed (a probe sweep per step) and compared with the
intact model's map. A faithful map should change: Spearman and SSIM falling towards 0.
"""
from __future__ import annotations

import html
import importlib.util
import math
from typing import Optional, Sequence

import ipywidgets as W
import torch

from ... import render
from ...cache import default_batch_size
from ...layers import module_device
from ...mapset import compute_mapset
from ...robustness import EVAL_HINT, RandomizationStep, cascading_randomization, parameter_groups, randomization_strip
from ..jobs import Jobs, JobTab
from ..panels import VARIANT_NAMES
from ..state import ViewState
from ..store import Store

GRANULARITY_OPTIONS = [("stages", "stages"), ("blocks", "blocks"), ("layers", "layers")]
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
        self._shown: object = False  # (key, colormap) on screen; None: nothing; False: unknown
        self.granularity = W.Dropdown(description="randomise", options=GRANULARITY_OPTIONS, value="stages")
        self.strip = W.Image(format="png", layout=W.Layout(display="none"))
        self.table = W.HTML()
        super().__init__(state, store, jobs, label="run sanity check")
        self.granularity.observe(lambda _: self.refresh(), names="value")
        about = W.HTML("<b>Cascading randomisation</b> (Adebayo et al. 2018; the paper's Figure 26): the "
                       "model's layers are re-initialised from the output side, cumulatively, and the map "
                       "of the main panel's class and variant (full depth) is recomputed after each step. "
                       "A faithful map changes: Spearman and SSIM to the intact map fall towards 0.")
        self.controls = W.VBox([about, W.HBox([self.granularity, self.button, self.stop_button, self.progress]),
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

    def show(self, steps: Optional[list], key) -> None:
        """Show the result for ``key`` if there is one, else nothing (drawn once per change)."""
        shown = (key, self.state.cmap) if steps is not None else None
        if shown == self._shown:
            return
        self._shown = shown
        if steps is None:
            self.strip.layout.display = "none"
            self.strip.value, self.table.value = b"", ""
            return
        pixels = randomization_strip(steps, self.store.image(key[0]), cmap=self.state.cmap)
        self.strip.value = render.png_bytes(pixels)
        self.strip.layout.display = None
        ms = self.store.mapset(key[0])
        self.table.value = _table(steps, f"{html.escape(ms.class_names[key[1]])} · {VARIANT_NAMES[key[2]]} · "
                                         f"{key[3]}")

    def run(self, key: tuple, ms, panel) -> list[RandomizationStep]:
        _, class_idx, variant, granularity = key
        model, layers, maps_done = self.jobs.model, list(ms.layers), 0
        self.job.report(0, STEP)
        groups = parameter_groups(model, ms.image, granularity)
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

        return cascading_randomization(model, ms.image, class_idx, explain, groups=groups, seed=self.seed,
                                       progress=step)


def _table(steps: Sequence[RandomizationStep], title: str) -> str:
    """One row per step: the group randomised last (with every group after it), Spearman, SSIM."""
    def fmt(value: float) -> str:
        return "n/a" if math.isnan(value) else f"{value:.3f}"

    rows = "".join(f"<tr><td>{i + 1}</td><td><code>{html.escape(s.name)}</code></td><td>{len(s.modules)}</td>"
                   f"<td>{fmt(s.spearman)}</td><td>{fmt(s.ssim)}</td></tr>" for i, s in enumerate(steps))
    return (f"<p>{title}</p><table><thead><tr><th>step</th><th>randomised (output side first)</th>"
            f"<th>modules</th><th>Spearman ρ</th><th>SSIM</th></tr></thead><tbody>{rows}</tbody></table>")
