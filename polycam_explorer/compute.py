"""The probe sweep of one image into a :class:`MapSet`: ``iter_mapset`` (yields as layers are
probed, coarsest first, optionally with labelled estimates first) and ``compute_mapset``."""
from __future__ import annotations

import copy
import warnings
from typing import Callable, Iterator, Sequence

import torch
from torch import nn

from . import backends
from .cancel import cancel_check
from .layers import float_dtype, capture_activations, check_layers, describe_layers, module_device
from .model_state import inference_state
from .identity import fingerprint_in_background, last_fingerprint
from .images import check_image
from .models import as_classifier, probabilities
from .probes import LayerScores, plan_layer, precision_agreement, sweep

from .mapset import MapSet
from .mapset_io import check_device


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
    _check_options(batch_size, progressive, cancel)
    net, run_device = _network_on(clf, device)
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
    # the identity hash (0.15 s for VGG16's 528 MB of weights on a GPU) runs beside the mask
    # planning and, when this network object was swept before, beside the probes too: the runner
    # is then picked by the network's last fingerprint, a guess checked before anything is yielded
    guess = last_fingerprint(clf)
    fingerprint = fingerprint_in_background(clf)
    activations = [acts[n].float() for n in layers]
    plans = [plan_layer(a) for a in activations]
    ms = MapSet(image=image, layers=layers, activations=activations, s0=s0,
                class_names=_class_names(clf, s0.shape[0]), model_name=clf.name,
                model_id=guess or fingerprint.result(), mean=clf.mean, std=clf.std)

    def start() -> tuple[backends.Runner, Iterator]:
        """The runner for ``ms.model_id``, ``s0`` from it, and the sweep's steps."""
        with inference_state(net):
            runner = backends.runner_for(net, x, backend=backend, precision=precision, batch_size=batch_size,
                                         fingerprint=ms.model_id, probes=1 + sum(p.probes for p in plans))
            # s0 from the same path as the probes: PCAM-'s s0 - S- stays exact
            ms.probs = s0 if runner.name == "eager" else probabilities(runner(x))[0]
        ms.stats.update(backend=runner.name, precision=runner.precision, backend_setup_s=round(runner.setup_s, 3))
        return runner, sweep(runner, x, ms.activations, ms.probs, batch_size=batch_size, cancel=cancel,
                             progress=progress, plans=plans, progressive=progressive)

    runner, steps = start()
    check = None
    try:
        while True:
            # the model is frozen and gradients are off only while a layer is probed, never while
            # the caller's loop body runs between two yields (nor after it breaks out)
            with inference_state(net):
                step = next(steps, None)
            if guess is not None:  # the runner was picked by a guess: check it before any yield
                guess = None
                if fingerprint.result() != ms.model_id:  # changed since last seen: a stale runner
                    steps.close()
                    ms.model_id = fingerprint.result()
                    runner, steps = start()
                    continue
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
                check = check or _AgreementCheck(net, x, ms.model_id, batch_size)
                check(ms, index, plans[index], scores)
            ms.set_scores(index, scores)
            ms.stats.update(counts, batch_size=batch_size)
            yield ms
    finally:
        steps.close()


def _check_options(batch_size: object, progressive: object, cancel: object) -> None:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    if not isinstance(progressive, bool):
        raise TypeError(f"progressive must be True or False, got {progressive!r}")
    cancel_check(cancel)  # a bad value is refused before any work


def _network_on(clf, device: torch.device | str | None) -> tuple[nn.Module, torch.device]:
    """The network to sweep and where: the user's own on its device, or a copy on ``device``
    (the user's model stays where it is).

    Raises:
        ValueError: weights on the meta device, or a device that cannot hold a map set.
    """
    model_device = module_device(clf.net)
    if device is None and model_device.type == "meta":
        raise ValueError(f"the model's weights are on the meta device (shapes without values): load its "
                         f"weights first (e.g. load_state_dict(..., assign=True)); {clf.name} cannot be run")
    run_device = check_device(device) if device is not None else model_device
    return (clf.net if run_device == model_device else copy.deepcopy(clf.net).to(run_device)), run_device


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


class _AgreementCheck:
    """Measures a reduced-precision sweep against fp32 on each layer as it is probed
    (:func:`probes.precision_agreement`: its 32 highest-energy masks again in fp32, about 3% more
    passes, with the fp32 ``s0`` and ``f(0)`` run once per sweep, and the layer's CAM compared with
    its fp32 estimate); keeps the smallest r in
    ``ms.stats["precision_agreement"]`` and warns, once, when it falls below
    :data:`backends.MIN_BF16_AGREEMENT`."""

    def __init__(self, net: nn.Module, x: torch.Tensor, model_id: str, batch_size: int) -> None:
        self.x, self.batch_size = x, batch_size
        self.reference = backends.runner_for(net, x, backend="channels_last", batch_size=batch_size,
                                             fingerprint=model_id)
        self.s0, self.f_zero = probabilities(self.reference(torch.cat([x, torch.zeros_like(x)])))

    def __call__(self, ms: MapSet, index: int, plan, scores: LayerScores) -> None:
        r = precision_agreement(self.reference, self.x, ms.activations[index], plan, scores, ms.probs,
                                self.s0, self.f_zero, batch_size=self.batch_size)
        before = ms.stats.get("precision_agreement")
        ms.stats["precision_agreement"] = round(r if before is None else min(before, r), 6)
        if r < backends.MIN_BF16_AGREEMENT and (before is None or before >= backends.MIN_BF16_AGREEMENT):
            warnings.warn(f"precision={ms.stats['precision']!r} maps of this image agree with fp32 at r = "
                          f"{r:.4f} only (layer {ms.layers[index]!r}, top-3 classes, estimated from its highest-"
                          f"energy channels probed again in fp32; below {backends.MIN_BF16_AGREEMENT}): use "
                          "precision='fp32' for exact maps",
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
    if isinstance(x, torch.Tensor) and x.dim() == 3:
        x = x[None]
    check_image(x, clf.channels, min_side=8, needed_by="the sweep")
    return x
