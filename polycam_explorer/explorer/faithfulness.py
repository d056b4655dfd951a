"""The faithfulness tab: insertion and deletion curves of the map on screen (bqplot), on demand."""
from __future__ import annotations

from typing import TYPE_CHECKING, Optional

import bqplot as bq
import ipywidgets as W
import numpy as np

from ..cache import default_batch_size
from ..layers import module_device
from ..metrics import faithfulness_curves
from .frames import Panel
from .jobs import ButtonJob, Cancelled

if TYPE_CHECKING:
    from .app import Explorer


class FaithfulnessPanel:
    """Computes (in a background thread, cancellable) and caches curves per map. ``batch_size``
    ``None``: the device's default (16 on a CPU, 64 on a GPU)."""

    def __init__(self, explorer: "Explorer", *, n_steps: int = 224, batch_size: Optional[int] = None) -> None:
        self.explorer = explorer
        self.n_steps, self.batch_size = n_steps, batch_size
        self.cache: dict[tuple, dict] = {}
        x_scale, y_scale = bq.LinearScale(min=0, max=1), bq.LinearScale(min=0, max=1)
        self.ins_line = bq.Lines(x=[], y=[], scales={"x": x_scale, "y": y_scale}, colors=["#1f77b4"],
                                 labels=["insertion"], display_legend=True)
        self.del_line = bq.Lines(x=[], y=[], scales={"x": x_scale, "y": y_scale}, colors=["#d62728"],
                                 labels=["deletion"], display_legend=True)
        axes = [bq.Axis(scale=x_scale, label="fraction of pixels inserted / deleted"),
                bq.Axis(scale=y_scale, side="left", label="class probability")]
        self.figure = bq.Figure(marks=[self.ins_line, self.del_line], axes=axes, legend_location="top-right",
                                layout=W.Layout(width="520px", height="320px"), title="")
        self.button = W.Button(description="compute curves", icon="line-chart",
                               disabled=explorer.model is None)
        self.stop_button = W.Button(description="cancel", icon="stop", disabled=True)
        self.progress = W.IntProgress(min=0, max=1, value=0, layout=W.Layout(width="200px"))
        self.summary = W.HTML("" if explorer.model is not None else
                              "<i>pass model= to the Explorer to compute insertion / deletion curves</i>")
        self.job = ButtonJob(self.button, self.stop_button)
        self.button.on_click(lambda _: self.compute())
        self.widget = W.VBox([W.HBox([self.button, self.stop_button, self.progress]), self.summary, self.figure])

    def key(self, panel: Panel) -> tuple:
        return (self.explorer.image_picker.value, panel.class_idx, panel.variant, panel.depth, panel.lnorm)

    def show_cached(self, panel: Panel) -> None:
        result = self.cache.get(self.key(panel))
        if result is None:
            self.ins_line.x, self.ins_line.y, self.del_line.x, self.del_line.y = [], [], [], []
            self.figure.title = ""
            return
        self.ins_line.x = self.del_line.x = result["x"]
        self.ins_line.y, self.del_line.y = result["insertion"], result["deletion"]
        self.figure.title = (f"insertion {result['insertion_auc']:.3f} · deletion {result['deletion_auc']:.3f}"
                             f" · ins-del {result['insertion_auc'] - result['deletion_auc']:.3f}")

    def compute(self, *, block: bool = False) -> None:
        """Compute the curves of the main panel's map (in a thread unless ``block``)."""
        if self.explorer.model is None:
            raise ValueError("the Explorer has no model: pass model= to compute faithfulness curves")
        if self.job.running:
            return
        panel = self.explorer.main_panel()
        if self.key(panel) in self.cache:
            self.show_cached(panel)
            return
        self.progress.max, self.progress.value = 2 * self.n_steps, 0
        self.job.start(lambda: self._run(panel), block=block)

    def _run(self, panel: Panel) -> None:
        ms, key = self.explorer.ms, self.key(panel)
        try:
            saliency = ms.saliency(panel.class_idx, panel.variant, panel.depth, panel.lnorm)
            def report(done: int, _total: int) -> None:
                self.job.check()
                self.progress.value = done

            model = self.explorer.model
            batch_size = self.batch_size or default_batch_size(module_device(model))
            # insertion and deletion samples share forward batches, one blur and one ranking
            curves = faithfulness_curves(model, [ms.image], [saliency], [panel.class_idx], self.n_steps,
                                         batch_size=batch_size, progress=report)[0]
            (ins_auc, ins), (del_auc, dele) = curves["insertion"], curves["deletion"]
            h, w = ms.size
            per_step = -(-h * w // self.n_steps)
            x = np.minimum(np.arange(1, self.n_steps + 1) * per_step / (h * w), 1.0)
            self.cache[key] = {"x": x, "insertion": ins, "deletion": dele,
                               "insertion_auc": ins_auc, "deletion_auc": del_auc}
            if self.key(self.explorer.main_panel()) == key:
                self.show_cached(panel)
            self.summary.value = ""
        except Cancelled:
            self.summary.value = "<i>cancelled</i>"
        except Exception as exc:  # noqa: BLE001 - shown in the widget
            self.explorer.show_error(exc)

    def cancel(self) -> None:
        """Stop a computation running in the background (at its next forward batch)."""
        self.job.cancel()

    def wait(self, timeout: Optional[float] = None) -> None:
        """Block until a computation running in the background has finished."""
        self.job.wait(timeout)
