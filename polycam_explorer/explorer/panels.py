"""The panels side by side: the compare control's presets, checked pins, captions (no widgets).

A pin is a dict fixing some fields of :class:`frames.Panel` (``class_idx``, ``variant``,
``depth``, ``lnorm``, ``other_class``, ``method``); the fields it leaves out follow the controls.
"""
from __future__ import annotations

import html
from dataclasses import replace
from typing import Optional

import numpy as np

from .. import render
from ..baselines import METHODS
from ..mapset import MapSet
from ..polycam import canonical_variant
from .frames import Look, Panel
from .state import PIN_FIELDS, ViewState

BASELINES = tuple(METHODS)  # the libraries behind them are imported only when one is used
BASELINE_NAMES = {  # what the baselines are called in their papers (the ids are the API's)
    "gradcam": "Grad-CAM", "gradcampp": "Grad-CAM++", "smoothgradcampp": "Smooth Grad-CAM++",
    "scorecam": "Score-CAM", "sscam": "Smoothed Score-CAM (SS-CAM)", "iscam": "Integrated Score-CAM (IS-CAM)",
    "layercam": "Layer-CAM", "layercamfusion": "Layer-CAM (fusion of layers)", "ig": "Integrated Gradients",
    "ixg": "Input × Gradient", "sg": "SmoothGrad", "occlusion": "Occlusion", "rise": "RISE",
}
VARIANT_OPTIONS = [("PCAM+", "+"), ("PCAM-", "-"), ("PCAM±", "+-")]
VARIANT_NAMES = {v: n for n, v in VARIANT_OPTIONS}
COMPARE_OPTIONS = [("single view", "none"), ("the three variants", "variants"),
                   ("top classes", "classes"), ("depths", "depths"), ("LNorm on / off", "lnorm")]


def baseline_name(method: str) -> str:
    """The readable name of a baseline id (the id itself for one this table does not know)."""
    return BASELINE_NAMES.get(method, method)


def main_panel(state: ViewState, ms: MapSet) -> Panel:
    """The panel the controls describe (depth clamped to what is probed so far)."""
    depth = min(int(state.depth), max(1, ms.depth_available))
    return Panel(int(state.klass), state.variant, depth, bool(state.lnorm), int(state.other_class))


def panels_for(state: ViewState, ms: MapSet) -> list[Panel]:
    """The panels on screen: the main one, or one per pin, and the baseline ``beside`` last."""
    return arrange(main_panel(state, ms), state.pins, state.beside or None, ms.depth_available)


def look(state: ViewState) -> Look:
    """How the panels are drawn (mode, colormap, opacity, zoom)."""
    return Look(state.mode, state.cmap, float(state.opacity), state.zoom)


def panel_display_size(image_size: tuple[int, int], zoom, n: int, longest: int) -> tuple[int, int]:
    """The on-screen size of each of ``n`` panels: the (zoomed) image's aspect ratio, the
    longest side ``longest`` for one panel and smaller for several."""
    h, w = image_size
    box = zoom or (0, 0, h, w)
    side = longest if n == 1 else max(160, int(longest * (0.75 if n > 2 else 0.9)))
    return render.fitted_size((box[2] - box[0], box[3] - box[1]), side)


def arrange(base: Panel, pins: list[dict], beside: Optional[str], depth_available: int) -> list[Panel]:
    """The panels on screen: ``base`` (the controls), or one per pin, then the baseline ``beside``
    (if any) last, at most four; depths clamped to those probed so far."""
    pins = list(pins or [{}])
    if beside:
        pins = pins[:3] + [{"method": beside}]
    if pins == [{}]:
        return [base]
    out = []
    for pin in pins:
        panel = replace(base, **pin)
        out.append(replace(panel, depth=min(panel.depth, max(1, depth_available))))
    return out


def checked_pins(overrides: tuple[dict, ...], ms: Optional[MapSet]) -> list[dict]:
    """Two to four pins (or none: a single view), copied and checked against ``ms`` if given.

    Raises:
        ValueError: a wrong number of pins, an unknown field or a bad value, naming the field.
    """
    if overrides and not 2 <= len(overrides) <= 4:
        raise ValueError(f"compare takes 2 to 4 panels, got {len(overrides)}")
    pins = []
    for o in overrides:
        unknown = set(o) - PIN_FIELDS
        if unknown:
            raise ValueError(f"a panel may fix {sorted(PIN_FIELDS)}, not {sorted(unknown)}")
        pins.append(checked_pin(dict(o), ms))
    return pins


def checked_pin(pin: dict, ms: Optional[MapSet]) -> dict:
    """A pinned panel with ``"±"`` read as ``"+-"``; bad values raise ValueError naming the field."""
    if "variant" in pin:
        pin["variant"] = canonical_variant(pin["variant"])
    if pin.get("method") is not None and pin["method"] not in BASELINES:
        raise ValueError(f"method must be None (Poly-CAM) or one of {list(BASELINES)}, got {pin['method']!r}")
    if "lnorm" in pin:
        pin["lnorm"] = bool(pin["lnorm"])
    limits = {"class_idx": (0, ms.num_classes - 1), "other_class": (0, ms.num_classes - 1),
              "depth": (1, len(ms.layers))} if ms is not None else {}
    for key in ("class_idx", "other_class", "depth"):
        if key not in pin:
            continue
        value = pin[key]
        lo, hi = limits.get(key, (0 if key != "depth" else 1, value))
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not lo <= value <= hi:
            raise ValueError(f"{key} must be an int in {lo}..{hi}, got {value!r}")
        pin[key] = int(value)
    return pin


def preset(name: str, ms: MapSet) -> list[dict]:
    """The pins of a compare preset (a value of ``COMPARE_OPTIONS``) for ``ms``; ``[]``: one view."""
    if name == "variants":
        return [{"variant": v} for _, v in VARIANT_OPTIONS]
    if name == "classes":
        return [{"class_idx": c} for c, _, _ in ms.topk(min(3, ms.num_classes))]
    if name == "depths":
        L = len(ms.layers)
        depths = sorted({1, max(1, L // 3), max(1, (2 * L) // 3), L}) if L > 4 else range(1, L + 1)
        return [{"depth": d} for d in depths][:4] if L > 1 else []
    if name == "lnorm":
        return [{"lnorm": True}, {"lnorm": False}]
    return []


def depth_options(ms: MapSet) -> list[tuple[str, int]]:
    """The depth slider's options: ``"depth: layer (h×w)"`` for the depths probed so far,
    1 (coarsest) .. ``depth_available`` (all L once the sweep is complete)."""
    out = []
    for depth in range(1, max(1, ms.depth_available) + 1):
        index = len(ms.layers) - depth
        h, w = ms.activations[index].shape[-2:]
        out.append((f"{depth}: {ms.layers[index]} ({h}×{w})", depth))
    return out


def caption(ms: MapSet, panel: Panel, *, against: Optional[int] = None, computing: bool = False) -> str:
    """HTML naming what ``panel`` shows: method or variant, class and probability, depth and layer;
    ``against``: the contrast view's second class; ``computing``: a baseline map not ready yet."""
    klass = f"{html.escape(ms.class_names[panel.class_idx])} ({float(ms.probs[panel.class_idx]):.3f})"
    if panel.method is not None:
        return f"{html.escape(baseline_name(panel.method))} · {klass}" + (" · <i>computing…</i>" if computing else "")
    layer = ms.layers[len(ms.layers) - panel.depth]
    text = (f"{VARIANT_NAMES[panel.variant]} · {klass} · depth {panel.depth}/{len(ms.layers)} ({layer})"
            + ("" if panel.lnorm else " · no LNorm"))
    if against is not None:
        text += f" · against {html.escape(ms.class_names[against])}"
    if ms.estimate:  # a progressive sweep's partial channel sum (iter_mapset(progressive=True))
        text += (f" · <b>estimate</b>: {ms.channels_done}/{ms.channels_total} channels of "
                 f"{html.escape(ms.layers[-1])} probed")
    return text
