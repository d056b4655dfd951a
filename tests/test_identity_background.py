"""The identity hash beside the sweep (issue 11, item 4): a sweep of a network seen before starts
its probes while the hash runs and checks its guess before yielding anything; a network changed
since is swept again with a fresh runner, so a result never depends on what ran before. One
operation hashes a model once."""
from __future__ import annotations

import threading

import pytest
import torch
from torch import nn

import polycam_explorer as pe
from polycam_explorer import backends, identity


@pytest.fixture(autouse=True)
def fresh_runners():
    backends.clear_cache()
    yield
    backends.clear_cache()


def small_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, stride=2, padding=1),
                         nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5)).eval()


LAYERS = ["1", "3"]


def maps(ms: pe.MapSet) -> torch.Tensor:
    return torch.stack([ms.saliency(c, v, d) for c in range(5) for v in ("+", "-", "+-") for d in (1, 2)])


def agreement(a: pe.MapSet, b: pe.MapSet) -> float:
    """The smallest Pearson r over every class, variant and depth."""
    return min(backends.pearson(a.saliency(c, v, d), b.saliency(c, v, d))
               for c in range(5) for v in ("+", "-", "+-") for d in (1, 2))


def test_a_network_changed_in_place_is_swept_with_a_fresh_runner() -> None:
    """The runner (a channels_last copy of the weights) is picked by the network's last
    fingerprint; a change made through ``.data`` (which no version counter sees) is found by the
    hash and the sweep starts again: the maps are the changed network's."""
    net, x = small_net(), torch.rand(1, 3, 16, 16)
    before = pe.compute_mapset(net, x, LAYERS, batch_size=4, progress=False, backend="channels_last")
    net[2].weight.data.mul_(-1.0)
    again = pe.compute_mapset(net, x, LAYERS, batch_size=4, progress=False, backend="channels_last")
    fresh = pe.compute_mapset(net, x, LAYERS, batch_size=4, progress=False, backend="eager")
    assert again.model_id == pe.model_fingerprint(net) == fresh.model_id != before.model_id
    assert agreement(again, fresh) >= 0.9999 > agreement(before, fresh)
    torch.testing.assert_close(again.probs, fresh.probs, rtol=1e-5, atol=1e-7)


def test_a_network_seen_before_is_probed_while_its_hash_runs(monkeypatch) -> None:
    """The hash of the second sweep waits until the probes have begun: a sweep that waited for
    the hash before probing would never begin (and the test would time out, not hang)."""
    net, x = small_net(), torch.rand(1, 3, 16, 16)
    first = pe.compute_mapset(net, x, LAYERS, batch_size=4, progress=False, backend="channels_last")
    probing = threading.Event()
    waited: list[bool] = []
    plain = identity._fingerprint

    def slow(module):
        waited.append(probing.wait(timeout=30))
        return plain(module)

    monkeypatch.setattr(identity, "_fingerprint", slow)
    second = pe.compute_mapset(net, x, LAYERS, batch_size=4, backend="channels_last",
                               progress=lambda done, total: probing.set())
    assert waited == [True]
    assert second.model_id == first.model_id
    torch.testing.assert_close(maps(second), maps(first), rtol=0, atol=0)


def test_nothing_is_yielded_before_the_guess_is_checked(monkeypatch) -> None:
    """With a stale guess, the first map set the caller sees already has the changed network's
    identity and scores."""
    net, x = small_net(), torch.rand(1, 3, 16, 16)
    pe.compute_mapset(net, x, LAYERS, batch_size=4, progress=False, backend="channels_last")
    with torch.no_grad():
        net[6].bias.data += 3.0
    expected = pe.compute_mapset(net, x, LAYERS, batch_size=4, progress=False, backend="eager")
    identity._LAST[net] = "0" * 16  # as if last seen with other weights
    for ms in pe.iter_mapset(net, x, LAYERS, batch_size=4, progress=False, backend="channels_last"):
        assert ms.model_id == expected.model_id
        assert backends.pearson(ms.saliency(0, "+-", 1), expected.saliency(0, "+-", 1)) >= 0.9999
        break


def test_one_map_set_lookup_hashes_the_model_once(monkeypatch, tmp_path) -> None:
    """``mapset_for`` looks up the cache, computes and stores (a miss), or looks up and loads
    (a hit): one hash of the model each time, not one per step."""
    net = small_net()
    calls: list[int] = []
    plain = identity._fingerprint
    monkeypatch.setattr(identity, "_fingerprint", lambda module: calls.append(1) or plain(module))
    image = (torch.rand(20, 24, 3) * 255).byte().numpy()
    ms = pe.mapset_for(image, net, layers=LAYERS, size=16, cache_dir=tmp_path, progress=False)
    assert len(calls) == 1 and ms.complete
    calls.clear()
    again = pe.mapset_for(image, net, layers=LAYERS, size=16, cache_dir=tmp_path, progress=False)
    assert len(calls) == 1
    assert again.model_id == ms.model_id == pe.model_fingerprint(net)
