"""A baseline beside Poly-CAM in the explorer: computed in the background, then drawn and cached."""
import threading
import time

import numpy as np
import pytest
import torch

import polycam_explorer as pe
from polycam_explorer import baseline_common as common
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


def _slow_baseline(forward_passes: list, seconds: float = 30.0):
    """A baseline that runs forward passes for ``seconds`` (as Score-CAM's masks or RISE's do)."""
    def slow(model, x, class_idx, **options):
        net = pe.as_classifier(model).net
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            with torch.no_grad():
                net(x)
            forward_passes.append(1)
            time.sleep(0.01)
        return torch.zeros(x.shape[-2:])
    return slow


def test_a_baseline_stops_at_its_next_forward_pass_once_cancelled(tiny_model, tiny_x, monkeypatch):
    """The methods run inside torchcam and Captum: a cancelled one stops at a forward pass of the
    network, in its own thread only; the network is left without the hook."""
    passes: list = []
    monkeypatch.setitem(baselines.METHODS, "rise", _slow_baseline(passes))
    net = tiny_model.net
    beside: list = []

    def cancel() -> bool:  # asked at each of the baseline's forward passes
        if len(passes) == 3:  # meanwhile another thread runs the same network: not stopped
            thread = threading.Thread(target=lambda: beside.append(net(tiny_x)))
            thread.start()
            thread.join()
        return len(passes) >= 3

    start = time.monotonic()
    with pytest.raises(common.BaselineCancelled):
        baselines.saliency("rise", tiny_model, tiny_x, 0, cancel=cancel)
    assert len(passes) == 3 and time.monotonic() - start < 10
    assert len(beside) == 1 and beside[0].shape == (1, 5)
    assert not net._forward_pre_hooks
    with pytest.raises(TypeError, match="cancel must be"):
        baselines.saliency("gradcam", tiny_model, tiny_x, 0, cancel="stop")


def test_a_baseline_left_behind_is_cancelled_and_the_one_on_screen_computed(tiny_model, tiny_x, monkeypatch):
    """Switching class while a slow baseline runs stops it (it would hold a CPU core for minutes)
    and computes the new class's; going back starts it anew. Closing stops what runs."""
    passes: list = []
    monkeypatch.setitem(baselines.METHODS, "rise", _slow_baseline(passes))
    ms = pe.compute_mapset(tiny_model, tiny_x, progress=False)
    ex = pe.Explorer(ms, model=tiny_model, size=64)
    errors: list = []
    ex.store.subscribe(lambda event: event.kind == "error" and errors.append(event.value))
    try:
        first = ex.klass.value
        ex.beside.value = "rise"
        _wait(lambda: passes)
        assert ex.jobs.baseline_running(ex.state.image, first, "rise")
        second = next(c for c in range(5) if c != first)
        ex.klass.value = second
        _wait(lambda: ex.jobs.baseline_running(ex.state.image, second, "rise"), timeout=10)
        _wait(lambda: not ex.jobs.baseline_running(ex.state.image, first, "rise"), timeout=10)
        ex.klass.value = first  # back: computed again, not left as cancelled
        _wait(lambda: ex.jobs.baseline_running(ex.state.image, first, "rise"), timeout=10)
        ex.close()
        _wait(lambda: not any(ex.jobs.baseline_running(ex.state.image, c, "rise") for c in range(5)), timeout=10)
    finally:
        ex.close()
    assert errors == []  # a cancelled baseline is no error


def test_every_cancellation_is_one_kind(tiny_model, tiny_x):
    """A sweep's, a report's, a job's and a baseline's cancellation: one ``except pe.Cancelled``."""
    from polycam_explorer.atlas.report import ReportCancelled

    with pytest.raises(pe.Cancelled):
        pe.compute_mapset(tiny_model, tiny_x, progress=False, cancel=lambda: True)
    with pytest.raises(pe.Cancelled):
        baselines.saliency("gradcam", tiny_model, tiny_x, 0, cancel=lambda: True)
    assert issubclass(ReportCancelled, pe.Cancelled)
