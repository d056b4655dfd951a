"""Geometry and colour scales (issue 10, section 3): photos keep their aspect ratio in the explorer
and in ``explain``; a colorbar beside the overlay and heatmap views and in exports; the layout
does not move when the view changes."""
import json
import re

import numpy as np
import pytest
import torch
from PIL import Image

import polycam_explorer as pe
from polycam_explorer import cli, render
from polycam_explorer.explorer import frames
from polycam_explorer.explorer.frames import Look, Panel

PANEL = 200  # the longest side of a panel on screen
PHOTO = (266, 400)  # H, W of the photo (the tiny model sees it as 16 x 16)


@pytest.fixture
def photo() -> np.ndarray:
    g = np.random.default_rng(0)
    return g.integers(0, 256, (*PHOTO, 3), dtype=np.uint8)


@pytest.fixture
def ms(tiny_model, photo):
    return pe.compute_mapset(tiny_model, pe.load_image(photo, tiny_model), progress=False)


@pytest.fixture
def explorer(ms, photo, tmp_path):
    ex = pe.Explorer({}, size=PANEL, export_dir=tmp_path / "exports")
    ex.store.add_mapset("photo", ms, show=True, picture=photo)
    yield ex
    ex.close()


def centre_of_mass(values) -> tuple[float, float]:
    v = np.asarray(values, dtype=np.float64)
    rows, cols = np.mgrid[0:v.shape[0], 0:v.shape[1]]
    return (((rows + 0.5) * v).sum() / v.sum() / v.shape[0], ((cols + 0.5) * v).sum() / v.sum() / v.shape[1])


# ----- geometry -----------------------------------------------------------------------------------
def test_a_photo_is_shown_at_its_own_aspect_ratio(explorer, ms):
    assert ms.size == (16, 16) and explorer.store.frame_size("photo") == PHOTO
    h, w = explorer.canvases[0].size
    assert max(h, w) == PANEL and abs(w * PHOTO[0] / PHOTO[1] - h) <= 1  # 400:266 within a pixel
    assert explorer.canvases[0].pixels.shape == (h, w, 3)


def test_without_a_photo_the_map_set_shows_as_before(ms, tmp_path):
    ex = pe.Explorer(ms, size=64, export_dir=tmp_path)
    try:
        assert ex.canvases[0].size == (64, 64)
        expected = frames.zoom_and_fit(frames.frame(ms, ex.main_panel(), Look()), None, (64, 64))
        assert np.array_equal(ex.canvases[0].pixels, expected)
    finally:
        ex.close()


def test_the_map_lands_where_it_was_computed(explorer, ms):
    explorer.state.mode = "heatmap"
    explorer.state.cmap = "gray"
    panel = explorer.main_panel()
    values = frames.panel_map(ms, panel)
    shown = explorer.canvases[0].pixels[..., 0].astype(np.float64) / 255.0
    assert shown.shape[1] > shown.shape[0]  # the photo's frame, not a square
    assert centre_of_mass(shown) == pytest.approx(centre_of_mass(values), abs=0.02)


def test_the_map_is_resized_bilinearly_onto_the_frame(ms):
    geo = frames.geometry(ms.size, PHOTO, PANEL)
    values = frames.panel_map(ms, Panel(0))
    expected = torch.nn.functional.interpolate(values[None, None].float(), size=geo.work_size, mode="bilinear",
                                               align_corners=False)[0, 0].numpy()
    assert np.allclose(frames.shown_map(values, geo), expected)
    pixels = frames.frame(ms, Panel(0), Look(mode="heatmap"), size=geo.work_size)
    assert np.array_equal(pixels, render.heatmap(expected, "turbo"))


def _hovered(explorer):
    m = re.search(r"row (\d+), col (\d+)\): saliency (-?\d+\.\d+)", explorer.hover.value)
    assert m, explorer.hover.value
    return int(m.group(1)), int(m.group(2)), float(m.group(3))


@pytest.mark.parametrize("fx, fy", [(0.1, 0.2), (0.5, 0.5), (0.9, 0.75)])
def test_hover_reports_the_photo_pixel_and_the_value_shown(explorer, ms, fx, fy):
    h, w = explorer.canvases[0].size
    x, y = fx * w, fy * h
    explorer.main.hover_at(0, x, y)
    row, col, value = _hovered(explorer)
    assert abs(row - fy * PHOTO[0]) <= 2 and abs(col - fx * PHOTO[1]) <= 2
    geo = explorer.main.geometry()
    shown = frames.shown_map(frames.panel_map(ms, explorer.main_panel()), geo)
    r, c = int(y * geo.work_size[0] / h), int(x * geo.work_size[1] / w)
    assert value == pytest.approx(float(shown[r, c]), abs=5e-4)


def test_zoom_and_drag_use_the_frame_drawn(explorer, ms):
    h, w = explorer.canvases[0].size
    explorer.canvases[0]._down(0, 0)
    explorer.canvases[0]._up(w / 2, h / 2)  # the top-left quarter of the photo
    top, left, bottom, right = explorer.zoom  # in map pixels (16 x 16)
    assert (top, left) == (0, 0) and 7 <= bottom <= 9 and 7 <= right <= 9
    zh, zw = explorer.canvases[0].size
    assert max(zh, zw) == PANEL and abs(zw / zh - PHOTO[1] / PHOTO[0]) < 0.05  # still the photo's shape
    explorer.main.hover_at(0, zw - 1, zh - 1)  # the zoomed canvas's corner: the box's corner in the photo
    row, col, _ = _hovered(explorer)
    assert abs(row - bottom / 16 * PHOTO[0]) <= PHOTO[0] / 16 and abs(col - right / 16 * PHOTO[1]) <= PHOTO[1] / 16


def test_export_is_the_canvas_at_the_photos_aspect_ratio(explorer):
    path = explorer.export_png()
    with Image.open(path) as im:
        pixels = np.asarray(im.convert("RGB"))
    h, w = explorer.canvases[0].size
    assert np.array_equal(pixels[4:4 + h, 4:4 + w], explorer.canvases[0].pixels)
    assert w > h


def test_explain_writes_overlays_at_the_original_aspect_ratio(tmp_path, sample):
    rc = cli.main(["explain", str(sample("chelsea")), "--out", str(tmp_path), "--size", "64", "--variant", "+",
                   "--layers", "blocks.2", "--no-progress"])
    assert rc == 0
    with Image.open(tmp_path / "chelsea_pcam+_depth1_blocks.2.png") as im:
        assert im.size == (400, 266)  # the photo's own size (computed at 64 x 64)
    with Image.open(tmp_path / "chelsea_summary.png") as im:
        assert im.size[0] > im.size[1]
    report = json.loads((tmp_path / "chelsea_explain.json").read_text())
    assert report["frame"] == [266, 400]


# ----- colour scales ------------------------------------------------------------------------------
@pytest.mark.parametrize("cmap", ["turbo", "viridis", "gray"])
def test_colorbar_follows_the_colormap(cmap):
    bar = render.colorbar(cmap, 100, thickness=10)
    lut = render.colormap(cmap)
    assert bar.shape[0] == 100
    assert tuple(bar[0, 5]) == tuple(lut[255]) and tuple(bar[-1, 5]) == tuple(lut[0])  # 1 on top, 0 below
    assert tuple(bar[50, 5]) == tuple(lut[round((1 - 50 / 99) * 255)])
    assert (bar[:, 12:] < 100).any()  # the 0 and 1 labels


def test_the_contrast_bar_is_the_contrast_views_colours():
    bar = frames.scale_pixels("contrast", "turbo", 64)
    assert tuple(bar[0, 2]) == tuple(render.diverging(np.array([1.0]))[0])
    assert tuple(bar[-1, 2]) == tuple(render.diverging(np.array([-1.0]))[0])


def test_the_ins_vs_del_legend_matches_its_colours():
    square = render.legend_2d(16)
    both = render.insertion_deletion_colors(np.array([1.0]), np.array([1.0]))[0]
    assert tuple(square[0, -1]) == tuple(both)  # top right: both
    assert tuple(square[-1, -1]) == tuple(render.insertion_deletion_colors(np.array([1.0]), np.array([0.0]))[0])
    assert both[0] > 200 and both[1] > 200 and both[2] < 200  # yellow, as the legend's text says
    assert "yellow" in frames.legend_html("ins-vs-del")


def test_colorbar_beside_overlay_and_heatmap_hidden_not_removed_elsewhere(explorer):
    scale, main = explorer.main.scale, explorer.main
    sizes, places = {}, {}
    for mode in ("overlay", "heatmap", "masked", "original", "contrast", "ins-vs-del"):
        explorer.state.mode = mode
        sizes[mode] = (explorer.canvases[0].size, scale.layout.width, scale.layout.height,
                       main.legend.layout.width, main.legend.layout.height)
        places[mode] = scale in explorer.panels_box.children[-1].children[0].children
        assert scale.layout.display != "none" and main.legend.layout.display != "none"
        visible = scale.layout.visibility == "visible"
        assert visible == (mode in ("overlay", "heatmap", "contrast")), mode
    assert len(set(sizes.values())) == 1  # the panel's outer size never changes with the view
    assert all(places.values())
    explorer.state.mode = "overlay"
    explorer.state.cmap = "viridis"
    with Image.open(__import__("io").BytesIO(scale.value)) as im:
        bar = np.asarray(im.convert("RGB"))
    assert bar.shape[0] == explorer.canvases[0].size[0]
    assert tuple(bar[0, 2]) == tuple(render.colormap("viridis")[255])


def test_exports_carry_the_colorbar(explorer):
    explorer.state.cmap = "magma"
    path = explorer.export_png()
    with Image.open(path) as im:
        pixels = np.asarray(im.convert("RGB"))
    h, w = explorer.canvases[0].size
    bar = frames.scale_pixels("overlay", "magma", h)
    x = pixels.shape[1] - 4 - bar.shape[1]  # a 4-pixel margin on the right
    assert np.array_equal(pixels[4:4 + h, x:x + bar.shape[1]], bar)
    explorer.state.mode = "original"
    with Image.open(explorer.export_png()) as im:
        assert im.size[0] == 4 + w + 4  # no colour scale for the photo alone


def test_explore_shows_photos_at_their_own_aspect_ratio(tiny_model, tmp_path) -> None:
    """pe.explore hands each photo to the store: a 48 x 32 picture is drawn 3:2, not square."""
    picture = (np.random.default_rng(0).random((32, 48, 3)) * 255).astype(np.uint8)
    ex = pe.explore(picture, model=tiny_model, cache_dir=tmp_path, wait=True, panel_size=96)
    try:
        h, w = ex.canvases[0].pixels.shape[:2]
        assert abs(w / h - 48 / 32) < 0.05, (h, w)
    finally:
        ex.close()
