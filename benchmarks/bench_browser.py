"""Browser benchmark: from a control's input event to changed canvas pixels, measured in the page.

`polycam-explorer serve` (Voila) on two sample images, driven by Playwright in Debian's chromium
as tests/browser does. For each control a function running in the page records performance.now(),
dispatches the input event on the control's element (a change on a select, a click on a button
or checkbox, an arrow key on a slider handle, mouse down/up on a canvas), and follows the main
canvas with requestAnimationFrame until its pixels (or its size) differ and it is not blank (a
resized canvas is, until drawn on); the latency is that frame's time minus the event's. No
Playwright round trip is inside the measured interval.
Where the time goes: ``arrive_median_ms``, when the first kernel message with binary buffers (the
canvas commands) reached the page; ``paint_median_ms``, when the main canvas element was last
drawn on (image decoded and drawn; None when the change replaced the element); the rest is the
wait for the next frame.

Controls: class, variant, depth, view, colormap, opacity, LNorm, compare preset, recursion-strip
click, image switch, zoom (a drag on the map). Prints median and p95 per control over N changes;
the last line is one JSON object. Goal (issue 10): median <= 30 ms and p95 <= 60 ms for every
control on the 2-core machine.

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
# window.__bench: the controls found by their labels, and measure(control, i) -> {ms, paint}
PAGE_JS = r"""() => {
  const main = () => document.querySelector('canvas');
  const labelled = (kind, text) => [...document.querySelectorAll(kind)]
    .find(el => { const l = el.querySelector('label'); return l && l.textContent.trim() === text; });
  const select = (text, index) => { const s = labelled('.widget-dropdown', text).querySelector('select');
    s.selectedIndex = index; s.dispatchEvent(new Event('change', {bubbles: true})); };
  const key = (text, arrow) => labelled('.widget-slider', text).querySelector('.noUi-handle')
    .dispatchEvent(new KeyboardEvent('keydown', {key: arrow, bubbles: true, cancelable: true}));
  const button = (text) => [...document.querySelectorAll('button')].find(b => b.textContent.trim() === text).click();
  const mouse = (el, type, fx, fy) => { const r = el.getBoundingClientRect();
    el.dispatchEvent(new MouseEvent(type, {bubbles: true, clientX: r.left + fx * r.width,
                                           clientY: r.top + fy * r.height})); };
  const strip = () => { const title = [...document.querySelectorAll('.widget-html')]
      .find(h => h.textContent.startsWith('Recursion strip'));
    const next = title.nextElementSibling; return next.tagName === 'CANVAS' ? next : next.querySelector('canvas'); };
  const variants = ['PCAM+', 'PCAM-', 'PCAM±'];
  const actions = {
    class: i => select('class', i % 3),
    variant: i => button(variants[i % 3]),
    depth: i => key('depth', i % 2 ? 'ArrowLeft' : 'ArrowRight'),
    view: i => select('view', i % 2),
    colormap: i => select('colormap', i % 3),
    opacity: i => key('opacity', i % 2 ? 'ArrowLeft' : 'ArrowRight'),
    lnorm: i => [...document.querySelectorAll('label')].find(l => l.textContent.trim() === 'LNorm')
      .querySelector('input').click(),
    compare: i => select('compare', i % 2),
    strip: i => { const s = strip(), f = i % 2 ? 0.1 : 0.9;  // depth 1, then the full depth
      mouse(s, 'mousedown', f, 0.5); mouse(s, 'mouseup', f, 0.5); },
    image: i => select('image', i % 2),
    zoom: i => { const c = main(); mouse(c, 'mousedown', 0.25, 0.25); mouse(c, 'mouseup', 0.75, 0.75); },
    reset_zoom: i => button('reset zoom'),
  };
  // null while there is no canvas or it is blank (a resized canvas is, until drawn on)
  const hash = () => { const c = main(); if (!c || !c.width) return null;
    const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
    let h = 0, any = 0; for (let k = 0; k < d.length; k += 7) { h = (h * 31 + d[k]) | 0; any |= d[k]; }
    return any ? h + ':' + c.width + 'x' + c.height : null; };
  const draw = CanvasRenderingContext2D.prototype.drawImage;
  CanvasRenderingContext2D.prototype.drawImage = function (...args) {
    if (this.canvas === main()) window.__paintedAt = performance.now();
    return draw.apply(this, args); };
  window.__bench = {
    measure: (control, i) => new Promise(resolve => {
      const before = hash();
      window.__paintedAt = -1;
      const t0 = performance.now();
      actions[control](i);
      const frame = () => {
        const now = performance.now();
        const now_hash = hash();
        if (now_hash !== null && now_hash !== before) {
          const arrived = window.__binaryAt.find(a => a >= t0);
          resolve({ms: now - t0, paint: window.__paintedAt >= t0 ? window.__paintedAt - t0 : null,
                   arrive: arrived === undefined ? null : arrived - t0});
        } else if (now - t0 > 3000) {
          resolve({ms: null, paint: null, arrive: null});
        } else {
          requestAnimationFrame(frame);
        }
      };
      requestAnimationFrame(frame);
    }),
  };
}"""
# before the page's scripts: the arrival time of each kernel message that carries binary buffers
# (canvas commands do; in the v1 websocket protocol a frame starts with its number of offsets, 6
# without buffers), to tell the kernel's share of a latency from the browser's
ARRIVALS_JS = """(() => { const Socket = window.WebSocket; window.__binaryAt = [];
  window.WebSocket = function (...args) { const s = new Socket(...args);
    s.addEventListener('message', e => { if (e.data instanceof ArrayBuffer && e.data.byteLength >= 8
        && Number(new DataView(e.data).getBigUint64(0, true)) > 6) window.__binaryAt.push(performance.now()); });
    return s; };
  window.WebSocket.prototype = Socket.prototype; Object.assign(window.WebSocket, Socket); })();"""
CONTROLS = ("class", "variant", "depth", "view", "colormap", "opacity", "lnorm", "compare", "strip", "image", "zoom")


def serve(log_path: str, cache: str) -> subprocess.Popen:
    images = [str(p) for p in pe.cache.sample_images()[:2]]
    env = dict(os.environ, POLYCAM_EXPLORER_CACHE=cache)
    log = open(log_path, "w")
    return subprocess.Popen([sys.executable, "-m", "polycam_explorer.cli", "serve", *images, "--no-browser",
                             "--port=8877"], env=env, stdout=log, stderr=subprocess.STDOUT)


def wait_for_url(log_path: str) -> str:
    for _ in range(480):
        found = re.search(r"serving the explorer at (http://\S+/)", open(log_path).read())
        if found:
            try:
                urllib.request.urlopen(found.group(1), timeout=1)
                return found.group(1)
            except OSError:
                pass
        time.sleep(0.5)
    raise SystemExit(f"serve did not start; see {log_path}")


def summary(samples: list[dict]) -> dict:
    """median, p95 and misses of the in-page latencies; the medians of the first canvas message's
    arrival and of the last paint."""
    ok = sorted(s["ms"] for s in samples if s["ms"] is not None)
    p95 = ok[min(len(ok) - 1, int(round(0.95 * (len(ok) - 1))))] if ok else None

    def median(key: str) -> float | None:
        found = [s[key] for s in samples if s[key] is not None]
        return round(statistics.median(found), 1) if found else None
    return {"median_ms": median("ms"), "p95_ms": None if p95 is None else round(p95, 1),
            "missed": len(samples) - len(ok), "arrive_median_ms": median("arrive"),
            "paint_median_ms": median("paint")}


def run(page, control: str, repeats: int) -> list[dict]:
    samples = []
    for i in range(1, repeats + 1):
        page.wait_for_timeout(300)  # let the previous change's work (strip, captions) settle
        samples.append(page.evaluate("([c, i]) => window.__bench.measure(c, i)", [control, i]))
        if control == "zoom":  # back to the whole image before the next drag (not timed)
            page.wait_for_timeout(300)
            page.evaluate("() => window.__bench.measure('reset_zoom', 0)")
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=12)
    parser.add_argument("--cache", help="map-set cache folder to reuse (default: a new temporary one)")
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    cache = args.cache or tempfile.mkdtemp(prefix="polycam-bench-browser-")
    for image in pe.cache.sample_images()[:2]:  # the app opens at once, and switches images at once
        pe.mapset_for(image, cache_dir=cache, progress=False)
    log = os.path.join(cache, "serve.log")
    proc = serve(log, cache)
    try:
        url = wait_for_url(log)
        results = {}
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=ARGS)
            page = browser.new_page(viewport={"width": 1300, "height": 1300})
            page.add_init_script(ARRIVALS_JS)
            page.goto(url, timeout=180_000)
            page.wait_for_selector("canvas", timeout=180_000)
            page.wait_for_timeout(3000)
            page.evaluate(PAGE_JS)
            # the depth starts at full depth: step left first so that ArrowRight has room
            page.evaluate("() => window.__bench.measure('depth', 1)")
            for control in CONTROLS:
                results[control] = summary(run(page, control, args.repeats))
                r = results[control]
                print(f"{control:9s} median {r['median_ms']} ms  p95 {r['p95_ms']} ms  missed {r['missed']}"
                      f"  (canvas message in at {r['arrive_median_ms']} ms, painted at {r['paint_median_ms']} ms)",
                      flush=True)
            browser.close()
    finally:
        proc.terminate()
        proc.wait(60)
    print(json.dumps({"controls": results, "repeats": args.repeats, "loadavg": os.getloadavg(),
                      "cpus": os.cpu_count()}))


if __name__ == "__main__":
    main()
