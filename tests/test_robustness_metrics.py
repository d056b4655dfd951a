"""Sensitivity-max (via Captum) and cascading randomisation (Adebayo et al.) on the tiny model."""
from __future__ import annotations

import math
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.stats import spearmanr
from skimage.metrics import structural_similarity

import polycam_explorer as pe
from polycam_explorer import render
from polycam_explorer.robustness import (Group, RandomizationStep, cascading_randomization,
                                         iter_cascading_randomization, parameter_groups, randomization_groups,
                                         randomization_strip)
from polycam_explorer.baselines import saliency as baseline_saliency
from polycam_explorer.sensitivity import sensitivity_max

LAYER_ORDER = ["features.0", "features.2", "features.4", "fc"]  # parameterised layers, forward order


def grey(model, x, c):
    """Ignores the weights: the input's grey level."""
    return x[0].mean(0)


def gradient(model, x, c):
    """|d f_c / d x| summed over channels: depends on every weight."""
    x = x.clone().requires_grad_(True)
    model(x)[0, c].backward()
    return x.grad[0].abs().sum(0)


def polycam_map(model, x, c):
    return pe.compute_mapset(model, x, progress=False).saliency(c, "+-")


# ----- sensitivity-max -----------------------------------------------------------------------
def test_sensitivity_of_a_constant_explanation_is_zero(tiny_x):
    assert sensitivity_max(lambda x: torch.ones(16, 16), tiny_x, seed=0) == 0.0


def test_sensitivity_of_an_echo_matches_captum_called_directly(tiny_x):
    from captum.metrics import sensitivity_max as captum_sensitivity_max

    ours = sensitivity_max(lambda x: x[0, 0], tiny_x, seed=3)
    torch.manual_seed(3)
    direct = captum_sensitivity_max(lambda inputs: (inputs[0][:, 0],), tiny_x, perturb_radius=0.02,
                                    n_perturb_samples=10)
    assert ours > 0 and ours == pytest.approx(float(direct[0]), rel=1e-6)
    # |delta| <= radius per pixel, so the relative change is bounded by radius * 16 / ||x0||
    assert ours <= 0.02 * 16 / float(tiny_x[0, 0].norm()) + 1e-6


def test_radius_and_number_of_perturbations_reach_captum(tiny_x):
    calls = []

    def echo(x):
        calls.append(x)
        return x[0, 0]

    small = sensitivity_max(echo, tiny_x, n_perturb=7, radius=0.02, seed=1)
    assert len(calls) == 1 + 7  # the image, then each perturbation, one image at a time
    assert all(c.shape == (1, 3, 16, 16) for c in calls)
    assert float((calls[1] - tiny_x).abs().max()) <= 0.02 + 1e-7
    large = sensitivity_max(echo, tiny_x, n_perturb=7, radius=0.04, seed=1)
    assert large == pytest.approx(2 * small, rel=1e-5)  # same uniform draws, twice the radius


def test_sensitivity_is_seeded_and_leaves_the_global_rng_alone(tiny_x):
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a = sensitivity_max(lambda x: x[0, 0], tiny_x, seed=5)
    after = torch.rand(1)
    assert torch.equal(before, after)
    assert a == sensitivity_max(lambda x: x[0, 0], tiny_x, seed=5)
    assert a != sensitivity_max(lambda x: x[0, 0], tiny_x, seed=6)


def test_gradient_and_polycam_explanations_work_under_captums_no_grad(tiny_model, tiny_x):
    g = sensitivity_max(lambda x, c: gradient(tiny_model, x, c), tiny_x, 1, seed=0)
    p = sensitivity_max(lambda x, c: polycam_map(tiny_model, x, c), tiny_x, 1, n_perturb=3, seed=0)
    assert g > 0 and math.isfinite(g) and p > 0 and math.isfinite(p)


@pytest.mark.parametrize("kwargs, message", [({"n_perturb": 0}, "n_perturb"), ({"radius": -1.0}, "radius"),
                                             ({"radius": float("nan")}, "radius")])
def test_sensitivity_bad_arguments_are_named(tiny_x, kwargs, message):
    with pytest.raises(ValueError, match=message):
        sensitivity_max(lambda x: x[0, 0], tiny_x, **kwargs)


def test_missing_captum_names_the_extra(tiny_x, monkeypatch):
    monkeypatch.setitem(sys.modules, "captum.metrics", None)
    with pytest.raises(ImportError, match=r"pip install polycam-explorer\[eval\]"):
        sensitivity_max(lambda x: x[0, 0], tiny_x)


# ----- cascading randomisation ---------------------------------------------------------------
def test_the_users_model_is_left_bit_identical(tiny_model, tiny_x):
    state = {k: v.clone() for k, v in tiny_model.state_dict().items()}
    flags = [p.requires_grad for p in tiny_model.parameters()]
    torch.manual_seed(7)
    expected_next = torch.rand(3)
    torch.manual_seed(7)
    cascading_randomization(tiny_model, tiny_x, 1, gradient, granularity="layers")
    assert torch.equal(torch.rand(3), expected_next)  # the caller's RNG is untouched
    for key, value in tiny_model.state_dict().items():
        assert torch.equal(value, state[key]), key
    assert [p.requires_grad for p in tiny_model.parameters()] == flags and not tiny_model.training


def test_one_cumulative_step_per_group_output_side_first(tiny_model, tiny_x):
    original = {k: v.clone() for k, v in tiny_model.net.state_dict().items()}
    seen = []

    def spy(model, x, c):
        seen.append(sorted({k.rsplit(".", 1)[0] for k, v in model.net.state_dict().items()
                            if not torch.equal(v, original[k])}))
        return grey(model, x, c)

    steps = cascading_randomization(tiny_model, tiny_x, 1, spy, granularity="layers")
    assert [s.name for s in steps] == LAYER_ORDER[::-1]
    assert [s.modules for s in steps] == [(n,) for n in LAYER_ORDER[::-1]]
    # first call: the intact copy; then each group joins the randomised ones
    expected = [sorted(LAYER_ORDER[len(LAYER_ORDER) - n:]) for n in range(len(LAYER_ORDER) + 1)]
    assert seen == expected  # [], [fc], [features.4, fc], ...


def test_groups_follow_the_granularity(tiny_model, tiny_x):
    assert parameter_groups(tiny_model, tiny_x, "layers") == LAYER_ORDER
    assert parameter_groups(tiny_model, tiny_x, "blocks") == LAYER_ORDER
    # resolution stages: named by the stage's last block (the target layers), then the head
    assert parameter_groups(tiny_model, tiny_x, "stages") == ["features.1", "features.3", "features", "fc"]
    steps = cascading_randomization(tiny_model, tiny_x, 1, grey, granularity="stages")
    assert [s.name for s in steps] == ["fc", "features", "features.3", "features.1"]
    assert [s.modules for s in steps] == [("fc",), ("features.4",), ("features.2",), ("features.0",)]
    assert [s.resolution for s in steps] == [None, (4, 4), (8, 8), (16, 16)]
    steps = cascading_randomization(tiny_model, tiny_x, 1, grey, groups=["features.0", "fc"])
    assert [s.name for s in steps] == ["fc", "features.0"]
    with pytest.raises(ValueError, match="granularity"):
        parameter_groups(tiny_model, tiny_x, "neurons")
    with pytest.raises(ValueError, match="groups"):
        cascading_randomization(tiny_model, tiny_x, 1, grey, groups=["nope"])


def test_weight_free_map_stays_while_weight_dependent_maps_change(tiny_model, tiny_x):
    steps = cascading_randomization(tiny_model, tiny_x, 1, grey, granularity="layers")
    assert all(s.spearman == pytest.approx(1.0) and s.ssim == pytest.approx(1.0) for s in steps)
    steps = cascading_randomization(tiny_model, tiny_x, 1, gradient, granularity="layers")
    assert steps[0].spearman < 0.8 and steps[-1].spearman < 0.5 and steps[-1].ssim < 0.5
    steps = cascading_randomization(tiny_model, tiny_x, 1, polycam_map, granularity="layers")
    assert steps[-1].spearman < 0.5 and steps[-1].ssim < 0.5


def test_scores_are_spearman_and_ssim_of_the_maps(tiny_model, tiny_x):
    steps = cascading_randomization(tiny_model, tiny_x, 1, gradient, granularity="layers")
    reference = gradient(tiny_model, tiny_x, 1).numpy()
    assert np.allclose(steps[0].original, reference)
    for s in steps:
        assert isinstance(s, RandomizationStep) and s.map.shape == (16, 16)
        assert s.spearman == pytest.approx(spearmanr(reference.ravel(), s.map.ravel()).statistic, abs=1e-9)
        unit = [(m - m.min()) / (m.max() - m.min()) for m in (reference.astype(np.float64), s.map)]
        assert s.ssim == pytest.approx(structural_similarity(*unit, data_range=1.0), abs=1e-9)


def test_constant_map_has_no_rank_correlation(tiny_model, tiny_x):
    steps = cascading_randomization(tiny_model, tiny_x, 1, lambda m, x, c: torch.zeros(16, 16))
    assert all(math.isnan(s.spearman) for s in steps)


def test_seed_makes_it_deterministic(tiny_model, tiny_x):
    a = cascading_randomization(tiny_model, tiny_x, 1, gradient, seed=0)
    b = cascading_randomization(tiny_model, tiny_x, 1, gradient, seed=0)
    c = cascading_randomization(tiny_model, tiny_x, 1, gradient, seed=1)
    assert all(np.array_equal(s.map, t.map) and s.spearman == t.spearman for s, t in zip(a, b))
    assert not np.array_equal(a[-1].map, c[-1].map)


def test_strip_has_one_tile_per_step_plus_the_original(tiny_model, tiny_x):
    steps = cascading_randomization(tiny_model, tiny_x, 1, gradient, granularity="layers")
    image = render.image_uint8(tiny_x, tiny_model.mean, tiny_model.std)
    strip = randomization_strip(steps, image, tile=64)
    pad, caption = 4, 26
    assert strip.dtype == np.uint8
    assert strip.shape == (64 + caption + 2 * pad, (len(steps) + 1) * (64 + pad) + pad, 3)
    first = strip[pad:pad + 64, pad:pad + 64].astype(int)
    o = steps[0].original
    tile = render.overlay(image, (o - o.min()) / (o.max() - o.min()))
    expected = np.asarray(Image.fromarray(tile).resize((64, 64), Image.BILINEAR)).astype(int)
    assert np.abs(first - expected).max() <= 1  # the first tile is the intact model's map
    with pytest.raises(ValueError, match="image_uint8"):
        randomization_strip(steps, image[:8])


def test_stages_follow_the_resolution_stages_of_a_resnet():
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    net = torchvision.models.resnet18(num_classes=10).eval()
    x = torch.randn(1, 3, 64, 64)
    groups = randomization_groups(net, x, "stages")
    assert [g.name for g in groups] == ["relu", "layer1", "layer2", "layer3", "layer4", "fc"]
    assert [g.resolution for g in groups] == [(32, 32), (16, 16), (8, 8), (4, 4), (2, 2), None]
    assert groups[0].modules == ("conv1", "bn1")
    assert all(m.startswith("layer3.") for m in groups[3].modules) and groups[-1].modules == ("fc",)
    every = [n for n, m in net.named_modules() if any(True for _ in m.parameters(recurse=False))]
    assert sorted(m for g in groups for m in g.modules) == sorted(every)  # each module in one stage
    seen = []

    def spy(model, xx, c):  # which stages differ from the intact weights when each map is made
        seen.append([g.name for g in groups if any(
            not torch.equal(model.get_submodule(m).weight, net.get_submodule(m).weight) for m in g.modules)])
        return xx[0].mean(0) + model(xx)[0, c].detach()

    steps = cascading_randomization(net, x, 1, spy)
    assert [s.name for s in steps] == ["fc", "layer4", "layer3", "layer2", "layer1", "relu"]  # top-down
    assert seen == [[], ["fc"], ["layer4", "fc"], ["layer3", "layer4", "fc"], ["layer2", "layer3", "layer4", "fc"],
                    ["layer1", "layer2", "layer3", "layer4", "fc"], ["relu", "layer1", "layer2", "layer3", "layer4", "fc"]]


def test_each_step_arrives_before_the_next_is_computed(tiny_model, tiny_x):
    events = []

    def traced(model, x, c):
        events.append("map")
        return gradient(model, x, c)

    for step in iter_cascading_randomization(tiny_model, tiny_x, 1, traced, granularity="stages"):
        events.append(step.name)
    assert events == ["map", "map", "fc", "map", "features", "map", "features.3", "map", "features.1"]
    events.clear()
    steps = cascading_randomization(tiny_model, tiny_x, 1, traced, granularity="stages",
                                    on_step=lambda s: events.append(s.name))
    assert events[:3] == ["map", "map", "fc"] and [s.name for s in steps] == events[2::2]
    # the generator and the list give the same numbers
    again = list(iter_cascading_randomization(tiny_model, tiny_x, 1, gradient, granularity="stages"))
    direct = cascading_randomization(tiny_model, tiny_x, 1, gradient, granularity="stages")
    assert [s.spearman for s in again] == [s.spearman for s in direct]


def test_generator_leaves_the_callers_rng_alone_between_steps(tiny_model, tiny_x):
    torch.manual_seed(5)
    expected = torch.rand(2)
    torch.manual_seed(5)
    steps = iter_cascading_randomization(tiny_model, tiny_x, 1, gradient, granularity="stages")
    next(steps)
    assert torch.equal(torch.rand(2), expected)


def test_explicit_group_objects_are_taken_as_given(tiny_model, tiny_x):
    groups = [Group("first", ("features.0", "features.2")), Group("rest", ("features.4", "fc"))]
    steps = cascading_randomization(tiny_model, tiny_x, 1, grey, groups=groups)
    assert [s.name for s in steps] == ["rest", "first"] and steps[1].modules == ("features.0", "features.2")
    with pytest.raises(ValueError, match="groups"):
        cascading_randomization(tiny_model, tiny_x, 1, grey, groups=[Group("x", ("features.1",))])


def _nan_image(x):
    x = x.clone()
    x[0, 0, 2, 3] = float("nan")
    return x


@pytest.mark.parametrize("bad, message", [
    (_nan_image, "x contains NaN or infinite values"),
    (lambda x: x.to("meta"), "x is on the meta device"),
    (lambda x: x.repeat(2, 1, 1, 1), r"x must have shape 1 x C x H x W \(one image\)"),
    (lambda x: x.to(torch.int64), "x must be a floating-point tensor"),
])
@pytest.mark.parametrize("entry", ["compute_mapset", "deletion", "cascading_randomization", "sensitivity_max",
                                   "gradcam", "rise"])
def test_every_entry_point_names_a_bad_image_alike(tiny_model, tiny_x, bad, message, entry):
    """One image check (images.check_image) for the sweep, the metrics, the baselines and the robustness checks:
    the same bad image gets the same words from each, before any work."""
    x = bad(tiny_x)
    calls = {
        "compute_mapset": lambda: pe.compute_mapset(tiny_model, x, progress=False),
        "deletion": lambda: pe.deletion(tiny_model, x, torch.rand(16, 16), 0, 4),
        "cascading_randomization": lambda: cascading_randomization(tiny_model, x, 0, grey),
        "sensitivity_max": lambda: sensitivity_max(lambda xi, c: grey(tiny_model, xi, c), x, 0, n_perturb=2),
        "gradcam": lambda: baseline_saliency("gradcam", tiny_model, x, 0),
        "rise": lambda: baseline_saliency("rise", tiny_model, x, 0, n_masks=8),
    }
    with pytest.raises(ValueError, match=message):
        calls[entry]()
