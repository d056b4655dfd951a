"""Forward-pass backends: ms/image of each available path against eager fp32, and its map agreement.

Measured in one run on this machine, the embedded EfficientNet-Lite0 at 224x224, at the sweep's
batch size (16 on a CPU):
  - setup_s: what building the path costs once per model and input size (copy, torch.compile,
    ONNX export + session), counted separately and as a break-even in probe images;
  - ms_per_image: median over rounds, the paths interleaved (A B C ... A B C ...) because the
    machine may be shared; speedup = eager's / the path's;
  - agreement: the smallest Pearson r over every depth, variant (+, -, ±) and the top-3 classes
    between the path's full map set and eager fp32's, on each sample image (at --agreement-size,
    default 96x96, so that a full eager sweep per image stays under a minute).
The last line is one JSON object with every figure and the load average.

    python benchmarks/bench_backends.py [--rounds 5] [--batch-size 16] [--images 4] [--agreement-size 96]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import torch

import polycam_explorer as pe
from polycam_explorer import backends
from polycam_explorer.backends import pearson

PATHS = [("eager", "fp32"), ("channels_last", "fp32"), ("compile", "fp32"), ("onnxruntime", "fp32"),
         ("channels_last", "bf16"), ("compile", "bf16")]


def label(backend: str, precision: str) -> str:
    return backend if precision == "fp32" else f"{backend}+{precision}"


def agreement(a: pe.MapSet, b: pe.MapSet) -> float:
    return min(pearson(a.saliency(c, v, d), b.saliency(c, v, d)) for c, _, _ in a.topk(3)
               for v in ("+", "-", "+-") for d in range(1, len(a.layers) + 1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--images", type=int, default=4, help="sample images for the agreement (0: skip)")
    parser.add_argument("--agreement-size", type=int, default=96)
    args = parser.parse_args()

    model = pe.load_model()
    net = model.net.eval()
    fingerprint = pe.model_fingerprint(model)
    x = pe.load_image(pe.cache.sample_images()[0], model, size=args.size)
    batch = x.expand(args.batch_size, -1, -1, -1).contiguous()
    paths = [(b, p) for b, p in PATHS if b in backends.installed()]
    runners, setup = {}, {}
    for backend, precision in paths:
        backends.clear_cache()
        backends._MEMORY_GRAPHS.clear()
        graph = backends._graph_path(fingerprint, x)
        if graph is not None and graph.is_file():
            graph.unlink()  # an honest export: not from an earlier run's disk copy
        runner = backends.runner_for(net, x, backend=backend, precision=precision, batch_size=args.batch_size,
                                     fingerprint=fingerprint)
        runners[label(backend, precision)] = runner
        setup[label(backend, precision)] = round(runner.setup_s, 2)
    times = {name: [] for name in runners}
    with torch.no_grad():
        ref_logits = net(batch)
        logit_diff = {name: float((r(batch).float() - ref_logits).abs().max()) for name, r in runners.items()}
        for _ in range(args.rounds):
            for name, runner in runners.items():  # interleaved
                start = time.perf_counter()
                runner(batch)
                times[name].append(time.perf_counter() - start)
    ms_img = {name: round(1000 * statistics.median(t) / args.batch_size, 2) for name, t in times.items()}
    speedup = {name: round(ms_img["eager"] / v, 2) for name, v in ms_img.items()}
    break_even = {name: (round(setup[name] / max(ms_img["eager"] - v, 1e-9) * 1000) if v < ms_img["eager"] else None)
                  for name, v in ms_img.items() if name != "eager"}
    for name in runners:
        print(f"{name:>22}: {ms_img[name]:7.2f} ms/image  x{speedup[name]:5.2f}  setup {setup[name]:6.2f} s  "
              f"max |logit - eager| {logit_diff[name]:.2g}")

    agree: dict[str, list[float]] = {}
    for path in pe.cache.sample_images()[:args.images]:
        xi = pe.load_image(path, model, size=args.agreement_size)
        ref = pe.compute_mapset(model, xi, batch_size=args.batch_size, progress=False, backend="eager")
        for backend, precision in paths[1:] + [("auto", "fp32")]:
            ms = pe.compute_mapset(model, xi, batch_size=args.batch_size, progress=False, backend=backend,
                                   precision=precision)
            name = label(backend, precision) if backend != "auto" else f"auto({ms.stats['backend']})"
            agree.setdefault(name, []).append(round(agreement(ref, ms), 6))
            if precision == "bf16":
                agree.setdefault(f"{name} measured by the sweep", []).append(ms.stats["precision_agreement"])
        print(f"agreement on {path.name} at {args.agreement_size}px: "
              + ", ".join(f"{k} {v[-1]:.6f}" for k, v in agree.items()))
    result = {
        "model": model.name, "size": args.size, "batch_size": args.batch_size, "threads": torch.get_num_threads(),
        "rounds": args.rounds, "ms_per_image": ms_img, "speedup_vs_eager": speedup, "setup_s": setup,
        "break_even_probe_images": break_even, "max_logit_diff": logit_diff,
        "agreement_min_r": {k: min(v) for k, v in agree.items()}, "agreement_size": args.agreement_size,
        "agreement_images": args.images, "loadavg": [round(v, 2) for v in os.getloadavg()],
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
