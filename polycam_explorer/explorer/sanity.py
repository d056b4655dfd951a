"""The Sanity tab: cascading randomisation (Adebayo et al. 2018; the paper's Figure 26), on demand.

The model's parameter groups are re-initialised from the output side to the input side on a copy
(:func:`robustness.cascading_randomization`); after each group the current image's map of the
main panel's class and variant is recomputed (a probe sweep per step) and compared with the
intact model's map. A faithful map should change: Spearman and SSIM falling towards 0.
"""
from __future__ import annotations

import html
import importlib.util
import io
import math
from typing import TYPE_CHECKING, Optional, Sequence

import ipywidgets as W
import torch
from PIL import Image

from ..cache import default_batch_size
from ..layers import module_device
from ..mapset import MapSet, compute_mapset
from ..probes import SweepCancelled
from ..robustness import EVAL_HINT, RandomizationStep, cascading_randomization, parameter_groups, randomization_strip
from .frames import Panel
from .jobs import ButtonJob, Cancelled
from .panels import VARIANT_NAMES

if TYPE_CHECKING:
    from .app import Explorer

GRANULARITY_OPTIONS = [("stages", "stages"), ("blocks", "blocks"), ("layers", "layers")]
STEP = 100  # progress units per map: the sweep of each map advances the bar within its step


def _missing_eval() -> list[str]:
    """The packages of the ``[eval]`` extra the check needs that are not installed."""
    return [name for module, name in (("scipy", "scipy"), ("skimage", "scikit-image"))
            if importlib.util.find_spec(module) is None]


class SanityPanel:
    """Runs the check (in a background thread, cancellable) and caches its steps per
    (image, class, variant, granularity); the main panel's result, if any, is shown.

    Args:
        explorer: the Explorer whose image, main panel and model are used.
        seed: seeds the re-initialisation (same seed, same steps).
    """

    def __init__(self, explorer: "Explorer", *, seed: int = 0) -> None:
        self.explorer = explorer
        self.seed = seed
        self.cache: dict[tuple, list[RandomizationStep]] = {}
        self._shown: object = False  # (key, colormap) on screen; None: nothing; False: unknown
        self.granularity = W.Dropdown(description="randomise", options=GRANULARITY_OPTIONS, value="stages")
        self.button = W.Button(description="run sanity check", icon="random")
        self.stop_button = W.Button(description="cancel", icon="stop", disabled=True)
        self.progress = W.IntProgress(min=0, max=1, value=0, layout=W.Layout(width="200px"))
        self.message = W.HTML()
        self.strip = W.Image(format="png", layout=W.Layout(display="none"))
        self.table = W.HTML()
        self.granularity.observe(self._on_granularity, names="value")
        self.job = ButtonJob(self.button, self.stop_button)
        self.button.on_click(lambda _: self.compute())
        about = W.HTML("<b>Cascading randomisation</b> (Adebayo et al. 2018; the paper's Figure 26): the "
                       "model's layers are re-initialised from the output side, cumulatively, and the map "
                       "of the main panel's class and variant (full depth) is recomputed after each step. "
                       "A faithful map changes: Spearman and SSIM to the intact map fall towards 0.")
        self.controls = W.VBox([about, W.HBox([self.granularity, self.button, self.stop_button, self.progress]),
                                self.strip, self.table])
        missing = _missing_eval()
        if explorer.model is None:
            self.controls.layout.display = "none"
            self.message.value = "<i>pass model= to the Explorer to run the sanity check</i>"
        elif missing:
            self.button.disabled = True
            self.message.value = (f"<i>the sanity check needs {' and '.join(missing)}: "
                                  f"<code>{EVAL_HINT}</code></i>")
        self.widget = W.VBox([self.message, self.controls])

    def key(self, panel: Panel) -> tuple:
        """What a result depends on: image, class, variant and granularity."""
        return (self.explorer.image_picker.value, panel.class_idx, panel.variant, self.granularity.value)

    def forget(self, name: str) -> None:
        """Drop the results of image ``name`` (its map set was replaced)."""
        self.cache = {k: v for k, v in self.cache.items() if k[0] != name}
        self._shown = False

    def show_cached(self, panel: Panel) -> None:
        """Show the result for ``panel`` if one is cached, else nothing (drawn once per change)."""
        key = self.key(panel)
        steps = self.cache.get(key)
        shown = (key, self.explorer.cmap.value) if steps is not None else None
        if shown == self._shown:
            return
        self._shown = shown
        if steps is None:
            self.strip.layout.display = "none"
            self.strip.value, self.table.value = b"", ""
            return
        pixels = randomization_strip(steps, self.explorer._image(), cmap=self.explorer.cmap.value)
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="PNG")
        self.strip.value = buffer.getvalue()
        self.strip.layout.display = None
        ms = self.explorer.ms
        self.table.value = _table(steps, f"{html.escape(ms.class_names[key[1]])} · {VARIANT_NAMES[key[2]]} · "
                                         f"{key[3]}")

    def _on_granularity(self, _change) -> None:
        if self.explorer.mapsets:
            self.show_cached(self.explorer.main_panel())

    def compute(self, *, block: bool = False) -> None:
        """Run the check for the main panel (in a thread unless ``block``); a cached result is shown.

        Raises:
            ValueError: the Explorer has no model. ImportError: SciPy or scikit-image missing.
        """
        if self.explorer.model is None:
            raise ValueError("the Explorer has no model: pass model= to run the sanity check")
        missing = _missing_eval()
        if missing:
            raise ImportError(f"the sanity check needs {' and '.join(missing)}: {EVAL_HINT}")
        if self.job.running:
            return
        panel = self.explorer.main_panel()
        key = self.key(panel)
        if key in self.cache:
            self.show_cached(panel)
            return
        self.progress.value = 0
        ms = self.explorer.ms
        self.message.value = (f"<i>randomising ({html.escape(key[3])}) for "
                              f"{html.escape(ms.class_names[key[1]])} · {VARIANT_NAMES[key[2]]}…</i>")
        self.job.start(lambda: self._run(key, ms), block=block)

    def _run(self, key: tuple, ms: MapSet) -> None:
        _, class_idx, variant, granularity = key
        model, layers, maps_done = self.explorer.model, list(ms.layers), 0
        try:
            groups = parameter_groups(model, ms.image, granularity)
            self.progress.max = STEP * (len(groups) + 1)

            def sweep(done: int, total: int) -> None:  # within one map
                self.progress.value = STEP * maps_done + (STEP * done) // max(1, total)

            def explain(m: torch.nn.Module, x: torch.Tensor, c: int) -> torch.Tensor:
                return compute_mapset(m, x, layers, batch_size=default_batch_size(module_device(m)), progress=sweep,
                                      cancel=self.job.stop).saliency(c, variant)

            def step(done: int, _total: int) -> None:  # after each map
                nonlocal maps_done
                maps_done = done
                self.progress.value = STEP * done
                self.job.check()

            self.cache[key] = cascading_randomization(model, ms.image, class_idx, explain, groups=groups,
                                                      seed=self.seed, progress=step)
            self.message.value = ""
            if self.explorer.mapsets and self.key(self.explorer.main_panel()) == key:
                self.show_cached(self.explorer.main_panel())
        except (Cancelled, SweepCancelled):
            self.message.value = "<i>cancelled</i>"
        except Exception as exc:  # noqa: BLE001 - shown in the widget
            self.message.value = (f"<span style='color:#b00020'><b>{type(exc).__name__}</b>: "
                                  f"{html.escape(str(exc))}</span>")
            self.explorer.show_error(exc)

    def cancel(self) -> None:
        """Stop a running check (at the next probe batch)."""
        self.job.cancel()

    def wait(self, timeout: Optional[float] = None) -> None:
        """Block until a check running in the background has finished."""
        self.job.wait(timeout)


def _table(steps: Sequence[RandomizationStep], title: str) -> str:
    """One row per step: the group randomised last (with every group after it), Spearman, SSIM."""
    def fmt(value: float) -> str:
        return "n/a" if math.isnan(value) else f"{value:.3f}"

    rows = "".join(f"<tr><td>{i + 1}</td><td><code>{html.escape(s.name)}</code></td><td>{len(s.modules)}</td>"
                   f"<td>{fmt(s.spearman)}</td><td>{fmt(s.ssim)}</td></tr>" for i, s in enumerate(steps))
    return (f"<p>{title}</p><table><thead><tr><th>step</th><th>randomised (output side first)</th>"
            f"<th>modules</th><th>Spearman ρ</th><th>SSIM</th></tr></thead><tbody>{rows}</tbody></table>")
