"""The explorer in JupyterLab 4 and Notebook 7, in a real browser (Debian's chromium driven by
Playwright, as test_voila_app.py): a notebook that shows the explorer is opened and run; the widget
renders, the variant toggle changes the picture, the faithfulness curves chart appears, and the
page asks nothing of any address but the local server.

Closing the page does not end its kernel here, by design: Lab and Notebook keep a notebook's kernel
running when its tab closes (the user shuts it down from the kernel menu or the running-kernels
panel). Ending the kernel of a closed page is `polycam-explorer serve`'s job, tested for Voila in
test_voila_app.py."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import nbformat
import pytest

import polycam_explorer as pe
from test_voila_app import ARGS, CHROMIUM, HASH_JS

# the page's address for each app: the notebook opened in its own editor
PAGES = {"lab": "lab/tree/app.ipynb", "notebook": "notebooks/app.ipynb"}
CHANGED_JS = f"(before) => {{ const now = ({HASH_JS})(); return now !== null && now[1] > 0 && " \
             "JSON.stringify(now) !== JSON.stringify(before); }"
CURVE_JS = """() => { const lines = document.querySelectorAll('.jp-OutputArea .bqplot path.line');
  return lines.length >= 2 && [...lines].every(l => (l.getAttribute('d') || '').length > 20); }"""
N_STEPS = 16  # insertion / deletion steps: the chart, not the metric, is under test


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    """The sample cat's map set, cached: the notebook's explorer then opens at once."""
    if not Path(CHROMIUM).exists():
        pytest.fail("Debian's chromium is needed for the browser tests: apt-get install chromium")
    folder = tmp_path_factory.mktemp("cache")
    pe.mapset_for(pe.cache.sample_images()[0], cache_dir=folder, progress=False)
    return folder


def _notebook(folder: Path) -> None:
    code = ("import polycam_explorer as pe\n"
            f"explorer = pe.explore([{str(pe.cache.sample_images()[0])!r}])\n"
            f"explorer.curves.n_steps = {N_STEPS}\n"
            "explorer")
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(code)])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, folder / "app.ipynb")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(app: str, folder: Path, cache: Path) -> tuple[subprocess.Popen, str]:
    """``jupyter lab`` or ``jupyter notebook`` on 127.0.0.1, no token, no browser, nothing fetched
    from the internet by the server (news, update checks, the extension manager's index)."""
    port = _free_port()
    # the kernel imports the package under test; the user's Jupyter settings are left out
    env = dict(os.environ, POLYCAM_EXPLORER_CACHE=str(cache), PYTHONPATH=str(Path(pe.__file__).parents[1]),
               JUPYTER_CONFIG_DIR=str(folder / "config"), JUPYTER_RUNTIME_DIR=str(folder / "runtime"))
    flavour = "LabApp" if app == "lab" else "JupyterNotebookApp"
    command = [sys.executable, "-m", "jupyter", app, "--no-browser", f"--port={port}", "--ServerApp.port_retries=0",
               "--ServerApp.ip=127.0.0.1", "--IdentityProvider.token=", "--ServerApp.password=", "--allow-root",
               f"--ServerApp.root_dir={folder}", f"--{flavour}.workspaces_dir={folder / 'workspaces'}",
               f"--{flavour}.news_url=None", f"--{flavour}.extension_manager=readonly",
               f"--{flavour}.check_for_updates_class=jupyterlab.NeverCheckForUpdate"]
    log = open(folder / "server.log", "w")
    proc = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=folder)
    log.close()
    base = f"http://127.0.0.1:{port}/"
    for _ in range(240):
        try:
            urllib.request.urlopen(base + "api/status", timeout=1)
            return proc, base
        except OSError:
            if proc.poll() is not None:
                break
            time.sleep(0.25)
    proc.terminate()
    pytest.fail(f"jupyter {app} did not start: {(folder / 'server.log').read_text()[-2000:]}")


@pytest.mark.parametrize("app", sorted(PAGES))
def test_the_explorer_works_in(app, cache, tmp_path):
    from playwright.sync_api import sync_playwright

    _notebook(tmp_path)
    proc, base = _start(app, tmp_path, cache)
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
            try:
                page = browser.new_page(viewport={"width": 1400, "height": 1400})
                outside: list[str] = []  # nothing is fetched from anywhere but the local server
                page.on("request", lambda r: outside.append(r.url) if not r.url.startswith(
                    (base, "data:", "blob:")) else None)
                page.goto(base + PAGES[app], timeout=120_000)
                # the kernel is up (a cell run before it would wait for a kernel choice)
                page.wait_for_selector(".jp-Notebook-ExecutionIndicator[data-status=idle]", timeout=120_000)
                page.locator(".jp-Notebook .jp-Cell .jp-InputArea-editor").first.click(timeout=120_000)
                page.keyboard.press("Shift+Enter")  # run the cell

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
            finally:
                browser.close()
    finally:
        proc.terminate()
        proc.wait(timeout=60)
