"""First view of a new image (issue 11 §2): how soon a map is on screen, and how soon it is right.

For each sample image, seconds from the image (loading included) to
  first_map_s     the first map of depth 1 (on the default path an estimate, labelled as such)
  r95_s           the first map of depth 1 within Pearson r >= 0.95 of the final depth-1 map, for
                  all three variants (PCAM+, PCAM-, PCAM±) of the top class (the smallest r counts)
  exact_depth1_s  the exact depth-1 map
  full_s          the complete map set (every depth)
on the default path (``iter_mapset(progressive=True)``, backend "auto") and on today's path
(``progressive=False``, backend "eager"), the two interleaved per image (the order alternating) as
the machine may be shared. Each yield's depth-1 maps are computed inside the loop, as a viewer
would draw them, so their cost is counted. ``agreement`` is the smallest r between the two paths'
final full-depth maps (top class, three variants).

The default path's runner (ONNX Runtime export or channels_last copy) is built once before the
timed images, as an explorer that has already shown an image has it; the first, cold sweep's
first map is reported apart (``cold_first_map_s``; the exported graph may be on disk already).
The last line is one JSON object: medians over the images, the same under ``eager``, the per-image
figures, the batch size and the load average (``os.getloadavg()``) before and after.

    python benchmarks/bench_first_view.py [--images N] [--eager-images K] [--batch-size 16]

``--eager-images K`` times today's path on the first K images only (under load it takes minutes
per image); the ``eager`` medians are then over those K.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch

import polycam_explorer as pe
from polycam_explorer.backends import pearson
from polycam_explorer.cache import default_batch_size

DATA = Path(pe.__file__).parent / "data"
VARIANTS = ("+", "-", "+-")


def first_view(model, path: Path, *, progressive: bool, backend: str, batch_size: int) -> dict:
    """Time one image's sweep; keep the depth-1 maps of every yield to find when r >= 0.95 came."""
    start = time.perf_counter()
    x = pe.load_image(path, model)
    views = []  # (seconds, estimate, {variant: depth-1 map})
    exact_depth1 = None
    ms = None
    for ms in pe.iter_mapset(model, x, progress=False, progressive=progressive, backend=backend,
                             batch_size=batch_size):
        top = ms.topk(1)[0][0]
        maps = {v: ms.saliency(top, v, depth=1) for v in VARIANTS}
        now = time.perf_counter() - start
        views.append((now, ms.estimate, ms.channels_done, maps))
        if exact_depth1 is None and not ms.estimate:
            exact_depth1 = now
    full = time.perf_counter() - start
    top = ms.topk(1)[0][0]
    final = {v: ms.saliency(top, v, depth=1) for v in VARIANTS}
    r95, channels95 = None, None
    for seconds, _, channels, maps in views:
        if min(pearson(maps[v], final[v]) for v in VARIANTS) >= 0.95:
            r95, channels95 = seconds, channels
            break
    return {"first_map_s": round(views[0][0], 3), "r95_s": round(r95, 3), "exact_depth1_s": round(exact_depth1, 3),
            "full_s": round(full, 3), "estimates": sum(1 for v in views if v[1]),
            "first_channels": views[0][2], "r95_channels": channels95, "channels": ms.channels_total,
            "backend": ms.stats["backend"], "ms": ms, "class": top}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=None, help="only the first N sample images")
    parser.add_argument("--eager-images", type=int, default=None, help="today's path on the first K images only")
    parser.add_argument("--batch-size", type=int, default=None, help="default: the CPU default (16)")
    args = parser.parse_args()
    paths = sorted(DATA.glob("*.jpg"))[: args.images]
    batch_size = args.batch_size or default_batch_size(torch.device("cpu"))
    load_before = os.getloadavg()
    model = pe.load_model()

    # warm the default path's runner with an image not timed below (a flipped sample)
    start = time.perf_counter()
    cold = pe.load_image(paths[0], model).flip(-1)
    for ms in pe.iter_mapset(model, cold, progress=False, progressive=True, batch_size=batch_size):
        cold_first = time.perf_counter() - start
        setup = ms.stats.get("backend_setup_s")
        break

    rows = {}
    for i, path in enumerate(paths):
        runs = {}
        order = [("default", True, "auto"), ("eager", False, "eager")]
        if args.eager_images is not None and i >= args.eager_images:
            order = order[:1]
        for name, progressive, backend in (order if i % 2 == 0 else order[::-1]):
            runs[name] = first_view(model, path, progressive=progressive, backend=backend, batch_size=batch_size)
        a, b = runs["default"].pop("ms"), runs["eager"].pop("ms") if "eager" in runs else None
        c = runs["default"]["class"]
        if b is not None:
            runs["agreement"] = round(min(pearson(a.saliency(c, v), b.saliency(c, v)) for v in VARIANTS), 6)
        rows[path.stem] = runs
        print(path.stem, json.dumps(rows[path.stem]), flush=True)

    keys = ("first_map_s", "r95_s", "exact_depth1_s", "full_s")
    med = lambda path_name, key: round(statistics.median(r[path_name][key] for r in rows.values()
                                                         if path_name in r), 3)
    result = {k: med("default", k) for k in keys}
    result["eager"] = {k: med("eager", k) for k in keys}
    result.update(images=list(rows), batch_size=batch_size, backend=next(iter(rows.values()))["default"]["backend"],
                  cold_first_map_s=round(cold_first, 3), backend_setup_s=setup,
                  eager_images=[name for name, r in rows.items() if "eager" in r],
                  min_agreement=min(r["agreement"] for r in rows.values() if "agreement" in r), threads=torch.get_num_threads(),
                  cpus=os.cpu_count(), loadavg_before=[round(v, 2) for v in load_before],
                  loadavg_after=[round(v, 2) for v in os.getloadavg()], per_image=rows)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
