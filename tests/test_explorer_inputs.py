"""The explorer refuses bad arguments clearly and keeps working (issue 9, obscure errors)."""
from __future__ import annotations

import math

import pytest
import torch
import traitlets

import polycam_explorer as pe


@pytest.fixture
def explorer(tiny_model, tiny_x) -> pe.Explorer:
    return pe.Explorer(pe.compute_mapset(tiny_model, tiny_x, progress=False), size=64)


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_a_non_finite_opacity_is_refused_and_the_view_keeps_drawing(explorer, value) -> None:
    explorer.opacity.value = 0.3
    with pytest.raises(traitlets.TraitError, match="opacity must be a number in"):
        explorer.opacity.value = value
    assert explorer.opacity.value == 0.3
    assert "Error" not in explorer.status.value
    explorer.opacity.value = 2.0  # out of range: clamped as a slider does
    assert explorer.opacity.value == 1.0


@pytest.mark.parametrize("size", [0, -5, 10, 63, 5000, 320.0, True, "320", None])
def test_bad_panel_sizes_are_refused(tiny_model, tiny_x, size) -> None:
    ms = pe.compute_mapset(tiny_model, tiny_x, progress=False)
    with pytest.raises(ValueError, match=r"size .* must be an int of pixels in 64\.\.4096"):
        pe.Explorer(ms, size=size)


@pytest.mark.parametrize("thing", ["not a map set", None, torch.zeros(3), {"a": 1}])
def test_add_mapset_refuses_what_is_not_a_mapset_and_keeps_the_widget(explorer, thing) -> None:
    options = explorer.image_picker.options
    with pytest.raises(TypeError, match="add_mapset takes a MapSet"):
        explorer.add_mapset("other", thing)
    assert explorer.image_picker.options == options
    explorer.variant.value = "-"  # still works
    assert "Error" not in explorer.status.value
