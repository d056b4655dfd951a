"""The class-contrast view reads at a glance (issue 10, section 3): the photo in grey under a
diverging overlay whose opacity follows |A - B|, and a legend and captions naming both classes."""
from __future__ import annotations

import numpy as np
import pytest

from polycam_explorer import render
from polycam_explorer.explorer import frames
from polycam_explorer.explorer.frames import Look, Panel

A, B = 3, 1  # the tiny model's top class, and the class it is contrasted with
VARIANT = "-"  # on tiny_x, PCAM- of c3 and c1 agree on 44 pixels and differ by > 0.5 on 11


@pytest.fixture
def difference(ms) -> np.ndarray:
    return (ms.saliency(A, VARIANT, 3) - ms.saliency(B, VARIANT, 3)).numpy()


@pytest.fixture
def photo(ms) -> np.ndarray:
    return render.image_uint8(ms.image, ms.mean, ms.std)


@pytest.mark.parametrize("opacity", [0.5, 1.0])
def test_where_both_maps_agree_the_grey_photo_shows(ms, difference, photo, opacity):
    shown = frames.frame(ms, Panel(A, VARIANT, 3, other_class=B), Look(mode="contrast", opacity=opacity))
    equal = np.abs(difference) < 1e-6
    assert equal.sum() >= 10
    assert np.array_equal(shown[equal], render.grey(photo)[equal])
    assert (shown[equal][:, 0] == shown[equal][:, 2]).all()  # untinted


def test_where_a_dominates_it_is_red_and_where_b_does_blue(ms, difference):
    shown = frames.frame(ms, Panel(A, VARIANT, 3, other_class=B), Look(mode="contrast")).astype(int)
    a_wins, b_wins = difference > 0.5, difference < -0.5
    assert a_wins.any() and b_wins.any()
    red, blue = shown[a_wins], shown[b_wins]
    assert (red[:, 0] > red[:, 2] + 30).all() and (red[:, 0] > red[:, 1] + 30).all()
    assert (blue[:, 2] > blue[:, 0] + 30).all()


def test_the_tint_grows_with_the_difference():
    picture = np.full((1, 11, 3), 128, np.uint8)
    ramp = np.linspace(0.0, 1.0, 11, dtype=np.float32)[None]
    for opacity in (0.25, 0.5, 1.0):
        shown = render.contrast(picture, ramp, opacity).astype(int)
        away = np.abs(shown - 128).sum(-1)[0]
        assert away[0] == 0 and (np.diff(away) >= 0).all() and away[-1] > 100 * opacity
    full = render.contrast(picture[:, :2], np.array([[1.0, -1.0]]), 0.5)  # opacity 0.5: alpha = |A - B|
    assert np.array_equal(full[0], render.diverging(np.array([1.0, -1.0])))
    with pytest.raises(ValueError, match="opacity"):
        render.contrast(picture, ramp, 1.5)


def test_legend_and_captions_name_both_classes(ms, tmp_path):
    import polycam_explorer as pe

    ex = pe.Explorer(ms, size=64, export_dir=tmp_path)
    try:
        ex.state.variant = VARIANT
        ex.state.mode = "contrast"
        ex.state.other_class = B
        legend = ex.legend.value
        assert f"← c{B}" in legend and f"c{A} →" in legend
        assert "-1" not in legend and "+1" not in legend
        assert f"red: c{A} (A) · blue: c{B} (B)" in ex.captions[0].value
        ex.state.compare = "classes"  # each panel's own class is its red one
        assert f"red: c{B} (A) · blue: c{B} (B)" in ex.captions[1].value
        ex.state.mode = "overlay"
        assert "red:" not in ex.captions[0].value
    finally:
        ex.close()


def test_printed_bar_is_labelled_with_the_class_names():
    scale = frames.print_scale("contrast", "turbo", ("Egyptian cat", "tabby"))
    assert scale.cmap == "coolwarm" and (scale.low, scale.high) == (-1.0, 1.0)
    assert scale.tick_labels == ("tabby (B)", "equal", "Egyptian cat (A)")
