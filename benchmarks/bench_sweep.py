"""Sweep benchmark: our one-sweep map set against the bare forward passes and the per-class method.

Prints, measured in one run on this machine:
  (a) compute_mapset wall time / wall time of the bare batched forward passes it needs (target <= 1.10)
  (b) forward passes saved by de-duplicating identical and all-zero masks
  (c) 3 variants x top-3 classes from one sweep vs recomputing the probes per class and variant,
      as the authors' code does (target >= 6)
  (d) the eager fp32 sweep / the sweep on the default path (backend="auto", exact; goal >= 3 on a
      CPU), the two interleaved over --rounds (medians; the machine may be shared), and the
      default path's sweep / its own bare forward passes (target <= 1.10). The default path's
      first sweep, which pays its setup (ONNX export or torch.compile), is reported apart.
(a) and (c) are measured on the eager path, as before; (d) on both.
The last line is one JSON object with every figure and the load average.

    python benchmarks/bench_sweep.py [--batch-size 16] [--size 224] [--layers a,b,c] [--rounds 2]
                                     [--skip-per-class]

Defaults: the embedded EfficientNet-Lite0, its discovered layers, the sample cat at 224x224, 16
images per pass (this CPU's fastest per image; both sides use the same). About 6 minutes on 2 cores,
most of it the per-class baseline.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import time
from pathlib import Path

import torch

import polycam_explorer as pe
from polycam_explorer import backends, polycam
from polycam_explorer.layers import capture_activations
from polycam_explorer.model_state import inference_state
from polycam_explorer.models import probabilities
from polycam_explorer.probes import plan_layer

SAMPLE = Path(pe.__file__).parent / "data" / "chelsea.jpg"


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def bare_passes(net, x, batch_sizes):
    """The same forward passes as the sweep, on unmasked inputs: no hooks, masks or bookkeeping."""
    batches = {b: x.expand(b, -1, -1, -1).contiguous() for b in set(batch_sizes)}
    with inference_state(net):
        for b in batch_sizes:
            probabilities(net(batches[b]))


def bare_default(net, runner, x, sizes):
    """The default path's own passes: the capture pass (eager, batch 1), then s0, f(0) and the
    probe batches on the runner, on unmasked inputs."""
    batches = {b: x.expand(b, -1, -1, -1).contiguous() for b in set(sizes)}
    with inference_state(net):
        probabilities(net(x))
        for b in [1] + sizes[1:]:
            probabilities(runner(batches[b]))


def sweep_batch_sizes(ms, batch_size):
    sizes = [1, 1]  # the activation capture (gives s0) and f(0), shared by all all-zero masks
    for acts in ms.activations:
        probes = 2 * plan_layer(acts).unique.shape[0]
        sizes += [min(batch_size, probes - s) for s in range(0, probes, batch_size)]
    return sizes


def per_class_method(net, x, layers, class_idx, variant, batch_size):
    """One map the way the authors' code makes it: a probe sweep for this class and variant alone,
    keeping only this class's score; PCAM+ runs insertion probes, PCAM- deletion, PCAM± both."""
    with inference_state(net):
        logits, acts = capture_activations(net, x, layers)
        cams = []
        for layer in reversed(layers):
            s0 = probabilities(net(x))[0, class_idx]  # the authors' code re-runs the base pass per layer
            masks = polycam.activation_masks(acts[layer], x.shape[-2:])
            kinds = {"+": (False,), "-": (True,), "+-": (False, True)}[variant]
            scores = {}
            for deletion in kinds:
                out = []
                for s in range(0, masks.shape[0], batch_size):
                    m = masks[s:s + batch_size, None]
                    out.append(probabilities(net(x * ((1 - m) if deletion else m)))[:, class_idx])
                scores[deletion] = torch.cat(out)
            plus = scores.get(False, torch.zeros(masks.shape[0]))
            minus = scores.get(True, torch.zeros(masks.shape[0]))
            cams.insert(0, polycam.layer_cam(acts[layer], polycam.channel_weights(variant, s0, plus, minus)))
        return polycam.display_map(polycam.poly_recursion(cams)[-1], x.shape[-2:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", help="comma-separated target layers (default: discovered)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--rounds", type=int, default=2, help="interleaved eager / default sweeps for (d)")
    parser.add_argument("--skip-per-class", action="store_true", help="skip (c)'s per-class baseline")
    args = parser.parse_args()

    model = pe.load_model()
    net = model.net
    x = pe.load_image(SAMPLE, model, size=args.size)
    layers = args.layers.split(",") if args.layers else pe.find_target_layers(model, (args.size, args.size))
    bare_passes(net, x, [args.batch_size])  # warm-up

    eager = lambda: pe.compute_mapset(model, x, layers, batch_size=args.batch_size, progress=False,  # noqa: E731
                                      backend="eager")
    default = lambda: pe.compute_mapset(model, x, layers, batch_size=args.batch_size, progress=False)  # noqa: E731
    t_first_default, ms_default = timed(default)  # pays the default path's setup once
    t_eager, t_default, t_bare_default = [], [], []
    sizes = None
    runner = None
    for _ in range(args.rounds):  # interleaved: eager, default, default's bare passes, ...
        seconds, ms = timed(eager)
        t_eager.append(seconds)
        seconds, ms_default = timed(default)
        t_default.append(seconds)
        if sizes is None:
            sizes = sweep_batch_sizes(ms, args.batch_size)
            runner = backends.runner_for(net, x, backend=ms_default.stats["backend"], batch_size=args.batch_size,
                                         fingerprint=pe.model_fingerprint(model))
        t_bare_default.append(timed(lambda: bare_default(net, runner, x, sizes))[0])
    t_sweep, t_bare = t_eager[-1], timed(lambda: bare_passes(net, x, sizes))[0]
    eager_s, default_s = statistics.median(t_eager), statistics.median(t_default)
    bare_default_s = statistics.median(t_bare_default)
    channels = sum(a.shape[0] for a in ms.activations)
    naive = 2 * channels + 1
    ours = ms.stats["forward_passes"] + 1
    top3 = [c for c, _, _ in ms.topk(3)]
    t_maps, _ = timed(lambda: [ms.saliency(c, v) for c in top3 for v in polycam.VARIANTS])
    t_per_class = math.nan if args.skip_per_class else timed(
        lambda: [per_class_method(net, x, layers, c, v, args.batch_size) for c in top3 for v in polycam.VARIANTS])[0]
    t_one_sweep = t_sweep + t_maps
    result = {
        "model": ms.model_name, "size": args.size, "layers": layers, "channels": channels,
        "batch_size": args.batch_size, "threads": torch.get_num_threads(),
        "sweep_s": round(t_sweep, 3), "bare_forward_s": round(t_bare, 3),
        "sweep_over_bare": round(t_sweep / t_bare, 3),
        "naive_passes": naive, "forward_passes": ours, "passes_saved": naive - ours,
        "nine_maps_from_one_sweep_s": round(t_one_sweep, 3), "nine_maps_per_class_s": None if args.skip_per_class else round(t_per_class, 3),
        "one_sweep_speedup": None if args.skip_per_class else round(t_per_class / t_one_sweep, 2),
        "maps_after_sweep_ms": round(1000 * t_maps, 2),
        "default_backend": ms_default.stats["backend"], "rounds": args.rounds,
        "eager_sweep_s": round(eager_s, 3), "default_sweep_s": round(default_s, 3),
        "default_first_sweep_s": round(t_first_default, 3),
        "default_setup_s": ms_default.stats.get("backend_setup_s"),
        "eager_over_default": round(eager_s / default_s, 2),
        "default_bare_forward_s": round(bare_default_s, 3),
        "default_sweep_over_bare": round(default_s / bare_default_s, 3),
        "loadavg": [round(v, 2) for v in os.getloadavg()],
    }
    print(f"(a) sweep {t_sweep:.2f} s / bare forward passes {t_bare:.2f} s = {t_sweep / t_bare:.3f} (target <= 1.10)")
    print(f"(b) forward passes {ours} of {naive} naive: {naive - ours} saved by de-duplication")
    print(f"(c) 9 maps: one sweep {t_one_sweep:.2f} s vs per class and variant {t_per_class:.2f} s = "
          f"{t_per_class / t_one_sweep:.2f}x (target >= 6)")
    print(f"(d) sweep: eager fp32 {eager_s:.2f} s / default path ({ms_default.stats['backend']}) {default_s:.2f} s "
          f"= {eager_s / default_s:.2f}x (goal >= 3); first default sweep with setup {t_first_default:.2f} s; "
          f"default sweep / its bare passes {bare_default_s:.2f} s = {default_s / bare_default_s:.3f} (target <= 1.10)")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
