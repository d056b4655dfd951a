"""Publication-ready exports (issue 10, section 3): a download button that carries exactly the bytes
written, and figures as SVG / PDF (text as text, the maps as full-resolution rasters, a vector
colour bar) or PNG at a print dpi."""
from __future__ import annotations

import base64
import io
import re
import xml.etree.ElementTree as ET

import matplotlib
import numpy as np
import pytest
from PIL import Image

import polycam_explorer as pe
from polycam_explorer import figure
from polycam_explorer.explorer import frames
from polycam_explorer.explorer.views import export

PHOTO = (266, 400)  # H, W of the photo; the tiny model sees it as 16 x 16
PRINT = (16, 24)  # the photo's aspect ratio holding the 16 x 16 map at full resolution
TOP = 3


@pytest.fixture
def explorer(tiny_model, tmp_path):
    photo = np.random.default_rng(0).integers(0, 256, (*PHOTO, 3), dtype=np.uint8)
    ms = pe.compute_mapset(tiny_model, pe.load_image(photo, tiny_model), progress=False)
    ex = pe.Explorer({}, size=96, export_dir=tmp_path / "exports")
    ex.store.add_mapset("photo", ms, show=True, picture=photo)
    yield ex
    ex.close()


def anchor(html: str) -> tuple[str, str, bytes]:
    """The download anchor's file name, MIME type and decoded payload."""
    found = re.search(r"<a [^>]*download='([^']+)' href='data:([^;]+);base64,([^']+)'", html)
    assert found, html[:300]
    return found.group(1), found.group(2), base64.b64decode(found.group(3))


def svg_texts(data: bytes) -> str:
    root = ET.fromstring(data)
    return "\n".join("".join(e.itertext()) for e in root.iter() if e.tag.endswith("}text"))


def pdf_texts(data: bytes) -> str:
    """The strings of an uncompressed PDF's text arrays (kerning pieces joined, Type 42 zero bytes
    dropped)."""
    out = []
    for array in re.findall(rb"\[(.*?)\]\s*TJ", data, flags=re.DOTALL):
        pieces = re.findall(rb"\(((?:\\.|[^\\)])*)\)", array, flags=re.DOTALL)
        text = b"".join(re.sub(rb"\\(.)", rb"\1", p) for p in pieces).replace(b"\x00", b"")
        out.append(text.decode("latin-1"))
    return "\n".join(out)


# ----- the download button -------------------------------------------------------------------
@pytest.mark.parametrize("what, mime", [("png-screen", "image/png"), ("png", "image/png"), ("svg", "image/svg+xml"),
                                        ("pdf", "application/pdf"), ("npz", "application/zip")])
def test_the_download_button_carries_exactly_the_file_written(explorer, what, mime):
    view = explorer.export
    if what == "npz":
        path = view.maps()
    else:
        path = view.figure(what.split("-")[0], 0 if what == "png-screen" else 150)
    name, kind, payload = anchor(view.link.value)
    assert payload == path.read_bytes() and name == path.name and kind == mime
    assert str(path.resolve()) in view.link.value  # the path written stays shown
    assert "background" in view.link.value and "download (" in view.link.value  # styled as a button


def test_a_file_over_the_limit_shows_its_path_only(explorer, monkeypatch):
    monkeypatch.setattr(export, "DOWNLOAD_LIMIT", 10)
    path = explorer.export.maps()
    assert "href='data:" not in explorer.export.link.value
    assert str(path.resolve()) in explorer.export.link.value and "too large" in explorer.export.link.value


def test_the_tab_exports_the_format_chosen(explorer):
    view = explorer.export
    view.format.value = "svg"
    assert view.dpi.layout.visibility == "hidden"  # a vector figure has no dpi
    view.figure_button.click()
    view.figure_button.click()
    written = sorted(p.name for p in view.export_dir.iterdir())
    assert [n[-6:] for n in written] == ["_1.svg", "_2.svg"]  # names never overwrite
    assert not list(view.export_dir.glob(".*.tmp"))  # written atomically: no temporary file left
    view.format.value = "png"
    assert view.dpi.layout.visibility == "visible" and view.dpi.value == 300
    view.figure_button.click()
    assert len(list(view.export_dir.glob("*_300dpi_1.png"))) == 1


# ----- vector figures ------------------------------------------------------------------------
def test_svg_has_the_captions_as_text_and_each_map_at_full_resolution(explorer):
    explorer.state.variant = "-"
    explorer.state.depth = 2
    path = explorer.export.figure("svg")
    data = path.read_bytes()
    texts = svg_texts(data)
    ms = explorer.store.mapset("photo")
    for line in export.caption_lines(ms, explorer.panels()[0]):
        assert line in texts, line
    assert "saliency" in texts and "0.5" in texts  # the colour bar's label and ticks
    images = [e for e in ET.fromstring(data).iter() if e.tag.endswith("}image")]
    href = images[0].get("{http://www.w3.org/1999/xlink}href")
    with Image.open(io.BytesIO(base64.b64decode(href.split(",", 1)[1]))) as im:
        embedded = np.asarray(im.convert("RGB"))
    assert embedded.shape[:2] == PRINT  # the photo's aspect ratio, every map pixel kept
    assert np.array_equal(embedded, explorer.export.print_tiles()[0])
    # the colour bar is vector: no raster besides the panel
    assert len(images) == 1


def test_svg_of_a_comparison_has_one_image_and_caption_per_panel(explorer):
    explorer.state.compare = "variants"
    data = explorer.export.figure("svg").read_bytes()
    images = [e for e in ET.fromstring(data).iter() if e.tag.endswith("}image")]
    assert len(images) == 3
    texts = svg_texts(data)
    assert all(v in texts for v in ("PCAM+", "PCAM-", "PCAM±"))


def test_pdf_keeps_the_caption_text(explorer):
    with matplotlib.rc_context({"pdf.compression": 0}):
        path = explorer.export.figure("pdf")
    data = path.read_bytes()
    assert data.startswith(b"%PDF")
    texts = pdf_texts(data)
    ms = explorer.store.mapset("photo")
    assert f"c{TOP} ({float(ms.probs[TOP]):.3f})" in texts and "depth 3/3: features.1" in texts
    assert "saliency" in texts
    assert b"/Width 24" in data and b"/Height 16" in data  # the panel's raster at full resolution


@pytest.mark.parametrize("dpi", [150, 300])
def test_png_at_a_print_dpi_has_that_dpi_and_size(explorer, dpi):
    path = explorer.export.figure("png", dpi)
    tiles, captions = explorer.export.print_tiles(), explorer.export.captions()
    width, height = figure.figure_size(tiles, captions, frames.print_scale("overlay", "turbo", ("a", "b")))
    with Image.open(path) as im:
        assert im.info["dpi"] == pytest.approx((dpi, dpi), abs=0.05)  # pHYs: whole dots per metre
        assert abs(im.size[0] - width * dpi) <= 1 and abs(im.size[1] - height * dpi) <= 1
    assert path.name.endswith(f"_{dpi}dpi_1.png")


def test_contrast_figure_names_both_classes(explorer):
    explorer.state.mode = "contrast"
    explorer.state.other_class = 1
    data = explorer.export.figure("svg").read_bytes()
    texts = svg_texts(data)
    assert f"c{TOP} (A)" in texts and "c1 (B)" in texts  # the diverging bar's ends
    assert f"red: c{TOP} (A) · blue: c1 (B)" in texts  # the caption's colour key
    assert "-1" not in texts.split()


def test_figure_refuses_bad_input(tmp_path):
    tile = np.zeros((4, 6, 3), np.uint8)
    with pytest.raises(ValueError, match="captions"):
        figure.figure([tile, tile], [["a"]])
    with pytest.raises(ValueError, match="tiles"):
        figure.figure([tile, np.zeros((5, 6, 3), np.uint8)], [["a"], ["b"]])
    fig = figure.figure([tile], [["a"]])
    with pytest.raises(ValueError, match="fmt"):
        figure.save(fig, tmp_path / "x.eps", "eps")
    with pytest.raises(ValueError, match="dpi"):
        figure.save(fig, tmp_path / "x.png", "png", dpi=0)
    assert list(tmp_path.iterdir()) == []
