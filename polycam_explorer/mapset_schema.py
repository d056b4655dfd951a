"""The map-set header's schema and the checks of a file's contents: one place that says what a
valid map-set file holds (:mod:`polycam_explorer.mapset_io` reads and writes it)."""
from __future__ import annotations

import math
import os

from PIL import Image


class Corrupt(Exception):
    """What is wrong with a file that is ours but damaged (made a ValueError naming the file)."""


def short(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def need(condition: bool, what: str) -> None:
    if not condition:
        raise Corrupt(what)


def is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def is_scalar(v) -> bool:
    return v is None or isinstance(v, (str, bool, int, float))


SCHEMA = {"layers": list, "class_names": list, "model_name": str, "model_id": str, "mean": list,
           "std": list, "probed": list, "stats": dict, "dtype": str}
KINDS = {list: "a list", str: "a string", dict: "an object"}


def check_header(h: dict) -> None:
    """The header's schema: every key present with its type; lengths that agree."""
    missing = [k for k in SCHEMA if k not in h]
    need(not missing, f"the header lacks {', '.join(map(repr, missing))}")
    for key, kind in SCHEMA.items():
        need(isinstance(h[key], kind), f"header {key!r} must be {KINDS[kind]}, got {short(h[key])}")
    layers = h["layers"]
    need(len(layers) > 0 and all(isinstance(s, str) and s for s in layers),
          f"header 'layers' must be a non-empty list of layer names, got {short(layers)}")
    need(len(set(layers)) == len(layers), f"header 'layers' repeats a layer: {short(layers)}")
    need(all(isinstance(p, bool) for p in h["probed"]) and len(h["probed"]) == len(layers),
          f"header 'probed' must be {len(layers)} true/false values (one per layer), got {short(h['probed'])}")
    need(h["probed"] == sorted(h["probed"]),
         f"header 'probed' must mark the coarsest layers (the last ones) as probed, as a sweep does "
         f"(coarsest first), got {short(h['probed'])}")
    need(len(h["class_names"]) > 0 and all(isinstance(s, str) for s in h["class_names"]),
          f"header 'class_names' must be a non-empty list of strings, got {short(h['class_names'])}")
    for key in ("mean", "std"):
        need(len(h[key]) > 0 and all(is_number(v) for v in h[key]),
              f"header {key!r} must be a list of finite numbers, got {short(h[key])}")
    need(len(h["mean"]) == len(h["std"]), f"header 'mean' has {len(h['mean'])} values, 'std' {len(h['std'])}")
    need(all(v > 0 for v in h["std"]), f"header 'std' must be positive, got {short(h['std'])}")
    for key, value in h["stats"].items():
        need(is_scalar(value) or (isinstance(value, list) and all(is_scalar(v) for v in value)),
              f"header 'stats' entry {key!r} must be a number, string or flat list, got {short(value)}")
    need(h["dtype"] in ("float16", "float32"), f"header 'dtype' must be 'float16' or 'float32', got {short(h['dtype'])}")
    frame = h.get("frame")  # optional: files written before it load without one
    need(frame is None or (isinstance(frame, list) and len(frame) == 2 and all(
        isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in frame)),
          f"header 'frame' must be null or [H, W] positive ints, got {short(frame)}")
    limit = Image.MAX_IMAGE_PIXELS  # the frame is a photo's size, and photos are read under this limit
    need(frame is None or not limit or frame[0] * frame[1] <= limit,
         f"header 'frame' is {short(frame)}: over {limit} pixels, PIL's limit for a photo (Image.MAX_IMAGE_PIXELS)")


def check_image(shape: tuple, channels: int) -> None:
    need(len(shape) == 4 and shape[0] == 1 and shape[1] == channels,
          f"the image has shape {tuple(shape)}; expected [1, {channels}, H, W] (one value of 'mean' per channel)")
    need(min(shape) > 0, f"the image has shape {tuple(shape)}: it is empty")


def check_activations(name: str, shape: tuple) -> None:
    need(min(shape) > 0, f"the array {name!r} has shape {tuple(shape)}: it is empty (a layer's activations "
                         "have at least one channel and one pixel)")


PROBABILITY_SLACK = 1e-3  # fp16 files store s0 - S-, whose rounding may step a little past 0 or 1


def check_probabilities(what: str, x) -> None:
    """Scores are class probabilities (softmax or sigmoid outputs): in [0, 1], up to fp16 rounding."""
    low, high = (float(x.min()), float(x.max())) if x.size else (0.0, 0.0)
    need(low >= -PROBABILITY_SLACK and high <= 1 + PROBABILITY_SLACK,
         f"{what} holds values in [{low:g}, {high:g}], outside [0, 1]: the scores of a map set are class "
         "probabilities")


def memory_budget() -> int:
    """Bytes a map-set file's arrays may take once decompressed: an eighth of the memory available
    now (the least of the system's and this process's cgroup's), as decoding fp16 arrays takes
    several times their size again; 1 GiB where neither can be read."""
    available = []
    try:
        with open("/proc/meminfo") as f:
            available += [int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:")]
    except (OSError, ValueError, IndexError):
        pass
    try:
        with open("/sys/fs/cgroup/memory.max") as limit, open("/sys/fs/cgroup/memory.current") as used:
            available.append(int(limit.read()) - int(used.read()))
    except (OSError, ValueError):  # no cgroup v2, or no limit ("max")
        pass
    if not available and hasattr(os, "sysconf"):
        try:
            available.append(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
        except (ValueError, OSError):
            pass
    return max(min(available), 0) // 8 if available else 1 << 30
