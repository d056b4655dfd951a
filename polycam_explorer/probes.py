"""The probe sweep: insertion and deletion probes for every channel, keeping every class's score.

``S+_l[k] = f(X * M_l^k)`` and ``S-_l[k] = f(X * (1 - M_l^k))`` (ALGORITHM.md, "Probe scores"),
batched, on the model's device. Masks that are identical are probed once; every all-zero mask
shares ``f(0)`` (insertion) and ``s0`` (deletion).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Iterator, NamedTuple, Sequence

import torch
from torch import nn

from .backends import pearsons
from .cancel import Cancelled, cancel_check
from .models import probabilities
from .polycam import VARIANTS, channel_weights, layer_cam, resize, unit_normalize

class SweepCancelled(Cancelled):
    """Raised when a sweep is cancelled through its ``cancel`` flag."""


@dataclass
class LayerPlan:
    """The distinct non-zero masks of one layer, at the layer's resolution."""

    unique: torch.Tensor  # [U, h, w] distinct u(A^k), none all zero
    inverse: torch.Tensor  # [K] index into unique, -1 for an all-zero mask

    @property
    def probes(self) -> int:
        return 2 * self.unique.shape[0]


@dataclass
class LayerScores:
    """Score matrices of one layer: ``[K, C]`` each."""

    s_plus: torch.Tensor
    s_minus: torch.Tensor


def plan_layer(acts: torch.Tensor) -> LayerPlan:
    """Group a layer's channels ``[K, h, w]`` by identical mask ``u(A^k)``; all-zero masks get -1."""
    u = unit_normalize(acts.float())
    flat = u.reshape(u.shape[0], -1)
    nonzero = flat.ne(0).any(dim=1)
    inverse = torch.full((flat.shape[0],), -1, dtype=torch.long, device=flat.device)
    unique = flat[:0]
    if bool(nonzero.any()):
        unique, inv = torch.unique(flat[nonzero], dim=0, return_inverse=True)
        inverse[nonzero] = inv
    return LayerPlan(unique.reshape(-1, *u.shape[1:]), inverse)


ESTIMATE_EVERY_S = 0.5  # progressive sweeps: at most one estimate per this many seconds (the first is free)
FIRST_ESTIMATE_PROBES = 16  # progressive sweeps: the first batch, small so that a first picture comes soon


class SweepStep(NamedTuple):
    """One step of :func:`sweep`: layer ``index`` with its ``scores``; ``counts`` as the sweep's.

    ``channels_done < channels_total`` marks an *estimate* (progressive sweeps, coarsest layer
    only): the scores of the channels not yet probed are set so that their weight is 0 in every
    variant (see :func:`partial_scores`). The layer's last step is exact.
    """

    index: int
    scores: LayerScores
    counts: dict
    channels_done: int
    channels_total: int

    @property
    def exact(self) -> bool:
        return self.channels_done == self.channels_total


def _probe_batches(net, x: torch.Tensor, plan: LayerPlan, plus: torch.Tensor, minus: torch.Tensor,
                   got: torch.Tensor, *, batch_size: int, order: torch.Tensor | None = None,
                   first: int | None = None, cancel: object | None = None,
                   on_batch: Callable[[int], None] | None = None) -> Iterator[None]:
    """Probe the distinct masks in ``order`` (index order when None), filling ``plus``/``minus``
    ``[U, C]`` and ``got`` ``[2, U]`` (insertion, deletion done) in place; yield after each batch.

    Probe ``j`` is mask ``order[j // 2]``, insertion when ``j`` is even, deletion when odd. Batches
    hold ``batch_size`` probes (the first ``first``, when given).

    Raises:
        SweepCancelled: when ``cancel`` is set between two batches.
    """
    size = x.shape[-2:]
    stop_now = cancel_check(cancel)
    start = 0
    while start < plan.probes:
        if stop_now():
            raise SweepCancelled("probe sweep cancelled")
        stop = min(start + (first if start == 0 and first else batch_size), plan.probes)
        j = torch.arange(start, stop, device=x.device)
        idx, deletion = j // 2, (j % 2).bool()
        if order is not None:
            idx = order[idx]
        masks = resize(plan.unique[idx], size)
        masks = torch.where(deletion[:, None, None], 1.0 - masks, masks)
        probs = probabilities(net(x * masks[:, None].to(x.dtype)))
        # insertions and deletions alternate: strided slices, not boolean masks, which would wait
        # for the GPU after every batch
        insertions, deletions = slice(start % 2, None, 2), slice(1 - start % 2, None, 2)
        plus[idx[insertions]] = probs[insertions]
        minus[idx[deletions]] = probs[deletions]
        got[0, idx[insertions]] = True
        got[1, idx[deletions]] = True
        if on_batch is not None:
            on_batch(stop - start)
        start = stop
        yield


def partial_scores(plan: LayerPlan, plus: torch.Tensor, minus: torch.Tensor, s0: torch.Tensor,
                   f_zero: torch.Tensor, done: torch.Tensor | None = None) -> tuple[LayerScores, int]:
    """The layer's ``[K, C]`` score matrices from its distinct masks' scores, and how many channels
    they cover exactly.

    All-zero masks take ``f(0)`` and ``s0`` (known without probing). With ``done`` (``[U]``, the
    masks whose two probes are in), every other channel gets ``S+ = 0`` and ``S- = s0``: its weight
    is then 0 for PCAM+ (``S+``), PCAM- (``ReLU(s0 - S-)``) and PCAM± (``ReLU(s0 + S+ - S-)``),
    so the layer's CAM is the honest partial channel sum over the channels probed so far.
    """
    zero = plan.inverse < 0
    if plan.unique.shape[0] == 0:
        return LayerScores(f_zero[None].expand(zero.numel(), -1).clone(),
                           s0[None].expand(zero.numel(), -1).clone()), zero.numel()
    safe = plan.inverse.clamp(min=0)
    s_plus = torch.where(zero[:, None], f_zero[None], plus[safe])
    s_minus = torch.where(zero[:, None], s0[None], minus[safe])
    if done is None:
        return LayerScores(s_plus, s_minus), zero.numel()
    pending = ~zero & ~done[safe]
    s_plus = torch.where(pending[:, None], torch.zeros_like(s_plus), s_plus)
    s_minus = torch.where(pending[:, None], s0[None], s_minus)
    return LayerScores(s_plus, s_minus), int(zero.numel() - pending.sum())


def _buffers(plan: LayerPlan, s0: torch.Tensor, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    n_unique, n_classes = plan.unique.shape[0], s0.shape[0]
    return (torch.empty(n_unique, n_classes, device=device), torch.empty(n_unique, n_classes, device=device),
            torch.zeros(2, n_unique, dtype=torch.bool, device=device))


def probe_layer(net: nn.Module | Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, plan: LayerPlan, s0: torch.Tensor,
                f_zero: torch.Tensor, *, batch_size: int, cancel: object | None = None,
                on_batch: Callable[[int], None] | None = None) -> LayerScores:
    """Run the layer's distinct probes in batches of at most ``batch_size`` images.

    Probe ``j`` is mask ``j // 2``, insertion when ``j`` is even, deletion when odd. ``net`` is the
    model or a :class:`backends.Runner` (anything mapping a batch to logits).

    Raises:
        SweepCancelled: when ``cancel`` is set between two batches.
    """
    plus, minus, got = _buffers(plan, s0, x.device)
    for _ in _probe_batches(net, x, plan, plus, minus, got, batch_size=batch_size, cancel=cancel,
                            on_batch=on_batch):
        pass
    return partial_scores(plan, plus, minus, s0, f_zero)[0]


def probe_layer_progressive(net: nn.Module | Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor,
                            plan: LayerPlan, s0: torch.Tensor, f_zero: torch.Tensor, order: torch.Tensor, *,
                            batch_size: int, cancel: object | None = None,
                            on_batch: Callable[[int], None] | None = None,
                            every_s: float | None = None) -> Iterator[tuple[LayerScores, int]]:
    """:func:`probe_layer` with the distinct masks probed in ``order`` (e.g. :func:`energy_order`),
    yielding ``(scores, channels_done)`` along the way: an estimate (:func:`partial_scores`) after
    the first batch (:data:`FIRST_ESTIMATE_PROBES` probes) and then at most every ``every_s``
    seconds (:data:`ESTIMATE_EVERY_S` when None), and last the exact scores, ``channels_done == K``.

    The exact scores are the same probes as :func:`probe_layer`'s, only batched in another order:
    equal to them wherever the forward pass of an image does not depend on the batch around it
    (true, bit for bit, of the eager, channels_last and ONNX Runtime CPU paths measured here).
    """
    every_s = ESTIMATE_EVERY_S if every_s is None else every_s
    plus, minus, got = _buffers(plan, s0, x.device)
    total = plan.inverse.numel()
    last = None
    first = min(batch_size, FIRST_ESTIMATE_PROBES)
    first += first % 2  # whole masks (insertion and deletion) in the first estimate
    for _ in _probe_batches(net, x, plan, plus, minus, got, batch_size=batch_size, order=order, first=first,
                            cancel=cancel, on_batch=on_batch):
        done = got.all(0)
        if bool(done.all()) or (last is not None and time.perf_counter() - last < every_s):
            continue
        scores, channels = partial_scores(plan, plus, minus, s0, f_zero, done)
        if channels < total:
            yield scores, channels
            last = time.perf_counter()
    yield partial_scores(plan, plus, minus, s0, f_zero)[0], total


def sweep(net: nn.Module | Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor,
          acts: Sequence[torch.Tensor], s0: torch.Tensor, *,
          batch_size: int = 64, cancel: object | None = None,
          progress: bool | Callable[[int, int], None] = True,
          plans: Sequence[LayerPlan] | None = None, progressive: bool = False,
          ) -> Iterator[SweepStep]:
    """Probe the layers coarsest first; yield a :class:`SweepStep` as each finishes.

    ``acts`` are the layers' activations ``[K, h, w]``, fine -> coarse. ``counts`` holds the
    forward passes run so far and the naive count (two per channel) for the layers done.
    ``progress`` is True for a tqdm bar, or a callable ``(done, total)`` called after each batch.
    ``net`` is the model or a :class:`backends.Runner`; ``plans`` the layers' plans if already made.
    ``progressive``: the coarsest layer's masks are probed in :func:`energy_order` and estimates
    of it are yielded on the way (:func:`probe_layer_progressive`), before its exact step.
    """
    from tqdm.auto import tqdm

    stop_now = cancel_check(cancel)
    plans = list(plans) if plans is not None else [plan_layer(a) for a in acts]
    total = 1 + sum(p.probes for p in plans)
    counts = {"forward_passes": 0, "naive_passes": 0}
    report = progress if callable(progress) else None
    with tqdm(total=total, desc="Poly-CAM probes", unit="img", disable=progress is not True, leave=False) as bar:
        def advance(n: int) -> None:
            counts["forward_passes"] += n
            bar.update(n)
            if report is not None:
                report(counts["forward_passes"], total)

        f_zero = probabilities(net(torch.zeros_like(x)))[0]
        advance(1)
        for index in reversed(range(len(plans))):
            if stop_now():
                raise SweepCancelled("probe sweep cancelled")
            channels = acts[index].shape[0]
            if progressive and index == len(plans) - 1:
                steps = probe_layer_progressive(net, x, plans[index], s0, f_zero, energy_order(acts[index], plans[index]),
                                                batch_size=batch_size, cancel=cancel, on_batch=advance)
                for scores, done in steps:
                    if done == channels:
                        counts["naive_passes"] += 2 * channels
                    yield SweepStep(index, scores, dict(counts), done, channels)
                continue
            scores = probe_layer(net, x, plans[index], s0, f_zero, batch_size=batch_size,
                                 cancel=cancel, on_batch=advance)
            counts["naive_passes"] += 2 * channels
            yield SweepStep(index, scores, dict(counts), channels, channels)


def subset_plan(plan: LayerPlan, keep: torch.Tensor) -> LayerPlan:
    """``plan`` restricted to the distinct masks ``keep`` (indices into ``plan.unique``, in probe
    order); every other channel is treated as an all-zero mask (``-1``)."""
    remap = torch.full((plan.unique.shape[0],), -1, dtype=torch.long, device=plan.inverse.device)
    remap[keep] = torch.arange(keep.numel(), device=remap.device)
    inverse = torch.where(plan.inverse >= 0, remap[plan.inverse.clamp(min=0)], plan.inverse)
    return LayerPlan(plan.unique[keep], inverse)


def energy_order(acts: torch.Tensor, plan: LayerPlan) -> torch.Tensor:
    """The layer's distinct masks ordered by decreasing activation energy ``sum (A^k)^2`` of the
    strongest channel using each: channels with large activations dominate ``sum_k w_k A^k``
    whatever their weights (which are probabilities, at most 1), so probing them first front-loads
    the largest terms of the map."""
    energy = acts.float().pow(2).flatten(1).sum(1)
    best = torch.zeros(plan.unique.shape[0], device=energy.device)
    used = plan.inverse >= 0
    best.scatter_reduce_(0, plan.inverse[used], energy[used], reduce="amax")
    return torch.argsort(best, descending=True, stable=True)


def precision_agreement(reference: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor,
                        acts: torch.Tensor, plan: LayerPlan, scores: LayerScores, s0: torch.Tensor,
                        reference_s0: torch.Tensor, reference_f_zero: torch.Tensor, *,
                        batch_size: int, n_masks: int = 32) -> float:
    """How well a reduced-precision sweep of one layer agrees with ``reference`` (fp32).

    Cheap by design: the ``n_masks`` distinct masks of highest activation energy are probed again
    with ``reference`` (whose ``s0`` and ``f(0)`` are ``reference_s0`` and ``reference_f_zero``),
    and for PCAM+, PCAM- and PCAM± of the three most probable classes the layer's CAM is compared
    with its fp32 estimate (:func:`estimated_agreement`). Returns the smallest Pearson r of the nine
    (PCAM-'s ``s0 - S-`` is the sensitive one). An estimate: the recursion can amplify differences
    at greater depths.
    """
    keep = energy_order(acts, plan)[:n_masks]
    sub = subset_plan(plan, keep)
    ref = probe_layer(reference, x, sub, reference_s0, reference_f_zero, batch_size=batch_size)
    checked = sub.inverse >= 0
    classes = torch.topk(reference_s0, min(3, reference_s0.numel())).indices
    w_low = torch.cat([channel_weights(v, s0[classes], scores.s_plus[:, classes], scores.s_minus[:, classes])
                       for v in VARIANTS], 1)
    w_ref = torch.cat([channel_weights(v, reference_s0[classes], ref.s_plus[checked][:, classes],
                                       ref.s_minus[checked][:, classes]) for v in VARIANTS], 1)
    return estimated_agreement(acts, checked, w_low, w_ref)


def estimated_agreement(acts: torch.Tensor, checked: torch.Tensor, w_low: torch.Tensor,
                        w_ref: torch.Tensor) -> float:
    """The smallest Pearson r between a layer's CAM (eq. [2]) from reduced-precision weights and
    an estimate of its fp32 CAM, over the columns of ``w_low`` (``[K, N]``: one weight vector per
    class and variant, or ``[K]``), when only the ``checked`` channels' fp32 weights ``w_ref``
    (``[K_checked, N]``) are known.

    The estimate corrects the checked channels and extrapolates their error to the rest: their
    weights become ``w_low - s (w_low - w_ref)`` with ``s = sqrt(E / E_checked)``, ``E`` the sum
    of squared activations over all channels and ``E_checked`` over the checked ones, as if every
    channel's weight were off by as much for its activation energy. Comparing whole-layer maps
    keeps the measure defined when the checked channels' own map is empty in one precision (a
    class they barely move), where a map of those channels alone would read r = 0.
    """
    a = acts.float()
    energy = a.pow(2).flatten(1).sum(1)
    checked_energy = energy[checked].sum()
    scale = torch.where(checked_energy > 0, energy.sum() / checked_energy.clamp(min=1e-30), 1.0).sqrt()
    w_est = w_low.clone()
    w_est[checked] = w_low[checked] - scale * (w_low[checked] - w_ref)
    return float(pearsons(layer_cam(a, w_low.reshape(len(w_low), -1)),
                          layer_cam(a, w_est.reshape(len(w_est), -1))).min())
