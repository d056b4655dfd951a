"""Progressive sweeps (issue 11 §2): honest, labelled estimates of depth 1 first, then the exact set.

TinyNet's coarsest layer has 8 channels; with one mask per batch and no time throttle every
batch of the coarsest layer gives one estimate, so the estimates can be checked one by one.
"""
from __future__ import annotations

import threading

import pytest
import torch

import polycam_explorer as pe
from polycam_explorer import polycam, probes
from polycam_explorer.probes import SweepCancelled, energy_order, plan_layer

VARIANTS = ("+", "-", "+-")


@pytest.fixture
def every_batch(monkeypatch):
    """An estimate after every batch: one mask (two probes) per batch, no time throttle."""
    monkeypatch.setattr(probes, "ESTIMATE_EVERY_S", 0.0)
    monkeypatch.setattr(probes, "FIRST_ESTIMATE_PROBES", 2)
    return 2


def _snapshot(ms: pe.MapSet) -> dict:
    return {"estimate": ms.estimate, "done": ms.channels_done, "total": ms.channels_total,
            "depth": ms.depth_available, "complete": ms.complete, "probed": ms.probed,
            "revision": ms.revision,
            "maps": {(c, v): ms.saliency(c, v, depth=1) for c in range(ms.num_classes) for v in VARIANTS}}


def _run(model, x, **kw) -> tuple[pe.MapSet, list[dict]]:
    seen = [_snapshot(ms) for ms in pe.iter_mapset(model, x, progress=False, progressive=True, **kw)]
    return seen, seen


def test_the_final_map_set_equals_a_plain_sweep_exactly(tiny_model, tiny_x, every_batch):
    plain = pe.compute_mapset(tiny_model, tiny_x, progress=False, batch_size=every_batch)
    ms = None
    for ms in pe.iter_mapset(tiny_model, tiny_x, progress=False, progressive=True, batch_size=every_batch):
        pass
    assert ms.complete and not ms.estimate and ms.channels_done == ms.channels_total == 8
    assert torch.equal(ms.probs, plain.probs)
    for layer in range(len(plain.layers)):
        assert torch.equal(ms.scores(layer)[0], plain.scores(layer)[0])
        assert torch.equal(ms.scores(layer)[1], plain.scores(layer)[1])
    assert ms.stats["forward_passes"] == plain.stats["forward_passes"]
    assert ms.stats["naive_passes"] == plain.stats["naive_passes"]


def test_the_final_scores_do_not_depend_on_the_batch_size(tiny_model, tiny_x):
    """Default throttle and first batch: the same probes in other batches give the same bits."""
    plain = pe.compute_mapset(tiny_model, tiny_x, progress=False)
    for ms in pe.iter_mapset(tiny_model, tiny_x, progress=False, progressive=True, batch_size=6):
        pass
    assert all(torch.equal(ms.scores(i)[j], plain.scores(i)[j]) for i in range(3) for j in range(2))


def test_estimates_are_labelled_and_grow(tiny_model, tiny_x, every_batch):
    _, seen = _run(tiny_model, tiny_x, batch_size=every_batch)
    estimates = [s for s in seen if s["estimate"]]
    exact = [s for s in seen if not s["estimate"]]
    assert len(estimates) >= 2 and seen[0]["estimate"]
    assert seen.index(estimates[-1]) < seen.index(exact[0])  # every estimate comes before the exact yields
    done = [s["done"] for s in estimates]
    assert done == sorted(set(done)) and done[-1] < 8  # strictly increasing, never all
    for s in estimates:
        assert s["depth"] == 1 and not s["complete"] and s["total"] == 8
        assert s["probed"] == [False, False, False]  # an estimate is not a probed layer (not saved)
    assert [s["depth"] for s in exact] == [1, 2, 3]
    assert all(s["done"] == 8 for s in exact)
    revisions = [s["revision"] for s in seen]
    assert revisions == sorted(set(revisions))


def test_an_estimate_is_the_partial_channel_sum_of_the_probed_channels(tiny_model, tiny_x, every_batch):
    full = pe.compute_mapset(tiny_model, tiny_x, progress=False)
    _, seen = _run(tiny_model, tiny_x, batch_size=every_batch)
    acts = full.activations[-1]
    plan = plan_layer(acts)
    order = energy_order(acts, plan)
    plus, minus = full.scores(-1)
    s0 = full.probs
    estimates = [s for s in seen if s["estimate"]]
    for n_masks, s in enumerate(estimates, start=1):  # one mask per batch
        known = (plan.inverse < 0) | torch.isin(plan.inverse, order[:n_masks])
        assert s["done"] == int(known.sum())
        for (c, v), shown in s["maps"].items():
            w = polycam.channel_weights(v, s0[c], plus[known, c], minus[known, c])
            cam = polycam.layer_cam(acts[known], w)
            expected = polycam.display_map(polycam.poly_recursion([cam])[0], full.size)
            torch.testing.assert_close(shown, expected, rtol=1e-5, atol=1e-6)


def test_the_cache_never_serves_an_estimate_after_completion(tiny_model, tiny_x, every_batch):
    full = pe.compute_mapset(tiny_model, tiny_x, progress=False)
    estimate_maps = None
    for ms in pe.iter_mapset(tiny_model, tiny_x, progress=False, progressive=True, batch_size=every_batch):
        for c in range(ms.num_classes):
            for v in VARIANTS:
                maps = ms.poly_maps(c, v)  # fills the cache at every step
                if ms.estimate and c == 0 and v == "+-":
                    estimate_maps = maps
    assert estimate_maps is not None
    assert not torch.equal(ms.poly_maps(0, "+-")[0], estimate_maps[0])
    for c in range(ms.num_classes):
        for v in VARIANTS:
            for got, want in zip(ms.poly_maps(c, v), full.poly_maps(c, v)):
                assert torch.equal(got, want)
            assert torch.equal(ms.saliency(c, v), full.saliency(c, v))


def test_a_cancel_during_the_estimates_stops_the_sweep(tiny_model, tiny_x, every_batch):
    stop = threading.Event()
    seen = []
    with pytest.raises(SweepCancelled):
        for ms in pe.iter_mapset(tiny_model, tiny_x, progress=False, progressive=True,
                                 batch_size=every_batch, cancel=stop):
            seen.append((ms.estimate, ms.channels_done))
            stop.set()
    assert seen == [(True, seen[0][1])]
    assert ms.estimate and not ms.complete and ms.probed == [False, False, False]


def test_progressive_is_off_by_default_and_checked(tiny_model, tiny_x, every_batch):
    assert not any(ms.estimate for ms in pe.iter_mapset(tiny_model, tiny_x, progress=False,
                                                        batch_size=every_batch))
    with pytest.raises(TypeError, match="progressive"):
        next(pe.iter_mapset(tiny_model, tiny_x, progress=False, progressive="yes"))


def test_an_estimate_is_not_saved_as_probed(tiny_model, tiny_x, every_batch, tmp_path):
    for ms in pe.iter_mapset(tiny_model, tiny_x, progress=False, progressive=True, batch_size=every_batch):
        if ms.estimate:
            ms.save(tmp_path / "partial.npz")
            break
    loaded = pe.MapSet.load(tmp_path / "partial.npz")
    assert loaded.depth_available == 0 and not loaded.estimate
