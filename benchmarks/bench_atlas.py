"""Atlas index benchmark: build rate, open, sort, filter, a page of thumbnails, peak memory.

The map sets (default 2,000) come from a small seeded CNN (4 conv stages of 16/32/64/64 channels,
100 classes) at 96 x 96: four real sweeps of the bundled sample photographs, then copies of them
with the classes permuted (s0 and the score matrices alike), the probabilities' logits and the
activations perturbed, and the image shifted, each saved as its own fp16 map set (as
``generate --save-mapsets`` writes them). That is the cheap route: real files of the real format
and size, whose contents differ in class, confidence and maps, without 2,000 sweeps. They are
made once in ``--folder`` (in a child process, so that the peak memory below is the index's) and
reused; a labels csv (about 70 % matching the top class) goes beside them.

Measured in this process: a fresh index build (images/s), a rebuild with nothing changed, opening
the index and reading every row (the atlas's first step), a full-table sort and a filter over
every row returning rows, and the same returning only the files in order (median of 20, ms), fetching and decoding a page of 48 thumbnails (ms), and the peak
resident memory of the build over that after imports (ru_maxrss). The last line is one JSON object.

    python benchmarks/bench_atlas.py [--n 2000] [--folder /tmp/polycam-atlas-bench]
"""
from __future__ import annotations

import argparse
import io
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

SIZE = 96
N_CLASSES = 100


def make(folder: Path, n: int) -> None:
    """Write ``n`` map sets (and labels.csv) into ``folder``: 4 real sweeps, then perturbed copies."""
    import numpy as np
    import torch
    from torch import nn

    import polycam_explorer as pe
    from polycam_explorer.cache import sample_images
    from polycam_explorer.probes import LayerScores

    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, 2, 1), nn.ReLU(),
        nn.Conv2d(32, 64, 3, 2, 1), nn.ReLU(), nn.Conv2d(64, 64, 3, 2, 1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, N_CLASSES)).eval()
    names = [f"class_{i:03d}" for i in range(N_CLASSES)]
    model = pe.Classifier(net, name="bench-cnn", mean=(0.5,) * 3, std=(0.5,) * 3, input_size=(SIZE, SIZE),
                          class_names=names)
    real = [pe.compute_mapset(model, pe.load_image(p, model), progress=False) for p in sample_images()]
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    labels = []
    for i in range(n):
        base = real[i % len(real)]
        perm = torch.from_numpy(rng.permutation(N_CLASSES))
        logits = torch.log(base.probs[perm].clamp(min=1e-12)) + torch.from_numpy(rng.normal(0, 1.5, N_CLASSES)).float()
        s0 = torch.softmax(logits, 0)
        acts = [(a * (1 + 0.2 * torch.from_numpy(rng.normal(size=a.shape)).float())).clamp(min=0)
                for a in base.activations]
        image = torch.roll(base.image, shifts=(int(rng.integers(-8, 9)), int(rng.integers(-8, 9))), dims=(2, 3))
        ms = pe.MapSet(image=image, layers=base.layers, activations=acts, s0=s0, class_names=names,
                       model_name=base.model_name, model_id=base.model_id, mean=base.mean, std=base.std,
                       stats=base.stats)
        for k in range(len(base.layers)):
            plus, minus = base.scores(k)
            ms.set_scores(k, LayerScores(plus[:, perm].contiguous(), minus[:, perm].contiguous()))
        ms.save(folder / f"img{i:05d}.mapset.npz", fp16=True)
        top = int(s0.argmax())
        labels.append(f"img{i:05d},{names[top] if rng.random() < 0.7 else names[int(rng.integers(N_CLASSES))]}\n")
    (folder / "labels.csv").write_text("image,label\n" + "".join(labels))


def median_ms(fn, repeat: int = 20):
    times, result = [], None
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=2000, help="map sets (default 2000)")
    parser.add_argument("--folder", default="/tmp/polycam-atlas-bench", help="where the map sets are kept")
    parser.add_argument("--make-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    folder = Path(args.folder) / f"n{args.n}"
    if args.make_only:
        make(folder, args.n)
        return
    if len(list(folder.glob("*.mapset.npz"))) != args.n or not (folder / "labels.csv").is_file():
        start = time.perf_counter()
        subprocess.run([sys.executable, __file__, "--n", str(args.n), "--folder", args.folder, "--make-only"],
                       check=True)
        print(f"made {args.n} map sets in {time.perf_counter() - start:.1f} s", file=sys.stderr)

    from PIL import Image

    from polycam_explorer import atlas
    from polycam_explorer.atlas.store import db_path

    for suffix in ("", "-wal", "-shm"):
        Path(str(db_path(folder)) + suffix).unlink(missing_ok=True)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    start = time.perf_counter()
    index = atlas.build_index(folder, labels=folder / "labels.csv", progress=False)
    t_build = time.perf_counter() - start
    rss_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    index.close()
    start = time.perf_counter()
    atlas.build_index(folder, progress=False).close()
    t_rebuild = time.perf_counter() - start

    start = time.perf_counter()
    index = atlas.open_index(folder)
    rows = index.rows()
    t_open = time.perf_counter() - start
    t_sort, _ = median_ms(lambda: index.rows(sort="-confidence"))
    t_sort2, _ = median_ms(lambda: index.rows(sort=["pred_class", "-context"]))
    t_filter, hits = median_ms(lambda: index.query(correct=False, min_confidence=0.2))
    t_sort_files, _ = median_ms(lambda: index.files(sort="-confidence"))
    t_filter_files, _ = median_ms(lambda: index.files(correct=False, min_confidence=0.2))
    page = index.rows(sort="-confidence", limit=48)

    def decode():
        data = index.thumbnails(page)
        return [Image.open(io.BytesIO(data[r.file])).convert("RGB").load() for r in page]
    t_page, _ = median_ms(decode, 10)
    size_mb = sum(f.stat().st_size for f in folder.glob("*.mapset.npz")) / 2**20
    result = {
        "benchmark": "atlas_index", "n": len(rows), "image_size": SIZE, "mapset_files_mb": round(size_mb, 1),
        "index_mb": round(db_path(folder).stat().st_size / 2**20, 2),
        "build_s": round(t_build, 2), "build_images_per_s": round(len(rows) / t_build, 1),
        "rebuild_unchanged_s": round(t_rebuild, 3), "open_and_read_rows_ms": round(1000 * t_open, 1),
        "sort_confidence_ms": round(t_sort, 2), "sort_class_context_ms": round(t_sort2, 2),
        "filter_ms": round(t_filter, 2), "sort_files_only_ms": round(t_sort_files, 2),
        "filter_files_only_ms": round(t_filter_files, 2), "filter_hits": len(hits), "page48_thumbnails_ms": round(t_page, 2),
        "rss_after_imports_mb": round(rss_before, 1), "rss_peak_build_mb": round(rss_peak, 1),
        "skipped": index.last_build.skipped if index.last_build else 0,
        "load_average": [round(x, 2) for x in os.getloadavg()], "cpus": os.cpu_count(),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
