"""GPU benchmark: a full Poly-CAM map set of VGG16 and ResNet50 at 224x224 on one CUDA device,
and whether evaluating several images per forward batch beats one image at a time.

Prints, measured in one run on the GPU at hand (random weights are fine for timing):
  - seconds per full map set (every class, variant and depth from one sweep) for each model,
    backend (pe.compute_mapset's ``backend=``: eager, channels_last, compile) and precision
    (fp32 with PyTorch's default TF32 convolutions; opt-in bf16 / fp16 autocast), batch 64 and 256;
    compile's one-time compile is reported as setup, not in the per-map-set time;
  - each path's agreement with eager fp32 with TF32 off: the smallest Pearson r over the three
    variants and every depth, for the top class;
  - insertion + deletion (224 steps) per image, one image per call vs several images sharing
    forward batches.
Targets (DESIGN.md): VGG16 <= 0.5 s, ResNet50 <= 1 s on one H100. The last line is one JSON object.

    python benchmarks/bench_gpu.py [--quick]      (--quick: tiny sizes, runs on a CPU, for checking)
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

import polycam_explorer as pe
from polycam_explorer.metrics import faithfulness_curves

SAMPLE = Path(pe.__file__).parent / "data" / "chelsea.jpg"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device, repeats: int) -> tuple[float, object]:
    """Median wall time of ``repeats`` runs after one warm-up run."""
    out = fn()
    times = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        out = fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2], out


def agreement(ref: pe.MapSet, other: pe.MapSet) -> float:
    """Smallest Pearson r between the two map sets' maps: top class, every variant and depth."""
    c = ref.topk(1)[0][0]
    worst = 1.0
    for v in ("+", "-", "+-"):
        for d in range(1, len(ref.layers) + 1):
            a, b = ref.saliency(c, v, d).flatten().double(), other.saliency(c, v, d).flatten().double()
            worst = min(worst, float(torch.corrcoef(torch.stack([a, b]))[0, 1]))
    return worst


PATHS = [("eager", "fp32"), ("channels_last", "fp32"), ("channels_last", "bf16"), ("channels_last", "fp16"),
         ("compile", "fp32"), ("compile", "fp16")]  # compile: at the largest batch only (each compile costs seconds)


def bench_model(name: str, device: torch.device, size: int, batch_sizes: list[int], repeats: int,
                paths: list[tuple[str, str]]) -> dict:
    """Each backend and precision (pe.compute_mapset's own paths) against eager fp32 with TF32 off."""
    clf = pe.load_model(name, None)
    clf.net.to(device)
    x = pe.load_image(SAMPLE, clf, size=size).to(device)
    rows = {}
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    ref = pe.compute_mapset(clf, x, batch_size=batch_sizes[0], progress=False, backend="eager")
    torch.backends.cudnn.allow_tf32 = True  # PyTorch's default for cuDNN convolutions
    torch.backends.cuda.matmul.allow_tf32 = True
    layers = ref.layers
    for backend, precision in paths:
        for b in batch_sizes[-1:] if backend == "compile" else batch_sizes:
            seconds, ms = timed(lambda: pe.compute_mapset(clf, x, layers, batch_size=b, progress=False,
                                                          backend=backend, precision=precision), device, repeats)
            row = {"s": round(seconds, 4), "r_min": round(agreement(ref, ms), 6),
                   "setup_s": round(float(ms.stats.get("backend_setup_s", 0.0)), 2),
                   "forward_passes": ms.stats["forward_passes"]}
            rows[f"{backend}/{precision}/b{b}"] = row
            print(f"{name:9s} {backend:13s} {precision:4s} batch {b:4d}: {seconds:7.3f} s  r_min {row['r_min']:.6f}"
                  f"  setup {row['setup_s']:.1f} s  ({row['forward_passes']} passes)", flush=True)
    return {"layers": layers, "runs": rows}


def bench_eval(name: str, device: torch.device, size: int, n_images: int, batch_size: int, repeats: int) -> dict:
    """Insertion + deletion of ``n_images`` maps: one call per image vs one call for all."""
    clf = pe.load_model(name, None)
    clf.net.to(device)
    x = pe.load_image(SAMPLE, clf, size=size).to(device)
    gen = torch.Generator().manual_seed(0)
    xs = [x + 0.1 * torch.randn(x.shape, generator=gen).to(device) for _ in range(n_images)]
    sals = [torch.rand(size, size, generator=gen).to(device) for _ in range(n_images)]
    classes = [1] * n_images
    steps = size

    def one_at_a_time():
        return [faithfulness_curves(clf, [xi], [si], [ci], steps, batch_size=batch_size)[0]
                for xi, si, ci in zip(xs, sals, classes)]

    def together():
        return faithfulness_curves(clf, xs, sals, classes, steps, batch_size=batch_size)

    t_one, a = timed(one_at_a_time, device, repeats)
    t_all, b = timed(together, device, repeats)
    diff = max(abs(p[k][0] - q[k][0]) for p, q in zip(a, b) for k in ("insertion", "deletion"))
    print(f"evaluate {name}, {n_images} images, batch {batch_size}: one at a time {t_one / n_images:.4f} s/image, "
          f"together {t_all / n_images:.4f} s/image ({t_one / t_all:.2f}x), max AUC difference {diff:.2e}")
    return {"images": n_images, "batch_size": batch_size, "one_s_per_image": round(t_one / n_images, 4),
            "together_s_per_image": round(t_all / n_images, 4), "speedup": round(t_one / t_all, 3),
            "max_auc_diff": diff}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="resnet18 at 32x32, on any device (checks the script; not a figure)")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    size, batches, repeats = (32, [64], 1) if args.quick else (224, [64, 256], 3)
    models = ["resnet18"] if args.quick else ["vgg16", "resnet50"]
    paths = [p for p in PATHS if device.type == "cuda" or p[1] != "fp16"]
    if args.quick:
        paths = [p for p in paths if p[0] != "compile"]
    card = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"device: {card}, torch {torch.__version__}", flush=True)
    result = {"device": card, "torch": torch.__version__, "size": size}
    for name in models:
        result[name] = bench_model(name, device, size, batches, repeats, paths)
    result["evaluate"] = [bench_eval(models[-1], device, size, n, b, repeats) for n, b in
                          ([(2, 16)] if args.quick else [(8, 64), (8, 256)])]
    print(json.dumps(result))


if __name__ == "__main__":
    import warnings

    warnings.filterwarnings("ignore", message=".*randomly initialised.*")
    main()
