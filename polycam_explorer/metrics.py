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
import warnings
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn

from .images import check_image
from .layers import float_dtype
from .model_state import inference_state
from .models import as_classifier, probabilities

Progress = Callable[[int, int], None]


def blur_baseline(x: torch.Tensor) -> torch.Tensor:
    """The paper's baseline: Gaussian blur, kernel 11x11, sigma 5, in the normalised space."""
    from torchvision.transforms.functional import gaussian_blur

    return gaussian_blur(x, kernel_size=[11, 11], sigma=[5.0, 5.0])


def exact_dtype(dtype: torch.dtype) -> torch.dtype:
    """float32 where it holds every value of ``dtype`` exactly (float16/32 maps, as the authors
    store them; bools; 8- and 16-bit integers), else float64: a float64 map of values near 1e-50
    or 1e300, or of integers above 2**24, keeps its order."""
    if dtype == torch.bool:
        return torch.float32
    info = torch.finfo(dtype) if dtype.is_floating_point else torch.iinfo(dtype)
    return torch.float32 if dtype == torch.float32 or info.bits <= 16 else torch.float64


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


def _count(value: object) -> int | None:
    """``value`` as an int (Python or numpy; not a bool), else None."""
    return None if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) else int(value)


def _check(x: torch.Tensor, saliency: torch.Tensor, n_steps: int, batch_size: int, channels: int,
           which: str = "") -> None:
    check_image(x, channels, min_side=6, needed_by="the blurred baseline (an 11 x 11 Gaussian)", name=f"x{which}")
    if not isinstance(saliency, torch.Tensor):
        raise TypeError(f"saliency{which} must be a torch tensor, got {type(saliency).__name__}")
    if saliency.is_meta:
        raise ValueError(f"saliency{which} is on the meta device (a shape without values): give a tensor with data")
    h, w = x.shape[-2:]
    if tuple(saliency.shape[-2:]) != (h, w) or saliency.numel() != h * w:
        raise ValueError(f"saliency{which} must be {h} x {w} like the image, got {tuple(saliency.shape)}")
    if saliency.is_complex():
        raise ValueError(f"saliency{which} must hold real numbers, got {saliency.dtype}")
    bad = int((~torch.isfinite(saliency)).sum())
    if bad:
        raise ValueError(f"saliency{which} has {bad} non-finite values (NaN or inf): a saliency map must be finite "
                         "(a NaN would be ranked as the most salient pixel)")
    if _count(n_steps) is None or not 1 <= n_steps <= h * w:
        raise ValueError(f"n_steps must be an int in 1..{h * w}, got {n_steps!r}")
    if _count(batch_size) is None or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")


def faithfulness_curves(model: nn.Module, xs: Sequence[torch.Tensor], saliencies: Sequence[torch.Tensor],
                        class_idxs: Sequence[int], n_steps: int = 224, *,
                        kinds: Sequence[str] = ("insertion", "deletion"), batch_size: int = 32,
                        rise: bool = False, ties: str = "authors", progress: Progress | None = None,
                        backend: str = "eager") -> list[dict[str, tuple[float, np.ndarray]]]:
    """Insertion and/or deletion of several same-size images at once: the samples of every image
    and kind share the forward batches. Returns, per image, ``{kind: (auc, curve)}``.

    ``backend`` runs the forward batches as the sweep's do (:mod:`polycam_explorer.backends`;
    ``"eager"``, today's path, by default; ``"auto"`` picks the fastest exact path)."""
    from . import backends, model_fingerprint  # the package's, wherever identity lives

    backends.check_backend(backend)
    clf = as_classifier(model)
    if not xs or not (len(xs) == len(saliencies) == len(class_idxs)):
        raise ValueError("xs, saliencies and class_idxs must be non-empty and of the same length")
    unknown = set(kinds) - {"insertion", "deletion"}
    if unknown or not kinds:
        raise ValueError(f"kinds must be 'insertion' and/or 'deletion', got {list(kinds)}")
    for i, (x, sal) in enumerate(zip(xs, saliencies)):
        _check(x, sal, n_steps, batch_size, clf.channels, f"[{i}]" if len(xs) > 1 else "")
        if x.shape != xs[0].shape:
            raise ValueError(f"images batched together must have one size, got {tuple(x.shape)} and "
                             f"{tuple(xs[0].shape)}")
    n_steps, batch_size = int(n_steps), int(batch_size)
    device = next((p.device for p in clf.net.parameters()), xs[0].device)
    images = torch.cat([x.to(device, float_dtype(clf.net)) for x in xs])  # run as the model's dtype, as sweeps do
    blurred = blur_baseline(images)
    h, w = images.shape[-2:]
    ranks = torch.stack([saliency_rank(s.to(device, exact_dtype(s.dtype)), ties).reshape(1, h, w) for s in saliencies])
    per_step = math.ceil(h * w / n_steps)
    first = 0 if rise else 1
    n_points = n_steps + 1 - first
    jobs = torch.tensor([(i, k == "insertion", t) for i in range(len(xs)) for k in kinds
                         for t in range(first, n_steps + 1)], device=device)
    classes = torch.as_tensor([int(c) for c in class_idxs], device=device)
    scores = torch.empty(len(jobs), device=device)
    with inference_state(clf.net):
        run = clf.net if backend == "eager" else backends.runner_for(
            clf.net, images[:1], backend=backend, batch_size=batch_size, fingerprint=model_fingerprint(clf),
            probes=len(jobs))
        for s in range(0, len(jobs), batch_size):
            i, insert, t = jobs[s:s + batch_size].unbind(1)
            shown = ranks[i] < (t * per_step).reshape(-1, 1, 1, 1)
            keep = torch.where(insert.bool().reshape(-1, 1, 1, 1), images[i], blurred[i])
            fill = torch.where(insert.bool().reshape(-1, 1, 1, 1), blurred[i], images[i])
            probs = probabilities(run(torch.where(shown, keep, fill)))
            if s == 0 and (int(classes.max()) >= probs.shape[1] or int(classes.min()) < 0):
                raise ValueError(f"class_idx must be in 0..{probs.shape[1] - 1}, got {list(class_idxs)}")
            scores[s:s + batch_size] = probs[torch.arange(len(i), device=device), classes[i]]
            if progress is not None:
                progress(min(s + batch_size, len(jobs)), len(jobs))
    curves = scores.cpu().double().numpy().reshape(len(xs), len(kinds), n_points)
    broken = ~np.isfinite(curves)
    if broken.any():
        images_hit = sorted({int(i) for i in np.nonzero(broken.any(axis=(1, 2)))[0]})
        warnings.warn(f"the model returned non-finite scores (NaN or inf) for {int(broken.sum())} of {broken.size} "
                      f"samples (image(s) {images_hit} of this call): their curves and AUCs are NaN; is the model "
                      "broken (NaN weights or an unstable layer)?", RuntimeWarning, stacklevel=2)
    out = []
    for per_image in curves:
        result = {}
        for kind, curve in zip(kinds, per_image):
            auc = float(np.trapezoid(curve) / (len(curve) - 1)) if rise else float(curve.sum() / n_steps)
            result[kind] = (auc, curve.astype(np.float32))
        out.append(result)
    return out


def _curve(model: nn.Module, x: torch.Tensor, saliency: torch.Tensor, class_idx: int, n_steps: int,
           *, insert: bool, batch_size: int, rise: bool, ties: str, progress: Progress | None
           ) -> tuple[float, np.ndarray]:
    if isinstance(class_idx, bool) or not isinstance(class_idx, (int, np.integer)):
        raise ValueError(f"class_idx must be an int, got {class_idx!r}")
    kind = "insertion" if insert else "deletion"
    return faithfulness_curves(model, [x], [saliency], [class_idx], n_steps, kinds=(kind,),
                               batch_size=batch_size, rise=rise, ties=ties, progress=progress)[0][kind]


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
