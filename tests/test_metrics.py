"""Insertion / deletion against the protocol of ALGORITHM.md on hand-built models and maps."""
import math

import numpy as np
import pytest
import torch
from torch import nn

import polycam_explorer as pe
from polycam_explorer.metrics import blur_baseline, saliency_rank


class Recorder(nn.Module):
    """Logit 0 = 0 always; logit 1 = weighted sum of channel 0. Records every input it sees."""

    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 1, 1)  # gives the model an input-channel count; unused in forward
        self.register_buffer("weight", weight)
        self.seen: list[torch.Tensor] = []

    def forward(self, x):
        self.seen.append(x.clone())
        logit = (x[:, 0] * self.weight).sum(dim=(1, 2))
        return torch.stack([torch.zeros_like(logit), logit], dim=1)


def _setup(h=12, w=10):
    g = torch.Generator().manual_seed(0)
    weight = torch.rand(h, w, generator=g)
    x = torch.rand(1, 3, h, w, generator=g) + 0.5
    return Recorder(weight), x


@pytest.mark.parametrize("n_steps", [120, 7, 1])
def test_pixels_per_step_and_sample_content(n_steps):
    model, x = _setup()
    sal = torch.rand(12, 10)
    auc, curve = pe.insertion(model, x, sal, 1, n_steps=n_steps, batch_size=4)
    samples = torch.cat(model.seen)
    base = blur_baseline(x)
    p = math.ceil(120 / n_steps)
    rank = saliency_rank(sal).reshape(12, 10)
    assert samples.shape[0] == n_steps and curve.shape == (n_steps,)
    for t in range(1, n_steps + 1):
        shown = rank < t * p
        assert int(shown.sum()) == min(t * p, 120)
        assert torch.equal(samples[t - 1][:, shown], x[0][:, shown])
        assert torch.equal(samples[t - 1][:, ~shown], base[0][:, ~shown])
    assert auc == pytest.approx(float(curve.sum()) / n_steps, rel=1e-6)


def test_curve_values_are_class_probabilities_computed_by_hand():
    model, x = _setup()
    sal = model.weight.clone()
    _, curve = pe.deletion(model, x, sal, 1, n_steps=120)
    base = blur_baseline(x)[0, 0]
    order = torch.argsort(sal.reshape(-1), descending=True)
    img = x[0, 0].reshape(-1).clone()
    for t in range(120):
        img[order[t]] = base.reshape(-1)[order[t]]
        logit = (img.reshape(12, 10) * model.weight).sum()
        assert curve[t] == pytest.approx(float(torch.sigmoid(logit)), abs=1e-6)


def test_true_importance_beats_a_random_map():
    model, x = _setup(12, 12)
    model.weight = torch.zeros(12, 12)
    model.weight[3:7, 2:9] = 0.1
    x = -torch.ones(1, 3, 12, 12)
    x[:, :, 3:7, 2:9] = 1.0  # the important region differs from its blurred baseline
    rand = torch.rand(12, 12, generator=torch.Generator().manual_seed(3))
    true_ins, _ = pe.insertion(model, x, model.weight + 0.01 * rand, 1, n_steps=24)
    rand_ins, _ = pe.insertion(model, x, rand, 1, n_steps=24)
    true_del, _ = pe.deletion(model, x, model.weight + 0.01 * rand, 1, n_steps=24)
    rand_del, _ = pe.deletion(model, x, rand, 1, n_steps=24)
    assert true_ins > rand_ins + 0.02 and true_del < rand_del - 0.02


def test_ties_index_breaks_ties_by_pixel_index_earlier_first():
    rank = saliency_rank(torch.tensor([[0.5, 1.0], [0.5, 0.5]]), "index")
    assert rank.tolist() == [1, 0, 2, 3]


def test_ties_authors_is_the_authors_ordering_reversed_argsort():
    sal = (torch.rand(20, 20, generator=torch.Generator().manual_seed(0)) * 4).floor()  # many ties
    order = torch.flip(sal.view(-1, 400).argsort(), dims=[-1])[0]  # as the authors' metric code
    assert torch.equal(saliency_rank(sal)[order], torch.arange(400))
    with pytest.raises(ValueError, match="ties must be"):
        saliency_rank(sal, "random")


def test_rise_option_adds_the_zero_point_and_uses_the_trapezoid():
    model, x = _setup()
    sal = torch.rand(12, 10)
    auc, curve = pe.insertion(model, x, sal, 1, n_steps=10, rise=True)
    assert curve.shape == (11,)
    assert auc == pytest.approx(float(np.trapezoid(curve.astype(np.float64)) / 10), rel=1e-6)


@pytest.mark.parametrize("kwargs, message", [
    ({"saliency": torch.rand(5, 5)}, "saliency must be 12 x 10"),
    ({"n_steps": 0}, "n_steps"),
    ({"class_idx": 2}, "class_idx"),
    ({"batch_size": 0}, "batch_size"),
])
def test_bad_arguments_are_named(kwargs, message):
    model, x = _setup()
    args = {"saliency": torch.rand(12, 10), "class_idx": 1, "n_steps": 10, "batch_size": 4} | kwargs
    with pytest.raises(ValueError, match=message):
        pe.insertion(model, x, args["saliency"], args["class_idx"], n_steps=args["n_steps"],
                     batch_size=args["batch_size"])


def test_batched_images_equal_one_at_a_time():
    from polycam_explorer.metrics import faithfulness_curves

    model, x = _setup()
    g = torch.Generator().manual_seed(5)
    xs = [x, torch.rand(1, 3, 12, 10, generator=g), torch.rand(1, 3, 12, 10, generator=g) * 2]
    sals = [torch.rand(12, 10, generator=g) for _ in xs]
    together = faithfulness_curves(model, xs, sals, [1, 1, 0], n_steps=20, batch_size=7)
    for xi, si, ci, result in zip(xs, sals, [1, 1, 0], together):
        ins = pe.insertion(model, xi, si, ci, n_steps=20, batch_size=4)
        dele = pe.deletion(model, xi, si, ci, n_steps=20, batch_size=4)
        assert result["insertion"][0] == pytest.approx(ins[0], abs=1e-6)
        assert np.allclose(result["deletion"][1], dele[1], atol=1e-6)
    with pytest.raises(ValueError, match="one size"):
        faithfulness_curves(model, [x, torch.rand(1, 3, 10, 10)], [sals[0], torch.rand(10, 10)], [1, 1], 20)


@pytest.mark.parametrize("kind", ["insertion", "deletion"])
def test_real_model_and_tied_map_equal_the_authors_step_by_step_protocol(kind):
    """The embedded model, a map with many ties (zeros and an upsampled coarse map, as CAM maps
    are): every step equals a plain loop that builds each sample on its own, orders pixels as the
    authors' metric code (argsort of the 1 x HW map, reversed) and scores it alone."""
    model = pe.load_model()
    x = pe.load_image(pe.cache.sample_images()[0], model, size=32)
    coarse = torch.relu(torch.randn(1, 1, 4, 4, generator=torch.Generator().manual_seed(3)))
    sal = torch.nn.functional.interpolate(coarse, (32, 32), mode="bilinear", align_corners=False)[0, 0]
    assert len(torch.unique(sal)) < 32 * 32 // 2  # ties the ordering must settle as theirs does
    c, n_steps = int(model(x).argmax()), 16
    auc, curve = getattr(pe, kind)(model, x, sal, c, n_steps, batch_size=5)
    order = torch.flip(sal.reshape(1, -1).argsort(), dims=[-1])[0]
    per_step = math.ceil(32 * 32 / n_steps)
    base = blur_baseline(x)
    start, fill = (base, x) if kind == "insertion" else (x, base)
    expected = []
    for t in range(1, n_steps + 1):
        sample = start.clone().reshape(3, -1)
        top = order[:t * per_step]
        sample[:, top] = fill.reshape(3, -1)[:, top]
        with torch.no_grad():
            expected.append(float(torch.softmax(model.net(sample.reshape(1, 3, 32, 32)), 1)[0, c]))
    assert np.allclose(curve, expected, atol=1e-5)
    assert auc == pytest.approx(sum(expected) / n_steps, abs=1e-5)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("call", ["insertion", "deletion", "curves"])
def test_non_finite_maps_are_refused_not_ranked(bad, call):
    from polycam_explorer.metrics import faithfulness_curves

    model, x = _setup()
    sal = torch.rand(12, 10)
    sal[3, 4] = bad
    with pytest.raises(ValueError, match="non-finite"):
        if call == "curves":
            faithfulness_curves(model, [x, x], [torch.rand(12, 10), sal], [1, 1], 10)
        else:
            getattr(pe, call)(model, x, sal, 1, n_steps=10)
    if call == "curves":
        with pytest.raises(ValueError, match=r"saliency\[1\]"):
            faithfulness_curves(model, [x, x], [torch.rand(12, 10), sal], [1, 1], 10)


def test_a_model_that_returns_nan_is_warned_about():
    model, x = _setup()
    model.weight[0, 0] = float("nan")  # every logit 1 is NaN
    with pytest.warns(RuntimeWarning, match="non-finite scores"):
        auc, curve = pe.insertion(model, x, torch.rand(12, 10), 1, n_steps=10)
    assert math.isnan(auc)  # reported, not hidden: the warning says why
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pe.deletion(*_setup(), torch.rand(12, 10), 1, n_steps=10)  # a sound model: no warning
