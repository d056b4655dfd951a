"""Saving and loading map sets as one ``.npz`` file: plain arrays and a JSON header, no pickle.

Written to a temporary file beside the target, then renamed, so no half-written file is left.
With ``fp16``, deletion scores are stored as ``s0 - S-`` (array ``dminus_l``), not as ``S-``: the
PCAM- weights ``ReLU(s0 - S-)`` are often far smaller than fp16's rounding step near ``s0``.
"""
from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn

from .files import atomic_write

FORMAT = "polycam-explorer/mapset"
VERSION = 1


def save_mapset(ms, path: str | os.PathLike, *, fp16: bool = False) -> None:
    """Write ``ms`` to ``path`` (compressed npz). ``fp16`` halves activations and scores."""
    path = Path(path)
    if path.suffix != ".npz":
        raise ValueError(f"map-set files end in .npz, got {str(path)!r}")
    dtype = np.float16 if fp16 else np.float32

    def arr(t: torch.Tensor) -> np.ndarray:
        return t.detach().float().cpu().numpy().astype(dtype)

    header = {
        "format": FORMAT, "version": VERSION, "layers": ms.layers, "class_names": ms.class_names,
        "model_name": ms.model_name, "model_id": ms.model_id, "mean": list(ms.mean), "std": list(ms.std),
        "probed": [p is not None for p in ms._plus], "stats": ms.stats, "dtype": np.dtype(dtype).name,
    }
    arrays = {"header": np.array(json.dumps(header)), "image": ms.image.detach().float().cpu().numpy(),
              "s0": ms.probs.detach().float().cpu().numpy()}
    for i, act in enumerate(ms.activations):
        arrays[f"act_{i}"] = arr(act)
        if ms._plus[i] is not None:
            arrays[f"splus_{i}"] = arr(ms._plus[i])
            if fp16:
                arrays[f"dminus_{i}"] = arr(ms.probs.float()[None] - ms._minus[i].float())
            else:
                arrays[f"sminus_{i}"] = arr(ms._minus[i])
    with atomic_write(path) as f:
        np.savez_compressed(f, **arrays)


def load_mapset(path: str | os.PathLike, *, device=None, model: nn.Module | None = None,
                layers: Sequence[str] | None = None):
    """Read a map-set file; refuse files that are not ours, damaged, or made with another model.

    Raises:
        ValueError: unreadable, truncated or foreign file; model or layers that do not match.
    """
    from .mapset import MapSet
    from .models import as_classifier, model_fingerprint
    from .probes import LayerScores

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"map-set file {str(path)!r} does not exist")
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
        header = json.loads(str(arrays.pop("header")))
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, KeyError, json.JSONDecodeError) as exc:
        raise ValueError(f"{str(path)!r} is not a readable map-set file (truncated or damaged?): {exc}") from exc
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise ValueError(f"{str(path)!r} is not a polycam-explorer map-set file")
    if header.get("version") != VERSION:
        raise ValueError(f"{str(path)!r} has map-set format version {header.get('version')}; "
                         f"this polycam-explorer reads version {VERSION}")
    if model is not None:
        clf = as_classifier(model)
        if model_fingerprint(clf) != header["model_id"]:
            raise ValueError(f"{str(path)!r} was made with model {header['model_name']!r} "
                             f"({header['model_id']}), not with the given {clf.name!r} "
                             f"({model_fingerprint(clf)}): recompute it with pe.compute_mapset")
    if layers is not None and list(layers) != header["layers"]:
        raise ValueError(f"{str(path)!r} was made for layers {header['layers']}, not {list(layers)}")

    def tensor(key: str) -> torch.Tensor:
        if key not in arrays:
            raise ValueError(f"{str(path)!r} lacks the array {key!r}: the file is incomplete")
        return torch.from_numpy(arrays[key].astype(np.float32)).to(device or "cpu")

    n_layers = len(header["layers"])
    ms = MapSet(image=tensor("image"), layers=header["layers"],
                activations=[tensor(f"act_{i}") for i in range(n_layers)], s0=tensor("s0"),
                class_names=header["class_names"], model_name=header["model_name"],
                model_id=header["model_id"], mean=header["mean"], std=header["std"], stats=header["stats"])
    for i, probed in enumerate(header["probed"]):
        if probed:
            if f"dminus_{i}" in arrays:  # fp16 files: s0 - S-
                s_minus = ms.probs[None] - tensor(f"dminus_{i}")
            else:
                s_minus = tensor(f"sminus_{i}")
            scores = LayerScores(tensor(f"splus_{i}"), s_minus)
            expected = (ms.activations[i].shape[0], ms.num_classes)
            if tuple(scores.s_plus.shape) != expected or tuple(scores.s_minus.shape) != expected:
                raise ValueError(f"{str(path)!r}: scores of layer {header['layers'][i]!r} have shape "
                                 f"{tuple(scores.s_plus.shape)}, expected {expected}")
            ms.set_scores(i, scores)
    return ms
