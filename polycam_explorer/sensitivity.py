"""Sensitivity-max of a saliency method (Yeh et al. 2019, Captum's defaults): how much a map
changes under small input noise (ALGORITHM.md, "Faithfulness metrics": robustness)."""
from __future__ import annotations

import math
from typing import Callable

import torch

from .extras import require
from .images import check_image


def sensitivity_max(explain: Callable[..., torch.Tensor], x: torch.Tensor, class_idx: int | None = None,
                    *, n_perturb: int = 10, radius: float = 0.02, seed: int | None = None) -> float:
    """Sensitivity-max of a saliency function at ``x`` (Yeh et al. 2019), via Captum.

    ``max_j ||explain(x + d_j) - explain(x)||_F / ||explain(x)||_F`` over ``n_perturb`` noises
    ``d_j`` drawn uniformly from the L-infinity ball of ``radius`` (Captum's
    ``default_perturb_func``, called as ``captum.metrics.sensitivity_max(...,
    perturb_radius=radius, n_perturb_samples=n_perturb)``). A zero map gives 0 sensitivity
    (Captum divides by 1 then).

    Args:
        explain: any saliency function ``explain(x) -> map`` (``explain(x, class_idx)`` when
            ``class_idx`` is given) for one ``1 x C x H x W`` image, the map typically ``H x W``.
            It is called once per image, under ``torch.enable_grad()``
            (Captum itself runs under ``no_grad``), so gradient methods work. For Poly-CAM, each
            perturbed input needs its own probe sweep, e.g.
            ``lambda x: pe.compute_mapset(model, x, layers, progress=False).saliency(c, "+-")``
            (``n_perturb + 1`` sweeps in all).
        x: the normalised image, ``1 x C x H x W``.
        class_idx: ``None``: ``explain`` fixes the class itself; an int is passed on to it.
        n_perturb: perturbations (the paper: 10).
        radius: L-infinity radius in the normalised input space (the paper: 0.02).
        seed: seed for the perturbations (the global RNG is restored after the call); ``None``
            draws from the global RNG as Captum does.

    Raises:
        ValueError: bad ``x``, ``n_perturb`` or ``radius``; ImportError without Captum.
    """
    metrics = require("captum.metrics", "sensitivity_max")
    check_image(x)
    if isinstance(n_perturb, bool) or not isinstance(n_perturb, int) or n_perturb < 1:
        raise ValueError(f"n_perturb must be a positive int, got {n_perturb!r}")
    if isinstance(radius, bool) or not isinstance(radius, (int, float)) or not math.isfinite(radius) or radius <= 0:
        raise ValueError(f"radius must be a positive finite number, got {radius!r}")

    def batched(inputs):
        batch = inputs[0] if isinstance(inputs, tuple) else inputs
        maps = []
        with torch.enable_grad():
            for i in range(batch.shape[0]):
                out = explain(batch[i:i + 1]) if class_idx is None else explain(batch[i:i + 1], class_idx)
                out = torch.as_tensor(out) if not isinstance(out, torch.Tensor) else out
                maps.append(out.detach().float().to(batch.device))
        return (torch.stack(maps),)  # Captum needs a tuple back when it passes one in

    devices = [x.device] if x.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices, enabled=seed is not None):
        if seed is not None:
            torch.manual_seed(seed)
        value = metrics.sensitivity_max(batched, x.detach(), perturb_radius=float(radius),
                                        n_perturb_samples=n_perturb)
    return float(value.reshape(-1)[0])
