"""MapSet: one image's activations and probe scores, from which every map comes.

One sweep gives ``s0``, ``S+_l`` and ``S-_l`` (channels x classes) for every target layer; a map
for any class, variant (PCAM+, PCAM-, PCAM±) and depth is then a weighted channel sum and the
recursion of eq. [3], cached per (class, variant, LNorm) on the map set's device.
"""
from __future__ import annotations

import copy
import threading
import warnings
from collections import OrderedDict
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
from torch import nn

from . import backends, mapset_io, polycam
from .layers import float_dtype, capture_activations, check_layers, describe_layers, module_device
from .model_state import inference_state
from .identity import model_fingerprint
from .models import as_classifier, probabilities
from .probes import LayerScores, plan_layer, precision_agreement, sweep

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


def iter_mapset(model: nn.Module, x: torch.Tensor, layers: Sequence[str] | None = None, *,
                batch_size: int = 64, device: torch.device | str | None = None,
                progress: bool | Callable[[int, int], None] = True, cancel: object | None = None,
                backend: str = "auto", precision: str = "fp32", progressive: bool = False) -> Iterator[MapSet]:
    """Run the sweep and yield the same MapSet after each layer is probed, coarsest first.

    The first yield already allows depth 1; the last has ``complete`` True. Stopping early (or
    ``cancel`` being set, which raises :class:`SweepCancelled`) leaves a map set that says it is
    incomplete. Arguments as :func:`compute_mapset`.

    ``progressive=True``: a first picture in seconds. The coarsest layer's masks are probed in
    decreasing activation energy, and the map set is also yielded after its first small batch and
    then about every 0.5 s with ``estimate`` True, ``depth_available`` 1 and ``channels_done`` of
    ``channels_total`` coarsest channels in: depth 1 is then the partial channel sum over them (the
    others weigh 0 in every variant). Redraw on each yield (``revision`` changes). The yields that
    follow are exact, as without it, and the final scores are the same probes'. Off by default:
    a caller must know to label estimates.
    """
    backend, precision = backends.check_backend(backend, precision)
    clf = as_classifier(model)
    x = _check_input(x, clf)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    if not isinstance(progressive, bool):
        raise TypeError(f"progressive must be True or False, got {progressive!r}")
    net = clf.net
    model_device = module_device(net)
    if device is not None and torch.device(device) != model_device:
        net = copy.deepcopy(net).to(device)  # the user's model stays where it is
    run_device = torch.device(device) if device is not None else model_device
    image = x.to(run_device, torch.float32)
    x = x.to(run_device, float_dtype(net))  # the model's own precision (float64, half, ...)
    with inference_state(net):
        layers = check_layers(net, layers) if layers is not None else [
            info.name for info in describe_layers(net, x.shape[-2:], clf.layer_rule)]
        logits, acts = capture_activations(net, x, layers)
        s0 = probabilities(logits)[0]
    if not bool(torch.isfinite(s0).all()):
        raise ValueError(f"the model's output on this image is not finite (NaN or infinite logits): "
                         f"there is nothing to explain; check the model ({clf.name}) and its weights")
    ms = MapSet(image=image, layers=layers, activations=[acts[n].float() for n in layers], s0=s0,
                class_names=_class_names(clf, s0.shape[0]), model_name=clf.name,
                model_id=model_fingerprint(clf), mean=clf.mean, std=clf.std)
    plans = [plan_layer(a) for a in ms.activations]
    with inference_state(net):
        runner = backends.runner_for(net, x, backend=backend, precision=precision, batch_size=batch_size,
                                     fingerprint=ms.model_id, probes=1 + sum(p.probes for p in plans))
        if runner.name != "eager":  # s0 from the same path as the probes: PCAM-'s s0 - S- stays exact
            s0 = probabilities(runner(x))[0]
            ms.probs = s0
    ms.stats.update(backend=runner.name, precision=runner.precision, backend_setup_s=round(runner.setup_s, 3))
    steps = sweep(runner, x, ms.activations, s0, batch_size=batch_size, cancel=cancel, progress=progress,
                  plans=plans, progressive=progressive)
    try:
        while True:
            # the model is frozen and gradients are off only while a layer is probed, never while
            # the caller's loop body runs between two yields (nor after it breaks out)
            with inference_state(net):
                step = next(steps, None)
            if step is None:
                return
            index, scores, counts = step.index, step.scores, step.counts
            if not step.exact:
                ms.set_estimate(scores, step.channels_done)
                ms.stats.update(counts, batch_size=batch_size)
                yield ms
                continue
            _warn_if_not_finite(scores, layers[index], clf.name)
            if runner.precision in ("bf16", "fp16"):  # reduced precision: measure the agreement
                _check_precision(ms, net, x, index, plans[index], scores, batch_size)
            ms.set_scores(index, scores)
            ms.stats.update(counts, batch_size=batch_size)
            yield ms
    finally:
        steps.close()

def compute_mapset(model: nn.Module, x: torch.Tensor, layers: Sequence[str] | None = None, *,
                   batch_size: int = 64, device: torch.device | str | None = None,
                   progress: bool | Callable[[int, int], None] = True, cancel: object | None = None,
                   on_layer: Callable[[MapSet, str], None] | None = None, backend: str = "auto",
                   precision: str = "fp32") -> MapSet:
    """One probe sweep over ``x`` -> a complete :class:`MapSet` (every class, variant and depth).

    Args:
        model: a :class:`Classifier` (from :func:`load_model`) or any ``nn.Module`` classifier.
        x: the normalised image, ``1 x C x H x W`` (see :func:`load_image`).
        layers: target layer names, input side first; ``None`` discovers them.
        batch_size: images per forward pass (bounds peak memory).
        device: where to run and keep the map set; ``None`` is the model's device. The user's
            model is copied, not moved, when it lives elsewhere.
        progress: True for a tqdm progress bar, or a callable ``(done, total)`` per probe batch.
        cancel: a ``threading.Event`` or a callable; when set, :class:`SweepCancelled` is raised.
        on_layer: called as ``on_layer(mapset, layer_name)`` after each layer, coarsest first,
            with the partial map set (depths up to ``mapset.depth_available`` are ready).
        backend: how the probes' forward passes run (:mod:`polycam_explorer.backends`):
            ``"auto"`` (fastest exact path: ONNX Runtime where installed and faster, else
            channels_last), ``"eager"`` (plain ``model(x)``), ``"channels_last"``, ``"compile"``
            or ``"onnxruntime"``. Every fp32 path gives the eager maps (r >= 0.9999). The path
            used is ``mapset.stats["backend"]``.
        precision: ``"fp32"``, or ``"bf16"`` (opt-in, faster on CPUs with bf16 units): its
            agreement with fp32 is measured on the image (``mapset.stats["precision_agreement"]``)
            and a :class:`backends.PrecisionWarning` is issued below 0.999.

    Raises:
        ValueError / TypeError: bad image, model, layers, batch size, backend or precision, naming
            what is accepted.
        SweepCancelled: when ``cancel`` is set.
    """
    ms = None
    for ms in iter_mapset(model, x, layers, batch_size=batch_size, device=device, progress=progress,
                          cancel=cancel, backend=backend, precision=precision):
        if on_layer is not None:
            on_layer(ms, ms.layers[len(ms.layers) - ms.depth_available])
    return ms


def _check_precision(ms: MapSet, net: nn.Module, x: torch.Tensor, index: int, plan, scores: LayerScores,
                     batch_size: int) -> None:
    """Measure a bf16 sweep against fp32 on each layer as it is probed
    (:func:`probes.precision_agreement`: its 32 highest-energy masks again in fp32, about 3% more
    passes); keep the smallest r in ``ms.stats["precision_agreement"]`` and warn, once, when it
    falls below :data:`backends.MIN_BF16_AGREEMENT`."""
    reference = backends.runner_for(net, x, backend="channels_last", batch_size=batch_size,
                                    fingerprint=ms.model_id)
    r = precision_agreement(reference, x, ms.activations[index], plan, scores, ms.probs, batch_size=batch_size)
    before = ms.stats.get("precision_agreement")
    ms.stats["precision_agreement"] = round(r if before is None else min(before, r), 6)
    if r < backends.MIN_BF16_AGREEMENT and (before is None or before >= backends.MIN_BF16_AGREEMENT):
        warnings.warn(f"precision='bf16' maps of this image agree with fp32 at r = {r:.4f} only (layer "
                      f"{ms.layers[index]!r}, top-3 classes, its highest-energy channels; below "
                      f"{backends.MIN_BF16_AGREEMENT}): use precision='fp32' for exact maps",
                      backends.PrecisionWarning, stacklevel=4)


def _warn_if_not_finite(scores: LayerScores, layer: str, model_name: str) -> None:
    bad = int((~torch.isfinite(scores.s_plus)).any(1).sum() + (~torch.isfinite(scores.s_minus)).any(1).sum())
    if bad:
        warnings.warn(f"{model_name} gave NaN or infinite outputs for {bad} probes of layer {layer!r}: "
                      "maps that use them are not finite and are refused (MapSet.saliency raises)",
                      RuntimeWarning, stacklevel=3)


def _class_names(clf, n_classes: int) -> list[str]:
    return [clf.class_name(i) for i in range(n_classes)]


def _check_input(x: torch.Tensor, clf) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor of shape 1 x C x H x W (see pe.load_image), "
                        f"got {type(x).__name__}")
    if x.dim() == 3:
        x = x[None]
    if x.dim() != 4 or x.shape[0] != 1:
        raise ValueError(f"x must have shape 1 x C x H x W (one image), got {tuple(x.shape)}")
    if x.shape[1] != clf.channels:
        raise ValueError(f"x has {x.shape[1]} channels but the model takes {clf.channels}; "
                         "pe.load_image converts grayscale and RGBA images")
    if min(x.shape[-2:]) < 8:
        raise ValueError(f"x is {x.shape[-2]} x {x.shape[-1]} pixels; at least 8 x 8 is needed")
    if not torch.is_floating_point(x):
        raise ValueError(f"x must be a floating-point tensor, got {x.dtype}")
    if not bool(torch.isfinite(x).all()):
        raise ValueError("x contains NaN or infinite values")
    return x
