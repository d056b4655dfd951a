"""Atlas widget benchmark (Python side): opening ``pe.Atlas`` on 2,000 map sets, drawing a page of
48 thumbnails (of the predicted class; of the labelled class; of a chosen class, its 48 map sets loaded
("cold") and again from the LRU ("warm")), a sort and a filter change redrawn, the two-model view opened, a click opening the
explorer, and the peak memory.

The map sets are bench_atlas.py's (made once in ``--folder``/n2000 by its ``make``: a small seeded CNN at
96 x 96, 100 classes, labels for about 70 %). The index is built first if the folder has none
(with bench_atlas.py's labels; not timed). Two-model view: the folder against a copy of itself (the same maps, so every
disagreement is 0: this times the pairing, fetching 4,000 small maps and 2,000 correlations). Times are medians of ``--repeat`` runs in ms (the open and the compare open: one
run each, in s). The last line is one JSON object.

    python benchmarks/bench_atlas_widget.py [--n 2000] [--folder /tmp/polycam-atlas-bench]
"""
from __future__ import annotations

import argparse
import json
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path


def median_ms(fn, repeat: int) -> float:
    times = []
    for i in range(repeat):
        start = time.perf_counter()
        fn(i)
        times.append((time.perf_counter() - start) * 1000)
    return round(statistics.median(times), 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=2000, help="map sets (default 2000)")
    parser.add_argument("--folder", default="/tmp/polycam-atlas-bench", help="where the map sets are kept")
    parser.add_argument("--repeat", type=int, default=10, help="runs per median (default 10)")
    args = parser.parse_args()
    folder = Path(args.folder) / f"n{args.n}"  # where bench_atlas.py keeps them
    if len(list(folder.glob("*.mapset.npz"))) < args.n or not (folder / "labels.csv").is_file():  # bench_atlas.py makes them, in a child process
        subprocess.run([sys.executable, str(Path(__file__).with_name("bench_atlas.py")), "--n", str(args.n),
                        "--folder", str(folder), "--make-only"], check=True)

    import polycam_explorer as pe
    from polycam_explorer.atlas import build_index

    build_index(folder, labels=folder / "labels.csv", progress=False).close()  # incremental: quick when built
    other = folder.with_name(folder.name + "-b")
    if not other.is_dir():
        shutil.copytree(folder, other, ignore=shutil.ignore_patterns(".polycam-atlas*"))
    build_index(other, progress=False).close()

    start = time.perf_counter()
    atlas = pe.Atlas(folder)  # opens the index, counts, draws page 1
    open_s = time.perf_counter() - start
    pages = atlas.page.max
    page_ms = median_ms(lambda i: setattr(atlas.page, "value", 1 + (i + 1) % pages), args.repeat)
    sorts = ["context", "confidence", "pred_name", "insdel", "label", "image"]
    sort_ms = median_ms(lambda i: setattr(atlas.sort, "value", sorts[i % len(sorts)]), args.repeat)
    classes = [c for c, _, _ in atlas.index.classes()]
    filter_ms = median_ms(lambda i: setattr(atlas.klass, "value", classes[i % len(classes)]), args.repeat)
    atlas.klass.value = -1
    atlas.map_of.value = "label"  # the labelled class's maps, stored in the index
    label_ms = median_ms(lambda i: setattr(atlas.page, "value", 1 + (i + 1) % pages), args.repeat)
    atlas.map_class.value = classes[0]
    atlas.map_of.value = "class"  # a chosen class: each page's 48 map sets loaded, small maps made
    class_cold_ms = median_ms(lambda i: setattr(atlas.page, "value", 2 + i % (pages - 1)), args.repeat)
    class_warm_ms = median_ms(lambda i: setattr(atlas.page, "value", 2 + i % (pages - 1)), args.repeat)
    atlas.map_of.value = "predicted"
    start = time.perf_counter()
    atlas.explore(0)
    explore_ms = (time.perf_counter() - start) * 1000
    atlas.close()

    start = time.perf_counter()
    pair = pe.Atlas(folder, compare=other)
    compare_s = time.perf_counter() - start
    pair_page_ms = median_ms(lambda i: setattr(pair.page, "value", 1 + (i + 1) % pair.page.max), args.repeat)
    variants = ["+", "-", "+-"]
    variant_ms = median_ms(lambda i: setattr(pair.variant, "value", variants[i % 3]), args.repeat)
    n_pairs = pair.selection.total()
    pair.close()

    result = {"n": args.n, "open_s": round(open_s, 2), "page48_ms": page_ms, "sort_redraw_ms": sort_ms,
              "filter_redraw_ms": filter_ms, "page48_label_ms": label_ms, "page48_class_cold_ms": class_cold_ms,
              "page48_class_warm_ms": class_warm_ms, "open_in_explorer_ms": round(explore_ms, 1),
              "compare_open_s": round(compare_s, 2), "compare_pairs": n_pairs, "compare_page_ms": pair_page_ms,
              "compare_variant_ms": variant_ms,
              "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}
    for key, value in result.items():
        print(f"{key:>22}: {value}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
