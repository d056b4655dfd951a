"""The engine against a plain, independent Poly-CAM written from ALGORITHM.md (reference_polycam.py).

Equation numbers are the paper's: [1] LNorm, [2] the per-layer CAM, [3] the backward recursion,
[4]-[6] the channel weights (CIC -> PCAM+, CDC -> PCAM-, CVC -> PCAM±).

Only the public API is used: ``pe.compute_mapset`` and ``MapSet.probs / layers / scores /
poly_maps / saliency / layer_cam / topk / stats``.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pytest
import torch
from torch import nn

import polycam_explorer as pe
import reference_polycam as ref
from conftest import TINY_LAYERS, TinyNet

TINY_CLASSES = range(5)
RTOL_MAP = 1e-5  # maps: max |engine - reference| <= RTOL_MAP * max |reference|
ATOL_SALIENCY = 1e-5  # u-normalised maps live in [0, 1]


# ----- helpers ---------------------------------------------------------------------------------
def net_of(model: nn.Module) -> nn.Module:
    """The bare network whose module names are the layer names."""
    return getattr(model, "net", model)


def assert_close_to_scale(got: torch.Tensor, want: torch.Tensor, what: str, rtol: float = RTOL_MAP) -> None:
    """``max|got - want| <= rtol * max|want|`` (an all-zero reference must be matched exactly)."""
    assert tuple(got.shape) == tuple(want.shape), f"{what}: shape {tuple(got.shape)} != {tuple(want.shape)}"
    got64 = got.detach().cpu().double()
    scale = float(want.abs().max())
    err = float((got64 - want).abs().max())
    assert err <= rtol * scale + 1e-30, f"{what}: max error {err:.3g} for a map of scale {scale:.3g}"


def pearson(a: torch.Tensor, b: torch.Tensor) -> float:
    x = a.detach().cpu().double().flatten().numpy()
    y = b.detach().cpu().double().flatten().numpy()
    return float(np.corrcoef(x, y)[0, 1])


def reference_scores(net: nn.Module, x: torch.Tensor, layers: Sequence[str]
                     ) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The plain per-channel probes ``(S+_l, S-_l)`` of every layer, fine -> coarse."""
    return [ref.probe_scores(net, x, a) for a in ref.activations(net, x, layers)]


# ----- 1. the conftest tiny model: every class, variant, depth and LNorm setting ----------------
@pytest.fixture
def tiny_mapset(tiny_model: pe.Classifier, tiny_x: torch.Tensor) -> pe.MapSet:
    ms = pe.compute_mapset(tiny_model, tiny_x, layers=TINY_LAYERS, progress=False)
    assert ms.layers == TINY_LAYERS
    return ms


def test_tiny_probe_scores_match_plain_probes(tiny_model, tiny_x, tiny_mapset):
    """``s0``, ``S+_l[k] = f(X * M_l^k)`` and ``S-_l[k] = f(X * (1 - M_l^k))``, one channel at a time.

    The engine's u() runs in float32, the reference's in float64, so a mask may differ in its
    last bit: the scores must agree to a few float32 ulps.
    """
    net = net_of(tiny_model)
    assert torch.allclose(tiny_mapset.probs, ref.f(net, tiny_x), rtol=0, atol=1e-7)
    for layer, (s_plus, s_minus) in zip(TINY_LAYERS, reference_scores(net, tiny_x, TINY_LAYERS)):
        e_plus, e_minus = tiny_mapset.scores(layer)
        assert e_plus.shape == s_plus.shape and e_minus.shape == s_minus.shape
        assert float((e_plus - s_plus).abs().max()) <= 1e-6, layer
        assert float((e_minus - s_minus).abs().max()) <= 1e-6, layer


@pytest.mark.parametrize("lnorm", [True, False], ids=["lnorm", "no-lnorm"])
@pytest.mark.parametrize("variant", ref.VARIANTS)
def test_tiny_maps_match_reference(tiny_model, tiny_x, tiny_mapset, variant, lnorm):
    """Every depth's ``P_l`` (eq. [3], or eq. 7 without LNorm [1]), its saliency ``u(P)`` at H x W,
    and every isolated ``CAM_l`` (eq. [2]) with weights [4]-[6] equal the plain reference.

    The probe scores were checked against plain probes above (to float32 ulps); the reference
    computes the maps from the engine's scores so that those ulps are not amplified by the
    PCAM- weights ``s0 - S-`` (differences of ~1e-5 between near-equal probabilities on this
    random net), and the map arithmetic is compared at 1e-5 of each map's scale.
    """
    net = net_of(tiny_model)
    scores = [tiny_mapset.scores(layer) for layer in TINY_LAYERS]
    for c in TINY_CLASSES:
        want = ref.polycam(net, tiny_x, TINY_LAYERS, c, variant, lnorm, scores=scores)
        got = tiny_mapset.poly_maps(c, variant, lnorm)
        assert len(got) == len(TINY_LAYERS)
        for depth in range(1, len(TINY_LAYERS) + 1):
            what = f"class {c}, {variant}, lnorm={lnorm}, depth {depth}"
            assert_close_to_scale(got[depth - 1], want.poly[depth - 1], f"P map, {what}")
            sal = tiny_mapset.saliency(c, variant, depth, lnorm=lnorm)
            assert tuple(sal.shape) == (16, 16)
            err = float((sal.double() - want.saliency[depth - 1]).abs().max())
            assert err <= ATOL_SALIENCY, f"saliency, {what}: max error {err:.3g}"
        for index, layer in enumerate(TINY_LAYERS):
            assert_close_to_scale(tiny_mapset.layer_cam(c, variant, layer), want.cams[index],
                                  f"CAM of {layer}, class {c}, {variant}")
    # The maps are not all trivial: the comparison has something to compare.
    assert any(float(m.max()) > 0 for m in tiny_mapset.poly_maps(0, variant, lnorm))


@pytest.mark.parametrize("variant", ref.VARIANTS)
def test_tiny_end_to_end_independent(tiny_model, tiny_x, tiny_mapset, variant):
    """Fully independent: the reference runs its own probes, then eq. [1]-[6]; shown maps agree.

    A score ulp can move a small PCAM- weight by ~1e-3 relatively, so the criterion is on the
    shown (u-normalised) maps: Pearson r >= 0.9999 and max abs difference <= 1e-3.
    """
    net = net_of(tiny_model)
    for lnorm in (True, False):
        for c in TINY_CLASSES:
            want = ref.polycam(net, tiny_x, TINY_LAYERS, c, variant, lnorm)
            for depth in range(1, len(TINY_LAYERS) + 1):
                got = tiny_mapset.saliency(c, variant, depth, lnorm=lnorm).double()
                exp = want.saliency[depth - 1]
                what = f"class {c}, {variant}, lnorm={lnorm}, depth {depth}"
                assert float((got - exp).abs().max()) <= 1e-3, what
                if float(exp.std()) > 1e-6:
                    assert pearson(got, exp) >= 0.9999, what


# ----- 2. zero, constant and duplicate channels: exact shortcuts ---------------------------------
CAP = 0.25  # a power of two: u(A) = A / CAP is exact in float32 and float64 alike


class Saturate(nn.Module):
    """``clamp(x, 0, CAP)``, then channel ``dst`` := channel ``src`` for each pair (exact duplicates).

    Duplicates are made here rather than by copying conv weights: a convolution may sum two
    output channels with identical weights in different orders, giving different last bits.
    """

    def __init__(self, duplicates: dict[int, int] | None = None) -> None:
        super().__init__()
        self.duplicates = dict(duplicates or {})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.clamp(x, 0.0, CAP)
        if self.duplicates:
            y = y.clone()
            for dst, src in self.duplicates.items():
                y[:, dst] = y[:, src]
        return y


def edge_case_net() -> nn.Module:
    """TinyNet (seed 10) with saturating activations, zero, constant and duplicate channels.

    - ``features.1`` (4 ch): ch 2 identically zero, ch 3 a duplicate of ch 0.
    - ``features.3`` (6 ch): ch 5 identically zero, ch 4 a duplicate of ch 1.
    - ``features`` (8 ch): ch 7 identically zero, ch 5 constant CAP (u all zero, yet A != 0),
      ch 6 a duplicate of ch 0.
    Conv weights x 8 and zero biases make every other channel reach both 0 and CAP at least
    twice, so its 0.1 / 99.9 percentiles are exactly 0 and CAP (checked by the fixture): the
    reference's float64 masks are then bitwise the engine's float32 masks.
    """
    net = TinyNet(seed=10)
    f = net.features
    f[1] = Saturate({3: 0})
    f[3] = Saturate({4: 1})
    f[5] = Saturate({6: 0})
    with torch.no_grad():
        for i in (0, 2, 4):
            f[i].weight.mul_(8.0)
            f[i].bias.zero_()
        for conv, zero in ((f[0], 2), (f[2], 5), (f[4], 7)):
            conv.weight[zero] = 0.0
            conv.bias[zero] = -1.0
        f[4].weight[5] = 0.0
        f[4].bias[5] = 1.0
    return net.eval()


def exact_percentiles(a: torch.Tensor) -> bool:
    """True when u(A) = A / CAP exactly: two zeros at the bottom and two CAPs at the top."""
    v = a.flatten().sort().values
    return bool(v[0] == v[-1] or (v[0] == 0 and v[1] == 0 and v[-2] == CAP and v[-1] == CAP))


@pytest.fixture
def edge_case(tiny_x):
    net = edge_case_net()
    acts = ref.activations(net, tiny_x, TINY_LAYERS)
    for layer, a in zip(TINY_LAYERS, acts):
        assert all(exact_percentiles(a[k]) for k in range(a.shape[0])), f"precondition broken in {layer}"
    return net, acts


def test_edge_case_channels_are_what_they_claim(edge_case):
    """The fixture has identically-zero, constant and duplicate channels (the cases under test)."""
    _, (a1, a3, a5) = edge_case
    assert torch.equal(a1[2], torch.zeros_like(a1[2])) and torch.equal(a1[3], a1[0])
    assert torch.equal(a3[5], torch.zeros_like(a3[5])) and torch.equal(a3[4], a3[1])
    assert torch.equal(a5[7], torch.zeros_like(a5[7])) and torch.equal(a5[6], a5[0])
    assert torch.equal(a5[5], torch.full_like(a5[5], CAP))
    assert torch.equal(ref.unit(a5[5]), torch.zeros(a5.shape[1:], dtype=torch.float64))


def test_shortcuts_are_exact_and_save_passes(edge_case, tiny_x):
    """With batch 1, S+ and S- are bitwise the plain per-channel probes: skipping duplicate masks
    and sharing ``f(0)`` / ``s0`` for all-zero masks changes nothing; and it saves passes.
    """
    net, acts = edge_case
    ms = pe.compute_mapset(net, tiny_x, layers=TINY_LAYERS, batch_size=1, progress=False)
    assert torch.equal(ms.probs, ref.f(net, tiny_x))
    for layer, (s_plus, s_minus) in zip(TINY_LAYERS, reference_scores(net, tiny_x, TINY_LAYERS)):
        e_plus, e_minus = ms.scores(layer)
        assert torch.equal(e_plus, s_plus), f"S+ of {layer}: max diff {float((e_plus - s_plus).abs().max()):.3g}"
        assert torch.equal(e_minus, s_minus), f"S- of {layer}: max diff {float((e_minus - s_minus).abs().max()):.3g}"

    # Distinct non-zero masks, counted by the reference: each needs one insertion and one
    # deletion pass; all-zero masks share f(0) (one pass) and s0 (already known).
    distinct = 0
    for a in acts:
        masks = [ref.unit(a[k]) for k in range(a.shape[0])]
        kept: list[torch.Tensor] = []
        for m in masks:
            if bool(m.ne(0).any()) and not any(torch.equal(m, k) for k in kept):
                kept.append(m)
        distinct += len(kept)
    channels = sum(a.shape[0] for a in acts)
    assert distinct < channels - 4  # 3 zero + 1 constant + 3 duplicates among 18 channels
    assert ms.stats["naive_passes"] == 2 * channels
    assert ms.stats["forward_passes"] < ms.stats["naive_passes"] + 1
    assert ms.stats["forward_passes"] == 2 * distinct + 1


def test_shortcuts_with_batches_match_plain_probes_to_ulps(edge_case, tiny_x):
    """With batches of 64 the same scores, to float32 rounding (batched passes round differently)."""
    net, _ = edge_case
    ms = pe.compute_mapset(net, tiny_x, layers=TINY_LAYERS, batch_size=64, progress=False)
    for layer, (s_plus, s_minus) in zip(TINY_LAYERS, reference_scores(net, tiny_x, TINY_LAYERS)):
        e_plus, e_minus = ms.scores(layer)
        assert float((e_plus - s_plus).abs().max()) <= 1e-6, layer
        assert float((e_minus - s_minus).abs().max()) <= 1e-6, layer
    assert ms.stats["forward_passes"] < ms.stats["naive_passes"] + 1


@pytest.mark.parametrize("variant", ref.VARIANTS)
def test_edge_case_maps_match_reference(edge_case, tiny_x, variant):
    """End to end, fully independent (own probes): P maps [3] (with and without LNorm [1]),
    saliency and CAM_l [2] with weights [4]-[6] at 1e-5 of scale, every class and depth.

    Batch 1, where the scores are bitwise equal (above): with larger batches the forward passes
    round differently in the last bit, which the small PCAM- weights ``s0 - S-`` amplify.

    A zero channel contributes nothing whatever its weight; a constant channel has an all-zero
    mask but still enters CAM_l with its weight (from f(0) and s0).
    """
    net, _ = edge_case
    ms = pe.compute_mapset(net, tiny_x, layers=TINY_LAYERS, batch_size=1, progress=False)
    for lnorm in (True, False):
        for c in TINY_CLASSES:
            want = ref.polycam(net, tiny_x, TINY_LAYERS, c, variant, lnorm)
            got = ms.poly_maps(c, variant, lnorm)
            for depth in range(1, len(TINY_LAYERS) + 1):
                what = f"class {c}, {variant}, lnorm={lnorm}, depth {depth}"
                assert_close_to_scale(got[depth - 1], want.poly[depth - 1], f"P map, {what}")
                err = float((ms.saliency(c, variant, depth, lnorm=lnorm).double()
                             - want.saliency[depth - 1]).abs().max())
                assert err <= ATOL_SALIENCY, f"saliency, {what}: max error {err:.3g}"
            for index, layer in enumerate(TINY_LAYERS):
                assert_close_to_scale(ms.layer_cam(c, variant, layer), want.cams[index],
                                      f"CAM of {layer}, class {c}, {variant}")


# ----- 3. the embedded EfficientNet-Lite0 on the sample cat, reduced size ------------------------
REAL_LAYERS = ["blocks.1", "blocks.2"]
REAL_SIZE = 64


def test_real_model_matches_reference(default_model, sample):
    """EfficientNet-Lite0, chelsea at 64 x 64, layers blocks.1 / blocks.2 (24 and 40 channels):
    the engine's saliency (default batching) vs the fully independent reference, r >= 0.9999 for
    every variant and depth of the top class (and max |diff| <= 1e-3). These layers are not post-ReLU, so u()'s q_lo != 0
    (the paper's ``q_hi - q_lo``) and CAM_l's ReLU [2] both matter here. About 2 s on 2 idle
    CPU cores (the reference probes 128 masks one image at a time, once for all variants).
    """
    x = pe.load_image(sample("chelsea"), default_model, size=REAL_SIZE)
    ms = pe.compute_mapset(default_model, x, layers=REAL_LAYERS, progress=False)
    net = net_of(default_model)
    top = ms.topk(1)[0][0]
    scores = reference_scores(net, x, REAL_LAYERS)  # the reference's own plain probes, run once
    for variant in ref.VARIANTS:
        want = ref.polycam(net, x, REAL_LAYERS, top, variant, True, scores=scores)
        assert torch.allclose(ms.probs, want.s0, rtol=0, atol=1e-5)
        for depth in range(1, len(REAL_LAYERS) + 1):
            got = ms.saliency(top, variant, depth)
            assert tuple(got.shape) == (REAL_SIZE, REAL_SIZE)
            exp = want.saliency[depth - 1]
            assert float(exp.std()) > 1e-3, f"{variant}, depth {depth}: a flat reference map"
            r = pearson(got, exp)
            print(f"{variant} depth {depth}: r = {r:.8f}, max |diff| = {float((got.double() - exp).abs().max()):.2e}")
            assert r >= 0.9999, f"{variant}, depth {depth}: r = {r:.6f}"
            assert float((got.double() - exp).abs().max()) <= 1e-3, f"{variant}, depth {depth}"
