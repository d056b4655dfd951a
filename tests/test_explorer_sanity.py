"""The explorer's Sanity tab: cascading randomisation of the main panel's map, on demand."""
import io
import re
import threading

import numpy as np
import pytest
from PIL import Image

import polycam_explorer as pe
from polycam_explorer import render
from polycam_explorer.explorer.views import sanity
from polycam_explorer.robustness import cascading_randomization, parameter_groups, randomization_strip

pytest.importorskip("scipy")
pytest.importorskip("skimage")

SIZE = 64
TOP = 3  # the tiny model's top-1 class on tiny_x


@pytest.fixture
def ex(ms, tiny_model):
    explorer = pe.Explorer(ms, model=tiny_model, size=SIZE)
    yield explorer
    explorer.close()


def rows(panel):
    """(group name, Spearman, SSIM) of each row of the tab's table."""
    found = re.findall(r"<tr><td>\d+</td><td><code>([^<]*)</code></td><td>[^<]*</td><td>\d+</td><td>([^<]*)</td>"
                       r"<td>([^<]*)</td>", panel.table.value)
    return [(name, float(rho.replace("n/a", "nan")), float(ssim)) for name, rho, ssim in found]


def errors(explorer):
    return "color:#b00020" in explorer.status.value


@pytest.mark.parametrize("granularity", ["stages", "blocks", "layers"])
def test_check_shows_one_row_per_group_and_the_strip(ex, ms, tiny_model, tiny_x, granularity):
    ex.variant.value = "+"
    ex.sanity.granularity.value = granularity
    ex.sanity.compute(block=True)
    assert not errors(ex) and ex.sanity.message.value == ""
    groups = parameter_groups(tiny_model, tiny_x, granularity)
    table = rows(ex.sanity)
    assert [name for name, _, _ in table] == list(reversed(groups))
    assert all(-1 <= rho <= 1 for _, rho, _ in table)
    # the same numbers as the check run directly on the same map
    direct = cascading_randomization(tiny_model, tiny_x, TOP, lambda m, x, c: pe.compute_mapset(
        m, x, ms.layers, progress=False).saliency(c, "+"), granularity=granularity)
    np.testing.assert_allclose([rho for _, rho, _ in table], [s.spearman for s in direct], atol=5e-4)
    strip = np.asarray(Image.open(io.BytesIO(ex.sanity.strip.value)).convert("RGB"))
    expected = randomization_strip(direct, render.image_uint8(ms.image, ms.mean, ms.std))
    assert strip.shape == expected.shape and strip.std() > 0
    assert ex.sanity.strip.layout.display is None
    assert ex.sanity.progress.value == ex.sanity.progress.max > 0
    assert not ex.sanity.button.disabled and ex.sanity.stop_button.disabled


def test_result_belongs_to_its_class_variant_and_granularity(ex, monkeypatch):
    ex.sanity.compute(block=True)
    first = (ex.sanity.table.value, ex.sanity.strip.value)
    key = ex.sanity.key(ex.main_panel())
    assert first[0] and first[1] and list(ex.sanity.cache) == [key]

    def fail(*args, **kwargs):
        raise AssertionError("recomputed a cached check")

    monkeypatch.setattr(sanity, "iter_cascading_randomization", fail)
    for control, other in ((ex.klass, 0), (ex.variant, "-"), (ex.sanity.granularity, "blocks")):
        before = control.value
        control.value = other
        assert ex.sanity.key(ex.main_panel()) != key
        assert ex.sanity.table.value == "" and ex.sanity.strip.layout.display == "none"
        control.value = before  # back: the cached result is shown again, not recomputed
        assert (ex.sanity.table.value, ex.sanity.strip.value) == first
    ex.sanity.compute(block=True)  # cached: shown, not recomputed
    assert not errors(ex)


def test_cancel_stops_the_check(ex, monkeypatch):
    real, calls = sanity.compute_mapset, []

    def counted(*args, **kwargs):
        calls.append(kwargs.get("cancel"))
        if len(calls) == 2:
            ex.sanity.cancel()  # as if the cancel button were clicked during the second map
        return real(*args, **kwargs)

    monkeypatch.setattr(sanity, "compute_mapset", counted)
    ex.sanity.granularity.value = "layers"  # five maps when not cancelled
    ex.sanity.compute(block=True)
    assert len(calls) == 2 and calls[0] is not None  # the sweep itself was told to stop
    assert "cancelled" in ex.sanity.message.value and not errors(ex)
    assert ex.sanity.cache == {} and ex.sanity.table.value == ""
    assert not ex.sanity.button.disabled and ex.sanity.stop_button.disabled
    monkeypatch.setattr(sanity, "compute_mapset", real)
    ex.sanity.compute(block=True)  # a later run starts afresh
    assert len(rows(ex.sanity)) == 4


def test_the_strip_fills_step_by_step(ex, ms, tiny_model, tiny_x, monkeypatch):
    """Each step is on screen (table row and strip tile) before the next map is computed."""
    real, seen = sanity.compute_mapset, []

    def watched(*args, **kwargs):
        table = ex.sanity.table.value
        done = len(rows(ex.sanity))
        pending = table.count("<td>…</td><td>…</td>")
        tiles = 0
        if ex.sanity.strip.value:  # tiles of 112 pixels (the images are square) and 4 of padding
            tiles = (Image.open(io.BytesIO(ex.sanity.strip.value)).size[0] - 4) // 116
        seen.append((done, pending, ex.sanity.strip.layout.display, tiles))
        return real(*args, **kwargs)

    monkeypatch.setattr(sanity, "compute_mapset", watched)
    ex.sanity.compute(block=True)
    groups = parameter_groups(tiny_model, tiny_x, "stages")
    n = len(groups)
    # before the original map: nothing scored, every stage pending; before map k+1: k rows and k+1 tiles
    assert [d for d, _, _, _ in seen] == list(range(n + 1))[:1] + list(range(n))
    assert [p for _, p, _, _ in seen] == [n] + [n - k for k in range(n)]
    assert [shown for _, _, shown, _ in seen][2:] == [None] * (n - 1)
    assert [t for _, _, _, t in seen][2:] == list(range(2, n + 1))
    assert len(rows(ex.sanity)) == n and "…" not in ex.sanity.table.value
    assert "With every group random" in ex.sanity.table.value


def test_the_tab_says_what_the_numbers_mean(ex):
    text = ex.sanity.widget.children[1].children[0].value
    for words in ("Spearman", "rank correlation", "SSIM", "Adebayo", "Figure 26", "Passing", "towards 0",
                  "resolution stages", "edges"):
        assert words in text, words
    assert ex.sanity.granularity.value == "stages"
    ex.sanity.compute(block=True)
    assert "output" in ex.sanity.table.value and "×" in ex.sanity.table.value  # each stage's resolution


def test_runs_in_the_background_and_close_cancels_it(ms, tiny_model, monkeypatch):
    real, calls = sanity.compute_mapset, []
    started, go = threading.Event(), threading.Event()

    def held(*args, **kwargs):
        calls.append(1)
        started.set()
        go.wait(30)
        return real(*args, **kwargs)

    monkeypatch.setattr(sanity, "compute_mapset", held)
    ex = pe.Explorer(ms, model=tiny_model, size=SIZE)
    try:
        ex.sanity.compute()
        assert started.wait(30)
        assert ex.sanity.button.disabled and not ex.sanity.stop_button.disabled
        sent = ex.canvases[0].frames_sent
        ex.variant.value = "+"  # the controls stay usable while the check runs
        assert ex.canvases[0].frames_sent == sent + 1
    finally:
        ex.close()
    go.set()
    ex.sanity.wait(30)
    assert not ex.sanity.job.running
    assert calls == [1] and ex.sanity.cache == {}  # stopped inside the first sweep


def test_error_is_shown_and_the_button_comes_back(ex, monkeypatch):
    def fail(*args, **kwargs):
        raise RuntimeError("model exploded")

    monkeypatch.setattr(sanity, "iter_cascading_randomization", fail)
    ex.sanity.compute(block=True)
    assert "model exploded" in ex.sanity.message.value and errors(ex)
    assert not ex.sanity.button.disabled and ex.sanity.stop_button.disabled


def test_without_a_model_the_tab_says_so(ms):
    ex = pe.Explorer(ms, size=SIZE)
    try:
        assert ex.sanity.controls.layout.display == "none"
        assert "model=" in ex.sanity.message.value
        with pytest.raises(ValueError, match="no model"):
            ex.sanity.compute(block=True)
    finally:
        ex.close()


def test_without_the_eval_extra_the_tab_names_it(ms, tiny_model, monkeypatch):
    monkeypatch.setattr(sanity, "_missing_eval", lambda: ["scikit-image"])
    ex = pe.Explorer(ms, model=tiny_model, size=SIZE)
    try:
        assert ex.sanity.button.disabled
        assert "scikit-image" in ex.sanity.message.value
        assert "pip install polycam-explorer[eval]" in ex.sanity.message.value
        with pytest.raises(ImportError, match=re.escape("pip install polycam-explorer[eval]")):
            ex.sanity.compute(block=True)
    finally:
        ex.close()
