"""The Export tab's download button in a real browser (Debian's chromium driven by Playwright, as
test_voila_app.py), in Voila, JupyterLab 4 and Notebook 7: choosing SVG and clicking "export
figure" shows a download button; clicking it downloads exactly the bytes written to the export
folder, offline (a data: URL, no server route)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import TinyNet
from harness import PAGES, chromium, jupyter, one_cell_notebook, require_chromium, run_first_cell, voila

import polycam_explorer as pe


def _notebook(folder: Path) -> Path:
    """A one-cell notebook showing an explorer of a tiny model's map set (no model, no sweep)."""
    model = pe.Classifier(TinyNet().eval(), name="tiny", mean=(0.5,) * 3, std=(0.5,) * 3, input_size=(16, 16),
                          class_names=[f"c{i}" for i in range(5)])
    photo = np.random.default_rng(0).integers(0, 256, (24, 36, 3), dtype=np.uint8)
    ms = pe.compute_mapset(model, pe.load_image(photo, model), progress=False)
    ms.save(folder / "tiny.mapset.npz")
    code = ("import polycam_explorer as pe\n"
            f"explorer = pe.Explorer(pe.MapSet.load({str(folder / 'tiny.mapset.npz')!r}), size=200, "
            f"export_dir={str(folder / 'exports')!r})\n"
            "explorer")
    return one_cell_notebook(folder / "app.ipynb", code)


@pytest.mark.parametrize("app", ["voila", *sorted(PAGES)])
def test_the_download_button_downloads_the_exported_file(app, tmp_path):
    require_chromium()
    notebook = _notebook(tmp_path)
    server = voila(notebook) if app == "voila" else jupyter(app, tmp_path, tmp_path / "cache")
    with server as base, chromium() as browser:
        try:
            page = browser.new_context(accept_downloads=True, viewport={"width": 1400, "height": 1400}).new_page()
            outside: list[str] = []  # the export and its download fetch nothing from elsewhere
            page.on("request", lambda r: outside.append(r.url) if not r.url.startswith(
                (base, "data:", "blob:")) else None)
            if app == "voila":
                page.goto(base, timeout=120_000)
            else:
                run_first_cell(page, base + PAGES[app])
            page.wait_for_selector("canvas", timeout=120_000)
            page.get_by_role("tab", name="Export").click()
            outside.clear()  # from here on (plain `voila` itself asks a CDN for an icon font; `serve` does not)
            page.get_by_label("format").select_option(label="SVG (vector)")
            page.get_by_role("button", name="export figure").click()
            button = page.locator("a.polycam-download")
            button.wait_for(timeout=60_000)
            written = sorted((tmp_path / "exports").glob("*.svg"))
            assert len(written) == 1 and str(written[0]) in page.content()  # the full path is shown
            with page.expect_download(timeout=60_000) as info:
                button.click()
            download = info.value
            assert download.failure() is None
            assert download.suggested_filename == written[0].name
            assert Path(download.path()).read_bytes() == written[0].read_bytes()
            assert not outside, f"the page requested addresses outside the machine: {outside[:5]}"
        except Exception:
            page.screenshot(path=str(tmp_path / "failure.png"))
            raise
