"""RISE (Petsiuk et al., BMVC 2018) as the Poly-CAM paper runs it: 6000 random masks, the class
probability as the score (:mod:`polycam_explorer.baselines` lists it with the other baselines)."""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from . import baseline_common as common
from .model_state import inference_state
from .models import probabilities


def _rise_draw(n_masks: int, grid: int, p: float, size: Sequence[int], seed: int | None):
    """The random part of RISE: ``n x grid x grid`` kept cells and ``n x 2`` shifts, drawn in one go."""
    generator = torch.Generator()
    generator.manual_seed(seed) if seed is not None else generator.seed()
    cell = (math.ceil(size[0] / grid), math.ceil(size[1] / grid))
    cells = torch.rand(n_masks, grid, grid, generator=generator) < p
    shifts = torch.stack([torch.randint(0, cell[0], (n_masks,), generator=generator),
                          torch.randint(0, cell[1], (n_masks,), generator=generator)], dim=1)
    return cells, shifts, cell


def _rise_upsample(cells: torch.Tensor, shifts: torch.Tensor, cell: Sequence[int], size: Sequence[int],
                   device: torch.device) -> torch.Tensor:
    """Masks ``n x 1 x H x W``: each grid upsampled to ``(grid + 1) * cell`` and cropped at its shift."""
    grid = cells.shape[-1]
    up = F.interpolate(cells[:, None].to(device=device, dtype=torch.float32),
                       size=((grid + 1) * cell[0], (grid + 1) * cell[1]), mode="bilinear", align_corners=False)
    h, w = size
    return torch.stack([up[i, :, dy:dy + h, dx:dx + w] for i, (dy, dx) in enumerate(shifts.tolist())])


def _check_rise(n_masks, grid, p, size) -> None:
    common.positive_int("n_masks", n_masks)
    common.positive_int("grid", grid)
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 < p <= 1:
        raise ValueError(f"p must be a probability in (0, 1], got {p!r}")
    if grid > min(size):
        raise ValueError(f"grid ({grid} cells) must not exceed the image size {tuple(size)}")


def rise_masks(n_masks: int, size: Sequence[int], *, grid: int = 8, p: float = 0.1,
               seed: int | None = 0) -> torch.Tensor:
    """The ``n_masks x 1 x H x W`` masks that :func:`rise` uses with the same arguments (CPU)."""
    size = (int(size[0]), int(size[1]))
    _check_rise(n_masks, grid, p, size)
    cells, shifts, cell = _rise_draw(n_masks, grid, float(p), size, seed)
    return _rise_upsample(cells, shifts, cell, size, torch.device("cpu"))


def rise(model: nn.Module, x: torch.Tensor, class_idx: int, *, n_masks: int = 6000, grid: int = 8, p: float = 0.1,
         seed: int | None = 0, batch_size: int = 100) -> torch.Tensor:
    """RISE (Petsiuk, Das and Saenko, BMVC 2018), written here: no maintained library has it.

    ``N = n_masks`` binary ``s x s`` grids (``s = grid``) keep each cell with probability ``p``;
    each is upsampled bilinearly to ``(s + 1) * C`` (``C = ceil(H / s)``, per axis) and cropped to
    ``H x W`` at a random shift in ``[0, C)``. The map is ``sum_i f_c(X * M_i) M_i / (N p)`` with
    ``f_c`` the class probability (softmax, or sigmoid for one logit) and ``X * M_i`` taken in the
    normalised space (hidden pixels get the mean colour). Paper settings: N = 6000, s = 8, p = 0.1.
    Masks come from a generator seeded with ``seed`` (``None``: fresh randomness), drawn before any
    batching, so the map does not depend on ``batch_size``. Upsampling is torch's bilinear with
    ``align_corners=False`` (the RISE code uses skimage's, which reflects instead of clamping at the
    border). Non-negative.
    """
    net, x, c = common.prepare(model, x, class_idx)
    size = tuple(x.shape[-2:])
    _check_rise(n_masks, grid, p, size)
    batch_size = common.positive_int("batch_size", batch_size)
    cells, shifts, cell = _rise_draw(n_masks, grid, float(p), size, seed)
    total = torch.zeros(size[0] * size[1], device=x.device)
    with inference_state(net):
        for start in range(0, n_masks, batch_size):
            stop = min(start + batch_size, n_masks)
            masks = _rise_upsample(cells[start:stop], shifts[start:stop], cell, size, x.device)
            scores = probabilities(net(x * masks))[:, c]
            total += scores @ masks.reshape(stop - start, -1)
    return (total / (n_masks * float(p))).reshape(size).float()
