"""The paper's ablation tables (2, 3) from one sweep, on the tiny model."""
from __future__ import annotations

import pytest
import torch

import polycam_explorer as pe
from conftest import TINY_LAYERS
from polycam_explorer import polycam
from polycam_explorer.ablation import ablation_maps, ablation_rows, ablation_table

N_STEPS = 32  # 8 pixels per step on 16 x 16


@pytest.fixture
def rows(tiny_model, tiny_x, ms):
    return ablation_rows(tiny_model, tiny_x, 1, n_steps=N_STEPS, mapset=ms)


def test_one_row_per_variant_and_map_with_aucs_in_range(rows):
    maps = ["polycam", "no-lnorm"] + [f"layer:{n}" for n in TINY_LAYERS]
    assert len(rows) == 3 * (2 + len(TINY_LAYERS))
    assert [(r["variant"], r["map"]) for r in rows] == [(v, m) for v in ("+", "-", "+-") for m in maps]
    for r in rows:
        assert set(r) == {"variant", "map", "insertion", "deletion", "ins_del"}
        assert 0.0 <= r["insertion"] <= 1.0 and 0.0 <= r["deletion"] <= 1.0
        assert r["ins_del"] == r["insertion"] - r["deletion"]


@pytest.mark.parametrize("variant", ["+", "-", "+-"])
def test_rows_are_the_metrics_of_the_maps(tiny_model, tiny_x, ms, rows, variant):
    by_map = {r["map"]: r for r in rows if r["variant"] == variant}
    same = lambda value: pytest.approx(value, abs=1e-6)  # same map, same protocol; other batch mates
    full = pe.insertion(tiny_model, tiny_x, ms.saliency(1, variant), 1, N_STEPS)[0]
    assert by_map["polycam"]["insertion"] == same(full)
    no_lnorm = pe.deletion(tiny_model, tiny_x, ms.saliency(1, variant, lnorm=False), 1, N_STEPS)[0]
    assert by_map["no-lnorm"]["deletion"] == same(no_lnorm)
    # P_L = CAM_L: the isolated coarsest CAM is the depth-1 Poly-CAM map
    depth1 = ms.saliency(1, variant, depth=1)
    assert by_map[f"layer:{TINY_LAYERS[-1]}"]["insertion"] == same(pe.insertion(tiny_model, tiny_x, depth1, 1, N_STEPS)[0])
    assert by_map[f"layer:{TINY_LAYERS[-1]}"]["deletion"] == same(pe.deletion(tiny_model, tiny_x, depth1, 1, N_STEPS)[0])
    finest = polycam.display_map(ms.layer_cam(1, variant, TINY_LAYERS[0]), ms.size)
    assert by_map[f"layer:{TINY_LAYERS[0]}"]["deletion"] == same(pe.deletion(tiny_model, tiny_x, finest, 1, N_STEPS)[0])


def test_ablation_maps_differ_where_the_method_says_they_should(ms):
    maps = ablation_maps(ms, 1, "-")
    assert all(m.shape == (16, 16) and float(m.min()) >= 0 and float(m.max()) <= 1 for m in maps.values())
    assert not torch.equal(maps["polycam"], maps["no-lnorm"])
    assert not torch.equal(maps["layer:features.1"], maps["layer:features"])


def test_one_sweep_by_default_and_top1_class(tiny_model, tiny_x, ms, monkeypatch):
    calls = []
    real = pe.compute_mapset

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr("polycam_explorer.ablation.compute_mapset", counting)
    top = ablation_rows(tiny_model, tiny_x, n_steps=N_STEPS)
    assert len(calls) == 1
    c = ms.topk(1)[0][0]
    assert top == ablation_rows(tiny_model, tiny_x, c, n_steps=N_STEPS, mapset=ms)


def test_a_mapset_of_another_image_is_refused(tiny_model, tiny_x, ms):
    with pytest.raises(ValueError, match="another image"):
        ablation_rows(tiny_model, tiny_x + 1, 1, n_steps=N_STEPS, mapset=ms)
    with pytest.raises(ValueError, match="class_idx"):
        ablation_rows(tiny_model, tiny_x, 9, n_steps=N_STEPS, mapset=ms)


def test_table_averages_images_with_the_papers_columns(rows):
    other = [dict(r, insertion=r["insertion"] / 2, ins_del=r["insertion"] / 2 - r["deletion"]) for r in rows]
    table = ablation_table([rows, other], digits=4)
    lines = table.strip().splitlines()
    assert lines[0] == ("| map (mean of 2 images) | PCAM+ Ins | PCAM+ Del | PCAM+ Ins-Del | PCAM- Ins | PCAM- Del"
                        " | PCAM- Ins-Del | PCAM± Ins | PCAM± Del | PCAM± Ins-Del |")
    assert lines[1] == "|" + "---|" * 10
    labels = [line.split("|")[1].strip() for line in lines[2:]]
    assert labels == ["Poly-CAM", "Poly-CAM without LNorm"] + [f"CAM {n} (isolated)" for n in TINY_LAYERS]
    first = {r["map"]: r for r in rows if r["variant"] == "-"}["polycam"]
    cells = lines[2].split("|")[2:-1]
    assert cells[3].strip() == f"{0.75 * first['insertion']:.4f}"  # PCAM- Ins: mean of x and x / 2
    assert cells[4].strip() == f"{first['deletion']:.4f}"
    assert ablation_table(rows).splitlines()[0].startswith("| map (mean of 1 image) |")
    with pytest.raises(ValueError, match="other maps"):
        ablation_table([rows, rows[:-1]])
