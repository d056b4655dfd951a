"""Two models side by side: pairing rows by image name and the disagreement measure (1 - Pearson r),
against plain numpy; and the atlas grid's geometry."""
from __future__ import annotations

import math

import numpy as np
import pytest

from polycam_explorer.atlas.compare import Pair, compare, disagreement, pair_rows, pearson, sort_pairs
from polycam_explorer.atlas.grid import GridLayout, caption, page
from polycam_explorer.atlas.index import Row


def _row(file: str, image: str, **values) -> Row:
    base = {"file": file, "image": image, "size": 1, "mtime_ns": 1, "sha256": "", "model_name": "m",
            "model_id": "id", "height": 16, "width": 16, "n_layers": 3, "n_classes": 5, "pred_class": 0,
            "pred_name": "c0", "confidence": 0.5, "top5": (), "label": None, "correct": None, "insdel_plus": None,
            "insdel_minus": None, "insdel_pm": None, "context": 0.0, "plus_minus_diff": 0.0}
    base.update(values)
    return Row(**base)


def test_pearson_and_disagreement_match_numpy():
    rng = np.random.default_rng(0)
    for _ in range(5):
        a, b = rng.random((32, 32)), rng.random((32, 32)) + 0.3 * rng.random((32, 32))
        r = np.corrcoef(a.ravel(), b.ravel())[0, 1]
        assert pearson(a, b) == pytest.approx(r, abs=1e-12)
        assert disagreement(a, b) == pytest.approx(1 - r, abs=1e-12)
    m = rng.random((8, 8))
    assert disagreement(m, 2 * m + 1) == pytest.approx(0.0, abs=1e-12)  # a gain and an offset: agreement
    assert disagreement(m, -m) == pytest.approx(2.0, abs=1e-12)  # opposite maps
    assert math.isnan(disagreement(m, np.ones_like(m)))  # r undefined for a constant map
    with pytest.raises(ValueError, match="shapes"):
        pearson(m, m[:4])


def test_maps_of_another_size_are_resampled_first():
    m = np.outer(np.linspace(0, 1, 32), np.ones(32)).astype(np.float32)
    small = m[::2, ::2]
    assert disagreement(m, small) < 0.01


def test_pairs_by_image_name_in_a_order_first_row_of_a_name():
    a = [_row("x/1", "one"), _row("x/2", "two"), _row("x/3", "three"), _row("y/1", "one")]
    b = [_row("b/3", "three"), _row("b/1", "one"), _row("b/9", "nine"), _row("c/1", "one")]
    pairs = pair_rows(a, b)
    assert [(p.file, q.file) for p, q in pairs] == [("x/1", "b/1"), ("x/3", "b/3")]


def test_compare_and_sort_by_disagreement_against_numpy():
    rng = np.random.default_rng(1)
    images = [f"img{i}" for i in range(6)]
    a = [_row(f"a/{n}", n, pred_name="c0") for n in images]
    b = [_row(f"b/{n}", n, pred_name="c0" if i % 2 else "c1") for i, n in enumerate(images)]
    maps_a = {r.file: rng.random((3, 8, 8)).astype(np.float32) for r in a}
    maps_b = {r.file: rng.random((3, 8, 8)).astype(np.float32) for r in b}
    maps_b["b/img4"][1] = 1.0  # constant PCAM-: undefined, sorted last
    for v, variant in enumerate(("+", "-", "+-")):
        pairs = compare(a, b, maps_a, maps_b, variant)
        with np.errstate(invalid="ignore"):  # numpy's r of a constant map is NaN too
            expected = {n: 1 - np.corrcoef(maps_a[f"a/{n}"][v].ravel(), maps_b[f"b/{n}"][v].ravel())[0, 1]
                        for n in images}
        for p in pairs:
            assert (math.isnan(p.disagreement) and math.isnan(expected[p.image])) or \
                p.disagreement == pytest.approx(expected[p.image], abs=1e-6)
        ordered = sort_pairs(pairs, "disagreement", descending=True)
        finite = sorted((n for n in images if not math.isnan(expected[n])), key=lambda n: -expected[n])
        assert [p.image for p in ordered][: len(finite)] == finite
        if variant == "-":
            assert ordered[-1].image == "img4" and math.isnan(ordered[-1].disagreement)
    assert [p.same_class for p in compare(a, b, maps_a, maps_b)] == [False, True, False, True, False, True]


def test_compare_on_the_labelled_class_same_class_and_nan_without_maps():
    rng = np.random.default_rng(2)
    a = [_row("a/p", "p", pred_name="c0"), _row("a/q", "q", pred_name="c0")]
    b = [_row("b/p", "p", pred_name="c1"), _row("b/q", "q", pred_name="c1")]
    maps_a = {"a/p": rng.random((3, 8, 8)), "a/q": None}  # q: no usable label
    maps_b = {"b/p": rng.random((3, 8, 8)), "b/q": rng.random((3, 8, 8))}
    p, q = compare(a, b, maps_a, maps_b, "+-", maps_of="label")
    assert p.same_class and q.same_class  # both maps are of the label's class
    assert p.disagreement == pytest.approx(1 - np.corrcoef(maps_a["a/p"][2].ravel(), maps_b["b/p"][2].ravel())[0, 1])
    assert math.isnan(q.disagreement)
    assert not compare(a, b, {**maps_a, "a/q": maps_b["b/q"]}, maps_b)[0].same_class  # predictions differ


def test_sort_pairs_by_a_column_of_model_a_missing_last():
    a = [_row("a/p", "p", confidence=0.2, label="x"), _row("a/q", "q", confidence=0.9),
         _row("a/r", "r", confidence=0.2, label="y", insdel_pm=0.4)]
    pairs = [Pair(r.image, r, r, 0.0) for r in a]
    assert [p.image for p in sort_pairs(pairs, "confidence")] == ["p", "r", "q"]
    assert [p.image for p in sort_pairs(pairs, "confidence", descending=True)] == ["q", "p", "r"]  # ties by image
    assert [p.image for p in sort_pairs(pairs, "label", descending=True)] == ["r", "p", "q"]
    assert [p.image for p in sort_pairs(pairs, "insdel")] == ["r", "p", "q"]
    with pytest.raises(ValueError, match="cannot sort"):
        sort_pairs(pairs, "colour")


def test_grid_layout_finds_the_tile_under_a_click():
    layout = GridLayout(columns=3, tile_w=20, tile_h=30, pad=4)
    assert layout.size(7) == (3 * 34 + 4, 3 * 24 + 4)
    for i in range(7):
        x, y = layout.origin(i)
        assert layout.tile_at(x, y, 7) == i and layout.tile_at(x + 19, y + 29, 7) == i
        assert layout.tile_at(x + 20, y, 7) is None  # the gap
    x, y = layout.origin(7)
    assert layout.tile_at(x + 1, y + 1, 7) is None  # beyond the last tile
    assert layout.tile_at(2, 2, 7) is None and layout.tile_at(3 * 24 + 10, 10, 7) is None


def test_page_puts_each_tile_at_its_place_and_frames_the_marked_one():
    tiles = [np.full((10, 12, 3), 10 * (i + 1), np.uint8) for i in range(5)]
    pixels, layout = page(tiles, [["a", "b"]] * 5, columns=2, marked=3)
    assert pixels.shape[:2] == layout.size(5) and layout.tile_w == 12
    for i, tile in enumerate(tiles):
        x, y = layout.origin(i)
        assert (pixels[y: y + 10, x: x + 12] == tile).all()
    x, y = layout.origin(3)
    assert tuple(pixels[y - 2, x + 5]) == (255, 140, 0) and tuple(pixels[y - 2, layout.origin(2)[0] + 5]) == (255,) * 3


def test_captions_say_prediction_label_and_the_sorted_value():
    row = _row("a", "cat.jpg", pred_name="tabby", confidence=0.81, label="tabby", correct=True, insdel_pm=0.42,
               context=0.0123)
    assert caption(row) == ["cat.jpg", "tabby 0.81", "ok: tabby"]
    assert caption(row, "insdel")[2] == "ins-del 0.42  ok: tabby"
    assert caption(row, "insdel", "+")[2].startswith("ins-del n/a")
    assert caption(row, "context")[2].startswith("context 0.012")
    other = row._replace(pred_name="lynx")
    assert caption(Pair("cat.jpg", row, other, 0.25))[2] == "1 - r = 0.25, classes differ"
