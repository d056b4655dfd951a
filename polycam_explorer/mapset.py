"""MapSet: one image's activations and probe scores, from which every map comes.

One sweep gives ``s0``, ``S+_l`` and ``S-_l`` (channels x classes) for every target layer; a map
for any class, variant (PCAM+, PCAM-, PCAM±) and depth is then a weighted channel sum and the
recursion of eq. [3], cached per (class, variant, LNorm) on the map set's device.
"""
from __future__ import annotations

import copy
import threading
from collections import OrderedDict
from typing import Sequence

import numpy as np
import torch
from torch import nn

from . import mapset_io, polycam
from .probes import LayerScores

CACHE_SIZE = 128


class MapSet:
    """Activations and probe scores of one image; maps for every class, variant and depth.

    Layers are ordered input side first (fine -> coarse). A map set being filled by a running
    sweep has only its coarsest layers probed: ``depth_available < len(layers)`` and
    ``complete`` is False; depths up to ``depth_available`` can already be shown.

    A progressive sweep (``iter_mapset(progressive=True)``) first fills the coarsest layer with
    *estimates*: ``estimate`` is True, ``depth_available`` is 1, and depth 1 is the honest partial
    channel sum over the ``channels_done`` of ``channels_total`` coarsest channels probed so far
    (the others weigh 0). ``revision`` changes whenever scores change: key caches of maps on it.
    """

    def __init__(self, *, image: torch.Tensor, layers: Sequence[str], activations: Sequence[torch.Tensor],
                 s0: torch.Tensor, class_names: Sequence[str] | None = None,
                 model_name: str = "model", model_id: str = "", mean: Sequence[float] = (0.5, 0.5, 0.5),
                 std: Sequence[float] = (0.5, 0.5, 0.5), stats: dict | None = None,
                 frame: tuple[int, int] | None = None) -> None:
        self.image = image
        self.layers = list(layers)
        self.activations = list(activations)
        self.probs = s0
        n_classes = int(s0.shape[0])
        self.class_names = list(class_names) if class_names is not None else [f"class {i}" for i in range(n_classes)]
        if len(self.class_names) != n_classes:
            raise ValueError(f"{len(self.class_names)} class names for {n_classes} model outputs")
        self.model_name = model_name
        self.model_id = model_id
        self.mean, self.std = tuple(mean), tuple(std)
        self.stats = dict(stats or {})
        # (H, W) of the photo the model's input was resized from, when known: views draw the maps
        # back onto that frame (its aspect ratio); None: the input itself is the frame
        self.frame = None if frame is None else (int(frame[0]), int(frame[1]))
        self._plus: list[torch.Tensor | None] = [None] * len(self.layers)
        self._minus: list[torch.Tensor | None] = [None] * len(self.layers)
        self._cache: OrderedDict[tuple, list[torch.Tensor]] = OrderedDict()
        self._cache_lock = threading.Lock()  # a sweep thread fills the set while views read it
        self.estimate = False  # True while the coarsest layer holds a progressive sweep's estimate
        self.channels_total = int(self.activations[-1].shape[0]) if self.activations else 0
        self.channels_done = 0  # coarsest-layer channels whose scores are in (all once it is exact)
        self.revision = 0  # bumped by every set_scores / set_estimate

    # ----- filling ---------------------------------------------------------------------------
    def set_scores(self, index: int, scores: LayerScores) -> None:
        """Store the score matrices of layer ``index`` (called by the sweep, coarsest first)."""
        with self._cache_lock:
            self._plus[index], self._minus[index] = scores.s_plus, scores.s_minus
            if index % len(self.layers) == len(self.layers) - 1:
                self.estimate, self.channels_done = False, self.channels_total
            self.revision += 1
            self._cache.clear()

    def set_estimate(self, scores: LayerScores, channels_done: int) -> None:
        """Store an estimate of the coarsest layer's scores: ``channels_done`` channels are exact,
        the others have ``S+ = 0``, ``S- = s0`` (weight 0 in every variant; see
        :func:`probes.partial_scores`). The exact scores replace it through :meth:`set_scores`."""
        with self._cache_lock:
            self._plus[-1], self._minus[-1] = scores.s_plus, scores.s_minus
            self.estimate, self.channels_done = True, int(channels_done)
            self.revision += 1
            self._cache.clear()

    @property
    def device(self) -> torch.device:
        return self.probs.device

    @property
    def size(self) -> tuple[int, int]:
        """Input size ``(H, W)``."""
        return tuple(self.image.shape[-2:])

    @property
    def num_classes(self) -> int:
        return int(self.probs.shape[0])

    @property
    def depth_available(self) -> int:
        """How many layers, from the coarsest, have been probed."""
        depth = 0
        for plus in reversed(self._plus):
            if plus is None:
                break
            depth += 1
        return depth

    @property
    def complete(self) -> bool:
        return self.depth_available == len(self.layers) and not self.estimate

    def scores(self, layer: int | str) -> tuple[torch.Tensor, torch.Tensor]:
        """``(S+_l, S-_l)`` of one layer, each ``[K, C]`` (an estimate's while ``estimate`` is True)."""
        index = self._layer_index(layer)
        with self._cache_lock:  # both of one revision, while a sweep replaces estimates
            plus, minus = self._plus[index], self._minus[index]
        if plus is None:
            raise ValueError(f"layer {self.layers[index]!r} has not been probed yet")
        return plus, minus

    # ----- reading ---------------------------------------------------------------------------
    def topk(self, k: int = 5) -> list[tuple[int, str, float]]:
        """The ``k`` most probable classes as ``(index, name, probability)``."""
        k = _integer(k, "k")
        if k < 1:
            raise ValueError(f"k must be a positive int, got {k}")
        values, indices = torch.topk(self.probs, min(k, self.num_classes))
        return [(int(i), self.class_names[int(i)], float(v)) for v, i in zip(values, indices)]

    def weights(self, class_idx: int, variant: str, layer: int | str) -> torch.Tensor:
        """Channel weights ``w_l,k(c)`` of eq. [4]-[6] for one layer: ``[K]``."""
        c = self.class_index(class_idx)
        plus, minus = self.scores(layer)
        return polycam.channel_weights(variant, self.probs[c], plus[:, c], minus[:, c])

    def layer_cam(self, class_idx: int, variant: str = "+-", layer: int | str = -1) -> torch.Tensor:
        """The isolated ``CAM_l`` of eq. [2] at the layer's resolution (the paper's ablation)."""
        index = self._layer_index(layer)
        return polycam.layer_cam(self.activations[index], self.weights(class_idx, variant, index))

    def poly_maps(self, class_idx: int, variant: str = "+-", lnorm: bool = True) -> list[torch.Tensor]:
        """``[P_L, ..., P_1]``: the map at depth ``d`` is element ``d - 1``, at its native size.

        Partial map sets give the depths probed so far. Cached (LRU) on the map set's device.
        """
        variant = polycam.canonical_variant(variant)
        # revision in the key: a sweep still filling the set (new layers, newer estimates, the
        # exact scores after an estimate) never gets a stale stack
        with self._cache_lock:
            key = (self.class_index(class_idx), variant, bool(lnorm), self.revision)
            first = len(self.layers) - self.depth_available
            maps = self._cache.get(key)
            if maps is not None:
                self._cache.move_to_end(key)
                return maps
            scores = [(i, self._plus[i], self._minus[i]) for i in range(first, len(self.layers))]  # one revision's
        c = key[0]
        cams = [polycam.layer_cam(self.activations[i], polycam.channel_weights(variant, self.probs[c], plus[:, c],
                                                                               minus[:, c]))
                for i, plus, minus in scores]
        maps = polycam.poly_recursion(cams, use_lnorm=key[2])
        with self._cache_lock:
            if self.revision == key[3]:  # not a stack of scores that a sweep has just replaced
                self._cache[key] = maps
                if len(self._cache) > CACHE_SIZE:
                    self._cache.popitem(last=False)
        return maps

    def saliency(self, class_idx: int, variant: str = "+-", depth: int | None = None,
                 lnorm: bool = True) -> torch.Tensor:
        """The map shown or exported: ``u(P)`` at ``depth`` upsampled to ``H x W``, in [0, 1].

        ``depth=None`` means the full depth ``L`` (``P_1``, the Poly-CAM map).

        Raises:
            ValueError: class out of range, unknown variant, or a depth not (yet) available.
        """
        depth = len(self.layers) if depth is None else _integer(depth, "depth")
        if not 1 <= depth <= len(self.layers):
            raise ValueError(f"depth must be an int in 1..{len(self.layers)} or None, got {depth!r}")
        if depth > self.depth_available:
            raise ValueError(f"depth {depth} is not available yet: only depths 1..{self.depth_available} "
                             "have been probed")
        out = polycam.display_map(self.poly_maps(class_idx, variant, lnorm)[depth - 1], self.size)
        if not bool(torch.isfinite(out).all()):
            raise ValueError(f"the map of class {class_idx}, variant {variant!r}, depth {depth} is not finite: "
                             "the model gave NaN or infinite outputs for some probes of this image")
        return out

    def to(self, device: torch.device | str) -> "MapSet":
        """The map set on another device (a copy; the cache is not carried)."""
        moved = copy.copy(self)
        moved.image = self.image.to(device)
        moved.activations = [a.to(device) for a in self.activations]
        moved.probs = self.probs.to(device)
        moved._plus = [None if t is None else t.to(device) for t in self._plus]
        moved._minus = [None if t is None else t.to(device) for t in self._minus]
        moved._cache = OrderedDict()
        moved._cache_lock = threading.Lock()
        return moved

    def save(self, path, *, fp16: bool = False) -> None:
        """Write the map set to one ``.npz`` file (atomically; see :mod:`polycam_explorer.mapset_io`)."""
        mapset_io.save_mapset(self, path, fp16=fp16)

    @classmethod
    def load(cls, path, device: torch.device | str | None = None, *, model: nn.Module | None = None,
             layers: Sequence[str] | None = None, current_version_only: bool = False) -> "MapSet":
        """Read a map set saved by :meth:`save`; never runs code (no pickle).

        With ``model`` (or ``layers``), a file made with another model (or other layers) is refused;
        ``current_version_only`` refuses files of older format versions (the cache uses it).

        Raises:
            ValueError: unreadable, foreign, pickled or corrupt file; another model or layers; a bad
                ``device`` (see :func:`polycam_explorer.mapset_io.read_mapset`).
        """
        target = mapset_io.check_device(device)
        stored = mapset_io.read_mapset(path, model=model, layers=layers, current_version_only=current_version_only)
        ms = cls(**stored.fields)
        for index, scores in enumerate(stored.scores):
            if scores is not None:
                ms.set_scores(index, scores)
        return ms if target.type == "cpu" else ms.to(target)

    @property
    def probed(self) -> list[bool]:
        """Per layer (fine -> coarse), whether its exact scores are in (a running sweep fills coarsest
        first; an estimate is not probed)."""
        last = len(self._plus) - 1
        return [plus is not None and not (self.estimate and i == last) for i, plus in enumerate(self._plus)]

    def clear_cache(self) -> None:
        """Forget the cached P stacks (they are recomputed on the next read)."""
        with self._cache_lock:
            self._cache.clear()

    def __repr__(self) -> str:
        top = self.topk(1)[0]
        return (f"MapSet({self.model_name}, {self.size[0]}x{self.size[1]}, layers={self.layers}, "
                f"depth {self.depth_available}/{len(self.layers)}"
                f"{f' (estimate {self.channels_done}/{self.channels_total})' if self.estimate else ''}, top: {top[1]!r} {top[2]:.3f})")

    # ----- checks ----------------------------------------------------------------------------
    def class_index(self, class_idx: int) -> int:
        """``class_idx`` checked: an int (Python, numpy or a one-element tensor) in range.

        Raises:
            ValueError: not an int, or out of range (the message says the range).
        """
        class_idx = _integer(class_idx, "class_idx")
        if not 0 <= class_idx < self.num_classes:
            raise ValueError(f"class_idx {class_idx} is out of range: the model has {self.num_classes} "
                             f"classes (0..{self.num_classes - 1})")
        return class_idx

    def _layer_index(self, layer: int | str) -> int:
        if isinstance(layer, str):
            if layer not in self.layers:
                raise ValueError(f"unknown layer {layer!r}; this map set has {self.layers}")
            return self.layers.index(layer)
        index = _integer(layer, "layer (an index or a layer name)")
        if not -len(self.layers) <= index < len(self.layers):
            raise ValueError(f"layer index {layer} out of range for {len(self.layers)} layers")
        return index % len(self.layers)


def _integer(value: object, name: str) -> int:
    """``value`` as an int: Python and numpy integers and one-element integer tensors are
    accepted; bools, floats (even 1.0) and anything else are refused, naming ``name``."""
    if isinstance(value, torch.Tensor) and value.numel() == 1 and not value.is_floating_point() \
            and value.dtype != torch.bool:
        value = value.item()
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be an int, got {value!r}")
    return int(value)
