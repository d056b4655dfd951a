"""The explorer in JupyterLab 4 and Notebook 7, in a real browser (Debian's chromium driven by
Playwright, as test_voila_app.py): a notebook that shows the explorer is opened and run; the widget
renders, the variant toggle changes the picture, the faithfulness curves chart appears, and the
page asks nothing of any address but the local server.

Closing the page does not end its kernel here, by design: Lab and Notebook keep a notebook's kernel
running when its tab closes (the user shuts it down from the kernel menu or the running-kernels
panel). Ending the kernel of a closed page is `polycam-explorer serve`'s job, tested for Voila in
test_voila_app.py."""
from __future__ import annotations

from pathlib import Path

import pytest
from harness import HASH_JS, PAGES, chromium, jupyter, one_cell_notebook, require_chromium, run_first_cell

import polycam_explorer as pe

CHANGED_JS = f"(before) => {{ const now = ({HASH_JS})(); return now !== null && now[1] > 0 && " \
             "JSON.stringify(now) !== JSON.stringify(before); }"
CURVE_JS = """() => { const lines = document.querySelectorAll('.jp-OutputArea .bqplot path.line');
  return lines.length >= 2 && [...lines].every(l => (l.getAttribute('d') || '').length > 20); }"""
N_STEPS = 16  # insertion / deletion steps: the chart, not the metric, is under test


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    """The sample cat's map set, cached: the notebook's explorer then opens at once."""
    require_chromium()
    folder = tmp_path_factory.mktemp("cache")
    pe.mapset_for(pe.cache.sample_images()[0], cache_dir=folder, progress=False)
    return folder


@pytest.mark.parametrize("app", sorted(PAGES))
def test_the_explorer_works_in(app, cache, tmp_path):
    code = ("import polycam_explorer as pe\n"
            f"explorer = pe.explore([{str(pe.cache.sample_images()[0])!r}])\n"
            f"explorer.curves.n_steps = {N_STEPS}\n"
            "explorer")
    one_cell_notebook(tmp_path / "app.ipynb", code)
    with jupyter(app, tmp_path, cache) as base, chromium() as browser:
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1400})
            outside: list[str] = []  # nothing is fetched from anywhere but the local server
            page.on("request", lambda r: outside.append(r.url) if not r.url.startswith(
                (base, "data:", "blob:")) else None)
            run_first_cell(page, base + PAGES[app])  # once the kernel is up

            # the widget renders: the map drawn on its canvas, in the cell's output
            page.wait_for_selector(".jp-OutputArea canvas", timeout=120_000)
            assert page.evaluate("() => !!document.querySelector('canvas').closest('.jp-OutputArea')")
            page.wait_for_function(CHANGED_JS, arg=None, timeout=60_000)
            first = page.evaluate(HASH_JS)

            # a control changes the picture
            page.locator(".jp-OutputArea").get_by_role("button", name="PCAM+", exact=True).click()
            page.wait_for_function(CHANGED_JS, arg=first, timeout=30_000)

            # the faithfulness curves: the tab, its button, then the bqplot chart with both curves
            output = page.locator(".jp-OutputArea")
            output.get_by_role("tab", name="Faithfulness").click()
            output.get_by_role("button", name="compute curves").click()
            page.wait_for_function(CURVE_JS, timeout=60_000)
            title = output.locator(".bqplot .mainheading").first.text_content()
            assert "insertion" in title and "deletion" in title, title

            assert not outside, f"the page requested addresses outside the machine: {outside[:5]}"
        except Exception:
            page.screenshot(path=str(tmp_path / "failure.png"))  # to see what went wrong
            raise
