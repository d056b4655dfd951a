"""MapSet behaviour: one sweep serves every class/variant/depth, caching, partial sets, batching."""
import pytest
import torch

import polycam_explorer as pe
from conftest import TINY_LAYERS
from polycam_explorer import polycam


def _mapset(model, x, **kw):
    return pe.compute_mapset(model, x, progress=False, **kw)


def test_every_class_variant_and_depth_without_new_forward_passes(tiny_model, tiny_x, monkeypatch):
    ms = _mapset(tiny_model, tiny_x)
    calls = []
    monkeypatch.setattr(tiny_model.net, "forward", lambda *a: calls.append(1))
    for c in range(ms.num_classes):
        for v in ("+", "-", "+-"):
            for d in range(1, len(ms.layers) + 1):
                s = ms.saliency(c, v, d)
                assert s.shape == (16, 16) and torch.isfinite(s).all()
    assert calls == []


def test_repeated_request_is_served_from_the_cache(tiny_model, tiny_x, monkeypatch):
    ms = _mapset(tiny_model, tiny_x)
    first = ms.poly_maps(2, "+-")
    computed = []
    real = polycam.poly_recursion
    monkeypatch.setattr(polycam, "poly_recursion", lambda *a, **k: computed.append(1) or real(*a, **k))
    assert ms.poly_maps(2, "±") is first
    assert computed == []
    assert ms.poly_maps(2, "+-", lnorm=False) is not first and computed == [1]


def test_cache_is_bounded(tiny_model, tiny_x, monkeypatch):
    monkeypatch.setattr(pe.mapset, "CACHE_SIZE", 4)
    ms = _mapset(tiny_model, tiny_x)
    for c in range(5):
        ms.poly_maps(c, "+")
    assert len(ms._cache) == 4


def test_depth_one_is_the_coarse_map_and_full_depth_has_input_detail(tiny_model, tiny_x):
    ms = _mapset(tiny_model, tiny_x)
    maps = ms.poly_maps(0, "-")
    assert [tuple(m.shape) for m in maps] == [(4, 4), (8, 8), (16, 16)]
    assert torch.equal(maps[0], ms.layer_cam(0, "-", ms.layers[-1]))
    assert torch.equal(ms.saliency(0, "-"), ms.saliency(0, "-", depth=3))


def test_topk_and_probs(tiny_model, tiny_x):
    ms = _mapset(tiny_model, tiny_x)
    expected = torch.softmax(tiny_model(tiny_x), 1)[0]
    assert torch.allclose(ms.probs, expected, atol=1e-6)
    top = ms.topk(2)
    assert [t[0] for t in top] == expected.argsort(descending=True)[:2].tolist()
    assert top[0][1] == f"c{top[0][0]}"


def test_probe_batches_never_exceed_batch_size(tiny_model, tiny_x, monkeypatch):
    seen = []
    real = tiny_model.net.forward
    monkeypatch.setattr(tiny_model.net, "forward", lambda x: seen.append(x.shape[0]) or real(x))
    ms = _mapset(tiny_model, tiny_x, layers=TINY_LAYERS, batch_size=5)  # explicit: no discovery pass
    assert max(seen) == 5
    assert sum(seen) == ms.stats["forward_passes"] + 1  # + the activation capture
    assert ms.stats["naive_passes"] == 2 * sum(a.shape[0] for a in ms.activations)


def test_batch_size_does_not_change_the_maps(tiny_model, tiny_x):
    a, b = _mapset(tiny_model, tiny_x, batch_size=1), _mapset(tiny_model, tiny_x, batch_size=64)
    for v in ("+", "-", "+-"):
        # batched and single-image convolutions round differently (~1e-7), nothing more
        assert torch.allclose(a.saliency(1, v), b.saliency(1, v), atol=1e-3)


def test_iter_mapset_fills_coarsest_first(tiny_model, tiny_x):
    depths = [(ms.depth_available, ms.complete) for ms in pe.iter_mapset(tiny_model, tiny_x, progress=False)]
    assert depths == [(1, False), (2, False), (3, True)]


def test_to_device_copy_keeps_maps(tiny_model, tiny_x):
    ms = _mapset(tiny_model, tiny_x)
    moved = ms.to("cpu")
    assert moved is not ms and torch.equal(moved.saliency(0), ms.saliency(0))


def test_device_argument_copies_the_model_instead_of_moving_it(tiny_model, tiny_x):
    ms = _mapset(tiny_model, tiny_x, device="cpu")
    assert ms.device.type == "cpu" and next(tiny_model.parameters()).device.type == "cpu"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
def test_cuda_mapset_matches_cpu(tiny_model, tiny_x):
    cpu = _mapset(tiny_model, tiny_x)
    gpu = _mapset(tiny_model, tiny_x, device="cuda")
    assert gpu.device.type == "cuda" and next(tiny_model.parameters()).device.type == "cpu"
    assert torch.allclose(gpu.saliency(0).cpu(), cpu.saliency(0), atol=1e-4)
