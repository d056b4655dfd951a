"""Shared fixtures: a tiny seeded CNN for the logic, the embedded model for the real thing."""
from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
from torch import nn

import polycam_explorer as pe

DATA = Path(pe.__file__).parent / "data"


class TinyNet(nn.Module):
    """16x16 input -> layers at 16, 8 and 4 pixels (features.1, .3 and features) -> ``n_classes`` logits."""

    def __init__(self, n_classes: int = 5, in_channels: int = 3, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 4, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(4, 6, 3, stride=2, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(6, 8, 3, stride=2, padding=1), nn.ReLU(inplace=True),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.features(x)), 1))


TINY_LAYERS = ["features.1", "features.3", "features"]  # as discovered


@pytest.fixture
def tiny_model() -> pe.Classifier:
    return pe.Classifier(TinyNet().eval(), name="tiny", mean=(0.5,) * 3, std=(0.5,) * 3,
                         input_size=(16, 16), class_names=[f"c{i}" for i in range(5)])


@pytest.fixture
def tiny_x() -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    return torch.randn(1, 3, 16, 16, generator=g)


@pytest.fixture(scope="session")
def default_model() -> pe.Classifier:
    return pe.load_model()


@pytest.fixture
def sample() -> callable:
    def path(name: str) -> Path:
        return DATA / f"{name}.jpg"
    return path


@pytest.fixture
def own_cache(monkeypatch, tmp_path) -> None:
    """The explorer's disk cache (POLYCAM_EXPLORER_CACHE) is this test's own folder, never the user's."""
    monkeypatch.setenv("POLYCAM_EXPLORER_CACHE", str(tmp_path / "cache"))


@pytest.fixture
def sample_folder(tmp_path, sample) -> Callable[..., Path]:
    """``sample_folder("chelsea", "coffee")``: a new folder ``tmp_path / "images"`` holding copies of
    those sample photos, named ``chelsea.jpg`` and ``coffee.jpg``."""
    def make(*names: str) -> Path:
        folder = tmp_path / "images"
        folder.mkdir()
        for name in names:
            shutil.copy(sample(name), folder / f"{name}.jpg")
        return folder
    return make


@pytest.fixture
def ms(tiny_model, tiny_x) -> pe.MapSet:
    """The tiny model's map set of ``tiny_x`` (a fresh sweep per test)."""
    return pe.compute_mapset(tiny_model, tiny_x, progress=False)


@contextlib.contextmanager
def tmpfs(folder: Path, options: str) -> Iterator[bool]:
    """A real tmpfs at ``folder`` with mount ``options`` (``"size=64k"``, ``"ro,size=64k"``): True
    while it is mounted; False where it cannot be (not root, or no right to mount), and the test
    falls back to a simulated fault."""
    folder.mkdir(parents=True, exist_ok=True)
    mounted = hasattr(os, "geteuid") and os.geteuid() == 0 and subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], capture_output=True).returncode == 0
    try:
        yield mounted
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(folder)], capture_output=True)
