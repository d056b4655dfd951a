"""What users of other CAM tools trip over: leaked hooks, a changed model, in-place ops, constant
channels, odd input shapes and channel counts, single-logit models, determinism, cancelling."""
from __future__ import annotations

import copy
import threading

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from torch import nn

import polycam_explorer as pe
from conftest import TINY_LAYERS, TinyNet

VARIANTS = ("+", "-", "+-")


def tiny(net: nn.Module | None = None, channels: int = 3, n_classes: int = 5) -> pe.Classifier:
    net = TinyNet(n_classes=n_classes, in_channels=channels).eval() if net is None else net
    return pe.Classifier(net, name="tiny", mean=(0.5,) * channels, std=(0.5,) * channels,
                         input_size=(16, 16), class_names=[f"c{i}" for i in range(n_classes)])


def assert_no_hooks(model: nn.Module) -> None:
    for name, m in model.named_modules():
        for attr in ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks",
                     "_backward_pre_hooks", "_forward_hooks_with_kwargs", "_forward_pre_hooks_with_kwargs"):
            hooks = getattr(m, attr, None)
            assert not hooks, f"{attr} left on module {name!r}: {hooks}"
    from torch.nn.modules import module as torch_module
    assert not torch_module._global_forward_hooks
    assert not torch_module._global_forward_pre_hooks


def all_maps(ms: pe.MapSet) -> dict[tuple, torch.Tensor]:
    return {(c, v, d): ms.saliency(c, v, depth=d)
            for c in range(ms.num_classes) for v in VARIANTS for d in range(1, len(ms.layers) + 1)}


# ----- hooks live for one call ---------------------------------------------------------------
def test_no_hooks_after_compute(tiny_model, tiny_x) -> None:
    ms = pe.compute_mapset(tiny_model, tiny_x, progress=False)
    assert ms.complete
    assert_no_hooks(tiny_model)


def test_user_hooks_are_kept(tiny_model, tiny_x) -> None:
    seen = []
    handle = tiny_model.net.features[2].register_forward_hook(lambda m, i, o: seen.append(o.shape[0]))
    try:
        pe.compute_mapset(tiny_model, tiny_x, progress=False)
        assert list(tiny_model.net.features[2]._forward_hooks.values()) != []
        assert seen  # the user's hook still ran
        n = len(seen)
        tiny_model(tiny_x)
        assert len(seen) == n + 1
    finally:
        handle.remove()
    assert_no_hooks(tiny_model)


class RaisingNet(TinyNet):
    """Raises on its ``fail_on``-th forward pass."""

    def __init__(self, fail_on: int) -> None:
        super().__init__()
        self.calls, self.fail_on = 0, fail_on

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.calls == self.fail_on:
            raise RuntimeError("boom")
        return super().forward(x)


# Call 1 is discovery (hooks on every module), 2 the activation capture, 3 f(0), 4+ probes.
@pytest.mark.parametrize("fail_on", [1, 2, 3, 4, 9])
@pytest.mark.parametrize("explicit", [False, True])
def test_no_hooks_and_state_restored_after_raise(tiny_x, fail_on: int, explicit: bool) -> None:
    net = RaisingNet(fail_on).train()
    net.features[0].weight.requires_grad_(False)
    training = [m.training for m in net.modules()]
    grads = [p.requires_grad for p in net.parameters()]
    with pytest.raises(RuntimeError, match="boom"):
        pe.compute_mapset(tiny(net), tiny_x, layers=TINY_LAYERS if explicit else None,
                          batch_size=4, progress=False)
    assert net.calls == fail_on
    assert_no_hooks(net)
    assert [m.training for m in net.modules()] == training
    assert [p.requires_grad for p in net.parameters()] == grads


def test_no_hooks_after_bad_layer_or_cancel(tiny_model, tiny_x) -> None:
    with pytest.raises(ValueError):
        pe.compute_mapset(tiny_model, tiny_x, layers=["features.1", "fc"], progress=False)
    assert_no_hooks(tiny_model)
    stop = threading.Event()
    stop.set()
    with pytest.raises(pe.SweepCancelled):
        pe.compute_mapset(tiny_model, tiny_x, cancel=stop, progress=False)
    assert_no_hooks(tiny_model)


# ----- the user's model is left as found -----------------------------------------------------
class BNNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.features = nn.Sequential(
            nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(inplace=True),
            nn.Conv2d(4, 6, 3, stride=2, padding=1), nn.BatchNorm2d(6), nn.ReLU(inplace=True),
            nn.Dropout2d(0.5))
        self.fc = nn.Linear(6, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x).mean(dim=(2, 3)))


def test_model_left_as_found(tiny_x) -> None:
    net = BNNet()
    with torch.no_grad():  # non-trivial running statistics
        for bn in (net.features[1], net.features[4]):
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
    net.train()
    net.features[4].eval()  # mixed flags
    net.features[0].weight.requires_grad_(False)
    net.features[3].bias.requires_grad_(False)
    training = {n: m.training for n, m in net.named_modules()}
    grads = {n: p.requires_grad for n, p in net.named_parameters()}
    params = {n: p for n, p in net.named_parameters()}
    state = {k: v.clone() for k, v in net.state_dict().items()}
    modules = {n: m for n, m in net.named_modules()}

    ms = pe.compute_mapset(net, tiny_x, progress=False)  # a plain module, not a Classifier

    assert {n: m.training for n, m in net.named_modules()} == training
    assert {n: p.requires_grad for n, p in net.named_parameters()} == grads
    assert all(params[n] is p for n, p in net.named_parameters())
    assert all(modules[n] is m for n, m in net.named_modules())
    after = net.state_dict()
    assert after.keys() == state.keys()
    for k in state:
        assert torch.equal(after[k], state[k]), f"{k} changed"
    assert all(p.grad is None for p in net.parameters())
    assert_no_hooks(net)

    # and the sweep ran in eval mode (running statistics, no dropout): same as an eval copy
    ref = pe.compute_mapset(copy.deepcopy(net).eval(), tiny_x, progress=False)
    assert torch.equal(ms.probs, ref.probs)
    for key, value in all_maps(ref).items():
        assert torch.equal(ms.saliency(*key[:2], depth=key[2]), value)


def test_user_input_left_as_found(tiny_model, tiny_x) -> None:
    x = tiny_x.clone()
    pe.compute_mapset(tiny_model, x, progress=False)
    assert torch.equal(x, tiny_x)


# ----- in-place operations -------------------------------------------------------------------
def _manual_outputs(x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Each ``features.i`` output of a TinyNet twin without in-place ReLUs."""
    ref = TinyNet().eval()
    for m in ref.modules():
        if isinstance(m, nn.ReLU):
            m.inplace = False
    out, h = {}, x
    with torch.no_grad():
        for i, layer in enumerate(ref.features):
            h = layer(h)
            out[f"features.{i}"] = h[0]
    out["features"] = out["features.5"]
    return out


@pytest.mark.parametrize("layers", [None, ["features.0", "features.2", "features.4"],
                                    ["features.0", "features.3", "features.4"]])
def test_inplace_relu_does_not_corrupt_activations(tiny_model, tiny_x, layers) -> None:
    assert any(isinstance(m, nn.ReLU) and m.inplace for m in tiny_model.modules())
    ms = pe.compute_mapset(tiny_model, tiny_x, layers=layers, progress=False)
    manual = _manual_outputs(tiny_x)
    for name, act in zip(ms.layers, ms.activations):
        torch.testing.assert_close(act, manual[name], rtol=0, atol=1e-6, msg=name)
    if layers is not None:  # conv outputs before the ReLU have negative values
        assert (ms.activations[0] < 0).any()


class InplaceInputNet(TinyNet):
    """A model that rescales its input in place (as some wrappers normalise with ``sub_``/``div_``)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.mul_(2.0))


def test_inplace_on_input_does_not_corrupt_probes(tiny_x) -> None:
    x = tiny_x.clone()
    ms = pe.compute_mapset(tiny(InplaceInputNet().eval()), x, progress=False)
    assert torch.equal(x, tiny_x), "the user's image was changed"

    class Twin(TinyNet):
        def forward(self, x):
            return super().forward(x * 2.0)

    ref = pe.compute_mapset(tiny(Twin().eval()), tiny_x, progress=False)
    torch.testing.assert_close(ms.probs, ref.probs)
    for key, value in all_maps(ref).items():
        torch.testing.assert_close(ms.saliency(*key[:2], depth=key[2]), value)


# ----- constant and dead channels ------------------------------------------------------------
def test_constant_and_dead_channels(tiny_x) -> None:
    net = TinyNet()
    with torch.no_grad():
        conv = net.features[0]
        conv.weight[0].zero_()
        conv.bias[0] = 0.7  # a constant channel
        conv.weight[1].zero_()
        conv.bias[1] = -1.0  # a dead (all-zero) channel after the ReLU
    model = tiny(net.eval())
    ms = pe.compute_mapset(model, tiny_x, progress=False)
    assert ms.layers[0] == "features.1"
    act = ms.activations[0]
    assert torch.all(act[0] == act[0, 0, 0]) and float(act[0, 0, 0]) == pytest.approx(0.7)
    assert torch.all(act[1] == 0)
    with torch.no_grad():
        f_zero = torch.softmax(model(torch.zeros_like(tiny_x)), dim=1)[0]
    s_plus, s_minus = ms.scores("features.1")
    for k in (0, 1):  # the mask u(A^k) is all zero: insertion shows nothing, deletion removes nothing
        torch.testing.assert_close(s_plus[k], f_zero)
        torch.testing.assert_close(s_minus[k], ms.probs)
    for key, sal in all_maps(ms).items():
        assert torch.isfinite(sal).all(), key
        assert sal.min() >= 0 and sal.max() <= 1, key
    for cam in ms.poly_maps(0):
        assert torch.isfinite(cam).all()


def test_fully_constant_layer(tiny_x) -> None:
    net = TinyNet()
    with torch.no_grad():
        net.features[4].weight.zero_()
        net.features[4].bias.fill_(0.3)  # every channel of the coarsest layer is constant
    ms = pe.compute_mapset(tiny(net.eval()), tiny_x, progress=False)
    for key, sal in all_maps(ms).items():
        assert torch.isfinite(sal).all(), key
        assert sal.min() >= 0 and sal.max() <= 1, key
    assert torch.all(ms.saliency(0, depth=1) == 0)  # a flat map shows nothing, not NaN


# ----- input shapes --------------------------------------------------------------------------
@pytest.mark.parametrize("size", [(16, 24), (24, 16), (20, 28), (18, 30)])
def test_rectangular_inputs(tiny_model, size) -> None:
    x = torch.randn(1, 3, *size, generator=torch.Generator().manual_seed(2))
    ms = pe.compute_mapset(tiny_model, x, progress=False)
    assert ms.size == size
    assert len(ms.layers) >= 2
    for a in ms.activations:
        assert size[0] % a.shape[1] == 0 and size[1] % a.shape[2] == 0
    for (c, v, d), sal in all_maps(ms).items():
        assert tuple(sal.shape) == size, (c, v, d)
        assert torch.isfinite(sal).all() and sal.min() >= 0 and sal.max() <= 1
    maps = ms.poly_maps(0)
    assert [tuple(m.shape) for m in maps] == [tuple(a.shape[1:]) for a in reversed(ms.activations)]


def test_one_channel_model_end_to_end(sample, tmp_path) -> None:
    model = tiny(channels=1)
    x = pe.load_image(sample("chelsea"), model)
    assert tuple(x.shape) == (1, 1, 16, 16)
    with Image.open(sample("chelsea")) as im:
        gray = torch.from_numpy(np.asarray(im.convert("L"), dtype=np.float32))[None] / 255
    # torchvision's antialiased bilinear tensor resize, as load_image (and the authors' evaluation) does
    gray = torchvision.transforms.functional.resize(gray, [16, 16], antialias=True)[0]
    expected = (gray - 0.5) / 0.5
    torch.testing.assert_close(x[0, 0], expected)
    ms = pe.compute_mapset(model, x, progress=False)
    assert ms.layers == TINY_LAYERS
    for key, sal in all_maps(ms).items():
        assert tuple(sal.shape) == (16, 16) and torch.isfinite(sal).all(), key
    # a plain 1-channel module too, and an RGB array converted to its one channel
    net = TinyNet(in_channels=1).eval()
    x2 = pe.load_image((torch.rand(20, 30, 3) * 255).byte().numpy(), net, size=16)
    assert tuple(x2.shape) == (1, 1, 16, 16)
    assert pe.compute_mapset(net, x2, progress=False).saliency(0).shape == (16, 16)


def test_single_logit_model_uses_sigmoid(tiny_x) -> None:
    model = tiny(n_classes=1)
    ms = pe.compute_mapset(model, tiny_x, progress=False)
    with torch.no_grad():
        logit = model(tiny_x)
    assert tuple(logit.shape) == (1, 1)
    assert ms.num_classes == 1 and tuple(ms.probs.shape) == (1,)
    torch.testing.assert_close(ms.probs, torch.sigmoid(logit[0]))
    assert 0 < float(ms.probs[0]) < 1
    assert ms.topk(5) == [(0, "c0", pytest.approx(float(torch.sigmoid(logit[0, 0]))))]
    s_plus, _ = ms.scores(-1)
    assert s_plus.shape == (ms.activations[-1].shape[0], 1)
    assert ((s_plus >= 0) & (s_plus <= 1)).all()
    for key, sal in all_maps(ms).items():
        assert sal.shape == (16, 16) and torch.isfinite(sal).all(), key
    assert any(float(sal.max()) > 0 for sal in all_maps(ms).values())


def test_deterministic(tiny_model, tiny_x) -> None:
    a = pe.compute_mapset(tiny_model, tiny_x, progress=False)
    b = pe.compute_mapset(tiny_model, tiny_x, progress=False)
    assert torch.equal(a.probs, b.probs)
    for i in range(len(a.layers)):
        assert torch.equal(a.activations[i], b.activations[i])
        assert all(torch.equal(s, t) for s, t in zip(a.scores(i), b.scores(i)))
    maps_b = all_maps(b)
    for key, value in all_maps(a).items():
        assert torch.equal(value, maps_b[key]), key


# ----- progress callback and cancelling ------------------------------------------------------
def test_on_layer_coarsest_first_once_each(tiny_model, tiny_x) -> None:
    calls = []

    def on_layer(ms, name):
        calls.append((name, ms.depth_available, ms.complete))
        ms.saliency(0, depth=ms.depth_available)  # what is ready can be shown

    ms = pe.compute_mapset(tiny_model, tiny_x, progress=False, on_layer=on_layer)
    assert [c[0] for c in calls] == list(reversed(ms.layers)) == list(reversed(TINY_LAYERS))
    assert [c[1] for c in calls] == [1, 2, 3]
    assert [c[2] for c in calls] == [False, False, True]


@pytest.mark.parametrize("as_callable", [False, True])
def test_cancel_from_callback(tiny_model, tiny_x, as_callable: bool) -> None:
    stop = threading.Event()
    seen = []

    def on_layer(ms, name):
        depth = ms.depth_available
        seen.append((name, depth, ms.complete))
        sal = ms.saliency(0, depth=1)
        assert sal.shape == (16, 16) and torch.isfinite(sal).all()
        with pytest.raises(ValueError, match="depth"):
            ms.saliency(0)
        with pytest.raises(ValueError, match="depth"):
            ms.saliency(0, depth=len(ms.layers))
        seen.append(ms)
        stop.set()

    with pytest.raises(pe.SweepCancelled):
        pe.compute_mapset(tiny_model, tiny_x, progress=False, on_layer=on_layer, batch_size=2,
                          cancel=stop.is_set if as_callable else stop)
    assert seen[0] == ("features", 1, False)
    partial = seen[1]
    assert not partial.complete and partial.depth_available == 1
    assert partial.saliency(1, "-", depth=1).shape == (16, 16)
    with pytest.raises(ValueError):
        partial.saliency(1, "-")
    assert_no_hooks(tiny_model)
