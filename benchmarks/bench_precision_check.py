"""How well the reduced-precision sweep's own agreement check tracks the truth.

For each random-weight network (``--seeds``), a sweep in fp32 (eager, TF32 off on a GPU) and one in
each reduced precision (channels_last under autocast: bf16, and fp16 on CUDA). Prints, per run,
the actual agreement (smallest Pearson r over the top-3 classes, the three variants and every
depth, against fp32), the sweep's own estimate (``ms.stats["precision_agreement"]``) and whether it
warned; a check is right when it warns exactly where the actual r is below the threshold
(:data:`backends.MIN_BF16_AGREEMENT`). The last line is one JSON object.

    python benchmarks/bench_precision_check.py [--model resnet50] [--size 224] [--seeds 3]
    python benchmarks/bench_precision_check.py --model resnet18 --size 64 --seeds 2   (a CPU check)
"""
from __future__ import annotations

import argparse
import json
import warnings

import torch
import torchvision

import polycam_explorer as pe
from polycam_explorer import backends
from polycam_explorer.backends import pearson


def actual_agreement(ref: pe.MapSet, ms: pe.MapSet) -> float:
    classes = ref.probs.topk(min(3, ref.num_classes)).indices.tolist()
    return min(pearson(ref.saliency(c, v, d), ms.saliency(c, v, d)) for c in classes
               for v in ("+", "-", "+-") for d in range(1, len(ref.layers) + 1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="resnet50", help="a torchvision classifier (random weights)")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=None, help="default: 256 on a GPU, 32 on a CPU")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    batch = args.batch_size or (256 if device.type == "cuda" else 32)
    precisions = ["bf16", "fp16"] if device.type == "cuda" else ["bf16"]
    card = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    image = pe.cache.sample_images()[0]
    runs = []
    for seed in range(args.seeds):
        torch.manual_seed(seed)
        net = getattr(torchvision.models, args.model)(weights=None).eval().to(device)
        clf = pe.as_classifier(net)
        x = pe.load_image(image, clf, size=args.size).to(device)
        tf32 = torch.backends.cudnn.allow_tf32
        torch.backends.cudnn.allow_tf32 = False
        ref = pe.compute_mapset(clf, x, batch_size=batch, progress=False, backend="eager")
        torch.backends.cudnn.allow_tf32 = tf32
        for precision in precisions:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                ms = pe.compute_mapset(clf, x, batch_size=batch, progress=False, backend="channels_last",
                                       precision=precision)
            warned = any(issubclass(w.category, backends.PrecisionWarning) for w in caught)
            actual = actual_agreement(ref, ms)
            row = {"seed": seed, "precision": precision, "actual_r": round(actual, 6),
                   "check_r": ms.stats["precision_agreement"], "warned": warned,
                   "right": warned == (actual < backends.MIN_BF16_AGREEMENT)}
            runs.append(row)
            print(row, flush=True)
    print(json.dumps({"device": card, "torch": torch.__version__, "model": args.model, "size": args.size,
                      "threshold": backends.MIN_BF16_AGREEMENT, "right": sum(r["right"] for r in runs),
                      "runs_total": len(runs), "runs": runs}))


if __name__ == "__main__":
    main()
