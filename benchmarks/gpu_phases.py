"""Where a GPU sweep's time goes (VGG16 / ResNet50 at 224, random weights): each phase of
pe.compute_mapset timed with CUDA synchronised around it (rest_s: the probe batches themselves).
Needs a CUDA device.  python benchmarks/gpu_phases.py [vgg16 resnet50]. Last line: one JSON object."""
from __future__ import annotations

import json
import sys
import time

import torch
import torchvision

import polycam_explorer as pe
from polycam_explorer import compute, identity

device = torch.device("cuda")
spent: dict[str, float] = {}


def timed(name, fn):
    def wrapper(*a, **k):
        torch.cuda.synchronize()
        t = time.perf_counter()
        out = fn(*a, **k)
        torch.cuda.synchronize()
        spent[name] = spent.get(name, 0.0) + time.perf_counter() - t
        return out
    return wrapper


# the identity hash runs in a worker thread beside the planning and the probes (timed alone as
# fingerprint_s); what the sweep waits for it falls in rest_s
for name in ("capture_activations", "plan_layer", "probabilities", "describe_layers", "_AgreementCheck",
             "precision_agreement"):
    setattr(compute, name, timed(name, getattr(compute, name)))
compute.backends.runner_for = timed("runner_for", compute.backends.runner_for)
result = {"device": torch.cuda.get_device_name(device), "torch": torch.__version__}
for arch in sys.argv[1:] or ["vgg16", "resnet50"]:
    net = getattr(torchvision.models, arch)(weights=None).eval().to(device)
    model = pe.as_classifier(net)
    x = torch.randn(1, 3, 224, 224, device=device)
    fp = []
    for _ in range(3):
        torch.cuda.synchronize(); t = time.perf_counter(); identity.model_fingerprint(model); fp.append(time.perf_counter() - t)
    runs = {}
    for backend, precision in (("channels_last", "fp32"), ("compile", "fp16")):
        pe.compute_mapset(model, x, batch_size=256, progress=False, backend=backend, precision=precision)
        spent.clear()
        torch.cuda.synchronize(); t = time.perf_counter()
        pe.compute_mapset(model, x, batch_size=256, progress=False, backend=backend, precision=precision)
        torch.cuda.synchronize()
        total = time.perf_counter() - t
        runs[f"{backend}/{precision}"] = {"total_s": round(total, 4), **{k: round(v, 4) for k, v in spent.items()},
                                          "rest_s": round(total - sum(spent.values()), 4)}
        print(arch, backend, precision, runs[f"{backend}/{precision}"], flush=True)
    result[arch] = {"fingerprint_s": [round(v, 4) for v in fp], "runs": runs}
print(json.dumps(result))
