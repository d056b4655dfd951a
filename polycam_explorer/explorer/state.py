"""What the explorer shows, as one observable object: :class:`ViewState`.

Every control is linked to a trait here and every view observes the traits it draws; setting a
trait from code is the same as moving its control (``explorer.state.variant = "-"``). No widgets
and no map sets here: the limits that depend on the image on screen (``n_classes``, ``n_depths``,
``image_size``) are traits the app sets when the image changes.
"""
from __future__ import annotations

import contextlib
import math
from typing import Callable, ContextManager, Optional

import traitlets as T

from .. import render
from ..polycam import canonical_variant

MODES = ("overlay", "heatmap", "masked", "original", "contrast", "ins-vs-del")
COMPARE_PRESETS = ("none", "variants", "classes", "depths", "lnorm")
PIN_FIELDS = frozenset({"class_idx", "variant", "depth", "lnorm", "other_class", "method"})


class ViewState(T.HasTraits):
    """The explorer's view state (observe it with ``state.observe(callback, names=[...])``).

    Attributes:
        image (str): the name of the map set on screen ('' while there is none).
        klass (int): the class of the main panel, ``0 .. n_classes - 1``.
        other_class (int): the second class of the contrast view ("against").
        variant (str): ``"+"``, ``"-"`` or ``"+-"`` (``"±"`` is read as ``"+-"``).
        depth (int): the requested recursion depth, ``1 .. n_depths`` (1 = coarsest layer only);
            while a sweep is still running the views show ``min(depth, depths probed)``.
        lnorm (bool): LNorm on (the paper) or off (the ablation).
        mode (str): the view, one of :data:`MODES`.
        cmap (str): a matplotlib colormap name (the controls offer :data:`render.COLORMAPS`).
        opacity (float): opacity of the overlay, a finite number in [0, 1].
        zoom (tuple | None): ``(top, left, bottom, right)`` in image pixels, or None (whole image).
        compare (str): the compare preset, one of :data:`COMPARE_PRESETS` (sets ``pins``).
        pins (list[dict]): the panels of a comparison, each fixing some of :data:`PIN_FIELDS`;
            ``[]`` is a single view.
        beside (str): a baseline method shown beside Poly-CAM ('' for none).
        n_classes, n_depths (int): the limits of ``klass``/``other_class`` and ``depth`` for the
            image on screen (set by the app).
        image_size (tuple): ``(H, W)`` of the image on screen (the limit of ``zoom``).
    """

    def __init__(self, *, batch: Optional[Callable[[], ContextManager]] = None, **traits) -> None:
        """``batch``: a context manager factory around the delivery of every change (the explorer
        passes its draw scheduler's hold, so a change draws once however many observers react)."""
        self._batch = batch or contextlib.nullcontext
        super().__init__(**traits)

    def notify_change(self, change) -> None:
        with self._batch():
            super().notify_change(change)

    def snapshot(self) -> "ViewState":
        """A copy of what is shown now, observed by nothing: work that reads the state several
        times (an export: its file name, captions and pixels) reads one view even if a sweep's
        thread changes the image meanwhile.

        Raises:
            traitlets.TraitError: taken in the middle of such a change (the new image with the old
                class, say); asking again gives the state once it is complete.
        """
        copy = ViewState()
        with copy.hold_trait_notifications():  # the validators see every trait copied at once
            for name in self.trait_names():
                setattr(copy, name, getattr(self, name))
        return copy

    image = T.Unicode("")
    klass = T.Int(0)
    other_class = T.Int(0)
    variant = T.Unicode("+-")
    depth = T.Int(1)
    lnorm = T.Bool(True)
    mode = T.Unicode("overlay")
    cmap = T.Unicode("turbo")
    opacity = T.Float(0.5)
    zoom = T.Tuple(allow_none=True, default_value=None)
    compare = T.Unicode("none")
    pins = T.List()
    beside = T.Unicode("")
    n_classes = T.Int(1)
    n_depths = T.Int(1)
    image_size = T.Tuple((1, 1))

    @T.validate("variant")
    def _valid_variant(self, proposal):
        try:
            return canonical_variant(proposal["value"])
        except ValueError as exc:
            raise T.TraitError(str(exc)) from None

    @T.validate("opacity")
    def _valid_opacity(self, proposal):
        value = proposal["value"]
        if not math.isfinite(value) or not 0.0 <= value <= 1.0:
            raise T.TraitError(f"opacity must be a number in [0, 1], got {value!r}")
        return float(value)

    @T.validate("depth")
    def _valid_depth(self, proposal):
        value = proposal["value"]
        if not 1 <= value <= self.n_depths:
            raise T.TraitError(f"depth must be an int in 1..{self.n_depths} (the image's depths), got {value!r}")
        return value

    @T.validate("klass", "other_class")
    def _valid_class(self, proposal):
        value = proposal["value"]
        if not 0 <= value < self.n_classes:
            raise T.TraitError(f"{proposal['trait'].name} must be a class index in 0..{self.n_classes - 1}, "
                               f"got {value!r}")
        return value

    @T.validate("mode")
    def _valid_mode(self, proposal):
        if proposal["value"] not in MODES:
            raise T.TraitError(f"mode must be one of {MODES}, got {proposal['value']!r}")
        return proposal["value"]

    @T.validate("cmap")
    def _valid_cmap(self, proposal):
        try:
            render.colormap(proposal["value"])
        except ValueError as exc:
            raise T.TraitError(str(exc)) from None
        return proposal["value"]

    @T.validate("compare")
    def _valid_compare(self, proposal):
        if proposal["value"] not in COMPARE_PRESETS:
            raise T.TraitError(f"compare must be one of {COMPARE_PRESETS}, got {proposal['value']!r}")
        return proposal["value"]

    @T.validate("zoom")
    def _valid_zoom(self, proposal):
        box = proposal["value"]
        if box is None:
            return None
        h, w = self.image_size
        try:
            top, left, bottom, right = (int(v) for v in box)
        except (TypeError, ValueError):
            raise T.TraitError(f"zoom must be (top, left, bottom, right) or None, got {box!r}") from None
        if not (0 <= top < bottom <= h and 0 <= left < right <= w):
            raise T.TraitError(f"zoom box must lie inside the {h} x {w} image, got {box}")
        return (top, left, bottom, right)

    @T.validate("pins")
    def _valid_pins(self, proposal):
        pins = proposal["value"]
        if pins and not 2 <= len(pins) <= 4:
            raise T.TraitError(f"compare takes 2 to 4 panels, got {len(pins)}")
        for pin in pins:
            if not isinstance(pin, dict) or set(pin) - PIN_FIELDS:
                raise T.TraitError(f"a panel may fix {sorted(PIN_FIELDS)}, got {pin!r}")
        return [dict(p) for p in pins]
