"""What the real-browser tests share: Debian's chromium driven by Playwright (never `playwright
install`), a one-cell notebook, a server started with its output in a log file, and waits on that
server that fail naming the log. No test module imports another; each imports this."""
from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import nbformat
import pytest

import polycam_explorer as pe

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"]
# [hash, sum, width, height] of the first canvas's pixels (null while it has none)
HASH_JS = """() => { const c = document.querySelector('canvas'); if (!c || !c.width) return null;
  const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
  let h = 0, sum = 0; for (let i = 0; i < d.length; i += 7) { h = (h * 31 + d[i]) | 0; sum += d[i]; }
  return [h, sum, c.width, c.height]; }"""
# the page's address under `jupyter lab` / `jupyter notebook` for each app: app.ipynb in its own editor
PAGES = {"lab": "lab/tree/app.ipynb", "notebook": "notebooks/app.ipynb"}


def require_chromium() -> None:
    """Fail (never skip) when Debian's chromium is missing."""
    if not Path(CHROMIUM).exists():
        pytest.fail("Debian's chromium is needed for the browser tests: apt-get install chromium")


@contextmanager
def chromium() -> Iterator:
    """A Playwright ``Browser`` on Debian's chromium, closed on leaving."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            yield browser
        finally:
            browser.close()


def free_port() -> int:
    """A TCP port of 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def one_cell_notebook(path: Path, code: str) -> Path:
    """Write a notebook of one code cell, ``code``, with the python3 kernelspec, to ``path``."""
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(code)])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)
    return path


@contextmanager
def server(command: list[str], log_path: Path, *, env: dict | None = None,
           cwd: Path | None = None) -> Iterator[subprocess.Popen]:
    """Run ``command`` with its stdout and stderr in ``log_path``; terminate it (and wait) on leaving."""
    with open(log_path, "w") as log:
        proc = subprocess.Popen(command, env=env, cwd=cwd, stdout=log, stderr=subprocess.STDOUT)
    try:
        yield proc
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def _tail(log_path: Path) -> str:
    return log_path.read_text()[-2000:]


def wait_printed(pattern: str, log_path: Path, timeout: float = 60) -> re.Match:
    """The first match of ``pattern`` in the log, once it is printed; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        printed = re.search(pattern, log_path.read_text())
        if printed:
            return printed
        time.sleep(0.5)
    pytest.fail(f"no {pattern!r} printed; see {log_path}: {_tail(log_path)}")


def wait_listening(port: int, log_path: Path, proc: subprocess.Popen | None = None, timeout: float = 120) -> None:
    """Return once something listens on ``port`` of 127.0.0.1 (a connection, no request: a GET of a
    Voila page would start a kernel); fail naming the log after ``timeout`` seconds or when ``proc``
    exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and (proc is None or proc.poll() is None):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.25)
    pytest.fail(f"nothing listens on port {port}; see {log_path}: {_tail(log_path)}")


@contextmanager
def voila(notebook: Path, *arguments: str) -> Iterator[str]:
    """Plain ``voila`` on ``notebook`` (run in its folder, logged to voila.log there): its URL."""
    port = free_port()
    command = [sys.executable, "-m", "voila", str(notebook), "--no-browser", f"--port={port}",
               "--Voila.ip=127.0.0.1", *arguments]
    log_path = notebook.parent / "voila.log"
    with server(command, log_path, cwd=notebook.parent) as proc:
        wait_listening(port, log_path, proc)
        yield f"http://127.0.0.1:{port}/"


@contextmanager
def jupyter(app: str, folder: Path, cache: Path) -> Iterator[str]:
    """``jupyter lab`` or ``jupyter notebook`` serving ``folder`` on 127.0.0.1 (its URL), no token, no
    browser, nothing fetched from the internet by the server (news, update checks, the extension
    manager's index); the kernel imports the package under test and uses ``cache``."""
    port = free_port()
    # the user's Jupyter settings are left out
    env = dict(os.environ, POLYCAM_EXPLORER_CACHE=str(cache), PYTHONPATH=str(Path(pe.__file__).parents[1]),
               JUPYTER_CONFIG_DIR=str(folder / "config"), JUPYTER_RUNTIME_DIR=str(folder / "runtime"))
    flavour = "LabApp" if app == "lab" else "JupyterNotebookApp"
    command = [sys.executable, "-m", "jupyter", app, "--no-browser", f"--port={port}", "--ServerApp.port_retries=0",
               "--ServerApp.ip=127.0.0.1", "--IdentityProvider.token=", "--ServerApp.password=", "--allow-root",
               f"--ServerApp.root_dir={folder}", f"--{flavour}.workspaces_dir={folder / 'workspaces'}",
               f"--{flavour}.news_url=None", f"--{flavour}.extension_manager=readonly",
               f"--{flavour}.check_for_updates_class=jupyterlab.NeverCheckForUpdate"]
    log_path = folder / "server.log"
    with server(command, log_path, env=env, cwd=folder) as proc:
        wait_listening(port, log_path, proc)
        yield f"http://127.0.0.1:{port}/"


STARTED_JS = """() => { const p = document.querySelector('.jp-Notebook .jp-Cell .jp-InputPrompt');
  return !!p && /\\[[*0-9]+\\]/.test(p.textContent); }"""


def run_first_cell(page, url: str) -> None:
    """Open the notebook at ``url`` in JupyterLab or Notebook 7 and run its first cell once its
    kernel is up; the cell's prompt must show it started (``[*]`` or ``[1]``). A Shift+Enter that
    reached the page before the editor took keys is pressed again, once."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    page.goto(url, timeout=120_000)
    page.wait_for_selector(".jp-Notebook-ExecutionIndicator[data-status=idle]", timeout=120_000)
    for attempt in range(2):
        page.locator(".jp-Notebook .jp-Cell .jp-InputArea-editor").first.click(timeout=120_000)
        page.keyboard.press("Shift+Enter")
        try:
            page.wait_for_function(STARTED_JS, timeout=15_000)
            return
        except PlaywrightTimeout:  # the key press was lost
            if attempt:
                raise
