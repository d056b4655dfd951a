"""Atlas aggregates against a hand-built set of rows and maps (no model, no files but the masks)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import polycam_explorer as pe
from polycam_explorer.atlas import Row, build_index
from polycam_explorer.atlas.aggregates import (class_means, insdel_table, masks_from_folder, outside_fraction,
                                               outside_region, region_mask)

S = 4


def _row(file, pred, label=None, insdel=(None, None, None)):
    correct = None if label is None else label == f"c{pred}"
    return Row(file=file, image=file, size=1, mtime_ns=1, sha256="", model_name="m", model_id="id", height=8,
               width=8, n_layers=3, n_classes=5, pred_class=pred, pred_name=f"c{pred}", confidence=0.5,
               top5=((pred, f"c{pred}", 0.5),), label=label, correct=correct, insdel_plus=insdel[0],
               insdel_minus=insdel[1], insdel_pm=insdel[2], context=0.0, plus_minus_diff=0.0)


def _maps(value_pm, left=False):
    m = np.zeros((3, S, S), np.float32)
    m[0] = 0.1
    m[1] = 0.2
    if left:
        m[2, :, :2] = value_pm
    else:
        m[2] = value_pm
    return m


@pytest.fixture
def hand():
    rows = [_row("a", 1, "c1", (0.2, 0.4, 0.6)), _row("b", 1, "c1", (0.4, None, 0.2)),
            _row("c", 1, "c2"), _row("d", 2, "c2", (None, None, 0.1)), _row("e", 2)]
    maps = {"a": _maps(1.0), "b": _maps(0.5), "c": _maps(1.0, left=True), "d": _maps(0.25), "e": _maps(0.75, True)}
    return rows, maps


def test_class_means_by_prediction_and_by_label(hand):
    rows, maps = hand
    means = {m.class_key: m for m in class_means(rows, maps)}
    assert set(means) == {1, 2}
    one = means[1]
    assert (one.n_correct, one.n_wrong, one.n_unlabelled, one.name) == (2, 1, 0, "c1")
    assert np.allclose(one.correct, 0.75) and np.allclose(one.wrong, maps["c"][2]) and one.unlabelled is None
    two = means[2]
    assert (two.n_correct, two.n_wrong, two.n_unlabelled) == (1, 0, 1)
    assert np.allclose(two.correct, 0.25) and two.wrong is None and np.allclose(two.unlabelled, maps["e"][2])
    assert np.allclose(class_means(rows, maps, variant="-")[0].correct, 0.2)
    by_label = {m.class_key: m for m in class_means(rows, maps, by="label")}
    assert set(by_label) == {"c1", "c2"}
    assert (by_label["c2"].n_correct, by_label["c2"].n_wrong) == (1, 1)
    assert np.allclose(by_label["c2"].wrong, maps["c"][2]) and np.allclose(by_label["c2"].correct, 0.25)
    with pytest.raises(ValueError, match="by must be"):
        class_means(rows, maps, by="file")


def test_insdel_table_means_per_variant_ignore_unevaluated(hand):
    rows, _ = hand
    table = insdel_table(rows)
    assert [(t.class_index, t.n) for t in table] == [(1, 3), (2, 2), (None, 5)]
    assert table[0].means == pytest.approx({"+": 0.3, "-": 0.4, "+-": 0.4})
    assert table[0].counts == {"+": 2, "-": 1, "+-": 2}
    assert table[1].means == {"+": None, "-": None, "+-": pytest.approx(0.1)}
    assert table[2].means["+-"] == pytest.approx((0.6 + 0.2 + 0.1) / 3)


def test_outside_region_box_and_per_image_masks(hand, tmp_path):
    rows, maps = hand
    right_half = (0.5, 0.0, 1.0, 1.0)
    assert region_mask(right_half, S).tolist() == [[0, 0, 1, 1]] * S
    found = outside_region(rows, maps, right_half, min_fraction=0.5)
    # uniform maps: half outside; maps on the left half: all outside
    assert [(r.file, f) for r, f in found] == [("c", 1.0), ("e", 1.0), ("a", 0.5), ("b", 0.5), ("d", 0.5)]
    assert [r.file for r, _ in outside_region(rows, maps, right_half, min_fraction=0.9)] == ["c", "e"]
    left = np.zeros((8, 8), bool)
    left[:, :4] = True
    found = outside_region(rows, maps, right_half, masks={"c": left}, min_fraction=0.9)
    assert [r.file for r, _ in found] == ["e"]  # c's own mask covers its map
    assert outside_fraction(np.zeros((S, S)), region_mask(right_half, S)) == 0.0
    Image.fromarray(left.astype(np.uint8) * 255).save(tmp_path / "c.png")
    assert set(masks_from_folder(tmp_path, rows)) == {"c"}
    assert np.array_equal(masks_from_folder(tmp_path, rows)["c"], left.astype(np.float32))
    with pytest.raises(ValueError, match="region box"):
        region_mask((0.6, 0, 0.5, 1), S)
    with pytest.raises(ValueError, match="values in"):
        region_mask(np.full((3, 3), 2.0), S)


def test_aggregates_from_a_built_index_match_the_map_sets(tmp_path, tiny_model):
    sets = []
    for seed in range(3):
        x = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(seed))
        ms = pe.compute_mapset(tiny_model, x, progress=False)
        ms.save(tmp_path / f"i{seed}.mapset.npz")
        sets.append(ms)
    index = build_index(tmp_path, progress=False)
    rows = index.rows()
    maps = index.small_maps(rows)
    means = class_means(rows, maps)
    for mean in means:
        members = [ms for ms in sets if ms.topk(1)[0][0] == mean.class_key]
        expected = np.mean([torch.nn.functional.interpolate(ms.saliency(mean.class_key)[None, None], size=(32, 32),
                                                            mode="area")[0, 0].numpy() for ms in members], axis=0)
        assert mean.n_unlabelled == len(members)
        assert np.allclose(mean.unlabelled, expected, atol=2e-3)  # stored as float16
