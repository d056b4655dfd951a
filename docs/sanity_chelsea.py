"""Cascading randomisation on the sample cat: the figure docs/sanity_chelsea.png and the numbers
of the README's "Sanity check" section (python docs/sanity_chelsea.py [SIZE]).

One probe sweep per step (the embedded EfficientNet-Lite0, stages granularity: 6 steps). From each
sweep several maps are compared with the intact model's, to see where the structure that survives
randomisation comes from:
  pm       PCAM± at full depth (what the Sanity tab shows)
  pm_d1    PCAM± at depth 1 (the coarsest layer's CAM: no recursion, no LNorm)
  pm_nol   PCAM± at full depth without LNorm (eq. 7)
  plus     PCAM+ at full depth;  minus  PCAM- at full depth
  ones     the recursion with every channel weight 1 (no probe at all: activations + recursion only)
  gradcam  Grad-CAM (torchcam) on the coarsest target layer
and, with every weight random, each map against the image's edge map (Sobel) and against a second
random network (another seed).
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from scipy.stats import spearmanr

import polycam_explorer as pe
from polycam_explorer import baselines, polycam, render
from polycam_explorer.robustness import (_reinitialise, iter_cascading_randomization, randomization_groups,
                                         randomization_strip)

HERE = Path(__file__).parent
SIZE = int(sys.argv[1]) if len(sys.argv) > 1 else 224
torch.set_num_threads(2)


def rho(a, b) -> float:
    return float(spearmanr(np.ravel(a), np.ravel(b)).statistic)


def maps_of(model, x, c, layers) -> dict[str, np.ndarray]:
    ms = pe.compute_mapset(model, x, layers, progress=False)
    out = {"pm": ms.saliency(c, "+-"), "pm_d1": ms.saliency(c, "+-", depth=1),
           "pm_nol": ms.saliency(c, "+-", lnorm=False), "plus": ms.saliency(c, "+"),
           "minus": ms.saliency(c, "-")}
    cams = [polycam.layer_cam(a, torch.ones(a.shape[0])) for a in ms.activations]
    out["ones"] = polycam.display_map(polycam.poly_recursion(cams)[-1], ms.size)
    out["gradcam"] = baselines.gradcam(model, x, c)
    out["_probs"] = ms.probs
    return {k: v.detach().float().cpu().numpy() for k, v in out.items()}


def main() -> None:
    t0 = time.time()
    model = pe.load_model()
    if SIZE != 224:
        model.input_size = (SIZE, SIZE)
    image = Image.open(Path(pe.__file__).parent / "data" / "chelsea.jpg").convert("RGB").resize((SIZE, SIZE))
    x = pe.load_image(image, model)
    layers = pe.find_target_layers(model)
    ms0 = pe.compute_mapset(model, x, layers, progress=False)
    c = ms0.topk(1)[0][0]
    other = 967  # espresso: another class on the intact model, for scale
    groups = randomization_groups(model, x, "stages")
    extra: list[dict] = []

    def explain(m, xx, cc):
        maps = maps_of(m, xx, cc, layers)
        extra.append(maps)
        print(f"  map {len(extra)} at {time.time() - t0:.0f}s, p(class) {maps['_probs'][cc]:.3g}", flush=True)
        return maps["pm"]

    steps = []
    for step in iter_cascading_randomization(model, x, c, explain, groups=groups, seed=0):
        steps.append(step)
        print(f"step {len(steps)} {step.name}: rho {step.spearman:.3f} ssim {step.ssim:.3f}", flush=True)
    orig = extra[0]
    keys = ["pm", "pm_d1", "pm_nol", "plus", "minus", "ones", "gradcam"]
    table = {k: [rho(orig[k], e[k]) for e in extra[1:]] for k in keys}

    # a second fully random network (another seed): does the random map depend on the weights at all?
    rand2 = pe.load_model()
    with torch.random.fork_rng():
        torch.manual_seed(123)
        for g in groups:
            for name in g.modules:
                _reinitialise(rand2.net.get_submodule(name))
    second = maps_of(rand2, x, c, layers)
    img = render.image_uint8(x, model.mean, model.std).astype(np.float64).mean(2)
    gy, gx = np.gradient(img)
    edges = np.hypot(gx, gy)
    last = extra[-1]
    findings = {
        "size": SIZE, "class": int(c), "class_name": ms0.class_names[c], "layers": layers,
        "steps": [s.name for s in steps], "ssim_pm": [s.ssim for s in steps], "spearman": table,
        "random_vs_second_random": {k: rho(last[k], second[k]) for k in keys},
        "intact_vs_edges": {k: rho(orig[k], edges) for k in keys},
        "random_vs_edges": {k: rho(last[k], edges) for k in keys},
        "intact_class_vs_espresso_pm": rho(orig["pm"], ms0.saliency(other, "+-").numpy()),
        "random_p_class": float(last["_probs"][c]), "random_max_prob": float(last["_probs"].max()),
        "seconds": time.time() - t0,
    }
    print(json.dumps(findings, indent=1))
    (HERE / f"sanity_chelsea_{SIZE}.json").write_text(json.dumps(findings, indent=1))
    strip = randomization_strip(steps, render.image_uint8(x, model.mean, model.std), tile=112)
    grad_steps = [s.__class__(s.name, s.modules, e["gradcam"], table["gradcam"][i], float("nan"), orig["gradcam"],
                              s.resolution) for i, (s, e) in enumerate(zip(steps, extra[1:]))]
    strip2 = randomization_strip(grad_steps, render.image_uint8(x, model.mean, model.std), tile=112)
    both = np.concatenate([strip, strip2], axis=0)
    Image.fromarray(both).save(HERE / ("sanity_chelsea.png" if SIZE == 224 else f"sanity_chelsea_{SIZE}.png"))


if __name__ == "__main__":
    main()
