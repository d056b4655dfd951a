"""A baseline beside Poly-CAM: the ``beside`` control (methods by their papers' names). The maps
are computed in the background by :meth:`Jobs.baseline` and kept in the store; the main view
draws them."""
from __future__ import annotations

import ipywidgets as W

from ..controls import Bindings
from ..jobs import Jobs
from ..panels import BASELINES, baseline_name
from ..state import ViewState
from ..store import Store


class BaselinesView:
    """The ``beside`` dropdown, bound to ``state.beside`` (hidden without a model)."""

    def __init__(self, state: ViewState, store: Store, jobs: Jobs) -> None:
        self.state, self.store, self.jobs = state, store, jobs
        options = [("no baseline", "")] + sorted(((baseline_name(m), m) for m in BASELINES), key=lambda o: o[0].lower())
        self.beside = W.Dropdown(description="beside", value="", options=options,
                                 layout=W.Layout(display=None if jobs.model is not None else "none"))
        self.bindings = Bindings(state)
        self.bindings.bind("beside", self.beside)
