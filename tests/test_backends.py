"""Forward-pass backends (issue 11, item 1): every fp32 path gives the eager maps, the user's
model is left as it was, exported graphs and compiled models are built once, bad names are refused,
bf16 is opt-in and reports its agreement."""
from __future__ import annotations

import pytest
import torch
import torchvision

import polycam_explorer as pe
from polycam_explorer import backends
from polycam_explorer.backends import pearson

from conftest import tmpfs

R_MIN = 0.9999


@pytest.fixture(autouse=True)
def graph_cache(tmp_path, monkeypatch):
    """Exported graphs go to a temporary cache folder; runners are not shared between tests."""
    monkeypatch.setenv("POLYCAM_EXPLORER_CACHE", str(tmp_path / "cache"))
    backends.clear_cache()
    backends._MEMORY_GRAPHS.clear()
    yield
    backends.clear_cache()
    backends._MEMORY_GRAPHS.clear()


@pytest.fixture(scope="module")
def resnet():
    torch.manual_seed(0)
    net = torchvision.models.resnet18(num_classes=10).eval()
    return net, torch.randn(1, 3, 64, 64)


@pytest.fixture(scope="module")
def eager_mapset(resnet):
    net, x = resnet
    return pe.compute_mapset(net, x, batch_size=16, progress=False, backend="eager")


def min_agreement(a: pe.MapSet, b: pe.MapSet, classes=None) -> float:
    classes = classes if classes is not None else [c for c, _, _ in a.topk(3)]
    return min(pearson(a.saliency(c, v, d), b.saliency(c, v, d)) for c in classes for v in ("+", "-", "+-")
               for d in range(1, len(a.layers) + 1))


FP32_PATHS = [b for b in ("auto", "channels_last", "onnxruntime", "compile") if b == "auto" or b in backends.installed()]


@pytest.mark.parametrize("backend", FP32_PATHS)
def test_fp32_paths_give_the_eager_maps(resnet, eager_mapset, backend):
    """Every depth, every variant, top-3 classes: r >= 0.9999 against eager fp32."""
    net, x = resnet
    ms = pe.compute_mapset(net, x, batch_size=16, progress=False, backend=backend)
    if backend != "auto":
        assert ms.stats["backend"] == backend
    assert ms.stats["precision"] == "fp32"
    assert ms.stats["forward_passes"] == eager_mapset.stats["forward_passes"]
    assert min_agreement(eager_mapset, ms) >= R_MIN


@pytest.mark.parametrize("backend", ["channels_last", "compile", "onnxruntime"])
def test_the_users_model_is_left_as_it_was(resnet, backend):
    if backend not in backends.installed():
        pytest.skip(f"{backend} is not installed")
    net, x = resnet
    net.train()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    runner = backends.runner_for(net, x, backend=backend, batch_size=4, fingerprint=pe.model_fingerprint(net))
    runner(x.expand(3, -1, -1, -1))
    assert net.training and all(m.training for m in net.modules())
    assert all(p.requires_grad for p in net.parameters())
    assert net.conv1.weight.is_contiguous() and not net.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    after = net.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in net.modules())
    assert type(net.forward) is type(torchvision.models.resnet18().forward)  # not replaced by a compiled one
    net.eval()


def test_runners_are_built_once_per_model_and_input_size(resnet):
    net, x = resnet
    fp = pe.model_fingerprint(net)
    first = backends.runner_for(net, x, backend="channels_last", fingerprint=fp)
    assert backends.runner_for(net, x, backend="channels_last", fingerprint=fp) is first
    other = torch.randn(1, 3, 96, 96)
    assert backends.runner_for(net, other, backend="channels_last", fingerprint=fp) is not first


@pytest.mark.skipif("onnxruntime" not in backends.installed(), reason="onnxruntime is not installed")
def test_exported_graph_is_cached_in_memory_and_on_disk(resnet, tmp_path):
    net, x = resnet
    fp = pe.model_fingerprint(net)
    runner = backends.runner_for(net, x, backend="onnxruntime", fingerprint=fp)
    assert backends.runner_for(net, x, backend="onnxruntime", fingerprint=fp) is runner
    files = list((tmp_path / "cache" / "graphs").glob(f"{fp}-3x64x64-*.onnx"))
    assert len(files) == 1
    backends.clear_cache()
    backends._MEMORY_GRAPHS.clear()
    again = backends.runner_for(net, x, backend="onnxruntime", fingerprint=fp)  # from disk: no export
    assert again.setup_s < runner.setup_s
    batch = torch.randn(5, 3, 64, 64)  # any batch size: the batch dimension is dynamic
    with torch.no_grad():
        assert torch.allclose(again(batch), net(batch), atol=1e-4)


def test_bad_names_are_refused_listing_what_is_accepted_and_installed(resnet):
    net, x = resnet
    with pytest.raises(ValueError, match=r"backend must be one of .*'eager'.*installed here: \[") as info:
        pe.compute_mapset(net, x, progress=False, backend="tensorrt")
    assert "channels_last" in str(info.value)
    with pytest.raises(ValueError, match="precision must be one of"):
        pe.compute_mapset(net, x, progress=False, precision="fp8")
    with pytest.raises(ValueError, match="bf16"):
        pe.compute_mapset(net, x, progress=False, backend="eager", precision="bf16")
    with pytest.raises(ValueError, match="backend must be one of"):
        pe.mapset_for(torch.zeros(64, 64, 3, dtype=torch.uint8).numpy(), net, backend=None)


def test_a_missing_backend_is_named(resnet, monkeypatch):
    net, x = resnet
    monkeypatch.setattr(backends, "installed", lambda: ["eager", "channels_last"])
    with pytest.raises(ValueError, match="'onnxruntime' is not installed here.*fast"):
        pe.compute_mapset(net, x, progress=False, backend="onnxruntime")


def test_auto_falls_back_to_an_exact_path_when_the_export_fails(resnet, eager_mapset, monkeypatch):
    if "onnxruntime" not in backends.installed():
        pytest.skip("onnxruntime is not installed")
    net, x = resnet

    def broken(*args, **kwargs):
        raise RuntimeError("unsupported operator")
    monkeypatch.setattr(backends, "_export", broken)
    with pytest.warns(backends.BackendFallbackWarning, match="unsupported operator"):
        ms = pe.compute_mapset(net, x, batch_size=16, progress=False)
    assert ms.stats["backend"] == "channels_last"
    assert min_agreement(eager_mapset, ms) >= R_MIN


def test_bf16_is_opt_in_and_reports_its_agreement(resnet, eager_mapset, monkeypatch):
    net, x = resnet
    assert eager_mapset.stats["precision"] == "fp32" and "precision_agreement" not in eager_mapset.stats
    monkeypatch.setattr(backends, "MIN_BF16_AGREEMENT", 1.01)  # any bf16 result is now too far
    with pytest.warns(backends.PrecisionWarning, match="agree with fp32 at r ="):
        ms = pe.compute_mapset(net, x, batch_size=16, progress=False, precision="bf16")
    assert ms.stats["precision"] == "bf16"
    assert 0.9 < ms.stats["precision_agreement"] <= 1.0
    assert min_agreement(eager_mapset, ms) > 0.9


def test_pearsons_is_numpys_corrcoef_per_pair_and_defined_for_constant_maps():
    import numpy as np

    from polycam_explorer.backends import pearsons

    gen = torch.Generator().manual_seed(0)
    a, b = torch.rand(5, 7, 9, generator=gen), torch.rand(5, 7, 9, generator=gen)
    b[1] = 2 * a[1] + 1  # r = 1
    b[2] = -a[2]  # r = -1
    want = [np.corrcoef(a[i].flatten().numpy(), b[i].flatten().numpy())[0, 1] for i in range(5)]
    assert pearsons(a, b).tolist() == pytest.approx(want, abs=1e-12)
    assert [pearson(a[i], b[i]) for i in range(5)] == pytest.approx(want, abs=1e-12)
    flat, ramp = torch.zeros(2, 3, 3), torch.arange(9.0).reshape(1, 3, 3)
    assert pearsons(flat, flat).tolist() == [1.0, 1.0]  # both constant and equal
    assert pearsons(torch.cat([flat[:1], ramp]), torch.cat([ramp, flat[:1]])).tolist() == [0.0, 0.0]


def test_estimated_agreement_of_several_weight_vectors_is_the_smallest_of_each_alone():
    from polycam_explorer.probes import estimated_agreement

    gen = torch.Generator().manual_seed(1)
    acts = torch.rand(12, 5, 6, generator=gen)
    checked = torch.zeros(12, dtype=torch.bool)
    checked[[0, 3, 7]] = True
    w_low = torch.rand(12, 4, generator=gen)
    w_ref = w_low[checked] + 0.3 * torch.randn(3, 4, generator=gen)
    each = [estimated_agreement(acts, checked, w_low[:, i], w_ref[:, i]) for i in range(4)]
    assert len(set(each)) == 4 and estimated_agreement(acts, checked, w_low, w_ref) == pytest.approx(min(each))


def test_estimated_agreement_hand_computed():
    """Three channels, one checked: its error is scaled by sqrt(E / E_checked) and r is numpy's."""
    import numpy as np

    from polycam_explorer.probes import estimated_agreement

    acts = torch.tensor([[[2.0, 0, 0]], [[0, 1.0, 0]], [[0, 0, 1.0]]])
    checked = torch.tensor([True, False, False])
    w_low = torch.tensor([1.0, 1.0, 3.0])
    scale = (6 / 4) ** 0.5
    want = np.corrcoef([2.0, 1.0, 3.0], [2 * (1 - scale * (1 - 0.5)), 1.0, 3.0])[0, 1]
    assert estimated_agreement(acts, checked, w_low, torch.tensor([0.5])) == pytest.approx(want, abs=1e-6)
    assert want < 0.99
    assert estimated_agreement(acts, checked, w_low, torch.tensor([1.0])) == pytest.approx(1.0, abs=1e-12)


def test_estimated_agreement_when_the_checked_channels_map_is_empty():
    """A class the checked channels barely move: in reduced precision their weights are all 0, in fp32
    one is 0.01. Their own maps ([0, 0, 0] against [0.01, 0, 0]) would read r = 0; the layer's map
    does not change: r = 0.9999."""
    import numpy as np

    from polycam_explorer.probes import estimated_agreement

    acts = torch.eye(3)[:, None, :]
    checked = torch.tensor([True, False, False])
    w_low = torch.tensor([0.0, 1.0, 2.0])
    r = estimated_agreement(acts, checked, w_low, torch.tensor([0.01]))
    assert r == pytest.approx(np.corrcoef([0, 1, 2], [0.01 * 3 ** 0.5, 1, 2])[0, 1], abs=1e-9)
    assert r > 0.9999


def test_precision_agreement_of_fp32_scores_is_one_and_sees_a_checked_error(resnet, eager_mapset):
    """Through the re-probing itself: the exact scores agree with themselves; the top class's PCAM-
    weights zeroed on every checked channel lower r, but not to the 0 its checked channels alone
    would read."""
    from polycam_explorer.models import probabilities
    from polycam_explorer.probes import LayerScores, energy_order, plan_layer, precision_agreement

    net, x = resnet
    ms = eager_mapset
    acts = ms.activations[-1]
    plan = plan_layer(acts)
    plus, minus = ms.scores(len(ms.layers) - 1)
    f_zero = probabilities(net(torch.zeros_like(x)))[0]

    def agreement(scores):
        return precision_agreement(net, x, acts, plan, scores, ms.probs, ms.probs, f_zero, batch_size=16)

    assert agreement(LayerScores(plus, minus)) == pytest.approx(1.0, abs=1e-6)
    checked = torch.isin(plan.inverse, energy_order(acts, plan)[:32])
    top = int(ms.probs.argmax())
    assert bool((minus[checked, top] < ms.probs[top]).any())  # fp32's checked PCAM- map is not empty
    moved = minus.clone()
    moved[checked, top] = ms.probs[top]  # ReLU(s0 - S-) = 0 on every checked channel
    assert 0.0 < agreement(LayerScores(plus, moved)) < 0.9999


def test_embedded_model_default_path_gives_the_eager_maps():
    """The embedded EfficientNet-Lite0 at 64x64 (a few thousand probes): auto against eager."""
    model = pe.load_model()
    x = pe.load_image(pe.cache.sample_images()[0], model, size=64)
    eager = pe.compute_mapset(model, x, batch_size=16, progress=False, backend="eager")
    fast = pe.compute_mapset(model, x, batch_size=16, progress=False)
    assert fast.stats["backend"] != "eager"
    assert min_agreement(eager, fast) >= R_MIN


@pytest.mark.parametrize("backend", ["auto", "channels_last"])
def test_faithfulness_forward_batches_on_a_backend(resnet, backend):
    from polycam_explorer.metrics import faithfulness_curves

    net, x = resnet
    sal = torch.rand(64, 64)
    want = faithfulness_curves(net, [x], [sal], [3], 16, batch_size=8)[0]
    got = faithfulness_curves(net, [x], [sal], [3], 16, batch_size=8, backend=backend)[0]
    for kind in ("insertion", "deletion"):
        assert abs(got[kind][0] - want[kind][0]) < 1e-5
        assert float(abs(got[kind][1] - want[kind][1]).max()) < 1e-5
    with pytest.raises(ValueError, match="backend must be one of"):
        faithfulness_curves(net, [x], [sal], [3], 16, backend="fast")


class NCHWOnly(torch.nn.Module):
    """A forward that reads its input's raw memory as NCHW (as a custom kernel might): right on
    the contiguous tensors eager gives it, silently wrong on channels_last ones."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.head = torch.nn.Linear(4, 5)

    def forward(self, x):
        n, c, h, w = x.shape
        raw = torch.as_strided(x, (n, c, h, w), (c * h * w, h * w, w, 1))
        return self.head(self.conv(raw).mean((2, 3)))


def test_a_fast_path_that_disagrees_with_the_model_is_refused_or_left():
    """Every fast fp32 path is checked against the model itself when built: asked for by name it
    is refused, naming the difference; auto falls back to eager, with a warning."""
    net, x = NCHWOnly().eval(), torch.rand(1, 3, 24, 24)
    with pytest.raises(backends.BackendMismatch, match="channels_last path gives probabilities up to"):
        pe.compute_mapset(net, x, ["conv"], batch_size=8, progress=False, backend="channels_last")
    eager = pe.compute_mapset(net, x, ["conv"], batch_size=8, progress=False, backend="eager")
    with pytest.warns(backends.BackendFallbackWarning, match="channels_last path gives probabilities"):
        runner = backends.runner_for(net, x, backend="auto", fingerprint=pe.model_fingerprint(net))
    assert runner.name == "eager"
    assert eager.stats["backend"] == "eager"
    batch = x * torch.rand(3, 1, 24, 24)
    with torch.no_grad():
        assert torch.equal(runner(batch), net(batch))


def test_an_exported_graph_that_disagrees_with_the_model_is_not_used(resnet, eager_mapset, monkeypatch):
    """A graph that exported silently wrong (here: another network's) is caught before use."""
    if "onnxruntime" not in backends.installed():
        pytest.skip("onnxruntime is not installed")
    net, x = resnet
    torch.manual_seed(1)
    other = torchvision.models.resnet18(num_classes=10).eval()
    plain = backends._export
    monkeypatch.setattr(backends, "_export", lambda n, x_, fingerprint: plain(other, x_, None))
    with pytest.raises(backends.BackendMismatch, match="onnxruntime path gives probabilities"):
        pe.compute_mapset(net, x, batch_size=16, progress=False, backend="onnxruntime")
    with pytest.warns(backends.BackendFallbackWarning, match="onnxruntime path gives probabilities"):
        ms = pe.compute_mapset(net, x, batch_size=16, progress=False)
    assert ms.stats["backend"] == "channels_last"
    assert min_agreement(eager_mapset, ms) >= R_MIN


def test_a_graph_that_cannot_be_written_whole_leaves_nothing_in_the_cache(tmp_path, monkeypatch):
    """The exported graph's disk copy is a speed-up: a full disk is no error, and no part of the
    file stays behind (it used to leave its temporary file). A real 64 kB tmpfs where this machine
    lets us mount one; else a disk that fails the write's fsync with ENOSPC."""
    import errno

    from polycam_explorer import files

    folder = tmp_path / "graphs"
    with tmpfs(folder, "size=64k") as mounted:
        if not mounted:
            def full(fd):
                raise OSError(errno.ENOSPC, "No space left on device (simulated)")
            monkeypatch.setattr(files.os, "fsync", full)
        backends._write_quietly(folder / "g.onnx", b"x" * 200_000)
        assert list(folder.iterdir()) == []
