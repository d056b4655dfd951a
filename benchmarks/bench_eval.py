"""Evaluation benchmark: images per second for generate + evaluate of PCAM± with the embedded model,
and evaluate with the samples of several images sharing forward batches against one image at a time.

The sample images (4) at 224x224, the paper's 224 steps. Generation is not batched across images:
one image's sweep already fills every batch (about 1300 probes). The last line is one JSON object.

    python benchmarks/bench_eval.py [--images-per-batch 4] [--batch-size N]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import torch

import polycam_explorer as pe
from polycam_explorer import evaluation


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images-per-batch", type=int, default=4)
    parser.add_argument("--batch-size", type=int, help="forward batch (default: 16 on a CPU, 64 on a GPU)")
    parser.add_argument("--n-steps", type=int, default=224)
    args = parser.parse_args()
    model = pe.load_model()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device)
    args.batch_size = args.batch_size or pe.cache.default_batch_size(device)
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["POLYCAM_EXPLORER_CACHE"] = str(Path(tmp) / "cache")  # generate must sweep, not read a cache
        folder = Path(tmp) / "images"
        folder.mkdir()
        for path in pe.cache.sample_images():
            shutil.copy(path, folder / path.name)
        n = len(list(folder.iterdir()))
        t_generate = timed(lambda: evaluation.generate(model, folder, ["pcam+-"], Path(tmp) / "out",
                                                       batch_size=args.batch_size, progress=False))
        npz = [Path(tmp) / "out" / "efficientnet_lite0_pcampm.npz"]
        times = {}
        for per_batch in (1, args.images_per_batch):
            out = Path(tmp) / f"eval{per_batch}"
            times[per_batch] = timed(lambda: evaluation.evaluate(
                model, folder, npz, out, n_steps=args.n_steps, batch_size=args.batch_size,
                images_per_batch=per_batch, progress=False))
        same = (Path(tmp) / "eval1" / "summary.csv").read_text() == \
            (Path(tmp) / f"eval{args.images_per_batch}" / "summary.csv").read_text()
    t_eval = times[args.images_per_batch]
    result = {
        "device": str(device), "images": n, "size": 224, "n_steps": args.n_steps, "batch_size": args.batch_size,
        "threads": torch.get_num_threads(), "generate_s": round(t_generate, 2),
        "evaluate_one_image_at_a_time_s": round(times[1], 2),
        f"evaluate_{args.images_per_batch}_images_per_batch_s": round(t_eval, 2),
        "batching_speedup": round(times[1] / t_eval, 3), "same_results": same,
        "images_per_s_generate_plus_evaluate": round(n / (t_generate + t_eval), 4),
    }
    print(f"generate + evaluate PCAM±: {result['images_per_s_generate_plus_evaluate']} images/s "
          f"({n} images, generate {t_generate:.1f} s, evaluate {t_eval:.1f} s)")
    print(f"evaluate, {args.images_per_batch} images per batch vs one at a time: {result['batching_speedup']}x "
          f"(same numbers: {same})")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
