"""The number of live explorer kernels under ``serve`` is bounded (polycam_explorer.kernels):
real kernels, a real Voila on a one-cell notebook, plain HTTP and a real chromium reload."""
from __future__ import annotations

import asyncio
import urllib.error
import urllib.request

import pytest
from harness import chromium, one_cell_notebook, require_chromium, voila
from tornado import web

from polycam_explorer.kernels import BoundedKernelManager, voila_arguments


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
    notebook = one_cell_notebook(tmp_path / "app.ipynb", "import ipywidgets\nipywidgets.IntSlider(3)")
    with voila(notebook, *voila_arguments(max_kernels=1, idle_kernel_timeout=600)) as url:
        yield url


def test_serve_refuses_a_page_beyond_the_limit_and_a_reload_reuses_the_slot(voila_url):
    require_chromium()
    with chromium() as browser:
        page = browser.new_page()
        page.goto(voila_url, timeout=60_000)
        page.wait_for_selector("[role=slider]", timeout=60_000)  # the widget's page is connected
        with pytest.raises(urllib.error.HTTPError) as refused:  # a second page: over the limit
            urllib.request.urlopen(voila_url, timeout=60)
        assert refused.value.code == 503
        page.reload()  # the same user reloads: the closed page's kernel makes room
        page.wait_for_selector("[role=slider]", timeout=60_000)
        page.close()
