"""What a panel shows, as pure functions: frames for every mode, colour scales, zoom, pixel look-up,
and the teaching view's recursion step."""
import numpy as np
import pytest
import torch

from polycam_explorer import polycam, render
from polycam_explorer.explorer import frames
from polycam_explorer.explorer.frames import Look, Panel


def _picture(x: torch.Tensor) -> np.ndarray:
    """De-normalise by hand (the tiny model uses mean 0.5, std 0.5)."""
    rgb = (x[0] * 0.5 + 0.5).clamp(0, 1).permute(1, 2, 0).numpy()
    return (rgb * 255.0 + 0.5).astype(np.uint8)


@pytest.mark.parametrize("mode", frames.MODES)
def test_every_mode_gives_rgb_uint8_of_the_image_size(ms, mode):
    pixels = frames.frame(ms, Panel(1, "-", 2, False), Look(mode=mode, cmap="viridis", opacity=0.3))
    assert pixels.shape == (16, 16, 3) and pixels.dtype == np.uint8


def test_unknown_mode_is_refused(ms):
    with pytest.raises(ValueError, match="mode"):
        frames.frame(ms, Panel(0), Look(mode="sparkles"))


def test_original_is_the_denormalised_image(ms, tiny_x):
    pixels = frames.frame(ms, Panel(3, "+", 1), Look(mode="original", opacity=1.0))
    assert np.array_equal(pixels, _picture(tiny_x))


def test_heatmap_is_the_coloured_saliency_of_the_panel(ms):
    panel = Panel(4, "-", 2, lnorm=False)
    pixels = frames.frame(ms, panel, Look(mode="heatmap", cmap="magma"))
    assert np.array_equal(pixels, render.heatmap(ms.saliency(4, "-", 2, lnorm=False), "magma"))
    # another depth is another map: the frame follows the panel
    deeper = frames.frame(ms, Panel(4, "-", 3, lnorm=False), Look(mode="heatmap", cmap="magma"))
    assert not np.array_equal(pixels, deeper)


def test_masked_is_image_times_map(ms, tiny_x):
    s = ms.saliency(0, "+-", 3).numpy()
    expected = (_picture(tiny_x).astype(np.float32) * s[..., None] + 0.5).astype(np.uint8)
    assert np.array_equal(frames.frame(ms, Panel(0, "+-", 3), Look(mode="masked")), expected)


def test_overlay_blends_heatmap_over_image_with_opacity(ms, tiny_x):
    heat = render.heatmap(ms.saliency(4, "+", 3), "turbo").astype(np.float32)
    expected = (0.7 * _picture(tiny_x) + 0.3 * heat + 0.5).astype(np.uint8)
    got = frames.frame(ms, Panel(4, "+", 3), Look(mode="overlay", opacity=0.3))
    assert np.abs(got.astype(int) - expected.astype(int)).max() <= 1
    assert np.array_equal(frames.frame(ms, Panel(4, "+", 3), Look(mode="overlay", opacity=0.0)), _picture(tiny_x))


def test_contrast_of_a_class_against_itself_is_the_grey_photo(ms, tiny_x):
    # equal maps: nothing is tinted, at any opacity (the contrast view's alpha follows |A - B|)
    grey = render.grey(_picture(tiny_x))
    assert (grey[..., 0] == grey[..., 2]).all() and (grey[..., 1] == grey[..., 2]).all()
    for opacity in (1.0, 0.4):
        shown = frames.frame(ms, Panel(3, "+-", 3, other_class=3), Look(mode="contrast", opacity=opacity))
        assert np.array_equal(shown, grey)


def test_contrast_against_another_class_is_red_where_the_class_wins(ms):
    mine, theirs = ms.saliency(4, "-", 3), ms.saliency(1, "-", 3)
    pixels = frames.frame(ms, Panel(4, "-", 3, other_class=1), Look(mode="contrast", opacity=1.0)).astype(int)
    wins, loses = (mine - theirs > 0.5).numpy(), (theirs - mine > 0.5).numpy()
    assert wins.any() and loses.any()
    assert (pixels[wins][:, 0] > pixels[wins][:, 2]).all()
    assert (pixels[loses][:, 2] > pixels[loses][:, 0]).all()
    # without an explicit other class, the runner-up is the one compared against
    assert np.array_equal(frames.frame(ms, Panel(3, "+-", 3), Look(mode="contrast")),
                          frames.frame(ms, Panel(3, "+-", 3, other_class=ms.topk(2)[1][0]), Look(mode="contrast")))


def test_insertion_deletion_colour_corners():
    zero, one = np.zeros((1, 1)), np.ones((1, 1))
    assert insertion_deletion(zero, zero) == (0, 0, 0)  # neither: black
    r, g, b = insertion_deletion(one, zero)  # PCAM+ only: red-ish
    assert r == 255 and g == 0 and b < 100
    r, g, b = insertion_deletion(zero, one)  # PCAM- only: green-ish
    assert g == 255 and r == 0 and b < 100
    r, g, b = insertion_deletion(one, one)  # both: bright
    assert r == g == 255 and b >= 100
    # values outside [0, 1] are clipped
    assert insertion_deletion(-one, 2 * one) == insertion_deletion(zero, one)


def insertion_deletion(plus, minus):
    return tuple(int(v) for v in frames.insertion_deletion_colors(plus, minus)[0, 0])


def test_legend_corners_match_its_axes():
    legend = frames.legend_2d(8).astype(int)
    assert legend.shape == (8, 8, 3)
    assert tuple(legend[-1, 0]) == (0, 0, 0)  # bottom left: neither
    assert tuple(legend[-1, -1])[:2] == (255, 0)  # PCAM+ grows to the right
    assert tuple(legend[0, 0])[:2] == (0, 255)  # PCAM- grows upwards
    assert tuple(legend[0, -1])[:2] == (255, 255)


def test_ins_vs_del_view_colours_plus_and_minus_maps(ms):
    pixels = frames.frame(ms, Panel(1, "+-", 2), Look(mode="ins-vs-del", opacity=1.0))
    expected = frames.insertion_deletion_colors(ms.saliency(1, "+", 2).numpy(), ms.saliency(1, "-", 2).numpy())
    assert np.array_equal(pixels, expected)


def test_zoom_and_fit_crops_then_scales():
    pixels = np.arange(4 * 6 * 3, dtype=np.uint8).reshape(4, 6, 3)
    out = frames.zoom_and_fit(pixels, (1, 2, 3, 5), (4, 6))
    crop = pixels[1:3, 2:5]
    assert out.shape == (4, 6, 3) and out.dtype == np.uint8
    assert np.array_equal(out, crop.repeat(2, axis=0).repeat(2, axis=1))
    # no zoom, same size: the same pixels; no zoom, 3x: nearest neighbour blocks
    assert np.array_equal(frames.zoom_and_fit(pixels, None, (4, 6)), pixels)
    assert np.array_equal(frames.zoom_and_fit(pixels, None, (12, 18)), pixels.repeat(3, 0).repeat(3, 1))
    # a crop shown at its own size is the crop
    assert np.array_equal(frames.zoom_and_fit(pixels, (0, 1, 2, 4), (2, 3)), pixels[0:2, 1:4])


def test_fitted_size_keeps_the_aspect_ratio():
    assert render.fitted_size((16, 16), 64) == (64, 64)
    assert render.fitted_size((10, 20), 64) == (32, 64)
    assert render.fitted_size((30, 10), 60) == (60, 20)


def test_image_pixel_without_zoom():
    size, shown = (16, 16), (64, 64)  # 4 canvas pixels per image pixel
    assert frames.image_pixel(size, shown, None, 0, 0) == (0, 0)
    assert frames.image_pixel(size, shown, None, 9, 45) == (11, 2)  # (row, col) from (x, y)
    assert frames.image_pixel(size, shown, None, 3.99, 4.0) == (1, 0)
    assert frames.image_pixel(size, shown, None, 63.9, 63.9) == (15, 15)
    assert frames.image_pixel((10, 20), (32, 64), None, 63, 31) == (9, 19)
    for x, y in ((-1, 5), (5, -0.5), (64, 5), (5, 64), (100, 100)):
        assert frames.image_pixel(size, shown, None, x, y) is None


def test_image_pixel_with_zoom():
    zoom = (4, 8, 8, 16)  # 4 rows x 8 columns, shown at 32 x 64: 8 canvas pixels per image pixel
    assert frames.image_pixel((16, 16), (32, 64), zoom, 0, 0) == (4, 8)
    assert frames.image_pixel((16, 16), (32, 64), zoom, 10, 10) == (5, 9)
    assert frames.image_pixel((16, 16), (32, 64), zoom, 63, 31) == (7, 15)
    assert frames.image_pixel((16, 16), (32, 64), zoom, 64, 10) is None
    assert frames.image_pixel((16, 16), (32, 64), zoom, 10, 32) is None


@pytest.mark.parametrize("variant", ["+", "-", "+-"])
@pytest.mark.parametrize("depth", [2, 3])
def test_teaching_step_is_one_step_of_the_recursion(ms, variant, depth):
    steps = frames.teaching_step(ms, Panel(2, variant, depth, True))
    assert len(steps) == 4 and all(isinstance(c, str) and c for c, _ in steps)
    (_, cam), (_, local), (_, up), (_, product) = steps
    index = len(ms.layers) - depth
    assert ms.layers[index] in steps[0][0]
    assert torch.equal(cam, ms.layer_cam(2, variant, index))
    assert tuple(cam.shape) == tuple(ms.activations[index].shape[-2:])
    previous = ms.poly_maps(2, variant, True)[depth - 2]
    assert torch.equal(up, polycam.resize(previous, cam.shape[-2:]))
    assert torch.equal(local, polycam.lnorm(cam, previous.shape[-2:]))
    assert torch.equal(product, torch.relu(local * up))
    # and the product is the P map the explorer shows at that depth
    assert torch.equal(product, ms.poly_maps(2, variant, True)[depth - 1])


def test_teaching_step_without_lnorm_uses_the_cam_itself(ms):
    steps = frames.teaching_step(ms, Panel(0, "+-", 3, lnorm=False))
    (_, cam), (_, local), (_, up), (_, product) = steps
    assert torch.equal(local, cam)
    assert torch.equal(up, polycam.resize(ms.poly_maps(0, "+-", False)[1], cam.shape[-2:]))
    assert torch.equal(product, torch.relu(cam * up))
    assert torch.equal(product, ms.poly_maps(0, "+-", False)[2])
    assert "no LNorm" in steps[1][0]


def test_teaching_step_needs_depth_two(ms):
    with pytest.raises(ValueError, match="depth"):
        frames.teaching_step(ms, Panel(0, "+", 1))
