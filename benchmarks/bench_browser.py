"""Browser benchmark: from a control's input event to changed canvas pixels, in a real browser.

`polycam-explorer serve` (Voila) on the sample cat, driven by Playwright in Debian's chromium as
tests/browser does. For each control (class, variant, depth, view, colormap, opacity, LNorm) the
page records, with a requestAnimationFrame loop hashing the main canvas, the first frame whose
pixels differ after the input event; the latency is that frame's time minus the event's
(performance.now() in the page, both). Prints median and p95 per control over N changes; the last
line is one JSON object. Goal (issue 10): median <= 30 ms and p95 <= 60 ms for every control.

    python benchmarks/bench_browser.py [--repeats 12]
"""
from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

import polycam_explorer as pe

ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"]
WATCH_JS = """() => {
  const c = document.querySelector('canvas');
  window.__changes = [];
  let last = null;
  const hash = () => { const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
    let h = 0; for (let i = 0; i < d.length; i += 13) h = (h * 31 + d[i]) | 0; return h + ':' + c.width; };
  const loop = (t) => { const h = hash(); if (h !== last) { window.__changes.push(performance.now()); last = h; }
    requestAnimationFrame(loop); };
  requestAnimationFrame(loop);
}"""


def serve(port_file: str, cache: str) -> subprocess.Popen:
    image = pe.cache.sample_images()[0]
    env = dict(os.environ, POLYCAM_EXPLORER_CACHE=cache)
    log = open(port_file, "w")
    return subprocess.Popen([sys.executable, "-m", "polycam_explorer.cli", "serve", str(image), "--no-browser",
                             "--port=8877"], env=env, stdout=log, stderr=subprocess.STDOUT)


def latency(page, act) -> float | None:
    """ms from the input event to the first frame with other pixels (None: no change in 3 s)."""
    page.wait_for_timeout(250)  # let earlier frames settle
    t0 = page.evaluate("() => { window.__mark = performance.now(); return window.__mark; }")
    act()
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        later = page.evaluate("(t0) => window.__changes.filter(t => t > t0)", t0)
        if later:
            return later[0] - t0
        page.wait_for_timeout(20)
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=12)
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    cache = tempfile.mkdtemp(prefix="polycam-bench-browser-")
    pe.mapset_for(pe.cache.sample_images()[0], cache_dir=cache, progress=False)  # the app opens at once
    log = os.path.join(cache, "serve.log")
    proc = serve(log, cache)
    try:
        for _ in range(240):
            found = re.search(r"serving the explorer at (http://\S+/)", open(log).read())
            if found:
                try:
                    urllib.request.urlopen(found.group(1), timeout=1)
                    break
                except OSError:
                    pass
            time.sleep(0.5)
        url = found.group(1)
        results = {}
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=ARGS)
            page = browser.new_page(viewport={"width": 1300, "height": 1300})
            page.goto(url, timeout=180_000)
            page.wait_for_selector("canvas", timeout=180_000)
            page.wait_for_timeout(3000)
            page.evaluate(WATCH_JS)
            def select(label: str):
                return page.locator(".widget-dropdown", has_text=label).locator("select").first

            sliders = page.locator("[role=slider]")
            variants = ["PCAM+", "PCAM-", "PCAM±"]
            actions = {
                "class": lambda i: select("class").select_option(index=i % 3),
                "variant": lambda i: page.get_by_role("button", name=variants[i % 3], exact=True).click(),
                "depth": lambda i: (sliders.first.focus(), page.keyboard.press("ArrowLeft" if i % 2 else "ArrowRight")),
                "view": lambda i: select("view").select_option(index=(i % 2)),
                "colormap": lambda i: select("colormap").select_option(index=(i % 3)),
                "opacity": lambda i: (sliders.nth(1).focus(), page.keyboard.press("ArrowLeft" if i % 2 else "ArrowRight")),
                "lnorm": lambda i: page.get_by_role("checkbox", name="LNorm").click(),
            }
            # the depth starts at full depth: step left first so that ArrowRight has room
            sliders.first.focus()
            page.keyboard.press("ArrowLeft")
            for name, act in actions.items():
                times = [latency(page, lambda: act(i)) for i in range(1, args.repeats + 1)]
                ok = sorted(t for t in times if t is not None)
                if not ok:
                    results[name] = {"median_ms": None, "p95_ms": None, "missed": len(times)}
                    continue
                p95 = ok[min(len(ok) - 1, int(round(0.95 * (len(ok) - 1))))]
                results[name] = {"median_ms": round(statistics.median(ok), 1), "p95_ms": round(p95, 1),
                                 "missed": len(times) - len(ok)}
                print(f"{name:9s} median {results[name]['median_ms']:7.1f} ms  p95 {p95:7.1f} ms"
                      f"  ({len(ok)}/{len(times)} changes seen)", flush=True)
            browser.close()
    finally:
        proc.terminate()
        proc.wait(60)
    print(json.dumps({"controls": results, "repeats": args.repeats, "loadavg": os.getloadavg(),
                      "cpus": os.cpu_count()}))


if __name__ == "__main__":
    main()
