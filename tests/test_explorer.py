"""The Explorer widget without a browser: set a control, assert what the canvas received.

Expected pixels are built from the pure functions of ``frames`` with explicitly written panels,
so a control wired to the wrong field (or not redrawing) fails here.
"""
import re

import numpy as np
import pytest
import torch
from conftest import TinyNet
from PIL import Image

import polycam_explorer as pe
from polycam_explorer import render
from polycam_explorer.explorer import frames
from polycam_explorer.explorer.frames import Look, Panel
from polycam_explorer.explorer.views import faithfulness

SIZE = 64  # panel size on screen: 4 canvas pixels per pixel of the 16 x 16 tiny image
TOP = 3  # the tiny model's top-1 class on tiny_x (then 1, 0, 4, 2)


@pytest.fixture
def other_ms(tiny_x):
    """A map set whose top-1 class differs (another seed of the tiny network): class 1."""
    model = pe.Classifier(TinyNet(seed=2).eval(), name="tiny2", mean=(0.5,) * 3, std=(0.5,) * 3,
                          input_size=(16, 16), class_names=[f"c{i}" for i in range(5)])
    ms = pe.compute_mapset(model, -tiny_x, progress=False)
    assert ms.topk(1)[0][0] == 1
    return ms


@pytest.fixture
def explorer(ms, tmp_path):
    ex = pe.Explorer(ms, size=SIZE, export_dir=tmp_path / "exports")
    yield ex
    ex.close()


def shown(ms, panel, look=Look(), size=(SIZE, SIZE)):
    """What a canvas of ``size`` must hold for ``panel`` drawn with ``look``."""
    return frames.zoom_and_fit(frames.frame(ms, panel, look), look.zoom, size)


def assert_shows(canvas, expected):
    assert canvas.pixels is not None
    assert canvas.pixels.shape == expected.shape
    assert np.array_equal(canvas.pixels, expected)


def errors(explorer):
    return "color:#b00020" in explorer.status.value


# ----- the main view ----------------------------------------------------------------------------
def test_first_view_is_the_top_class_at_full_depth(explorer, ms):
    assert explorer.klass.value == TOP and explorer.variant.value == "+-"
    assert explorer.depth.value == 3 and explorer.lnorm.value is True
    assert len(explorer.canvases) == 1 and explorer.canvases[0].size == (SIZE, SIZE)
    assert explorer.canvases[0].frames_sent == 1
    assert_shows(explorer.canvases[0], shown(ms, Panel(TOP, "+-", 3, True)))
    assert not errors(explorer)


def test_variant_change_draws_exactly_that_variant_once(explorer, ms):
    canvas = explorer.canvases[0]
    before, sent = canvas.pixels.copy(), canvas.frames_sent
    explorer.variant.value = "+"
    assert canvas.frames_sent == sent + 1
    assert_shows(canvas, shown(ms, Panel(TOP, "+", 3, True)))
    explorer.variant.value = "-"
    assert_shows(canvas, shown(ms, Panel(TOP, "-", 3, True)))
    assert not np.array_equal(canvas.pixels, before)


@pytest.mark.parametrize("control, value, panel, look", [
    ("depth", 1, Panel(TOP, "-", 1, True), Look()),
    ("depth", 2, Panel(TOP, "-", 2, True), Look()),
    ("klass", 4, Panel(4, "-", 3, True), Look()),
    ("klass", 2, Panel(2, "-", 3, True), Look()),
    ("lnorm", False, Panel(TOP, "-", 3, False), Look()),
    ("mode", "heatmap", Panel(TOP, "-", 3, True), Look(mode="heatmap")),
    ("mode", "masked", Panel(TOP, "-", 3, True), Look(mode="masked")),
    ("mode", "original", Panel(TOP, "-", 3, True), Look(mode="original")),
    ("mode", "contrast", Panel(TOP, "-", 3, True, other_class=1), Look(mode="contrast")),
    ("mode", "ins-vs-del", Panel(TOP, "-", 3, True), Look(mode="ins-vs-del")),
    ("cmap", "viridis", Panel(TOP, "-", 3, True), Look(cmap="viridis")),
    ("opacity", 0.8, Panel(TOP, "-", 3, True), Look(opacity=0.8)),
])
def test_each_control_draws_the_expected_frame(explorer, ms, control, value, panel, look):
    explorer.variant.value = "-"  # the variant whose maps differ most between classes here
    canvas = explorer.canvases[0]
    before, sent = canvas.pixels.copy(), canvas.frames_sent
    getattr(explorer, control).value = value
    assert canvas.frames_sent == sent + 1
    assert_shows(canvas, shown(ms, panel, look))
    assert not np.array_equal(canvas.pixels, before)
    assert not errors(explorer)


def test_contrast_other_class_control(explorer, ms):
    assert explorer.other_class.layout.display == "none"  # only offered in the contrast view
    explorer.variant.value = "-"
    explorer.mode.value = "contrast"
    assert explorer.other_class.layout.display is None
    explorer.other_class.value = 4
    assert_shows(explorer.canvases[0], shown(ms, Panel(TOP, "-", 3, True, other_class=4), Look(mode="contrast")))
    assert "against c4" in explorer.captions[0].value
    explorer.other_class.value = TOP  # against itself: the photo in grey, untinted
    assert_shows(explorer.canvases[0], shown(ms, Panel(TOP, "-", 3, True, other_class=TOP), Look(mode="contrast")))
    explorer.opacity.value = 1.0
    pixels = explorer.canvases[0].pixels
    assert (pixels[..., 0] == pixels[..., 2]).all() and pixels.std() > 0


def test_caption_names_variant_class_and_depth(explorer):
    explorer.variant.value = "+"
    explorer.depth.value = 2
    explorer.lnorm.value = False
    caption = explorer.captions[0].value
    assert "PCAM+" in caption and "c3" in caption and "depth 2/3" in caption and "features.3" in caption
    assert "no LNorm" in caption


# ----- compare ----------------------------------------------------------------------------------
def test_compare_variants_pins_three_panels(explorer, ms):
    explorer.compare.value = "variants"
    assert len(explorer.panels()) == 3 and len(explorer.panels_box.children) == 3
    size = explorer.canvases[0].size
    for canvas, caption, variant in zip(explorer.canvases, explorer.captions, ["+", "-", "+-"]):
        assert canvas.size == size
        assert_shows(canvas, shown(ms, Panel(TOP, variant, 3, True), size=size))
        assert {"+": "PCAM+ ", "-": "PCAM- ", "+-": "PCAM± "}[variant] in caption.value
    # the panels share the other controls
    explorer.klass.value = 4
    explorer.depth.value = 2
    for canvas, variant in zip(explorer.canvases, ["+", "-", "+-"]):
        assert_shows(canvas, shown(ms, Panel(4, variant, 2, True), size=size))
    # back to one panel
    explorer.compare.value = "none"
    assert len(explorer.panels_box.children) == 1
    assert explorer.canvases[0].size == (SIZE, SIZE)
    assert_shows(explorer.canvases[0], shown(ms, Panel(4, "+-", 2, True)))


def test_compare_presets_classes_depths_lnorm(explorer, ms):
    explorer.variant.value = "-"
    explorer.compare.value = "classes"
    size = explorer.canvases[0].size
    assert [p.class_idx for p in explorer.panels()] == [3, 1, 0]
    for canvas, c in zip(explorer.canvases, [3, 1, 0]):
        assert_shows(canvas, shown(ms, Panel(c, "-", 3, True), size=size))

    explorer.compare.value = "depths"
    assert len(explorer.panels_box.children) == 3
    for canvas, d in zip(explorer.canvases, [1, 2, 3]):
        assert_shows(canvas, shown(ms, Panel(TOP, "-", d, True), size=size))

    explorer.compare.value = "lnorm"
    assert len(explorer.panels_box.children) == 2
    size = explorer.canvases[0].size
    for canvas, on in zip(explorer.canvases, [True, False]):
        assert_shows(canvas, shown(ms, Panel(TOP, "-", 3, on), size=size))
    assert not errors(explorer)


def test_pin_custom_panels_and_refusals(explorer, ms):
    explorer.pin({"class_idx": 0, "variant": "-"}, {"depth": 1}, {"lnorm": False, "variant": "+"})
    size = explorer.canvases[0].size
    expected = [Panel(0, "-", 3, True), Panel(TOP, "+-", 1, True), Panel(TOP, "+", 3, False)]
    for canvas, panel in zip(explorer.canvases, expected):
        assert_shows(canvas, shown(ms, panel, size=size))
    pins = list(explorer.pins)
    for bad in ([{"depth": 1}], [{"depth": d} for d in range(5)], [{"depth": 1}, {"colour": "red"}]):
        with pytest.raises(ValueError):
            explorer.pin(*bad)
        assert explorer.pins == pins  # a refused call changes nothing
    explorer.pin()
    assert len(explorer.panels()) == 1 and len(explorer.panels_box.children) == 1
    assert_shows(explorer.canvases[0], shown(ms, Panel(TOP, "+-", 3, True)))


def test_pin_accepts_the_variant_alias_and_refuses_bad_values(explorer, ms):
    explorer.pin({"variant": "±"}, {"variant": "+"})
    size = explorer.canvases[0].size
    assert_shows(explorer.canvases[0], shown(ms, Panel(TOP, "+-", 3, True), size=size))
    assert "PCAM±" in explorer.captions[0].value and not errors(explorer)
    pins = list(explorer.pins)
    for bad, word in (({"variant": "x"}, "variant"), ({"class_idx": 99}, "class_idx"),
                      ({"class_idx": "c1"}, "class_idx"), ({"depth": 0}, "depth"), ({"depth": 1.5}, "depth")):
        with pytest.raises(ValueError, match=word):
            explorer.pin({"depth": 1}, bad)
        assert explorer.pins == pins


def test_four_pinned_panels(explorer, ms):
    explorer.pin(*({"class_idx": c, "variant": "-"} for c in range(4)))
    assert len(explorer.panels_box.children) == 4
    size = explorer.canvases[0].size
    for c, canvas in enumerate(explorer.canvases[:4]):
        assert_shows(canvas, shown(ms, Panel(c, "-", 3, True), size=size))


# ----- class choice ------------------------------------------------------------------------------
def test_class_search_selects_that_class(explorer, ms):
    explorer.variant.value = "-"
    explorer.search.value = "c2"
    assert explorer.klass.value == 2
    assert_shows(explorer.canvases[0], shown(ms, Panel(2, "-", 3, True)))
    assert explorer.search.value == "c2"
    explorer.search.value = "no such class"  # ignored
    assert explorer.klass.value == 2
    explorer.klass.value = 0  # choosing in the dropdown clears the search box
    assert explorer.search.value == ""


def test_class_dropdown_lists_top_predictions_with_probabilities_first(tiny_x):
    names = [f"class {i:02d}" for i in range(12)]
    net = TinyNet(n_classes=12).eval()
    model = pe.Classifier(net, mean=(0.5,) * 3, std=(0.5,) * 3, input_size=(16, 16), class_names=names)
    ms = pe.compute_mapset(model, tiny_x, progress=False)
    ex = pe.Explorer(ms, size=SIZE)
    try:
        top = ms.topk(10)
        assert list(ex.klass.options) == [(f"{n} ({p:.3f})", i) for i, n, p in top]  # a short list
        probs = [float(re.search(r"\((\d\.\d+)\)$", label).group(1)) for label, _ in ex.klass.options]
        assert probs == sorted(probs, reverse=True)
        assert ex.klass.value == top[0][0]
        assert sorted(ex.search.options) == names  # every class is searchable by name
        rest = sorted((names[i], i) for i in set(range(12)) - {t[0] for t in top})
        ex.search.value = rest[0][0]  # a class beyond the top: it joins the list, after them
        assert ex.klass.value == rest[0][1] == ex.state.klass
        assert list(ex.klass.options)[:10] == [(f"{n} ({p:.3f})", i) for i, n, p in top]
        assert list(ex.klass.options)[10] == (f"{rest[0][0]} ({float(ms.probs[rest[0][1]]):.3f})", rest[0][1])
        ex.state.klass = rest[1][1]  # from a script, the same
        assert ex.klass.value == rest[1][1] and len(ex.klass.options) == 11
        ex.state.klass = top[3][0]  # back among the top: the list stays as it is
        assert ex.klass.value == top[3][0]
    finally:
        ex.close()


def test_depth_slider_labels_name_layer_and_resolution(explorer, ms):
    options = list(explorer.depth.options)
    assert [v for _, v in options] == [1, 2, 3]
    for (label, depth), (layer, act) in zip(options, reversed(list(zip(ms.layers, ms.activations)))):
        h, w = act.shape[-2:]
        assert label.startswith(f"{depth}:") and layer in label and f"{h}×{w}" in label
    assert options[0][0] == "1: features (4×4)" and options[2][0] == "3: features.1 (16×16)"


# ----- recursion strip and teaching view ---------------------------------------------------------
STRIP_TILE, STRIP_PAD = 72, 4


@pytest.mark.parametrize("depth", [1, 2, 3])
def test_strip_click_selects_that_depth(explorer, ms, depth):
    explorer.variant.value = "-"
    start = 1 if depth != 1 else 3
    explorer.depth.value = start
    left = STRIP_PAD + (depth - 1) * (STRIP_TILE + STRIP_PAD)
    for x in (left + 1, left + STRIP_TILE // 2, left + STRIP_TILE - 2):
        explorer.depth.value = start
        explorer.recursion.click(x, STRIP_TILE // 2)
        assert explorer.depth.value == depth, f"click at x={x}"
    assert_shows(explorer.canvases[0], shown(ms, Panel(TOP, "-", depth, True)))


def test_strip_shows_a_thumbnail_per_depth_and_marks_the_current_one(explorer, ms):
    explorer.variant.value = "-"
    explorer.depth.value = 2
    strip = explorer.strip.pixels
    assert strip.shape == (STRIP_TILE + 2 * STRIP_PAD, 3 * (STRIP_TILE + STRIP_PAD) + STRIP_PAD, 3)
    image = render.image_uint8(ms.image, ms.mean, ms.std)
    for depth in (1, 2, 3):
        x = STRIP_PAD + (depth - 1) * (STRIP_TILE + STRIP_PAD)
        thumb = frames.zoom_and_fit(render.overlay(image, ms.saliency(TOP, "-", depth), "turbo", 0.6), None,
                                    (STRIP_TILE, STRIP_TILE))
        assert np.array_equal(strip[STRIP_PAD:STRIP_PAD + STRIP_TILE, x:x + STRIP_TILE], thumb)
        marked = tuple(strip[0, x + 5]) == (255, 140, 0)
        assert marked == (depth == 2)
    # a click beyond the last thumbnail changes nothing
    explorer.recursion.click(strip.shape[1] + 50, 10)
    assert explorer.depth.value == 2


def test_teaching_view_follows_depth(explorer):
    explorer.depth.value = 1
    assert "Depth 1" in explorer.teaching_caption.value
    explorer.depth.value = 2
    caption = explorer.teaching_caption.value
    assert "features.3" in caption and "product = P at depth 2" in caption
    row = explorer.teaching.pixels
    assert row.shape[0] == 140 + 10 and row.shape[1] == 4 * 145 + 5  # four 140-pixel tiles


# ----- zoom and hover ---------------------------------------------------------------------------
def test_zoom_magnifies_and_reset_restores(explorer, ms):
    canvas = explorer.canvases[0]
    full = canvas.pixels.copy()
    assert explorer.reset_zoom.disabled
    explorer.set_zoom((4, 8, 12, 16))
    assert canvas.size == (SIZE, SIZE)
    look = Look(zoom=(4, 8, 12, 16))
    assert_shows(canvas, shown(ms, Panel(TOP, "+-", 3, True), look))
    assert np.array_equal(canvas.pixels[::8, ::8], frames.frame(ms, Panel(TOP, "+-", 3, True), Look())[4:12, 8:16])
    assert not explorer.reset_zoom.disabled
    # a wide box gives a wide canvas
    explorer.set_zoom((0, 0, 4, 16))
    assert canvas.size == (16, SIZE)
    assert_shows(canvas, shown(ms, Panel(TOP, "+-", 3, True), Look(zoom=(0, 0, 4, 16)), size=(16, SIZE)))
    explorer.reset_zoom.click()
    assert explorer.zoom is None and explorer.reset_zoom.disabled
    assert canvas.size == (SIZE, SIZE) and np.array_equal(canvas.pixels, full)


@pytest.mark.parametrize("box", [(0, 0, 0, 4), (0, 0, 17, 4), (-1, 0, 4, 4), (5, 5, 2, 8), (0, 8, 4, 8),
                                 (0, 0, 4, 20)])
def test_bad_zoom_boxes_are_refused(explorer, box):
    explorer.set_zoom((2, 2, 6, 6))
    with pytest.raises(ValueError, match="zoom"):
        explorer.set_zoom(box)
    assert explorer.zoom == (2, 2, 6, 6)


def test_drag_zooms_to_the_dragged_region(explorer, ms):
    explorer.canvases[0]._down(8, 8)
    explorer.canvases[0]._up(40, 24)  # 4 canvas pixels per image pixel
    assert explorer.zoom == (2, 2, 6, 10)
    assert_shows(explorer.canvases[0], shown(ms, Panel(TOP, "+-", 3, True), Look(zoom=(2, 2, 6, 10)),
                                             size=explorer.canvases[0].size))


def _hovered(explorer):
    m = re.search(r"row (\d+), col (\d+)\): saliency (-?\d+\.\d+)", explorer.hover.value)
    assert m, explorer.hover.value
    return int(m.group(1)), int(m.group(2)), float(m.group(3))


def test_hover_reports_position_and_saliency(explorer, ms):
    explorer.variant.value = "-"
    explorer.main.hover_at(0, 9, 45)
    row, col, value = _hovered(explorer)
    assert (row, col) == (11, 2)
    assert value == pytest.approx(float(ms.saliency(TOP, "-", 3)[11, 2]), abs=5e-4)
    before = explorer.hover.value
    explorer.main.hover_at(0, SIZE + 3, 10)  # outside: unchanged
    assert explorer.hover.value == before
    # zoomed: the same canvas position is another image pixel
    explorer.set_zoom((8, 8, 16, 16))
    explorer.main.hover_at(0, 9, 45)
    row, col, value = _hovered(explorer)
    assert (row, col) == (8 + 45 // 8, 8 + 9 // 8)
    assert value == pytest.approx(float(ms.saliency(TOP, "-", 3)[row, col]), abs=5e-4)


def test_hover_reads_the_map_of_the_panel_under_the_pointer(explorer, ms):
    explorer.compare.value = "depths"
    scale = explorer.canvases[1].size[0] / 16
    explorer.main.hover_at(1, 5 * scale + 1, 7 * scale + 1)
    row, col, value = _hovered(explorer)
    assert (row, col) == (7, 5)
    assert value == pytest.approx(float(ms.saliency(TOP, "+-", 2)[7, 5]), abs=5e-4)


# ----- errors -----------------------------------------------------------------------------------
def test_error_in_a_callback_is_shown_and_controls_keep_working(explorer, ms, monkeypatch):
    real = frames.frame
    calls = []

    def flaky(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("the frame broke")
        return real(*args, **kwargs)

    monkeypatch.setattr(frames, "frame", flaky)
    explorer.variant.value = "+"  # must not raise into the widget machinery
    assert errors(explorer) and "RuntimeError" in explorer.status.value and "the frame broke" in explorer.status.value
    explorer.variant.value = "-"
    assert_shows(explorer.canvases[0], shown(ms, Panel(TOP, "-", 3, True)))
    explorer.depth.value = 1
    assert_shows(explorer.canvases[0], shown(ms, Panel(TOP, "-", 1, True)))


def test_error_text_is_escaped(explorer, monkeypatch):
    def broken(*args, **kwargs):
        raise ValueError("<script>alert(1)</script>")

    monkeypatch.setattr(frames, "frame", broken)
    explorer.mode.value = "heatmap"
    assert "<script>" not in explorer.status.value and "&lt;script&gt;" in explorer.status.value


def test_a_pinned_class_the_next_image_lacks_is_shown_not_raised(ms, tiny_x):
    names = [f"c{i}" for i in range(3)]
    model = pe.Classifier(TinyNet(n_classes=3).eval(), mean=(0.5,) * 3, std=(0.5,) * 3, input_size=(16, 16),
                          class_names=names)
    small = pe.compute_mapset(model, tiny_x, progress=False)
    ex = pe.Explorer({"five": ms, "three": small}, size=SIZE)
    try:
        ex.pin({"class_idx": 0}, {"class_idx": 4})
        ex.image_picker.value = "three"  # class 4 does not exist there
        assert errors(ex) and "class_idx" in ex.status.value
        ex.pin()
        ex.variant.value = "-"
        top = small.topk(1)[0][0]
        assert_shows(ex.canvases[0], shown(small, Panel(top, "-", 3, True)))
    finally:
        ex.close()


# ----- several images -----------------------------------------------------------------------------
def test_list_of_mapsets_gives_an_image_picker(ms, other_ms):
    ex = pe.Explorer([ms, other_ms], size=SIZE)
    try:
        assert list(ex.image_picker.options) == ["image 1", "image 2"]
        assert ex.ms is ms
        ex.klass.value = 0
        ex.depth.value = 1
        ex.image_picker.value = "image 2"
        assert ex.ms is other_ms
        assert ex.klass.value == 1  # the new image's top-1
        assert ex.klass.options[0] == (f"c1 ({float(other_ms.probs[1]):.3f})", 1)
        assert ex.depth.value == 3
        assert_shows(ex.canvases[0], shown(other_ms, Panel(1, "+-", 3, True)))
        ex.mode.value = "original"
        assert_shows(ex.canvases[0], shown(other_ms, Panel(1), Look(mode="original")))
        ex.image_picker.value = "image 1"
        assert ex.klass.value == TOP
        assert_shows(ex.canvases[0], shown(ms, Panel(TOP), Look(mode="original")))
    finally:
        ex.close()


def test_switching_image_resets_the_zoom(ms, other_ms):
    ex = pe.Explorer([ms, other_ms], size=SIZE)
    try:
        ex.set_zoom((0, 0, 4, 16))
        assert ex.canvases[0].size == (16, SIZE) and not ex.reset_zoom.disabled
        ex.image_picker.value = "image 2"
        assert ex.zoom is None and ex.reset_zoom.disabled
        assert ex.canvases[0].size == (SIZE, SIZE)
        assert_shows(ex.canvases[0], shown(other_ms, Panel(1, "+-", 3, True)))
    finally:
        ex.close()


def test_dict_of_mapsets_uses_the_names(ms, other_ms):
    ex = pe.Explorer({"cat": ms, "dog": other_ms}, size=SIZE)
    try:
        assert list(ex.image_picker.options) == ["cat", "dog"]
        ex.image_picker.value = "dog"
        assert ex.klass.value == 1
        assert_shows(ex.canvases[0], shown(other_ms, Panel(1, "+-", 3, True)))
    finally:
        ex.close()


def test_compare_classes_follows_the_image(ms, other_ms):
    ex = pe.Explorer({"cat": ms, "dog": other_ms}, size=SIZE)
    try:
        ex.compare.value = "classes"
        ex.image_picker.value = "dog"
        assert [p.class_idx for p in ex.panels()] == [c for c, _, _ in other_ms.topk(3)]
    finally:
        ex.close()


def test_adding_a_mapset_keeps_the_image_on_screen(ms, other_ms, tiny_model):
    ex = pe.Explorer({"cat": ms, "dog": other_ms}, size=SIZE)
    try:
        ex.image_picker.value = "dog"
        ex.klass.value = 4
        third = pe.compute_mapset(tiny_model, torch.zeros(1, 3, 16, 16), progress=False)
        ex.add_mapset("bird", third)
        assert list(ex.image_picker.options) == ["cat", "dog", "bird"]
        assert ex.image_picker.value == "dog" and ex.ms is other_ms and ex.klass.value == 4
        assert_shows(ex.canvases[0], shown(other_ms, Panel(4, "+-", 3, True)))
    finally:
        ex.close()


def test_replacing_a_mapset_shows_the_new_image(ms, other_ms):
    ex = pe.Explorer({"x": ms}, size=SIZE)
    try:
        ex.mode.value = "original"
        ex.add_mapset("x", other_ms)  # e.g. a second upload under the same name
        assert ex.ms is other_ms
        assert_shows(ex.canvases[0], shown(other_ms, Panel(1), Look(mode="original")))
    finally:
        ex.close()


def test_folder_of_saved_mapsets(ms, other_ms, tmp_path):
    ms.save(tmp_path / "a.mapset.npz")
    other_ms.save(tmp_path / "b.npz")
    ex = pe.Explorer(tmp_path, size=SIZE)
    try:
        assert list(ex.image_picker.options) == ["a", "b"]
        assert ex.klass.value == TOP
        loaded = pe.MapSet.load(tmp_path / "a.mapset.npz")
        assert_shows(ex.canvases[0], shown(loaded, Panel(TOP, "+-", 3, True)))
        ex.image_picker.value = "b"
        assert ex.klass.value == 1
        assert_shows(ex.canvases[0], shown(pe.MapSet.load(tmp_path / "b.npz"), Panel(1, "+-", 3, True)))
    finally:
        ex.close()
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="npz"):
        pe.Explorer(tmp_path / "empty")
    with pytest.raises(TypeError):
        pe.Explorer(42)
    with pytest.raises(TypeError):
        pe.Explorer([ms, "not a map set"])


# ----- faithfulness -----------------------------------------------------------------------------
N_STEPS = 16


@pytest.fixture
def with_model(ms, tiny_model, tmp_path):
    ex = pe.Explorer(ms, model=tiny_model, size=SIZE, export_dir=tmp_path)
    ex.curves.n_steps = N_STEPS
    yield ex
    ex.close()


def _title_aucs(explorer):
    m = re.search(r"insertion (-?\d\.\d+) · deletion (-?\d\.\d+)", explorer.curves.figure.title)
    assert m, explorer.curves.figure.title
    return float(m.group(1)), float(m.group(2))


def test_faithfulness_curves_match_the_metrics(with_model, ms, tiny_model):
    ex = with_model
    ex.variant.value = "-"
    ex.depth.value = 2
    assert not ex.curves.button.disabled
    ex.curves.compute(block=True)
    assert not errors(ex)
    saliency = ms.saliency(TOP, "-", 2)
    ins_auc, ins = pe.insertion(tiny_model, ms.image, saliency, TOP, n_steps=N_STEPS)
    del_auc, dele = pe.deletion(tiny_model, ms.image, saliency, TOP, n_steps=N_STEPS)
    lines = ex.curves
    assert len(lines.ins_line.x) == len(lines.ins_line.y) == N_STEPS
    assert len(lines.del_line.x) == len(lines.del_line.y) == N_STEPS
    np.testing.assert_allclose(lines.ins_line.y, ins, atol=1e-6)
    np.testing.assert_allclose(lines.del_line.y, dele, atol=1e-6)
    np.testing.assert_allclose(lines.ins_line.x, np.arange(1, N_STEPS + 1) / N_STEPS)
    assert _title_aucs(ex) == pytest.approx((ins_auc, del_auc), abs=5e-4)
    assert lines.progress.value == 2 * N_STEPS and not lines.button.disabled


def test_faithfulness_shows_the_controls_map_when_panels_are_pinned(with_model, ms, tiny_model):
    ex = with_model
    ex.compare.value = "variants"  # panels PCAM+, PCAM-, PCAM±; the controls say PCAM-
    ex.variant.value = "-"
    ex.curves.compute(block=True)
    ex.render()  # a redraw keeps the curves of the map they were computed for
    ins_auc, _ = pe.insertion(tiny_model, ms.image, ms.saliency(TOP, "-"), TOP, n_steps=N_STEPS)
    assert len(ex.curves.ins_line.y) == N_STEPS
    assert _title_aucs(ex)[0] == pytest.approx(ins_auc, abs=5e-4)


def test_faithfulness_second_look_is_cached(with_model, monkeypatch):
    ex = with_model
    ex.curves.compute(block=True)
    first = (list(ex.curves.ins_line.y), list(ex.curves.del_line.y), ex.curves.figure.title)

    def fail(*args, **kwargs):
        raise AssertionError("recomputed a cached curve")

    monkeypatch.setattr(faithfulness, "faithfulness_curves", fail)
    ex.klass.value = 0  # another map: nothing cached, empty chart
    assert len(ex.curves.ins_line.y) == 0 and ex.curves.figure.title == ""
    ex.klass.value = TOP  # back: the cached curves are shown again
    assert (list(ex.curves.ins_line.y), list(ex.curves.del_line.y), ex.curves.figure.title) == first
    ex.curves.compute(block=True)
    assert not errors(ex)
    assert (list(ex.curves.ins_line.y), list(ex.curves.del_line.y), ex.curves.figure.title) == first


def test_faithfulness_error_is_shown_and_button_comes_back(with_model, monkeypatch):
    def fail(*args, **kwargs):
        raise RuntimeError("model exploded")

    monkeypatch.setattr(faithfulness, "faithfulness_curves", fail)
    with_model.curves.compute(block=True)
    assert errors(with_model) and "model exploded" in with_model.status.value
    assert not with_model.curves.button.disabled and with_model.curves.stop_button.disabled


def test_faithfulness_in_the_background_and_cancel(with_model, ms, tiny_model, monkeypatch):
    ex = with_model
    ex.curves.compute()  # in a thread: the controls stay usable
    ex.curves.wait(30)
    assert len(ex.curves.ins_line.y) == N_STEPS and not ex.curves.button.disabled
    real = faithfulness.faithfulness_curves

    def cancelled_meanwhile(*args, **kwargs):
        ex.curves.cancel()  # as if the cancel button were clicked during the computation
        return real(*args, **kwargs)

    monkeypatch.setattr(faithfulness, "faithfulness_curves", cancelled_meanwhile)
    ex.klass.value = 0
    ex.curves.compute(block=True)
    assert "cancelled" in ex.curves.summary.value and not errors(ex)
    assert len(ex.curves.ins_line.y) == 0 and not ex.curves.button.disabled
    assert ex.curves.key(ex.main_panel()) not in ex.curves.cache


def test_faithfulness_without_a_model_is_disabled(explorer):
    assert explorer.curves.button.disabled
    assert "model=" in explorer.curves.summary.value
    with pytest.raises(ValueError, match="model"):
        explorer.curves.compute(block=True)


# ----- export -----------------------------------------------------------------------------------
def test_export_png_matches_the_panels(explorer, tmp_path):
    path = explorer.export_png()
    assert path.parent == tmp_path / "exports" and path.suffix == ".png" and path.is_file()
    assert "c" in path.name and "depth3" in path.name
    with Image.open(path) as im:
        pixels = np.asarray(im.convert("RGB"))
    pad = 4
    bar = frames.scale_pixels("overlay", "turbo", SIZE).shape[1]  # the colorbar, right of the panels
    assert pixels.shape[1] == SIZE + 2 * pad + bar + pad and pixels.shape[0] > SIZE + 2 * pad  # a caption under it
    assert np.array_equal(pixels[pad:pad + SIZE, pad:pad + SIZE], explorer.canvases[0].pixels)
    assert (pixels[pad + SIZE:, pad:pad + SIZE] < 100).any()  # the caption's text
    assert "download" in explorer.export_link.value

    explorer.compare.value = "variants"
    path = explorer.export_png()
    h, w = explorer.canvases[0].size
    with Image.open(path) as im:
        pixels = np.asarray(im.convert("RGB"))
    assert pixels.shape[1] == 3 * (w + pad) + pad + bar + pad and pixels.shape[0] > h + 2 * pad
    for i, canvas in enumerate(explorer.canvases[:3]):
        x = pad + i * (w + pad)
        assert np.array_equal(pixels[pad:pad + h, x:x + w], canvas.pixels)
        assert (pixels[pad + h:, x:x + w] < 100).any()


def test_exported_captions_name_variant_class_depth_and_layer(explorer, ms):
    from polycam_explorer.explorer.views.export import caption_lines

    explorer.variant.value = "-"
    explorer.depth.value = 2
    lines = caption_lines(ms, explorer.panels()[0])
    assert lines == ["PCAM-", f"c3 ({float(ms.probs[3]):.3f})", "depth 2/3: features.3"]
    assert caption_lines(ms, Panel(1, "+", 1, False), against=4) == [
        "PCAM+, no LNorm", f"c1 ({float(ms.probs[1]):.3f})", "depth 1/3: features", "against c4"]
    assert caption_lines(ms, Panel(1, method="ixg"))[0] == "Input × Gradient"


def test_exports_never_overwrite_and_show_the_full_path(explorer, tmp_path):
    first, second = explorer.export_png(), explorer.export_png()
    assert first != second and first.is_file() and second.is_file()
    assert first.name.endswith("_1.png") and second.name.endswith("_2.png")
    maps = [explorer.export_maps() for _ in range(2)]
    assert maps[0] != maps[1] and all(p.is_file() for p in maps)
    assert str(maps[1].resolve()) in explorer.export_link.value and maps[1].is_absolute()


def test_the_default_export_folder_is_absolute_and_kept(ms, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ex = pe.Explorer(ms, size=SIZE)
    try:
        assert ex.export_dir == tmp_path / "polycam_exports" and ex.export_dir.is_absolute()
        assert str(ex.export_dir) in ex.export_link.value  # the tab says where exports go
        monkeypatch.setenv("POLYCAM_EXPLORER_EXPORTS", str(tmp_path / "mine"))
        other = pe.Explorer(ms, size=SIZE)
        assert other.export_dir == tmp_path / "mine" and other.export_png().parent == tmp_path / "mine"
        other.close()
    finally:
        ex.close()


def test_export_maps_holds_the_saliency_of_each_panel(explorer, ms):
    explorer.variant.value = "-"
    explorer.depth.value = 2
    path = explorer.export_maps()
    with np.load(path, allow_pickle=False) as data:
        np.testing.assert_array_equal(data["panel0_saliency"], ms.saliency(TOP, "-", 2).numpy())
        assert "panel1_saliency" not in data.files
        assert str(data["image"]) == "image"
    explorer.compare.value = "classes"
    path = explorer.export_maps()
    with np.load(path, allow_pickle=False) as data:
        for i, c in enumerate([3, 1, 0]):
            saved = data[f"panel{i}_saliency"]
            assert saved.dtype == np.float32 and saved.shape == (16, 16)
            np.testing.assert_array_equal(saved, ms.saliency(c, "-", 2).numpy())
            assert f"'class_idx': {c}" in str(data[f"panel{i}_description"])
        assert list(data["class_names"]) == ["c3", "c1", "c0"]


# ----- closing ----------------------------------------------------------------------------------
def _widgets(widget, seen=None):
    """Every widget reachable from ``widget`` through ``children``."""
    seen = [] if seen is None else seen
    seen.append(widget)
    for child in getattr(widget, "children", ()):
        _widgets(child, seen)
    return seen


def test_close_closes_the_widgets_and_drops_the_mapsets(ms, tiny_model):
    ex = pe.Explorer(ms, model=tiny_model, size=SIZE)
    ex.compare.value = "variants"
    ex.curves.compute(block=True)
    ex.compare.value = "none"  # two canvases and captions made for the comparison are now hidden
    inside = (_widgets(ex) + [c.canvas for c in ex.canvases] + ex.captions + [ex.strip.canvas, ex.teaching.canvas]
              + [ex.curves.figure, ex.curves.ins_line, ex.curves.del_line] + list(ex.curves.figure.axes))
    assert len(ex.canvases) == 3
    assert all(w.comm is not None for w in inside)
    ex.close()
    assert ex.mapsets == {}
    assert len(ms._cache) == 0
    still_open = [type(w).__name__ for w in inside if w.comm is not None]
    assert still_open == []
    ex.variant.value = "+"  # a late event after close does not raise


def test_refused_arguments_leave_nothing_that_fails_later(monkeypatch):
    import gc
    import sys

    unraisable = []
    monkeypatch.setattr(sys, "unraisablehook", unraisable.append)
    for bad in (42, [object()]):
        with pytest.raises(TypeError, match="MapSet"):
            pe.Explorer(bad)
    gc.collect()  # the half-built widget's __del__ closes it
    assert [u.exc_value for u in unraisable] == []
