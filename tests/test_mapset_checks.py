"""MapSet arguments, input precisions and models that emit NaN (issue 9: item 6 and the obscure
errors of MapSet)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import polycam_explorer as pe
from conftest import TinyNet


@pytest.fixture(scope="module")
def ms() -> pe.MapSet:
    model = pe.Classifier(TinyNet().eval(), name="tiny", mean=(0.5,) * 3, std=(0.5,) * 3, input_size=(16, 16))
    x = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    return pe.compute_mapset(model, x, progress=False)


def test_numpy_and_tensor_integers_are_integers(ms) -> None:
    assert torch.equal(ms.saliency(1, "+", depth=np.int64(2)), ms.saliency(1, "+", depth=2))
    assert torch.equal(ms.saliency(np.int32(3)), ms.saliency(3))
    assert torch.equal(ms.layer_cam(0, "-", np.int64(1)), ms.layer_cam(0, "-", 1))
    assert ms.topk(np.int64(2)) == ms.topk(2)
    assert torch.equal(ms.saliency(torch.tensor(2)), ms.saliency(2))


@pytest.mark.parametrize("call, words", [
    (lambda ms: ms.layer_cam(0, "+", 1.5), "layer .*must be an int"),
    (lambda ms: ms.layer_cam(0, "+", 1.0), "layer .*must be an int"),
    (lambda ms: ms.saliency(0, depth=2.0), "depth must be an int"),
    (lambda ms: ms.saliency(0, depth=True), "depth must be an int"),
    (lambda ms: ms.saliency(0, depth=0), "depth must be an int in 1..3"),
    (lambda ms: ms.saliency(1.0), "class_idx must be an int"),
    (lambda ms: ms.saliency(torch.tensor(True)), "class_idx must be an int"),
    (lambda ms: ms.topk(-1), "k must be a positive int"),
    (lambda ms: ms.topk(0), "k must be a positive int"),
    (lambda ms: ms.topk(2.5), "k must be an int"),
])
def test_bad_indices_are_refused_not_truncated(ms, call, words) -> None:
    with pytest.raises(ValueError, match=words):
        call(ms)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_reduced_or_double_precision_input_runs_as_the_model_does(dtype) -> None:
    model = pe.Classifier(TinyNet().eval(), name="tiny", mean=(0.5,) * 3, std=(0.5,) * 3, input_size=(16, 16))
    x = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(1)).to(dtype)
    got = pe.compute_mapset(model, x, progress=False)
    want = pe.compute_mapset(model, x.float(), progress=False)  # the same values, in the model's float32
    assert got.image.dtype == torch.float32
    assert torch.equal(got.saliency(2, "+-"), want.saliency(2, "+-"))


def test_a_float64_model_gives_the_float32_models_maps() -> None:
    x = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    m32 = pe.Classifier(TinyNet().eval(), name="tiny", mean=(0.5,) * 3, std=(0.5,) * 3)
    m64 = pe.Classifier(TinyNet().double().eval(), name="tiny", mean=(0.5,) * 3, std=(0.5,) * 3)
    a = pe.compute_mapset(m32, x, progress=False)
    b = pe.compute_mapset(m64, x, progress=False)
    for v in ("+", "-", "+-"):
        assert torch.allclose(a.saliency(1, v), b.saliency(1, v), atol=1e-3)  # PCAM-: s0 - S- in float32


class NaNWhenMasked(nn.Module):
    """A broken model: NaN logits whenever more than a few input values are exactly zero."""

    def __init__(self, always: bool = False) -> None:
        super().__init__()
        self.net, self.always = TinyNet(), always

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.net(x)
        zeros = (x == 0).flatten(1).sum(1) > 20
        bad = torch.ones_like(zeros) if self.always else zeros
        return torch.where(bad[:, None], torch.full_like(logits, float("nan")), logits)


def test_nan_logits_on_probes_warn_and_their_maps_are_refused() -> None:
    model = pe.Classifier(NaNWhenMasked(), name="broken", mean=(0.5,) * 3, std=(0.5,) * 3)
    x = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    with pytest.warns(RuntimeWarning, match="NaN or infinite outputs for .* probes"):
        ms = pe.compute_mapset(model, x, progress=False, layers=["net.features.1", "net.features.3", "net.features"])
    with pytest.raises(ValueError, match="not finite"):
        ms.saliency(0, "+")


def test_nan_logits_on_the_image_itself_are_refused_before_the_sweep() -> None:
    model = pe.Classifier(NaNWhenMasked(always=True), name="broken", mean=(0.5,) * 3, std=(0.5,) * 3)
    calls = []
    model.net.register_forward_pre_hook(lambda *_: calls.append(1))
    x = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    with pytest.raises(ValueError, match="not finite"):
        pe.compute_mapset(model, x, progress=False, layers=["net.features.1", "net.features"])
    assert len(calls) == 1  # refused after the first pass, not after a sweep
