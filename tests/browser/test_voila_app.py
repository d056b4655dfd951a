"""The explorer app in a real browser: `polycam-explorer serve` (Voila) driven by Playwright in
Debian's chromium. Moving the depth, variant and class controls must change the canvas pixels."""
from __future__ import annotations

import os
import shutil
import socket
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from harness import HASH_JS, chromium, require_chromium, server, wait_listening, wait_printed
from PIL import Image

import polycam_explorer as pe


@pytest.fixture(scope="module")
def app_url(tmp_path_factory):
    require_chromium()
    cache = tmp_path_factory.mktemp("cache")
    image = pe.cache.sample_images()[0]
    pe.mapset_for(image, cache_dir=cache, progress=False)  # the app then opens at once
    env = dict(os.environ, POLYCAM_EXPLORER_CACHE=str(cache))
    log_path = tmp_path_factory.mktemp("voila") / "voila.log"
    with socket.socket() as taken:  # the asked-for port is taken: serve must print the one it serves
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with server([sys.executable, "-m", "polycam_explorer.cli", "serve", str(image), "--no-browser",
                     f"--port={port}", f"--idle-kernel-timeout={IDLE_KERNEL_S}"], log_path, env=env) as proc:
            printed = wait_printed(r"serving the explorer at (http://127\.0\.0\.1:(\d+)/)", log_path)
            url = printed.group(1)
            assert int(printed.group(2)) != port
            wait_listening(int(printed.group(2)), log_path, proc)
            yield url
    with pytest.raises(OSError):  # stopping the command stopped Voila too: nothing left serving
        urllib.request.urlopen(url, timeout=2)


IDLE_KERNEL_S = 8


def _kernels() -> set[int]:
    """Process ids of the running IPython kernels of this machine."""
    found = set()
    for stat in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if b"ipykernel" in stat.read_bytes():
                found.add(int(stat.parent.name))
        except OSError:
            pass
    return found


def _changed(page, before, what: str):
    for _ in range(200):
        now = page.evaluate(HASH_JS)
        if now is not None and now != before:
            return now
        time.sleep(0.1)
    pytest.fail(f"the canvas did not change after {what}")


def test_controls_change_the_canvas_pixels(app_url, tmp_path):
    with chromium() as browser:
        page = browser.new_page(viewport={"width": 1300, "height": 1300})
        outside, errors = [], []  # the app works offline: nothing is fetched from elsewhere
        page.on("request", lambda r: outside.append(r.url) if not r.url.startswith(
            (app_url, "data:", "blob:")) else None)
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.goto(app_url, timeout=180_000)
        page.wait_for_selector("canvas", timeout=180_000)
        first = _changed(page, None, "the app opened")
        # drawn, at the panel size (320 on the longest side), with the photo's aspect ratio
        width, height = Image.open(pe.cache.sample_images()[0]).size
        assert first[1] > 0 and first[2] == 320 and abs(first[3] - 320 * height / width) <= 1, first

        page.locator("[role=slider]").first.focus()
        page.keyboard.press("ArrowLeft")  # the depth starts at full depth
        after_depth = _changed(page, first, "moving the depth slider")

        page.get_by_role("button", name="PCAM+", exact=True).click()
        after_variant = _changed(page, after_depth, "choosing PCAM+")

        page.locator("select").nth(1).select_option(index=2)  # the third most probable class
        after_class = _changed(page, after_variant, "choosing another class")
        assert len({tuple(first), tuple(after_depth), tuple(after_variant), tuple(after_class)}) == 4

        assert not outside, f"the page requested addresses outside the machine: {outside}"
        assert not errors, f"errors in the browser console: {errors[:5]}"

        shot = tmp_path / "explorer.png"
        page.screenshot(path=str(shot), full_page=True)
        assert shot.stat().st_size > 10_000
        if os.environ.get("POLYCAM_SCREENSHOT"):
            shutil.copy(shot, os.environ["POLYCAM_SCREENSHOT"])


def test_a_closed_page_has_its_kernel_shut_down(app_url):
    """Each page load starts a kernel (1-1.4 GB with its sweeps): closing the page must stop it."""
    before = _kernels()
    with chromium() as browser:
        page = browser.new_page(viewport={"width": 1300, "height": 1300})
        page.goto(app_url, timeout=180_000)
        page.wait_for_selector("canvas", timeout=180_000)
        mine = _kernels() - before
        assert mine, "the page started no kernel"
        page.close()
    deadline = time.monotonic() + IDLE_KERNEL_S + 60
    while time.monotonic() < deadline and mine & _kernels():
        time.sleep(1)
    assert not mine & _kernels(), "the closed page's kernel still runs"
