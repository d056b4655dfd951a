"""The explorer's parts on their own: the panel arrangement (no widgets) and the recursion view."""
import numpy as np
import pytest

from polycam_explorer import render
from polycam_explorer.explorer import panels
from polycam_explorer.explorer.frames import Panel
from polycam_explorer.explorer.jobs import Jobs
from polycam_explorer.explorer.state import ViewState
from polycam_explorer.explorer.store import Store
from polycam_explorer.explorer.views.recursion import STRIP_PAD, STRIP_TILE, RecursionView


def test_arrange_puts_the_baseline_last_and_clamps_depths():
    base = Panel(3, "+-", 3, True)
    assert panels.arrange(base, [], None, 3) == [base]
    assert panels.arrange(base, [], "gradcam", 1) == [Panel(3, "+-", 1, True),
                                                     Panel(3, "+-", 1, True, method="gradcam")]
    four = panels.arrange(base, [{"variant": v} for v in ("+", "-", "+-")] + [{"depth": 2}], "ixg", 3)
    assert [p.variant for p in four] == ["+", "-", "+-", "+-"] and four[-1].method == "ixg"


def test_checked_pins_name_the_bad_field(ms):
    assert panels.checked_pins(({"variant": "±"}, {"depth": np.int64(2)}), ms) == [{"variant": "+-"}, {"depth": 2}]
    with pytest.raises(ValueError, match="2 to 4"):
        panels.checked_pins(({},), ms)
    with pytest.raises(ValueError, match="depth must be an int in 1..3"):
        panels.checked_pins(({"depth": 4}, {}), ms)
    with pytest.raises(ValueError, match="not \\['colour'\\]"):
        panels.checked_pins(({"colour": 1}, {}), ms)


def test_caption_names_variant_class_depth_and_the_contrast_class(ms):
    text = panels.caption(ms, Panel(3, "-", 2, False), against=1)
    assert text.startswith("PCAM- · c3 (") and "depth 2/3 (features.3)" in text
    assert "no LNorm" in text and text.endswith("against c1")
    assert "computing" in panels.caption(ms, Panel(3, method="gradcam"), computing=True)


def test_baselines_are_named_as_in_their_papers(ms):
    assert panels.caption(ms, Panel(3, method="sscam")).startswith("Smoothed Score-CAM (SS-CAM) · c3")
    assert panels.baseline_name("ixg") == "Input × Gradient" and panels.baseline_name("gradcampp") == "Grad-CAM++"
    assert set(panels.BASELINE_NAMES) == set(panels.BASELINES)  # every method has a readable name


def test_recursion_view_reports_clicks_on_drawn_thumbnails_only(ms):
    store = Store({"x": ms})
    state = ViewState()  # no image on screen: the view draws only what it is handed
    state.n_depths = 3
    view = RecursionView(state, store, Jobs(store))
    clicked = []
    state.observe(lambda change: clicked.append(change["new"]), names="depth")
    try:
        view.click(STRIP_PAD + 5, 10)  # nothing drawn yet
        image = render.image_uint8(ms.image, ms.mean, ms.std)
        view.render(ms, Panel(3, "+-", 2, True), image, "turbo")
        for depth in (2, 1, 3):
            view.click(STRIP_PAD + (depth - 1) * (STRIP_TILE + STRIP_PAD) + STRIP_TILE // 2, 10)
        view.click(3 * (STRIP_TILE + STRIP_PAD) + 20, 10)  # beyond the last thumbnail
        assert clicked == [2, 1, 3]  # a click sets the state's depth
        sent = view.strip.frames_sent, view.teaching.frames_sent
        view.render(ms, Panel(3, "+-", 2, True), image, "turbo")  # nothing changed: nothing is sent again
        assert (view.strip.frames_sent, view.teaching.frames_sent) == sent
    finally:
        view.close()
    assert view.strip.canvas.comm is None and view.caption.comm is None
