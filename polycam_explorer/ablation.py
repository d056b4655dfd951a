"""The paper's ablations (Tables 2 and 3) as data, from one probe sweep per image.

For each variant (PCAM+, PCAM-, PCAM±) and one class, :func:`ablation_rows` scores with
insertion and deletion (ALGORITHM.md, "Faithfulness metrics"):

- ``polycam``: the full-depth Poly-CAM map ``u(P_1)`` upsampled (eq. [3]);
- ``no-lnorm``: the same recursion without LNorm (eq. 7);
- ``layer:<name>``: the isolated ``CAM_l`` of each target layer (eq. [2]), shown as ``u(CAM_l)``
  upsampled bilinearly to the input size.

:func:`ablation_table` averages the rows of several images into a markdown table.
"""
from __future__ import annotations

import hashlib
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn

from . import polycam
from .compute import compute_mapset
from .mapset import MapSet
from .metrics import faithfulness_curves

VARIANT_NAMES = {"+": "PCAM+", "-": "PCAM-", "+-": "PCAM±"}
METRICS = (("insertion", "Ins"), ("deletion", "Del"), ("ins_del", "Ins-Del"))


def ablation_maps(ms: MapSet, class_idx: int, variant: str) -> dict[str, torch.Tensor]:
    """The maps of one variant's ablation, ``H x W`` in [0, 1]: ``polycam``, ``no-lnorm``, ``layer:<name>``."""
    maps = {"polycam": ms.saliency(class_idx, variant), "no-lnorm": ms.saliency(class_idx, variant, lnorm=False)}
    for name in ms.layers:
        maps[f"layer:{name}"] = polycam.display_map(ms.layer_cam(class_idx, variant, name), ms.size)
    return maps


def ablation_rows(model: nn.Module, x: torch.Tensor, class_idx: int | None = None, *, n_steps: int = 224,
                  batch_size: int = 32, mapset: MapSet | None = None, layers: Sequence[str] | None = None,
                  sweep_batch_size: int = 64, progress: Callable[[int, int], None] | None = None
                  ) -> list[dict]:
    """Insertion / deletion of every ablation map of one image, for the three variants.

    Args:
        model: the classifier (scored by :func:`insertion` / :func:`deletion`).
        x: the normalised image, ``1 x C x H x W``.
        class_idx: the class explained; ``None`` for the model's top-1 class.
        n_steps, batch_size: as :func:`insertion` (224 steps for a 224 x 224 image).
        mapset: a complete :class:`MapSet` of ``x`` to reuse; ``None`` runs one sweep
            (:func:`compute_mapset` with ``layers`` and ``sweep_batch_size``).
        progress: ``progress(done, total)`` after each forward batch of the metric samples.

    Returns:
        ``3 x (2 + L)`` dicts ``{'variant', 'map', 'insertion', 'deletion', 'ins_del'}``, variants
        in the order ``'+'``, ``'-'``, ``'+-'``; within one, ``'polycam'``, ``'no-lnorm'``, then
        ``'layer:<name>'`` input side first. Identical maps (such as ``u(CAM_L)`` and depth 1) are
        scored once; all maps share the forward batches (:func:`faithfulness_curves`).

    Raises:
        ValueError: an incomplete map set, or one made from another image.
    """
    if mapset is None:
        mapset = compute_mapset(model, x, layers, batch_size=sweep_batch_size, progress=False)
    elif not isinstance(mapset, MapSet):
        raise TypeError(f"mapset must be a pe.MapSet or None, got {type(mapset).__name__}")
    if not mapset.complete:
        raise ValueError(f"mapset is incomplete ({mapset.depth_available}/{len(mapset.layers)} layers probed)")
    image = mapset.image
    if image.shape != x.shape or not torch.allclose(image.cpu().float(), x.detach().cpu().float(), atol=1e-6):
        raise ValueError("mapset was computed for another image than x")
    c = mapset.topk(1)[0][0] if class_idx is None else mapset.class_index(class_idx)
    jobs = [(v, key, m) for v in polycam.VARIANTS for key, m in ablation_maps(mapset, c, v).items()]
    digests = [hashlib.sha1(m.detach().float().cpu().numpy().tobytes()).hexdigest() for _, _, m in jobs]
    distinct = {d: m for d, (_, _, m) in zip(digests, jobs)}  # identical maps are scored once
    curves = faithfulness_curves(model, [x] * len(distinct), list(distinct.values()), [c] * len(distinct),
                                 n_steps, batch_size=batch_size, progress=progress)
    aucs = {d: (r["insertion"][0], r["deletion"][0]) for d, r in zip(distinct, curves)}
    rows = []
    for (variant, key, _), digest in zip(jobs, digests):
        ins, dele = aucs[digest]
        rows.append({"variant": variant, "map": key, "insertion": ins, "deletion": dele, "ins_del": ins - dele})
    return rows


def ablation_table(rows_per_image: Sequence[Sequence[dict]] | Sequence[dict], *, digits: int = 3) -> str:
    """Mean over images of :func:`ablation_rows`, as a markdown table like the paper's Tables 2-3.

    One row per map (``Poly-CAM``, ``Poly-CAM without LNorm``, ``CAM <layer>``), columns
    ``Ins``, ``Del``, ``Ins-Del`` for each variant present (``PCAM+``, ``PCAM-``, ``PCAM±``).
    The header's first cell says how many images were averaged. A single image's rows may be
    passed directly.

    Raises:
        ValueError: no rows, or images whose rows name different maps / variants.
    """
    if not rows_per_image:
        raise ValueError("rows_per_image is empty")
    images = [rows_per_image] if isinstance(rows_per_image[0], dict) else list(rows_per_image)
    keys = [(r["variant"], r["map"]) for r in images[0]]
    for index, rows in enumerate(images):
        if sorted((r["variant"], r["map"]) for r in rows) != sorted(keys):
            raise ValueError(f"image {index} has other maps or variants than image 0; "
                             "average rows of the same model and layers only")
    means = {k: {m: float(np.mean([r[m] for rows in images for r in rows if (r["variant"], r["map"]) == k]))
                 for m, _ in METRICS} for k in keys}
    variants = [v for v in polycam.VARIANTS if any(k[0] == v for k in keys)]
    maps = list(dict.fromkeys(k[1] for k in keys))
    n = len(images)
    header = [f"map (mean of {n} image{'s' if n != 1 else ''})"]
    header += [f"{VARIANT_NAMES[v]} {label}" for v in variants for _, label in METRICS]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for key in maps:
        cells = [_label(key)]
        for v in variants:
            values = means.get((v, key))
            cells += [f"{values[m]:.{digits}f}" if values else "" for m, _ in METRICS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _label(key: str) -> str:
    if key == "polycam":
        return "Poly-CAM"
    if key == "no-lnorm":
        return "Poly-CAM without LNorm"
    return f"CAM {key.split(':', 1)[1]} (isolated)"
