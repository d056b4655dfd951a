"""Faithfulness metrics: insertion and deletion (Petsiuk et al. 2018, as the Poly-CAM paper runs them).

Protocol (ALGORITHM.md, "Faithfulness metrics"): the baseline is the image blurred with an 11x11
Gaussian of sigma 5 (normalised space); pixels are ranked by decreasing saliency; sample
``t = 1..n`` carries the top ``t * ceil(H*W / n)`` pixels (insertion: from the image onto the
baseline; deletion: the baseline over them in the image); the score of a sample is the class
probability and the AUC is the mean of the ``n`` scores.

Ties in the ranking: by default (``ties="authors"``) pixels are ordered exactly as the authors'
metric code orders them — ``torch.argsort`` of the flattened ``1 x HW`` map, reversed — so the
numbers match theirs on the same maps; that order is deterministic for a given torch build and
device but not specified among equal values. ``ties="index"`` breaks ties by pixel index instead,
earlier pixels (row-major) first, the same on every machine.
"""
from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch
from torch import nn

from .layers import inference_state
from .models import as_classifier, probabilities

Progress = Callable[[int, int], None]


def blur_baseline(x: torch.Tensor) -> torch.Tensor:
    """The paper's baseline: Gaussian blur, kernel 11x11, sigma 5, in the normalised space."""
    from torchvision.transforms.functional import gaussian_blur

    return gaussian_blur(x, kernel_size=[11, 11], sigma=[5.0, 5.0])


def saliency_rank(saliency: torch.Tensor, ties: str = "authors") -> torch.Tensor:
    """Rank of every pixel (0 = most salient), ``[H*W]``; ``ties`` as in the module docstring."""
    flat = saliency.reshape(1, -1)
    if ties == "authors":
        order = torch.flip(flat.argsort(), dims=[-1])[0]
    elif ties == "index":
        order = torch.sort(flat, descending=True, stable=True).indices[0]
    else:
        raise ValueError(f"ties must be 'authors' or 'index', got {ties!r}")
    rank = torch.empty_like(order)
    rank[order] = torch.arange(order.numel(), device=order.device)
    return rank


def _curve(model: nn.Module, x: torch.Tensor, saliency: torch.Tensor, class_idx: int, n_steps: int,
           *, insert: bool, batch_size: int, rise: bool, ties: str, progress: Progress | None
           ) -> tuple[float, np.ndarray]:
    clf = as_classifier(model)
    if x.dim() != 4 or x.shape[0] != 1:
        raise ValueError(f"x must have shape 1 x C x H x W, got {tuple(x.shape)}")
    h, w = x.shape[-2:]
    if tuple(saliency.shape[-2:]) != (h, w) or saliency.numel() != h * w:
        raise ValueError(f"saliency must be {h} x {w} like the image, got {tuple(saliency.shape)}")
    if isinstance(n_steps, bool) or not isinstance(n_steps, int) or not 1 <= n_steps <= h * w:
        raise ValueError(f"n_steps must be an int in 1..{h * w}, got {n_steps!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    device = next((p.device for p in clf.net.parameters()), x.device)
    with inference_state(clf.net):
        n_classes = probabilities(clf.net(x.to(device))).shape[1]
    if isinstance(class_idx, bool) or not 0 <= int(class_idx) < n_classes:
        raise ValueError(f"class_idx must be in 0..{n_classes - 1}, got {class_idx!r}")
    x = x.to(device)
    baseline = blur_baseline(x)
    start, end = (baseline, x) if insert else (x, baseline)
    rank = saliency_rank(saliency.to(device).float(), ties).reshape(1, 1, h, w)
    per_step = math.ceil(h * w / n_steps)
    steps = torch.arange(0 if rise else 1, n_steps + 1, device=device)
    scores = []
    with inference_state(clf.net):
        for s in range(0, len(steps), batch_size):
            shown = rank < (steps[s:s + batch_size] * per_step).reshape(-1, 1, 1, 1)
            samples = torch.where(shown, end, start)
            scores.append(probabilities(clf.net(samples))[:, class_idx])
            if progress is not None:
                progress(min(s + batch_size, len(steps)), len(steps))
    curve = torch.cat(scores).cpu().double().numpy()
    auc = float(np.trapezoid(curve) / (len(curve) - 1)) if rise else float(curve.sum() / n_steps)
    return auc, curve.astype(np.float32)


def insertion(model: nn.Module, x: torch.Tensor, saliency: torch.Tensor, class_idx: int, n_steps: int = 224,
              *, batch_size: int = 32, rise: bool = False, ties: str = "authors",
              progress: Progress | None = None) -> tuple[float, np.ndarray]:
    """Insertion AUC (higher is better) and its curve of ``n_steps`` class probabilities.

    ``rise=True`` adds the 0% point (the baseline alone) and uses the trapezoid AUC of the RISE paper;
    ``ties`` chooses how equal saliency values are ordered (module docstring).
    ``progress(done, total)`` is called after each batch.
    """
    return _curve(model, x, saliency, class_idx, n_steps, insert=True, batch_size=batch_size, rise=rise,
                  ties=ties, progress=progress)


def deletion(model: nn.Module, x: torch.Tensor, saliency: torch.Tensor, class_idx: int, n_steps: int = 224,
             *, batch_size: int = 32, rise: bool = False, ties: str = "authors",
             progress: Progress | None = None) -> tuple[float, np.ndarray]:
    """Deletion AUC (lower is better) and its curve; arguments as :func:`insertion`."""
    return _curve(model, x, saliency, class_idx, n_steps, insert=False, batch_size=batch_size, rise=rise,
                  ties=ties, progress=progress)
