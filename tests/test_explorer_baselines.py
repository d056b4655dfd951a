"""A baseline beside Poly-CAM in the explorer: computed in the background, then drawn and cached."""
import time

import numpy as np
import pytest

import polycam_explorer as pe
from polycam_explorer import baselines
from polycam_explorer.explorer import frames
from polycam_explorer.polycam import display_map


def _wait(predicate, timeout=60):
    end = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > end:
            pytest.fail("timed out")
        time.sleep(0.02)


def test_baseline_beside_polycam_for_the_same_class(tiny_model, tiny_x):
    ms = pe.compute_mapset(tiny_model, tiny_x, progress=False)
    ex = pe.Explorer(ms, model=tiny_model, size=64)
    try:
        ex.beside.value = "gradcam"
        assert len(ex.panels()) == 2 and ex.panels()[1].method == "gradcam"
        _wait(lambda: "computing" not in ex.captions[1].value)
        expected_map = display_map(baselines.gradcam(tiny_model, tiny_x, ex.klass.value), ms.size)
        panel = ex.panels()[1]
        expected = frames.zoom_and_fit(frames.frame(ms, panel, ex.look, values=expected_map), None,
                                       ex.canvases[1].size)
        assert np.array_equal(ex.canvases[1].pixels, expected)
        assert "Grad-CAM" in ex.captions[1].value  # named as in its paper, not by its id
        # the first panel is still Poly-CAM, and a second view of the baseline is served from the cache
        assert ex.panels()[0].method is None
        calls = []
        real = baselines.saliency
        baselines.saliency = lambda *args, **kwargs: calls.append(args) or real(*args, **kwargs)
        try:
            ex.opacity.value = 0.8
        finally:
            baselines.saliency = real
        assert calls == [] and ex.canvases[1].pixels is not None
        ex.compare.value = "variants"  # three pinned panels and the baseline: four
        assert [p.method for p in ex.panels()] == [None, None, None, "gradcam"]
    finally:
        ex.close()


def test_pin_accepts_a_baseline_and_refuses_unknown_methods(tiny_model, tiny_x):
    ms = pe.compute_mapset(tiny_model, tiny_x, progress=False)
    ex = pe.Explorer(ms, model=tiny_model, size=64)
    try:
        ex.pin({"variant": "+-"}, {"method": "ixg"})
        assert [p.method for p in ex.panels()] == [None, "ixg"]
        with pytest.raises(ValueError, match="method must be None"):
            ex.pin({}, {"method": "magic"})
    finally:
        ex.close()


def test_the_baseline_picker_lists_readable_names(tiny_model, tiny_x):
    ex = pe.Explorer(pe.compute_mapset(tiny_model, tiny_x, progress=False), model=tiny_model, size=64)
    try:
        labels = dict((value, label) for label, value in ex.beside.options)
        assert labels["sscam"] == "Smoothed Score-CAM (SS-CAM)" and labels["ixg"] == "Input × Gradient"
        assert labels["gradcam"] == "Grad-CAM" and labels[""] == "no baseline"
        assert not any(label == value for value, label in labels.items())  # no bare ids
    finally:
        ex.close()


def test_without_a_model_there_is_no_baseline_picker(tiny_model, tiny_x):
    ex = pe.Explorer(pe.compute_mapset(tiny_model, tiny_x, progress=False), size=64)
    try:
        assert ex.beside.layout.display == "none"
    finally:
        ex.close()
