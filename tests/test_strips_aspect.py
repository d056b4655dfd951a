"""The recursion strip and the sanity strip keep the photo's aspect ratio (issue 10, section 3):
a map computed at the model's square input is shown on the photo's frame, never squashed."""
from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

import polycam_explorer as pe
from polycam_explorer import render
from polycam_explorer.explorer import frames
from polycam_explorer.explorer.views.recursion import STRIP_PAD, STRIP_TILE
from polycam_explorer.robustness import cascading_randomization, randomization_strip

LANDSCAPE, PORTRAIT = (266, 400), (400, 266)  # H, W


def halves(size: tuple[int, int]) -> np.ndarray:
    """A photo black on its left half and white on its right half."""
    photo = np.zeros((*size, 3), np.uint8)
    photo[:, size[1] // 2:] = 255
    return photo


def explorer_of(tiny_model, photo: np.ndarray, **kwargs) -> pe.Explorer:
    ms = pe.compute_mapset(tiny_model, pe.load_image(photo, tiny_model), progress=False)
    ex = pe.Explorer({}, size=96, **kwargs)
    ex.store.add_mapset("photo", ms, show=True, picture=photo)
    return ex


def tile_width(strip: np.ndarray, n: int) -> float:
    return (strip.shape[1] - STRIP_PAD) / n - STRIP_PAD


@pytest.mark.parametrize("size", [LANDSCAPE, PORTRAIT])
def test_recursion_strip_thumbnails_have_the_photos_aspect_ratio(tiny_model, size):
    photo = halves(size)
    ex = explorer_of(tiny_model, photo)
    try:
        strip, ms = ex.strip.pixels, ex.store.mapset("photo")
        h, w = strip.shape[0] - 2 * STRIP_PAD, tile_width(strip, len(ms.layers))
        assert max(h, w) == STRIP_TILE
        assert abs(w - h * size[1] / size[0]) <= 1  # the photo's aspect ratio, within a pixel
        # the whole map lies on the whole thumbnail: nearest samples of the 16 x 16 map onto h x w
        picture = ex.store.picture("photo", frames.full_resolution(ms.size, size).work_size)
        rows, cols = frames.nearest_indices(picture.shape[:2], (h, int(w)))
        mrows, mcols = frames.nearest_indices(ms.size, (h, int(w)))
        for depth in (1, 2, 3):
            x = STRIP_PAD + (depth - 1) * (int(w) + STRIP_PAD)
            expected = render.overlay(picture[rows, cols], ms.saliency(3, "+-", depth).numpy()[mrows, mcols],
                                      "turbo", 0.6)
            assert np.array_equal(strip[STRIP_PAD:STRIP_PAD + h, x:x + int(w)], expected)
        # the photo is not squashed: its black/white edge sits at the thumbnail's middle column
        grey = render.grey(picture[rows, cols])[..., 0]
        assert (grey[:, : int(w) // 2 - 1] < 128).all() and (grey[:, int(w) // 2 + 1:] > 127).all()
    finally:
        ex.close()


@pytest.mark.parametrize("depth", [1, 2, 3])
def test_a_click_on_a_narrow_thumbnail_picks_its_depth(tiny_model, depth):
    ex = explorer_of(tiny_model, halves(PORTRAIT))  # thumbnails 72 high, 48 wide
    try:
        w = round(STRIP_TILE * PORTRAIT[1] / PORTRAIT[0])
        left = STRIP_PAD + (depth - 1) * (w + STRIP_PAD)
        for x in (left + 1, left + w // 2, left + w - 2):
            ex.state.depth = 3 if depth == 1 else 1
            ex.recursion.click(x, STRIP_TILE // 2)
            assert ex.state.depth == depth, f"click at x={x}"
        ex.state.depth = 2
        ex.recursion.click(STRIP_PAD + 3 * (w + STRIP_PAD) + 5, 10)  # beyond the last thumbnail
        assert ex.state.depth == 2
    finally:
        ex.close()


def gradient(model, x, c):
    x = x.clone().requires_grad_(True)
    model(x)[0, c].backward()
    return x.grad[0].abs().sum(0)


def test_randomization_strip_tiles_take_the_frames_aspect_ratio(tiny_model, tiny_x):
    steps = cascading_randomization(tiny_model, tiny_x, 1, gradient)
    image = render.image_uint8(tiny_x, tiny_model.mean, tiny_model.std)
    strip = randomization_strip(steps, image, tile=64, frame=LANDSCAPE)
    width, caption, pad = round(64 * 400 / 266), 26, 4
    assert strip.shape == (64 + caption + 2 * pad, (len(steps) + 1) * (width + pad) + pad, 3)
    assert abs(width / 64 - 400 / 266) <= 1 / 64
    o = steps[0].original
    tile = render.overlay(image, (o - o.min()) / (o.max() - o.min()))
    expected = np.asarray(Image.fromarray(tile).resize((width, 64), Image.BILINEAR)).astype(int)
    assert np.abs(strip[pad:pad + 64, pad:pad + width].astype(int) - expected).max() <= 1
    with pytest.raises(ValueError, match="frame"):
        randomization_strip(steps, image, frame=(0, 5))


def test_sanity_tab_strip_has_the_photos_aspect_ratio(tiny_model):
    ex = explorer_of(tiny_model, halves(LANDSCAPE), model=tiny_model)
    try:
        ex.sanity.compute(block=True)
        with Image.open(io.BytesIO(ex.sanity.strip.value)) as im:
            strip = np.asarray(im.convert("RGB"))
        steps = len(ex.sanity.cache[next(iter(ex.sanity.cache))])
        tile_h, pad, caption = 112, 4, 26
        tile_w = (strip.shape[1] - pad) / (steps + 1) - pad
        assert strip.shape[0] == tile_h + caption + 2 * pad
        assert abs(tile_w - tile_h * LANDSCAPE[1] / LANDSCAPE[0]) <= 1
    finally:
        ex.close()
