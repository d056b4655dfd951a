"""The faithfulness tab: insertion and deletion curves of the main panel's map (bqplot), on demand."""
from __future__ import annotations

from typing import Optional

import bqplot as bq
import ipywidgets as W
import numpy as np

from ...cache import default_batch_size
from ...layers import module_device
from ...metrics import faithfulness_curves
from ..jobs import Jobs, JobTab
from ..state import ViewState
from ..store import Store


INSERTION_COLOR, DELETION_COLOR = "#1f77b4", "#d62728"
# the key sits above the chart: drawn inside it, bqplot's legend covered the curves' ends
KEY_HTML = (f"<span style='font-size:90%'><span style='color:{INSERTION_COLOR}'>━━ insertion</span> "
            f"(higher is better) &nbsp; <span style='color:{DELETION_COLOR}'>━━ deletion</span> "
            f"(lower is better)</span>")


class FaithfulnessView(JobTab):
    """Computes (in a background thread, cancellable) and keeps curves per map; those of the main
    panel are shown. ``batch_size`` None: the device's default (16 on a CPU, 64 on a GPU)."""

    what = "curves"

    def __init__(self, state: ViewState, store: Store, jobs: Jobs, *, n_steps: int = 224,
                 batch_size: Optional[int] = None) -> None:
        self.n_steps, self.batch_size = n_steps, batch_size
        x_scale, y_scale = bq.LinearScale(min=0, max=1), bq.LinearScale(min=0, max=1)
        self.ins_line = bq.Lines(x=[], y=[], scales={"x": x_scale, "y": y_scale}, colors=[INSERTION_COLOR],
                                 labels=["insertion"], display_legend=False)
        self.del_line = bq.Lines(x=[], y=[], scales={"x": x_scale, "y": y_scale}, colors=[DELETION_COLOR],
                                 labels=["deletion"], display_legend=False)
        axes = [bq.Axis(scale=x_scale, label="fraction of pixels inserted / deleted"),
                bq.Axis(scale=y_scale, side="left", label="class probability")]
        self.figure = bq.Figure(marks=[self.ins_line, self.del_line], axes=axes,
                                layout=W.Layout(width="520px", height="320px"), title="")
        self.legend = W.HTML(KEY_HTML)
        super().__init__(state, store, jobs, label="compute curves")
        self.summary = self.message
        if jobs.model is None:
            self.job.message = "<i>pass model= to the Explorer to compute insertion / deletion curves</i>"
        # the chart joins the page with its first curves: a bqplot figure laid out in a hidden tab
        # measures zero pixels and draws rectangles of negative size (console errors)
        self.widget = W.VBox([W.HBox([self.button, self.stop_button, self.progress, self.time_left]), self.summary, self.legend])

    def key(self, panel) -> tuple:
        return (self.state.image, panel.class_idx, panel.variant, panel.depth, panel.lnorm)

    def check_available(self) -> None:
        if self.jobs.model is None:
            raise ValueError("the Explorer has no model: pass model= to compute faithfulness curves")

    def show(self, result: Optional[dict], key) -> None:
        if not self.job.running:  # the bar tells about the map on screen: full with curves, else empty
            self.job.total = 2 * self.n_steps
            self.job.done = self.job.total if result is not None else 0
        if result is None:
            self.ins_line.x, self.ins_line.y, self.del_line.x, self.del_line.y = [], [], [], []
            self.figure.title = ""
            return
        if self.figure not in self.widget.children:
            self.widget.children = (*self.widget.children, self.figure)
        self.ins_line.x = self.del_line.x = result["x"]
        self.ins_line.y, self.del_line.y = result["insertion"], result["deletion"]
        self.figure.title = (f"insertion {result['insertion_auc']:.3f} · deletion {result['deletion_auc']:.3f}"
                             f" · ins-del {result['insertion_auc'] - result['deletion_auc']:.3f}")

    def run(self, key: tuple, ms, panel) -> dict:
        self.job.report(0, 2 * self.n_steps)
        saliency = ms.saliency(panel.class_idx, panel.variant, panel.depth, panel.lnorm)
        model = self.jobs.model
        batch_size = self.batch_size or default_batch_size(module_device(model))
        # insertion and deletion samples share forward batches, one blur and one ranking
        curves = faithfulness_curves(model, [ms.image], [saliency], [panel.class_idx], self.n_steps,
                                     batch_size=batch_size, progress=lambda done, _total: self.job.report(done))[0]
        (ins_auc, ins), (del_auc, dele) = curves["insertion"], curves["deletion"]
        h, w = ms.size
        per_step = -(-h * w // self.n_steps)
        x = np.minimum(np.arange(1, self.n_steps + 1) * per_step / (h * w), 1.0)
        self.job.report(2 * self.n_steps)
        return {"x": x, "insertion": ins, "deletion": dele, "insertion_auc": ins_auc, "deletion_auc": del_auc}
