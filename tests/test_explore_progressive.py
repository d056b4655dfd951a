"""The explorer shows a progressive sweep's estimates, labelled, and then the exact maps."""
from __future__ import annotations

import torch
from torch import nn

import polycam_explorer as pe
from polycam_explorer.explorer import explore as explore_module

SIZE = 64


class WideNet(nn.Module):
    """16x16 input; a 64-channel coarsest layer, so that its probes come in several batches."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(),
                                      nn.Conv2d(8, 64, 3, stride=2, padding=1), nn.ReLU())
        self.fc = nn.Linear(64, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x).mean((2, 3)))


def _model() -> pe.Classifier:
    return pe.Classifier(WideNet().eval(), name="wide", mean=(0.5,) * 3, std=(0.5,) * 3, input_size=(16, 16))


def test_the_sweep_runner_asks_for_estimates(tmp_path, monkeypatch) -> None:
    seen = []
    real = explore_module.iter_mapset

    def spy(*args, **kwargs):
        seen.append(kwargs.get("progressive"))
        return real(*args, **kwargs)
    monkeypatch.setattr(explore_module, "iter_mapset", spy)
    picture = (torch.rand(16, 16, 3, generator=torch.Generator().manual_seed(3)).numpy() * 255).astype("uint8")
    ex = pe.explore(picture, model=_model(), cache_dir=tmp_path, wait=True, panel_size=SIZE)
    try:
        assert seen == [True]
        assert ex.store.mapset("image 1").complete
        assert "estimate" not in ex.captions[0].value
    finally:
        ex.close()


def test_an_estimate_is_labelled_and_replaced_by_the_exact_map(tmp_path) -> None:
    model = _model()
    x = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    steps = pe.iter_mapset(model, x, progress=False, progressive=True, batch_size=4)
    ms = next(steps)
    assert ms.estimate and 0 < ms.channels_done < ms.channels_total
    ex = pe.Explorer(ms, size=SIZE)
    try:
        caption = ex.captions[0].value
        assert f"estimate</b>: {ms.channels_done}/{ms.channels_total} channels" in caption
        strip_before = ex.strip.pixels.copy()
        for ms in steps:
            ex.refresh("image")
        assert ms.complete and not ms.estimate
        assert "estimate" not in ex.captions[0].value
        # the strip was rebuilt from the exact maps, not served from the estimate's cache
        exact = ex.strip.pixels
        assert exact.shape != strip_before.shape or not (exact == strip_before).all()
    finally:
        ex.close()
