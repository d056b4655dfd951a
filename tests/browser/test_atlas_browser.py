"""The atlas in a real browser: `polycam-explorer serve --atlas DIR` (Voila) on a small generated
folder, driven by Playwright in Debian's chromium. The grid shows thumbnails, a sort reorders them,
a click on a thumbnail opens the explorer with its canvas drawn."""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import TinyNet
from harness import chromium, require_chromium, server, wait_listening, wait_printed

import polycam_explorer as pe
from polycam_explorer.atlas import open_index
from polycam_explorer.atlas.grid import PAD
from polycam_explorer.atlas.selection import SORTS
from polycam_explorer.atlas.store import FILE_NAME

# [hash, sum, width, height] of the n-th canvas's pixels (null while it has none)
CANVAS_JS = """(n) => { const c = document.querySelectorAll('canvas')[n]; if (!c || !c.width) return null;
  const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
  let h = 0, sum = 0; for (let i = 0; i < d.length; i += 7) { h = (h * 31 + d[i]) | 0; sum += d[i]; }
  return [h, sum, c.width, c.height]; }"""
WHITE_JS = """() => { const c = document.querySelectorAll('canvas')[0];
  const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
  let other = 0; for (let i = 0; i < d.length; i += 4) { if (d[i] < 250 || d[i + 1] < 250 || d[i + 2] < 250) other++; }
  return other / (d.length / 4); }"""
N = 6


@pytest.fixture(scope="module")
def atlas_url(tmp_path_factory):
    require_chromium()
    folder = tmp_path_factory.mktemp("atlas")
    model = pe.Classifier(TinyNet(seed=3).eval(), name="tiny3", mean=(0.5,) * 3, std=(0.5,) * 3,
                          input_size=(16, 16), class_names=[f"c{i}" for i in range(5)])
    for i in range(N):
        x = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(i)) * (1 + i % 4 * 3)
        pe.compute_mapset(model, x, progress=False).save(folder / f"img{i}.mapset.npz")
    log_path = tmp_path_factory.mktemp("voila") / "voila.log"
    env = dict(os.environ, PYTHONPATH=str(Path(pe.__file__).parents[1]))  # the kernel imports this package
    with server([sys.executable, "-m", "polycam_explorer.cli", "serve", "--atlas", str(folder), "--no-browser",
                 "--port=8930"], log_path, env=env) as proc:
        printed = wait_printed(r"serving the atlas at (http://127\.0\.0\.1:(\d+)/)", log_path)
        text = log_path.read_text()
        assert (folder / FILE_NAME).is_file() and f"{N} added" in text  # indexed before serving
        wait_listening(int(printed.group(2)), log_path, proc)
        yield printed.group(1), folder, log_path


def _wait(page, n: int, before, what: str):
    for _ in range(300):
        now = page.evaluate(CANVAS_JS, n)
        if now is not None and now[1] > 0 and now != before:
            return now
        time.sleep(0.1)
    pytest.fail(f"canvas {n} did not change after {what}")


def test_grid_sort_and_click_open_the_explorer(atlas_url):
    url, folder, log_path = atlas_url
    with open_index(folder) as index:  # the two orders differ, so the pixels must move
        assert index.files(sort="-confidence") != index.files(sort="-image")
        first = index.query(sort="-image", limit=1)[0].image  # "highest first" is ticked
    with chromium() as browser:
        page = browser.new_page(viewport={"width": 1400, "height": 1200})
        outside, errors = [], []
        page.on("request", lambda r: outside.append(r.url) if not r.url.startswith(
            (url, "data:", "blob:")) else None)
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.goto(url, timeout=120_000)
        try:
            page.wait_for_selector("canvas", timeout=120_000)
        except Exception as exc:  # noqa: BLE001 - say what the server said
            pytest.fail(f"no canvas on the page ({exc}); the server's log ends with:\n"
                        f"{log_path.read_text()[-3000:]}\nand the page shows: {page.inner_text('body')[-1000:]}")
        grid = _wait(page, 0, None, "the atlas opened")
        assert page.locator("canvas").count() == 1  # the grid only: no explorer yet
        assert page.evaluate(WHITE_JS) > 0.2  # thumbnails drawn, not a blank page
        assert page.get_by_text(f"{N} of {N} images").count() == 1

        sort = page.locator("select").nth(1)  # colormap, then "sort by"
        options = sort.inner_text().replace("\xa0", " ").split("\n")  # ipywidgets writes no-break spaces
        assert options == [title for title, _ in SORTS]
        sort.select_option(index=[key for _, key in SORTS].index("image"))
        sorted_grid = _wait(page, 0, grid, "sorting by image name")
        assert sorted_grid[2:] == grid[2:]  # the same page size, other pixels

        page.locator("canvas").first.click(position={"x": PAD + 20, "y": PAD + 20})
        page.wait_for_function("document.querySelectorAll('canvas').length > 1", timeout=60_000)
        explorer = _wait(page, 1, None, "opening a thumbnail")
        assert explorer[2] == 320  # the explorer's main panel, drawn
        assert page.get_by_text(f"opened {first}").count() == 1

        assert not outside, f"the page requested addresses outside the machine: {outside}"
        assert not errors, f"errors in the browser console: {errors[:5]}"
