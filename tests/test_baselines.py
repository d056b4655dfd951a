"""Baseline saliency methods: each one on the embedded model, checks against hand computations and
toy models whose answer is known, hooks and flags left as found, errors."""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from torch import nn

import polycam_explorer as pe
from polycam_explorer import baselines, rise
from polycam_explorer.baselines import METHODS, saliency

from conftest import DATA, TinyNet

# Tiny settings for the embedded model at 64 x 64; the perturbation CAMs use a 40-channel layer
# (the coarsest has 1280 channels, one forward pass each).
FAST = {
    "gradcam": {},
    "gradcampp": {"target_layer": "bn2"},  # bn2: the coarsest, named to skip the discovery pass
    "smoothgradcampp": {"target_layer": "bn2", "n_samples": 2, "seed": 0},
    "scorecam": {"target_layer": "blocks.2", "batch_size": 40},
    "sscam": {"target_layer": "blocks.2", "batch_size": 40, "n_samples": 1, "seed": 0},
    "iscam": {"target_layer": "blocks.2", "batch_size": 40, "n_steps": 2},
    "layercam": {"target_layer": "bn2"},
    "layercamfusion": {},
    "ig": {"n_steps": 4},
    "ixg": {},
    "sg": {"n_samples": 4, "seed": 0},
    "occlusion": {"window": 16, "stride": 8, "batch_size": 25},
    "rise": {"n_masks": 100, "batch_size": 50},
}
SIGNED = {"ig", "ixg", "occlusion"}  # documented as signed; every other map is non-negative

# The same for the 16 x 16 TinyNet, every layer named so that no discovery pass runs.
TINY = {name: dict(opts) for name, opts in FAST.items()}
for _name in ("gradcam", "gradcampp", "smoothgradcampp", "scorecam", "sscam", "iscam", "layercam"):
    TINY[_name]["target_layer"] = "features"
TINY["layercamfusion"] = {"target_layers": ["features.1", "features.3", "features"]}
TINY["occlusion"] = {"window": 4, "stride": 4}


def hooks_left(model: nn.Module) -> list[str]:
    left = [f"{name or 'model'}.{kind}" for name, m in model.named_modules()
            for kind in ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")
            if getattr(m, kind)]
    module = torch.nn.modules.module
    left += [kind for kind in ("_global_forward_hooks", "_global_forward_pre_hooks", "_global_backward_hooks",
                               "_global_backward_pre_hooks") if getattr(module, kind)]
    return left


def state(model: nn.Module) -> tuple[dict, dict, list]:
    return ({n: m.training for n, m in model.named_modules()},
            {n: p.requires_grad for n, p in model.named_parameters()},
            [n for n, p in model.named_parameters() if p.grad is not None])


@pytest.fixture(scope="module")
def cat(default_model):
    x = pe.load_image(DATA / "chelsea.jpg", default_model, size=64)
    with torch.no_grad():
        c = int(default_model(x).argmax())
    return x, c


def test_fast_settings_cover_every_method():
    assert set(FAST) == set(METHODS) == set(TINY)
    assert list(METHODS) == ["gradcam", "gradcampp", "smoothgradcampp", "scorecam", "sscam", "iscam", "layercam",
                             "layercamfusion", "ig", "ixg", "sg", "occlusion", "rise"]


@pytest.mark.parametrize("name", list(METHODS))
def test_every_method_maps_the_cat(name, default_model, cat):
    x, c = cat
    before, x_before = state(default_model), x.clone()
    out = saliency(name, default_model, x, c, **FAST[name])
    assert out.shape == (64, 64) and out.dtype == torch.float32 and out.device == x.device
    assert torch.isfinite(out).all()
    assert out.std() > 0, "a constant map explains nothing"
    if name not in SIGNED:
        assert out.min() >= 0
    assert not out.requires_grad
    assert hooks_left(default_model) == []
    assert state(default_model) == before
    assert torch.equal(x, x_before) and not x.requires_grad


def test_cams_default_to_the_coarsest_target_layer(default_model, cat):
    x, c = cat
    default = baselines.gradcam(default_model, x, c)
    assert torch.equal(default, baselines.gradcam(default_model, x, c, target_layer="bn2"))
    assert not torch.allclose(default, baselines.gradcam(default_model, x, c, target_layer="blocks.4"))


@pytest.mark.parametrize("name", list(METHODS))
def test_model_left_as_found_and_gradients_on_inside_no_grad(name, tiny_model, tiny_x):
    net = tiny_model.net
    net.train()
    net.features[0].eval()
    net.fc.weight.requires_grad_(False)
    before, x_before = state(tiny_model), tiny_x.clone()
    with torch.no_grad():  # the gradient methods turn gradients on for themselves
        out = METHODS[name](tiny_model, tiny_x, 2, **TINY[name])
    assert out.shape == (16, 16) and torch.isfinite(out).all()
    assert hooks_left(tiny_model) == []
    assert state(tiny_model) == before
    assert torch.equal(tiny_x, x_before) and not tiny_x.requires_grad


class FailingNet(TinyNet):
    """TinyNet whose forward raises from its ``fail_at``-th call on."""

    def __init__(self, fail_at: int) -> None:
        super().__init__()
        self.calls, self.fail_at = 0, fail_at

    def forward(self, x):
        self.calls += 1
        if self.calls >= self.fail_at:
            raise RuntimeError("boom")
        return super().forward(x)


@pytest.mark.parametrize("name", list(METHODS))
def test_hooks_and_flags_restored_after_a_call_that_raised(name, tiny_x):
    net = FailingNet(fail_at=2)  # the first call checks class_idx; the method's own passes fail
    net.train()
    before = state(net)
    with pytest.raises(RuntimeError, match="boom"):
        saliency(name, net, tiny_x, 1, **TINY[name])
    assert hooks_left(net) == []
    assert state(net) == before


def test_gradcam_and_layercam_match_a_hand_computation(tiny_model, tiny_x):
    acts = {}
    handle = tiny_model.net.features.register_forward_hook(lambda m, i, o: acts.update(a=o))
    try:
        x = tiny_x.clone().requires_grad_(True)
        logit = tiny_model(x)[0, 3]
    finally:
        handle.remove()
    grad = torch.autograd.grad(logit, acts["a"])[0]

    def up(cam):
        return nn.functional.interpolate(cam[None, None], size=(16, 16), mode="bilinear", align_corners=False)[0, 0]

    expected_grad = up(torch.relu((grad.mean(dim=(2, 3), keepdim=True) * acts["a"]).sum(1))[0])
    expected_layer = up(torch.relu((torch.relu(grad) * acts["a"]).sum(1))[0])
    torch.testing.assert_close(baselines.gradcam(tiny_model, tiny_x, 3), expected_grad.detach())
    torch.testing.assert_close(baselines.layercam(tiny_model, tiny_x, 3), expected_layer.detach())
    assert not torch.allclose(baselines.gradcam(tiny_model, tiny_x, 0), expected_grad.detach())


def test_ixg_and_ig_are_captum_summed_over_channels(tiny_model, tiny_x):
    x = tiny_x.clone().requires_grad_(True)
    logits = tiny_model(x)[0]
    grad = torch.autograd.grad(logits[4], x)[0]
    logits = logits.detach()
    torch.testing.assert_close(baselines.ixg(tiny_model, tiny_x, 4), (tiny_x * grad).sum(1)[0])
    # completeness: the attributions add up to f_c(x) - f_c(0) (zero baseline)
    with torch.no_grad():
        gain = float(logits[4] - tiny_model(torch.zeros_like(tiny_x))[0, 4])
    total = float(baselines.ig(tiny_model, tiny_x, 4, n_steps=50).sum())
    assert abs(total - gain) < 0.02 * abs(gain) + 1e-5


def test_layercamfusion_of_one_unscaled_layer_is_its_normalised_layercam(tiny_model, tiny_x):
    fused = baselines.layercamfusion(tiny_model, tiny_x, 1, target_layers=["features.3"], n_scaled=0)
    single = baselines.layercam(tiny_model, tiny_x, 1, target_layer="features.3")
    assert 0 <= fused.min() and fused.max() <= 1
    corr = torch.corrcoef(torch.stack([fused.flatten(), single.flatten()]))[0, 1]
    assert corr > 0.9999  # min-max normalisation commutes with bilinear upsampling
    full = baselines.layercamfusion(tiny_model, tiny_x, 1)
    assert 0 <= full.min() and full.max() <= 1 and not torch.allclose(full, fused)


def test_layercamfusion_squashes_the_finest_and_keeps_the_maximum(tiny_model, tiny_x):
    def fusion(layers, n_scaled):
        return baselines.layercamfusion(tiny_model, tiny_x, 1, target_layers=layers, n_scaled=n_scaled)

    fine = fusion(["features.1"], 0)  # 16 x 16: the input size, nothing is resampled
    squashed = fusion(["features.1"], 1)
    torch.testing.assert_close(squashed, torch.tanh(2 * fine / fine.max()))
    coarse = fusion(["features"], 0)  # 4 x 4 upsampled straight to 16 x 16, as inside the fusion
    # n_scaled counts from the finest layer, whatever order the layers are given in
    torch.testing.assert_close(fusion(["features", "features.1"], 1), torch.maximum(coarse, squashed))
    torch.testing.assert_close(fusion(["features.1", "features"], 0), torch.maximum(coarse, fine))


class RegionNet(nn.Module):
    """Class 0's logit grows with the (positive) features of the top-left quarter only; class 1's is 0.

    Calibrated for the test image: showing about half of the quarter puts class 0 near probability 1/2.
    """

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(),
                                      nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.ReLU())
        with torch.no_grad():
            for conv in (self.features[0], self.features[2]):
                conv.weight.copy_(torch.rand(conv.weight.shape, generator=g) * 0.05)
                conv.bias.fill_(0.01)

    def forward(self, x):
        f = self.features(x)
        h, w = f.shape[-2:]
        region = f[:, :, : h // 2, : w // 2].mean(dim=(1, 2, 3))
        return torch.stack([8 * (region - 0.55), torch.zeros_like(region)], dim=1)


REGION = {
    "layercam": {},
    "layercamfusion": {},
    "ig": {"n_steps": 8},
    "ixg": {},
    "sg": {"n_samples": 8, "std": 0.3, "seed": 0},
    "occlusion": {"window": 8, "stride": 4, "batch_size": 32},
    "rise": {"n_masks": 500, "grid": 4, "p": 0.3, "batch_size": 250},
}


@pytest.mark.parametrize("name", list(REGION))
def test_pixelwise_methods_find_the_region_the_class_reads(name):
    net = RegionNet().eval()
    x = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(1)) + 0.5
    out = saliency(name, net, x, 0, **REGION[name])
    inside = out[:14, :14].mean()
    outside = torch.cat([out[20:].flatten(), out[:20, 20:].flatten()]).mean()
    if name == "rise":  # the mean score sits everywhere; pixels of the region add to it
        assert inside > 1.4 * outside
    else:
        assert inside > 10 * outside.abs() and inside > 0


class ConstantNet(nn.Module):
    """Two classes at probability 1/2 whatever the input."""

    def forward(self, x):
        return x.new_zeros(x.shape[0], 2)


def test_rise_is_the_mask_average_weighted_by_the_score(tiny_x):
    # f_c = 1/2 everywhere: the map is 1/2 * sum_i M_i / (N p), with exactly rise_masks' masks
    masks = rise.rise_masks(60, (16, 16), grid=4, p=0.25, seed=3)
    assert masks.shape == (60, 1, 16, 16) and masks.min() >= 0 and masks.max() <= 1
    assert abs(float(masks.mean()) - 0.25) < 0.05
    assert not torch.equal(masks, masks.round())  # bilinear, not binary
    out = baselines.rise(ConstantNet(), tiny_x, 1, n_masks=60, grid=4, p=0.25, seed=3, batch_size=7)
    torch.testing.assert_close(out, 0.5 * masks.sum(0)[0] / (60 * 0.25))


def test_rise_is_deterministic_with_a_seed_and_independent_of_batching(tiny_model, tiny_x):
    a = baselines.rise(tiny_model, tiny_x, 2, n_masks=64, seed=5, batch_size=64)
    assert torch.equal(a, baselines.rise(tiny_model, tiny_x, 2, n_masks=64, seed=5, batch_size=64))
    torch.testing.assert_close(a, baselines.rise(tiny_model, tiny_x, 2, n_masks=64, seed=5, batch_size=10))
    assert not torch.allclose(a, baselines.rise(tiny_model, tiny_x, 2, n_masks=64, seed=6))
    state_before = torch.random.get_rng_state()
    baselines.rise(tiny_model, tiny_x, 2, n_masks=8, seed=None)
    assert torch.equal(torch.random.get_rng_state(), state_before)  # its own generator


def test_seeded_noise_is_reproducible_and_leaves_the_global_generator(tiny_model, tiny_x):
    torch.manual_seed(0)
    state_before = torch.random.get_rng_state()
    a = baselines.sg(tiny_model, tiny_x, 1, n_samples=3, seed=7)
    assert torch.equal(torch.random.get_rng_state(), state_before)
    assert torch.equal(a, baselines.sg(tiny_model, tiny_x, 1, n_samples=3, seed=7))
    assert not torch.equal(a, baselines.sg(tiny_model, tiny_x, 1, n_samples=3, seed=8))


def test_unknown_method_lists_the_accepted_names(tiny_model, tiny_x):
    with pytest.raises(ValueError, match="unknown saliency method 'gradcam\\+\\+'.*gradcam, gradcampp.*rise"):
        saliency("gradcam++", tiny_model, tiny_x, 0)


def test_bad_arguments_are_named(tiny_model, tiny_x):
    with pytest.raises(ValueError, match="class_idx must be in 0..4"):
        saliency("gradcam", tiny_model, tiny_x, 5)
    with pytest.raises(TypeError, match="class_idx"):
        saliency("ixg", tiny_model, tiny_x, 1.0)
    with pytest.raises(ValueError, match="1 x C x H x W"):
        saliency("ixg", tiny_model, tiny_x[0], 1)
    with pytest.raises(ValueError, match="unknown layer name"):
        saliency("gradcam", tiny_model, tiny_x, 1, target_layer="nope")
    with pytest.raises(TypeError, match="n_masks"):
        saliency("gradcam", tiny_model, tiny_x, 1, n_masks=3)
    with pytest.raises(ValueError, match="n_masks must be a positive int"):
        saliency("rise", tiny_model, tiny_x, 1, n_masks=0)
    with pytest.raises(ValueError, match="window"):
        saliency("occlusion", tiny_model, tiny_x, 1)  # 64 > 16
    assert hooks_left(tiny_model) == []


@pytest.mark.parametrize("name, library", [("gradcam", "torchcam"), ("layercamfusion", "torchcam"),
                                           ("ig", "captum"), ("occlusion", "captum")])
def test_missing_library_says_how_to_install_it(name, library, monkeypatch, tiny_model, tiny_x):
    for module in [m for m in sys.modules if m == library or m.startswith(library + ".")]:
        monkeypatch.delitem(sys.modules, module)
    monkeypatch.setitem(sys.modules, library, None)
    with pytest.raises(ImportError, match=r"pip install polycam-explorer\[eval\]"):
        saliency(name, tiny_model, tiny_x, 0, **TINY[name])


def test_importing_the_package_needs_neither_library():
    code = ("import sys, polycam_explorer, polycam_explorer.baselines; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'torchcam', 'captum'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
