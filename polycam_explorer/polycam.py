"""The equations of Poly-CAM (Englebert et al., ICPR 2022) as pure tensor functions.

Nothing here knows about models, hooks, files or widgets. Shapes: a map is ``[..., h, w]``;
activations of one layer are ``[K, h, w]``; score matrices are ``[K, C]`` (channels x classes).
Every interpolation is bilinear with ``align_corners=False`` and no antialiasing.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn.functional as F

EPS = 1e-12
Q_LO, Q_HI = 0.001, 0.999

Variant = str
VARIANTS: tuple[Variant, ...] = ("+", "-", "+-")
_VARIANT_ALIASES = {"+": "+", "-": "-", "+-": "+-", "±": "+-", "pm": "+-", "p": "+", "m": "-"}


def canonical_variant(variant: str) -> Variant:
    """Return ``"+"``, ``"-"`` or ``"+-"``; ``"±"`` is accepted for ``"+-"``.

    Raises:
        ValueError: if ``variant`` is none of these.
    """
    try:
        return _VARIANT_ALIASES[variant]
    except (KeyError, TypeError):
        raise ValueError(
            f"variant must be one of '+', '-', '+-' (or '±'), got {variant!r}") from None


def resize(maps: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Bilinear resize of ``[..., h, w]`` maps to ``size`` (align_corners=False, no antialias)."""
    size = (int(size[0]), int(size[1]))
    if tuple(maps.shape[-2:]) == size:
        return maps
    lead = maps.shape[:-2]
    flat = maps.reshape(-1, 1, *maps.shape[-2:])
    out = F.interpolate(flat, size=size, mode="bilinear", align_corners=False, antialias=False)
    return out.reshape(*lead, *size)


def percentiles(maps: torch.Tensor, qs: Sequence[float]) -> torch.Tensor:
    """Per-map quantiles of ``[..., h, w]`` maps with numpy's default linear interpolation.

    Returns ``[len(qs), ...]``. On the maps' device: no host round trip, and no size limit (unlike
    ``torch.quantile``). Quantiles near either end (``u``'s 0.1th and 99.9th percentiles) need
    only the few smallest and largest values of each map (``torch.topk``: 6 ms instead of the full
    sort's 80 ms for VGG16's first layer on a CPU); the values, and so the result, are the same.
    """
    flat = maps.reshape(*maps.shape[:-2], -1)
    n = flat.shape[-1]
    spans = []
    for q in qs:
        pos = q * (n - 1)
        lo = int(pos // 1)
        spans.append((lo, min(lo + 1, n - 1), pos - lo))
    positions = [p for lo, hi, _ in spans for p in (lo, hi)]
    k_low = max([p + 1 for p in positions if p < n // 2], default=0)
    k_high = max([n - p for p in positions if p >= n // 2], default=0)
    if 8 * (k_low + k_high) < n:
        smallest = torch.topk(flat, k_low, dim=-1, largest=False).values if k_low else None  # ascending
        largest = torch.topk(flat, k_high, dim=-1).values if k_high else None  # descending

        def value(p: int) -> torch.Tensor:
            return smallest[..., p] if p < n // 2 else largest[..., n - 1 - p]
    else:
        ordered = torch.sort(flat, dim=-1).values

        def value(p: int) -> torch.Tensor:
            return ordered[..., p]
    out = []
    for lo, hi, frac in spans:
        v_lo, v_hi = value(lo), value(hi)
        out.append(v_lo + (v_hi - v_lo) * frac)
    return torch.stack(out)


def unit_normalize(maps: torch.Tensor) -> torch.Tensor:
    """``u(M)``: robust mapping of each ``[h, w]`` map to [0, 1] (ALGORITHM.md, "Masks").

    ``u(M) = clip((M - q_lo) / max(q_hi - q_lo, 1e-12), 0, 1)`` with ``q_lo``, ``q_hi`` the 0.1th
    and 99.9th percentiles of ``M``. The paper's definition; the authors' code divides by
    ``q_hi`` alone, which agrees whenever ``q_lo = 0``. A constant map gives all zeros.
    """
    q_lo, q_hi = percentiles(maps, (Q_LO, Q_HI))[..., None, None]
    return ((maps - q_lo) / torch.clamp(q_hi - q_lo, min=EPS)).clamp(0.0, 1.0)


def activation_masks(acts: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """``M_l^k = upsample(u(A_l^k), H x W)`` for the channels ``acts`` ``[K, h, w]`` -> ``[K, H, W]``."""
    return resize(unit_normalize(acts), size)


def channel_weights(variant: Variant, s0: torch.Tensor, s_plus: torch.Tensor,
                    s_minus: torch.Tensor) -> torch.Tensor:
    """Channel weights for every class at once, eq. [4]-[6]; ``[K, C]`` from scores ``[K, C]``.

    - ``"+"``  (CIC, PCAM+):  ``w = S+``
    - ``"-"``  (CDC, PCAM-):  ``w = ReLU(s0 - S-)``
    - ``"+-"`` (CVC, PCAM±):  ``w = ReLU(s0 + S+ - S-)``

    ``s0`` is ``[C]``; ``s_plus``/``s_minus`` may be ``[K, C]`` or ``[K]`` with ``s0`` a scalar.
    """
    variant = canonical_variant(variant)
    return _WEIGHTS[variant](s0, s_plus, s_minus)


_WEIGHTS: dict[Variant, Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "+": lambda s0, sp, sm: sp,
    "-": lambda s0, sp, sm: torch.relu(s0 - sm),
    "+-": lambda s0, sp, sm: torch.relu(s0 + sp - sm),
}


def layer_cam(acts: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """``CAM_l = ReLU(sum_k w_k A_l^k)``, eq. [2], at the layer's resolution: ``[K,h,w], [K] -> [h,w]``
    (or ``[K, N] -> [N,h,w]``: N weight vectors at once)."""
    return torch.relu(torch.einsum("k...,khw->...hw", weights.to(acts.dtype), acts))


def lnorm(cam: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """``LNorm(M, (h', w')) = M / max(N, 1e-12)``, eq. [1].

    ``N`` is ``M`` downsampled bilinearly to ``size`` and spread back to ``M``'s size; at an exact
    factor of 2 that is the paper's 2x2 block mean.
    """
    local = resize(resize(cam, size), cam.shape[-2:])
    return cam / torch.clamp(local, min=EPS)


def poly_recursion(cams: Sequence[torch.Tensor], *, use_lnorm: bool = True) -> list[torch.Tensor]:
    """The backward recursion, eq. [3] (eq. 7 without LNorm).

    ``cams`` are ``CAM_1 .. CAM_L`` (fine -> coarse, native sizes). Returns ``[P_L, ..., P_1]``:
    the map at depth ``d`` is element ``d - 1``.

    ``P_L = CAM_L``; ``P_l = ReLU(LNorm(CAM_l, size(P_l+1)) * upsample(P_l+1, size(CAM_l)))``.
    """
    maps: list[torch.Tensor] = []
    for cam in reversed(cams):
        if maps:
            prev = maps[-1]
            local = lnorm(cam, prev.shape[-2:]) if use_lnorm else cam
            cam = torch.relu(local * resize(prev, cam.shape[-2:]))
        maps.append(cam)
    return maps


def display_map(p: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """A map as shown or exported: ``u(P)`` upsampled to the input size ``H x W``, in [0, 1]."""
    return resize(unit_normalize(p), size).clamp(0.0, 1.0)
