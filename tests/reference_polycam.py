"""A deliberately plain Poly-CAM, written straight from ALGORITHM.md, to cross-check the engine.

Nothing here is shared with ``polycam_explorer``: one class and one variant at a time, one
channel at a time, one forward pass per probe (a batch of 1), numpy's ``np.percentile`` in
float64 for ``u``, and explicit Python loops over channels. Slow on purpose; only for tests.

Equation numbers are the paper's (Englebert et al., ICPR 2022, arXiv 2204.13359):
[1] LNorm, [2] the per-layer CAM, [3] the backward recursion, [4]-[6] the channel weights.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

EPS = 1e-12
VARIANTS = ("+", "-", "+-")


# ----- building blocks -------------------------------------------------------------------------
def bilinear(m: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Resize one ``h x w`` map bilinearly (``align_corners=False``, no antialiasing)."""
    out = F.interpolate(m[None, None], size=(int(size[0]), int(size[1])), mode="bilinear",
                        align_corners=False)
    return out[0, 0]


def unit(m: torch.Tensor) -> torch.Tensor:
    """``u(M) = clip((M - q_lo) / max(q_hi - q_lo, 1e-12), 0, 1)``, percentiles 0.1 / 99.9.

    Computed in float64 with ``np.percentile`` (linear interpolation, numpy's default).
    """
    a = m.detach().cpu().double().numpy()
    q_lo = float(np.percentile(a, 0.1))
    q_hi = float(np.percentile(a, 99.9))
    out = np.clip((a - q_lo) / max(q_hi - q_lo, EPS), 0.0, 1.0)
    return torch.from_numpy(out)


def f(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``f(X)`` of one image: softmax over the logits, or sigmoid of a single logit -> ``[C]``."""
    with torch.no_grad():
        logits = net(x)
    assert logits.shape[0] == 1, "the reference runs one image per forward pass"
    logits = logits.float()[0]
    return torch.sigmoid(logits) if logits.numel() == 1 else torch.softmax(logits, dim=0)


def activations(net: nn.Module, x: torch.Tensor, layers: Sequence[str]) -> list[torch.Tensor]:
    """``A_l`` (``[K, h, w]``) of the named modules, fine -> coarse, from one forward hook pass."""
    modules = dict(net.named_modules())
    found: dict[str, torch.Tensor] = {}
    handles = []
    for name in layers:
        def hook(_module, _inputs, output, name=name):
            found[name] = output.detach().clone()
        handles.append(modules[name].register_forward_hook(hook))
    try:
        with torch.no_grad():
            net(x)
    finally:
        for h in handles:
            h.remove()
    return [found[name][0] for name in layers]


def mask(channel: torch.Tensor, size: Sequence[int], dtype: torch.dtype) -> torch.Tensor:
    """``M_l^k = upsample(u(A_l^k), H x W)``: ``u`` at the layer's size, then bilinear.

    The mask is made in the image's dtype, as the model sees it.
    """
    return bilinear(unit(channel).to(dtype), size)


def probe_scores(net: nn.Module, x: torch.Tensor, acts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``S+[k] = f(X * M^k)`` and ``S-[k] = f(X * (1 - M^k))`` for every channel -> ``[K, C]`` each.

    No shortcut: two forward passes of one image per channel, zero and duplicate masks included.
    """
    size = x.shape[-2:]
    plus, minus = [], []
    for k in range(acts.shape[0]):
        m = mask(acts[k], size, x.dtype)
        plus.append(f(net, x * m))
        minus.append(f(net, x * (1.0 - m)))
    return torch.stack(plus), torch.stack(minus)


def weights(variant: str, s0_c: float, s_plus_c: torch.Tensor, s_minus_c: torch.Tensor) -> list[float]:
    """Channel weights for one class, one channel at a time, eq. [4]-[6].

    ``+``: ``S+[k]`` (CIC); ``-``: ``ReLU(s0 - S-[k])`` (CDC); ``+-``: ``ReLU(s0 + S+[k] - S-[k])`` (CVC).
    """
    out = []
    for k in range(s_plus_c.shape[0]):
        sp, sm = float(s_plus_c[k]), float(s_minus_c[k])
        if variant == "+":
            w = sp
        elif variant == "-":
            w = max(s0_c - sm, 0.0)
        elif variant == "+-":
            w = max(s0_c + sp - sm, 0.0)
        else:
            raise ValueError(variant)
        out.append(w)
    return out


def cam(acts: torch.Tensor, w: Sequence[float]) -> torch.Tensor:
    """``CAM_l = ReLU(sum_k w_k A_l^k)`` at the layer's own resolution, eq. [2] (float64)."""
    total = torch.zeros(acts.shape[1:], dtype=torch.float64)
    for k in range(acts.shape[0]):
        total = total + w[k] * acts[k].double()
    return torch.relu(total)


def lnorm(m: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """``LNorm(M, (h', w')) = M / max(N, 1e-12)``, ``N = up(down(M, h' x w'), M's size)``, eq. [1]."""
    n = bilinear(bilinear(m, size), m.shape)
    return m / torch.clamp(n, min=EPS)


def recursion(cams: Sequence[torch.Tensor], use_lnorm: bool = True) -> list[torch.Tensor]:
    """``[P_L, ..., P_1]`` from ``CAM_1 .. CAM_L``, eq. [3] (eq. 7 without LNorm).

    ``P_L = CAM_L``; ``P_l = ReLU(LNorm(CAM_l, size P_l+1) * upsample(P_l+1, h_l x w_l))``.
    """
    L = len(cams)
    p = cams[L - 1]
    out = [p]
    for l in range(L - 2, -1, -1):
        c = cams[l]
        local = lnorm(c, p.shape) if use_lnorm else c
        p = torch.relu(local * bilinear(p, c.shape))
        out.append(p)
    return out


# ----- the whole method, one class and one variant at a time -----------------------------------
@dataclass
class ReferenceMaps:
    """Everything the reference computes for one class, variant and LNorm setting."""

    layers: list[str]
    s0: torch.Tensor                   # [C]
    cams: list[torch.Tensor]           # CAM_1 .. CAM_L, native sizes, float64
    poly: list[torch.Tensor]           # [P_L, ..., P_1]: depth d is element d - 1
    saliency: list[torch.Tensor]       # u(P) upsampled to H x W, per depth


def polycam(net: nn.Module, x: torch.Tensor, layers: Sequence[str], class_idx: int,
            variant: str = "+-", use_lnorm: bool = True,
            scores: Sequence[tuple[torch.Tensor, torch.Tensor]] | None = None) -> ReferenceMaps:
    """Poly-CAM for one image, class and variant, from scratch (probes included).

    ``scores`` (``(S+_l, S-_l)`` per layer, fine -> coarse, ``[K, C]`` each) skips the probes and
    uses the given scores instead, to check the map arithmetic alone.
    """
    net.eval()
    size = x.shape[-2:]
    s0 = f(net, x)
    acts = activations(net, x, layers)
    cams = []
    for index, a in enumerate(acts):
        if scores is None:
            s_plus, s_minus = probe_scores(net, x, a)
        else:
            s_plus, s_minus = (s.detach().cpu() for s in scores[index])
        w = weights(variant, float(s0[class_idx]), s_plus[:, class_idx], s_minus[:, class_idx])
        cams.append(cam(a, w))
    poly = recursion(cams, use_lnorm)
    saliency = [bilinear(unit(p), size) for p in poly]
    return ReferenceMaps(list(layers), s0, cams, poly, saliency)
