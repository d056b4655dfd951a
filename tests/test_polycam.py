"""The paper's equations against small cases computed by hand (ALGORITHM.md; eq. numbers of the paper)."""
import numpy as np
import pytest
import torch

from polycam_explorer import polycam as P


def test_u_maps_percentiles_to_unit_interval_like_numpy():
    m = torch.arange(100.0).reshape(10, 10)
    lo, hi = np.percentile(m.numpy(), [0.1, 99.9])  # numpy's default (linear) interpolation
    expected = np.clip((m.numpy() - lo) / (hi - lo), 0, 1)
    assert np.allclose(P.unit_normalize(m).numpy(), expected, atol=1e-6)
    assert float(P.unit_normalize(m).max()) == 1.0 and float(P.unit_normalize(m).min()) == 0.0


def test_u_uses_q_hi_minus_q_lo_not_q_hi():
    m = torch.full((4, 4), 10.0)
    m[0, 0], m[3, 3] = 9.0, 11.0
    u = P.unit_normalize(m)
    # q_lo and q_hi sit just inside 9 and 11: the constant 10 maps to the middle, not to ~0.9.
    assert u[1, 1] == pytest.approx(0.5, abs=1e-3)


def test_u_of_constant_map_is_zero_not_nan():
    for value in (0.0, 3.0):
        u = P.unit_normalize(torch.full((2, 3, 3), value))
        assert torch.equal(u, torch.zeros(2, 3, 3))


def test_u_is_per_map_in_a_batch():
    a = torch.arange(16.0).reshape(4, 4)
    batch = torch.stack([a, 5 * a + 2])
    u = P.unit_normalize(batch)
    assert torch.allclose(u[0], u[1], atol=1e-6)


def test_percentiles_match_numpy_on_random_data():
    x = torch.randn(3, 7, 9)
    ours = P.percentiles(x, (0.001, 0.25, 0.999)).numpy()
    ref = np.percentile(x.numpy().reshape(3, -1), [0.1, 25, 99.9], axis=1)
    assert np.allclose(ours, ref, atol=1e-6)


@pytest.mark.parametrize("kind", ["randn", "relu", "ties"])
def test_end_percentiles_from_the_extremes_equal_a_full_sort(kind):
    """u's 0.1th / 99.9th percentiles of large maps come from the few smallest and largest values
    (torch.topk): bit for bit what sorting each map gives, and numpy's values."""
    torch.manual_seed(0)
    x = torch.randn(4, 120, 130)
    x = {"randn": x, "relu": x.clamp(min=0), "ties": x.round()}[kind]
    qs = (0.001, 0.999, 0.0, 1.0)
    flat = torch.sort(x.reshape(4, -1), dim=-1).values
    n = flat.shape[-1]
    expected = []
    for q in qs:
        lo = int(q * (n - 1) // 1)
        hi = min(lo + 1, n - 1)
        expected.append(flat[:, lo] + (flat[:, hi] - flat[:, lo]) * (q * (n - 1) - lo))
    ours = P.percentiles(x, qs)
    assert torch.equal(ours, torch.stack(expected))
    assert np.allclose(ours.numpy(), np.percentile(x.numpy().reshape(4, -1), [0.1, 99.9, 0, 100], axis=1), atol=1e-6)


def test_masks_are_u_then_bilinear_upsampling():
    acts = torch.tensor([[[0.0, 1.0], [1.0, 0.0]]])
    masks = P.activation_masks(acts, (4, 4))
    # align_corners=False: the corner output pixel takes the corner input value.
    assert masks.shape == (1, 4, 4)
    assert masks[0, 0, 0] == pytest.approx(float(P.unit_normalize(acts)[0, 0, 0]))
    # output (1, 1) samples input (0.25, 0.25): 0.75*0.75*0 + 2*(0.75*0.25*1) + 0.25*0.25*0
    assert masks[0, 1, 1] == pytest.approx(0.375, abs=1e-6)


def test_weights_eq_4_5_6_by_hand():
    s0 = torch.tensor([0.6, 0.4])
    sp = torch.tensor([[0.9, 0.1], [0.2, 0.8]])
    sm = torch.tensor([[0.1, 0.9], [0.7, 0.3]])
    assert torch.equal(P.channel_weights("+", s0, sp, sm), sp)
    assert torch.allclose(P.channel_weights("-", s0, sp, sm), torch.tensor([[0.5, 0.0], [0.0, 0.1]]))
    assert torch.allclose(P.channel_weights("+-", s0, sp, sm), torch.tensor([[1.4, 0.0], [0.1, 0.9]]))
    assert torch.equal(P.channel_weights("±", s0, sp, sm), P.channel_weights("+-", s0, sp, sm))


def test_unknown_variant_is_refused_with_the_accepted_ones():
    with pytest.raises(ValueError, match=r"'\+', '-', '\+-'"):
        P.canonical_variant("plus")


def test_layer_cam_eq_2_is_relu_of_weighted_sum():
    acts = torch.tensor([[[1.0, 2.0]], [[3.0, 0.0]]])  # K=2, 1x2
    assert torch.equal(P.layer_cam(acts, torch.tensor([1.0, -1.0])), torch.tensor([[0.0, 2.0]]))
    assert torch.equal(P.layer_cam(acts, torch.tensor([0.5, 1.0])), torch.tensor([[3.5, 1.0]]))


def test_lnorm_at_factor_2_is_the_2x2_block_mean_spread_back():
    cam = torch.rand(8, 8) + 0.1
    block = cam.reshape(4, 2, 4, 2).mean(dim=(1, 3))
    spread = torch.nn.functional.interpolate(block[None, None], size=(8, 8), mode="bilinear",
                                             align_corners=False)[0, 0]
    assert torch.allclose(P.lnorm(cam, (4, 4)), cam / spread, atol=1e-6)


def test_lnorm_of_a_constant_is_one_and_of_zero_is_zero():
    assert torch.allclose(P.lnorm(torch.full((4, 4), 7.0), (2, 2)), torch.ones(4, 4))
    assert torch.equal(P.lnorm(torch.zeros(4, 4), (2, 2)), torch.zeros(4, 4))


def test_recursion_eq_3_by_hand():
    coarse = torch.tensor([[2.0]])  # P_L, 1x1
    fine = torch.tensor([[1.0, 3.0], [0.0, 4.0]])  # CAM_1, 2x2; block mean 2
    p = P.poly_recursion([fine, coarse])
    assert [m.shape for m in p] == [(1, 1), (2, 2)]
    assert torch.equal(p[0], coarse)
    assert torch.allclose(p[1], fine / 2.0 * 2.0)  # LNorm(CAM_1) * upsample(P_2)
    without = P.poly_recursion([fine, coarse], use_lnorm=False)  # eq. 7 ablation
    assert torch.allclose(without[1], fine * 2.0)


def test_recursion_applies_relu_and_upsamples_previous_map():
    cams = [torch.ones(4, 4), torch.tensor([[1.0, 0.0], [0.0, 1.0]])]
    p = P.poly_recursion(cams)
    expected = torch.nn.functional.interpolate(cams[1][None, None], size=(4, 4), mode="bilinear",
                                               align_corners=False)[0, 0]
    assert torch.allclose(p[1], expected)
    assert (p[1] >= 0).all()


def test_display_map_is_u_then_upsampled_to_input():
    p = torch.arange(16.0).reshape(4, 4)
    out = P.display_map(p, (8, 12))
    assert out.shape == (8, 12) and 0 <= float(out.min()) and float(out.max()) <= 1
    assert torch.allclose(out, P.resize(P.unit_normalize(p), (8, 12)))
