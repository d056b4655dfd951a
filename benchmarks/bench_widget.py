"""Widget benchmark: Python-side time from setting a control to the canvas having its new pixels.

Targets (DESIGN.md): p95 <= 10 ms at 224x224 and <= 30 ms at 448x448 after the sweep; the first
view of a class not yet seen <= 50 ms on a CPU. The reference is the authors' notebook, which
re-renders a matplotlib figure per change; that is measured here too, in the same run.

The 224x224 map set is the real one of the sample cat (computed once, then read from the disk
cache). At 448x448 the activations are real (one forward pass) but the probe scores are random
probabilities: the time to draw does not depend on their values, and a real 448 sweep takes minutes
on a CPU. The last line is one JSON object.

    python benchmarks/bench_widget.py [--changes 200]
"""
from __future__ import annotations

import argparse
import io
import itertools
import json
import time

import numpy as np
import torch

import polycam_explorer as pe
from polycam_explorer.layers import capture_activations
from polycam_explorer.model_state import inference_state
from polycam_explorer.mapset import MapSet
from polycam_explorer.identity import model_fingerprint
from polycam_explorer.models import probabilities
from polycam_explorer.probes import LayerScores


def synthetic_mapset(model: pe.Classifier, size: int) -> MapSet:
    """Real activations at ``size``, random probe scores."""
    x = pe.load_image(pe.cache.sample_images()[0], model, size=size)
    with inference_state(model.net):
        layers = pe.find_target_layers(model, (size, size))  # the model's rule, as compute_mapset
        logits, acts = capture_activations(model.net, x, layers)
    s0 = probabilities(logits)[0]
    ms = MapSet(image=x, layers=layers, activations=[acts[n] for n in layers], s0=s0,
                class_names=model.class_names, model_name=model.name, model_id=model_fingerprint(model),
                mean=model.mean, std=model.std)
    g = torch.Generator().manual_seed(0)
    for i, a in enumerate(ms.activations):
        k = a.shape[0]
        ms.set_scores(i, LayerScores(torch.softmax(torch.randn(k, s0.numel(), generator=g) * 3, 1),
                                     torch.softmax(torch.randn(k, s0.numel(), generator=g) * 3, 1)))
    return ms


def timed_ms(fn) -> float:
    start = time.perf_counter()
    fn()
    return 1000 * (time.perf_counter() - start)


def control_changes(ex: "pe.Explorer", n: int) -> list[float]:
    """Times of ``n`` control changes among maps already cached (depth, variant, view settings)."""
    depths = [v for _, v in ex.depth.options]
    settings = itertools.cycle(
        [(ex.depth, d) for d in depths] + [(ex.variant, v) for v in ("+", "-", "+-")]
        + [(ex.opacity, o) for o in (0.3, 0.7)] + [(ex.cmap, c) for c in ("viridis", "turbo")]
        + [(ex.mode, m) for m in ("heatmap", "masked", "overlay")] + [(ex.lnorm, b) for b in (False, True)])
    for control, value in itertools.islice(settings, 40):  # warm every cache once
        control.value = value
    times = []
    for control, value in itertools.islice(settings, n):
        if control.value == value:
            continue
        sent = ex.canvases[0].frames_sent
        times.append(timed_ms(lambda: setattr(control, "value", value)))
        assert ex.canvases[0].frames_sent > sent, "the canvas received no frame"
    return times


def first_views(ex: "pe.Explorer", n: int) -> list[float]:
    """Times to show classes never shown before (new P maps, strip and teaching view)."""
    seen = {ex.klass.value}
    classes = [c for c in range(ex.ms.num_classes) if c not in seen][:: max(1, ex.ms.num_classes // n)][:n]
    return [timed_ms(lambda c=c: setattr(ex.klass, "value", c)) for c in classes]


def matplotlib_rerender(ms: MapSet, n: int = 10) -> float:
    """Median time of one matplotlib re-render of an overlay figure (the authors' notebook way)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from polycam_explorer import render

    image = render.image_uint8(ms.image, ms.mean, ms.std)
    c = ms.topk(1)[0][0]
    times = []
    for depth in itertools.islice(itertools.cycle(range(1, len(ms.layers) + 1)), n):
        def draw():
            fig, ax = plt.subplots(figsize=(5, 5))
            ax.imshow(image)
            ax.imshow(ms.saliency(c, "+-", depth).numpy(), cmap="jet", alpha=0.5)
            ax.axis("off")
            fig.savefig(io.BytesIO(), format="png")
            plt.close(fig)
        times.append(timed_ms(draw))
    return float(np.median(times))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--changes", type=int, default=200)
    parser.add_argument("--new-classes", type=int, default=20)
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    model = pe.load_model()
    result = {"threads": torch.get_num_threads()}
    for size in (224, 448):
        ms = pe.mapset_for(pe.cache.sample_images()[0], model, progress=False) if size == 224 \
            else synthetic_mapset(model, size)
        ex = pe.Explorer(ms, size=max(320, size))
        changes = control_changes(ex, args.changes)
        firsts = first_views(ex, args.new_classes)
        result[f"{size}"] = {
            "scores": "real" if size == 224 else "synthetic",
            "control_p50_ms": round(float(np.percentile(changes, 50)), 2),
            "control_p95_ms": round(float(np.percentile(changes, 95)), 2),
            "first_view_p50_ms": round(float(np.percentile(firsts, 50)), 2),
            "first_view_p95_ms": round(float(np.percentile(firsts, 95)), 2),
            "changes": len(changes), "new_classes": len(firsts),
        }
        if size == 224:
            result["matplotlib_rerender_ms"] = round(matplotlib_rerender(ms), 1)
        ex.close()
        print(f"{size}x{size}: control p95 {result[str(size)]['control_p95_ms']} ms, first view of a class "
              f"p95 {result[str(size)]['first_view_p95_ms']} ms")
    result["speedup_vs_matplotlib_p95"] = round(result["matplotlib_rerender_ms"] / result["224"]["control_p95_ms"], 1)
    print(f"matplotlib re-render (the authors' notebook way): {result['matplotlib_rerender_ms']} ms per change")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
