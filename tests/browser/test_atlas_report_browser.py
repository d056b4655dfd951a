"""The atlas's HTML report in a real browser (Playwright driving Debian's chromium), opened from a
file:// URL with no server: every image loads, the console shows no error, nothing is requested
from anywhere but the file itself, and a click on a column header sorts the rows."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import TinyNet
from harness import chromium, require_chromium

import polycam_explorer as pe
from polycam_explorer.atlas import build_index
from polycam_explorer.atlas.report import write_report

N = 6


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> tuple[Path, list]:
    require_chromium()
    folder = tmp_path_factory.mktemp("atlas")
    model = pe.Classifier(TinyNet().eval(), name="tiny", mean=(0.5,) * 3, std=(0.5,) * 3, input_size=(16, 16),
                          class_names=[f"c{i}" for i in range(5)])
    for seed in range(N):
        x = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(seed))
        pe.compute_mapset(model, x, progress=False).save(folder / f"img{seed}.mapset.npz")
    with build_index(folder, labels={"img0": "c1", "img1": "c2"}, progress=False) as index:
        rows = index.rows()
        return write_report(index, rows, tmp_path_factory.mktemp("report") / "atlas report.html"), rows


def test_the_report_opens_offline_and_shows_its_images(report):
    path, rows = report
    url = path.as_uri()
    with chromium() as browser:
        page = browser.new_page(viewport={"width": 1300, "height": 900})
        outside, errors = [], []
        page.on("request", lambda r: outside.append(r.url) if not r.url.startswith((url, "data:")) else None)
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(url, wait_until="load")
        sizes = page.evaluate("() => Array.from(document.images).map(i => [i.complete, i.naturalWidth, "
                              "i.naturalHeight, i.getBoundingClientRect().width])")
        assert len(sizes) >= 2 * N  # a photo and a map per row, and the mean maps
        assert all(done and w > 0 and h > 0 and shown > 0 for done, w, h, shown in sizes), sizes

        def order(): return page.evaluate(
            "() => Array.from(document.querySelectorAll('#rows tbody tr')).map(r => r.dataset.file)")
        assert order() == [r.file for r in rows]
        header = page.locator("#rows th", has_text="Probability")
        header.click()
        assert order() == [r.file for r in sorted(rows, key=lambda r: r.confidence)]
        header.click()
        assert order() == [r.file for r in sorted(rows, key=lambda r: -r.confidence)]
        assert not outside, f"the report requested addresses outside its file: {outside}"
        assert not errors, f"errors in the browser console: {errors[:5]}"
