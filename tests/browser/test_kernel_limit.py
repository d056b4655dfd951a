"""The number of live explorer kernels under ``serve`` is bounded (polycam_explorer.kernels):
real kernels, a real Voila on a one-cell notebook, plain HTTP and a real chromium reload."""
from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import nbformat
import pytest
from tornado import web

from polycam_explorer.kernels import BoundedKernelManager, voila_arguments

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"]


def test_a_closed_page_makes_room_and_open_pages_are_never_shut_down():
    async def run() -> None:
        km = BoundedKernelManager(max_kernels=1)
        first = await km.start_kernel(kernel_name="python3")
        try:
            km.notify_connect(first)  # its page is open
            with pytest.raises(web.HTTPError) as refused:
                await km.start_kernel(kernel_name="python3")
            assert refused.value.status_code == 503 and "1 explorer pages are open" in refused.value.reason
            assert km.list_kernel_ids() == [first]  # the open page keeps its kernel
            km.notify_disconnect(first)  # its page was closed or reloaded
            second = await km.start_kernel(kernel_name="python3")
            assert km.list_kernel_ids() == [second] and second != first
        finally:
            await km.shutdown_all(now=True)

    asyncio.run(run())


def test_a_page_that_never_connected_yet_is_not_taken_for_a_closed_one():
    async def run() -> None:
        km = BoundedKernelManager(max_kernels=1)
        loading = await km.start_kernel(kernel_name="python3")  # a page still being rendered
        try:
            with pytest.raises(web.HTTPError):
                await km.start_kernel(kernel_name="python3")
            assert km.list_kernel_ids() == [loading]
        finally:
            await km.shutdown_all(now=True)

    asyncio.run(run())


@pytest.fixture
def voila_url(tmp_path):
    notebook = tmp_path / "app.ipynb"
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("import ipywidgets\nipywidgets.IntSlider(3)")])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, notebook)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = open(tmp_path / "voila.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "voila", str(notebook), "--no-browser", f"--port={port}",
                             "--Voila.ip=127.0.0.1", *voila_arguments(max_kernels=1, idle_kernel_timeout=600)],
                            stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    try:
        for _ in range(120):
            try:  # listening (a GET of the page would start a kernel)
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.5)
        else:
            pytest.fail(f"voila did not start; see {log.name}")
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=60)
        log.close()


def test_serve_refuses_a_page_beyond_the_limit_and_a_reload_reuses_the_slot(voila_url):
    if not Path(CHROMIUM).exists():
        pytest.fail("Debian's chromium is needed for the browser tests: apt-get install chromium")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = browser.new_page()
            page.goto(voila_url, timeout=60_000)
            page.wait_for_selector("[role=slider]", timeout=60_000)  # the widget's page is connected
            with pytest.raises(urllib.error.HTTPError) as refused:  # a second page: over the limit
                urllib.request.urlopen(voila_url, timeout=60)
            assert refused.value.code == 503
            page.reload()  # the same user reloads: the closed page's kernel makes room
            page.wait_for_selector("[role=slider]", timeout=60_000)
            page.close()
        finally:
            browser.close()
