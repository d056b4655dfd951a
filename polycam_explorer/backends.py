"""How the probe sweep's forward passes run: eager, channels_last, compiled or an exported graph.

The sweep is thousands of forward passes of one network on one input size; PyTorch eager fp32 is
far from what a CPU can do for that. A *runner* takes a batch ``N x C x H x W`` and returns the
network's logits (float32), computed one of these ways:

- ``"eager"``: ``net(x)`` on the user's model, exactly today's path.
- ``"channels_last"``: a copy of the network in channels_last memory format, under
  ``torch.inference_mode``.
- ``"compile"``: that copy through ``torch.compile(dynamic=False)``; batches are padded to the
  sweep's batch size so the graph is compiled once per model, input size and batch size (cached
  in memory for the process; the first call pays the compile, 20-30 s for EfficientNet-Lite0 on
  2 CPU cores).
- ``"onnxruntime"``: the network exported once (``torch.onnx.export``, batch dimension dynamic)
  and run by ONNX Runtime; needs the ``fast`` extra (``pip install polycam-explorer[fast]``).
  The exported graph is cached in memory and on disk under the map-set cache folder, keyed by
  :func:`model_fingerprint`, input size and torch version, so later processes skip the export.
- ``"auto"`` (the default): on a CPU, ONNX Runtime where it is installed, the export succeeds
  and one timed batch shows it faster than channels_last; else channels_last. On a GPU,
  channels_last. Sweeps under :data:`AUTO_EXPORT_MIN_PROBES` passes (tiny models, small inputs)
  and models that are not float32 run eager: there is nothing to win there.

Exactness: every fp32 runner gives logits equal to eager's up to float rounding (maps at Pearson
r >= 0.9999, tests/test_backends.py), and each is checked against the model itself when it is
built (:func:`check_agrees`): one that disagrees is refused when asked for by name, and ``auto``
falls back to an exact path with a :class:`BackendFallbackWarning`. ``precision="bf16"`` (or ``"fp16"`` on CUDA; opt-in,
channels_last/compile under autocast) is faster and less exact; the sweep measures its agreement on the image and
warns (:class:`PrecisionWarning`) below :data:`MIN_BF16_AGREEMENT` (see :func:`probes.precision_agreement`).
The user's model is never modified: every runner but eager works on a copy.
"""
from __future__ import annotations

import copy
import functools
import importlib.util
import io
import threading
import time
import warnings
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

BACKENDS = ("auto", "eager", "channels_last", "compile", "onnxruntime")
PRECISIONS = ("fp32", "bf16", "fp16")  # fp16: CUDA only
MIN_BF16_AGREEMENT = 0.999
AUTO_EXPORT_MIN_PROBES = 512  # below this many probes a first export (~6 s) costs more than it saves
RUNNER_CACHE_SIZE = 4


class PrecisionWarning(RuntimeWarning):
    """A reduced-precision sweep gave maps that agree with fp32 below the accepted level."""


class BackendFallbackWarning(RuntimeWarning):
    """``backend="auto"`` could not use its first choice and fell back to a slower exact path."""


class BackendMismatch(ValueError):
    """A fast fp32 path gave other outputs than the model itself on the image (see :func:`check_agrees`)."""


# how far a fast fp32 path's probabilities may lie from the model's own on probe-like inputs: float
# rounding on a CPU; TF32 convolutions (PyTorch's default on a GPU) round at about 1e-3 of the logits
AGREEMENT_TOLERANCE = {"cpu": 1e-4, "cuda": 1e-2}


def installed() -> list[str]:
    """The backends this environment can run (``onnxruntime`` needs onnxruntime, onnx, onnxscript)."""
    names = ["eager", "channels_last"]
    if hasattr(torch, "compile"):
        names.append("compile")
    if all(importlib.util.find_spec(m) is not None for m in ("onnxruntime", "onnx", "onnxscript")):
        names.append("onnxruntime")
    return names


def check_backend(backend: object, precision: object = "fp32") -> tuple[str, str]:
    """Validate ``backend`` and ``precision``; ``(backend, precision)``.

    Raises:
        ValueError: an unknown name (listing what is accepted and what is installed), a backend
            that is not installed, or bf16 with a backend that has no bf16 path.
    """
    if not isinstance(backend, str) or backend not in BACKENDS:
        raise ValueError(f"backend must be one of {list(BACKENDS)}, got {backend!r} "
                         f"(installed here: {installed()})")
    if not isinstance(precision, str) or precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {list(PRECISIONS)}, got {precision!r}")
    if backend not in ("auto",) and backend not in installed():
        raise ValueError(f"backend {backend!r} is not installed here (installed: {installed()}); "
                         "pip install 'polycam-explorer[fast]' adds onnxruntime")
    if precision != "fp32" and backend in ("eager", "onnxruntime"):
        raise ValueError(f"precision={precision!r} runs on the 'channels_last' or 'compile' backend (or "
                         f"'auto'), not {backend!r}")
    return backend, precision


@dataclass
class Runner:
    """Logits of a batch on one path; ``name`` is the path actually used."""

    name: str
    precision: str
    fn: Callable[[torch.Tensor], torch.Tensor]
    setup_s: float = 0.0  # export / compile / copy time paid when this runner was built
    note: str = ""
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        return self.fn(batch)


_CACHE: OrderedDict[tuple, Runner] = OrderedDict()
_CACHE_LOCK = threading.Lock()


def clear_cache() -> None:
    """Forget every cached runner (copies, compiled graphs, ONNX Runtime sessions)."""
    with _CACHE_LOCK:
        _CACHE.clear()


def runner_for(net: nn.Module, x: torch.Tensor, *, backend: str = "auto", precision: str = "fp32",
               batch_size: int = 16, fingerprint: str | None = None, probes: int | None = None
               ) -> Runner:
    """The runner for ``net`` on inputs shaped like ``x`` (``1 x C x H x W``).

    ``fingerprint`` (:func:`model_fingerprint`) keys the cache; without it a runner is built for
    this call only. ``probes`` (the sweep's forward passes) lets ``auto`` skip a first export
    that would not pay. Raises ValueError as :func:`check_backend`.
    """
    backend, precision = check_backend(backend, precision)
    requested = backend
    device = x.device
    dtype = next((p.dtype for p in net.parameters()), torch.float32)
    if backend == "eager" or (backend == "auto" and dtype != torch.float32):
        return _eager(net, dtype)
    if dtype != torch.float32:
        raise ValueError(f"backend {backend!r} runs float32 models; this one is {dtype}: use 'eager'")
    if precision == "fp16" and device.type != "cuda":
        raise ValueError(f"precision='fp16' runs on a CUDA device; the sweep runs on {device} (use 'bf16' there)")
    if backend == "onnxruntime" and device.type != "cpu":
        raise ValueError(f"backend 'onnxruntime' runs on the CPU; the sweep runs on {device}")
    if backend == "auto":
        small = probes is not None and probes < AUTO_EXPORT_MIN_PROBES
        if small and precision == "fp32":  # a few hundred passes: nothing to win, keep today's path
            return _eager(net, dtype)
        backend = "channels_last"
        if device.type == "cpu" and precision == "fp32" and "onnxruntime" in installed() and (
                not small or _export_cached(fingerprint, x)):
            backend = "auto-onnxruntime"
    shape = tuple(x.shape[1:])
    key = (fingerprint, requested, backend, precision, str(device), shape,
           batch_size if backend == "compile" else 0, torch.get_num_threads())
    if fingerprint is not None:
        with _CACHE_LOCK:
            if key in _CACHE:
                _CACHE.move_to_end(key)
                return _CACHE[key]
    start = time.perf_counter()
    reference = functools.cache(lambda: model_reference(net, x))  # the model's own outputs, run once
    try:
        if backend == "auto-onnxruntime":
            runner = _auto_onnx(net, x, fingerprint, batch_size, reference)
        elif backend == "onnxruntime":
            runner = _checked(_onnx_runner(net, x, fingerprint), reference)
        elif backend == "compile":
            runner = _checked(_compiled(net, x, precision, batch_size), reference)
        else:
            runner = _checked(_channels_last(net, precision), reference)
    except BackendMismatch as exc:
        if requested != "auto":
            raise
        warnings.warn(f"backend='auto': {exc}; using eager", BackendFallbackWarning, stacklevel=3)
        runner = _eager(net, dtype)
        runner.note = "fast paths disagreed with the model"
    runner.setup_s = time.perf_counter() - start
    if fingerprint is not None:
        with _CACHE_LOCK:
            _CACHE[key] = runner
            while len(_CACHE) > RUNNER_CACHE_SIZE:
                _CACHE.popitem(last=False)
    return runner


def _eager(net: nn.Module, dtype: torch.dtype) -> Runner:
    return Runner("eager", "fp32" if dtype == torch.float32 else str(dtype).replace("torch.", ""),
                  lambda b: net(b.to(dtype)))


def _autocast_dtype(precision: str) -> torch.dtype | None:
    """The autocast type of a reduced precision (None for fp32)."""
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def _frozen_copy(net: nn.Module) -> nn.Module:
    net_copy = copy.deepcopy(net).eval()
    for p in net_copy.parameters():
        p.requires_grad_(False)
    return net_copy


def _channels_last(net: nn.Module, precision: str) -> Runner:
    net_copy = _frozen_copy(net).to(memory_format=torch.channels_last)
    reduced = _autocast_dtype(precision)

    def run(batch: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode(), torch.autocast(batch.device.type, reduced or torch.bfloat16,
                                                    enabled=reduced is not None):
            return net_copy(batch.contiguous(memory_format=torch.channels_last)).float()
    return Runner("channels_last", precision, run)


def _compiled(net: nn.Module, x: torch.Tensor, precision: str, batch_size: int) -> Runner:
    net_copy = _frozen_copy(net).to(memory_format=torch.channels_last)
    compiled = torch.compile(net_copy, dynamic=False)
    reduced = _autocast_dtype(precision)

    def run(batch: torch.Tensor) -> torch.Tensor:
        n = batch.shape[0]
        out = []
        for s in range(0, n, batch_size):  # fixed batch: pad the last, so one graph serves all
            part = batch[s:s + batch_size]
            if part.shape[0] < batch_size:
                part = torch.cat([part, part.new_zeros(batch_size - part.shape[0], *part.shape[1:])])
            with torch.inference_mode(), torch.autocast(batch.device.type, reduced or torch.bfloat16,
                                                        enabled=reduced is not None):
                out.append(compiled(part.contiguous(memory_format=torch.channels_last)).float().clone())
        return torch.cat(out)[:n]
    run(x.expand(batch_size, -1, -1, -1))  # compile now, so setup_s counts it
    return Runner("compile", precision, run)


# ----- ONNX Runtime -------------------------------------------------------------------------
_MEMORY_GRAPHS: OrderedDict[tuple, bytes] = OrderedDict()


def _graph_path(fingerprint: str | None, x: torch.Tensor):
    if fingerprint is None:
        return None
    from .files import cache_dir

    c, h, w = x.shape[1:]
    return cache_dir() / "graphs" / f"{fingerprint}-{c}x{h}x{w}-torch{torch.__version__}.onnx"


def _export_cached(fingerprint: str | None, x: torch.Tensor) -> bool:
    path = _graph_path(fingerprint, x)
    return (fingerprint, tuple(x.shape[1:])) in _MEMORY_GRAPHS or (path is not None and path.is_file())


def _export(net: nn.Module, x: torch.Tensor, fingerprint: str | None) -> bytes:
    """The network as ONNX bytes (batch dimension dynamic), from memory, disk or a fresh export."""
    key = (fingerprint, tuple(x.shape[1:]))
    if fingerprint is not None and key in _MEMORY_GRAPHS:
        return _MEMORY_GRAPHS[key]
    path = _graph_path(fingerprint, x)
    data = None
    if path is not None and path.is_file():
        try:
            data = path.read_bytes()
        except OSError:
            data = None
    if data is None:
        buffer = io.BytesIO()
        example = x[:1].detach().to(torch.float32).expand(2, -1, -1, -1).contiguous()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(_frozen_copy(net), (example,), buffer, dynamo=True, verbose=False,
                              input_names=["x"], output_names=["logits"],
                              dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=4096)},))
        data = buffer.getvalue()
        if path is not None:
            _write_quietly(path, data)
    if fingerprint is not None:
        _MEMORY_GRAPHS[key] = data
        while len(_MEMORY_GRAPHS) > RUNNER_CACHE_SIZE:
            _MEMORY_GRAPHS.popitem(last=False)
    return data


def _write_quietly(path, data: bytes) -> None:
    """Disk copy of an exported graph: a speed-up only, so an unwritable folder is no error."""
    from .files import atomic_write

    try:
        with atomic_write(path) as f:  # whole or not there, also on a full disk
            f.write(data)
    except OSError:
        pass


def _onnx_runner(net: nn.Module, x: torch.Tensor, fingerprint: str | None) -> Runner:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    session = ort.InferenceSession(_export(net, x, fingerprint), options, providers=["CPUExecutionProvider"])

    def run(batch: torch.Tensor) -> torch.Tensor:
        array = batch.detach().to("cpu", torch.float32).contiguous().numpy()
        return torch.from_numpy(session.run(None, {"x": array})[0])
    return Runner("onnxruntime", "fp32", run)


def _auto_onnx(net: nn.Module, x: torch.Tensor, fingerprint: str | None, batch_size: int,
               reference: Callable[[], tuple[torch.Tensor, torch.Tensor]]) -> Runner:
    """ONNX Runtime if it exports, agrees with the model and one timed batch is faster than
    channels_last; else channels_last."""
    fallback = _checked(_channels_last(net, "fp32"), reference)
    try:
        onnx = _checked(_onnx_runner(net, x, fingerprint), reference)
    except Exception as exc:  # noqa: BLE001 - any export failure means: use the exact torch path
        warnings.warn(f"backend='auto': ONNX Runtime cannot run this model as PyTorch does "
                      f"({type(exc).__name__}: {str(exc)[:300]}); using channels_last",
                      BackendFallbackWarning, stacklevel=4)
        fallback.note = "onnx export failed"
        return fallback
    batch = x[:1].expand(batch_size, -1, -1, -1).contiguous()
    times = {"onnxruntime": [], "channels_last": []}
    for _ in range(2):  # interleaved, the faster of two each: the machine may be shared
        for name, runner in (("onnxruntime", onnx), ("channels_last", fallback)):
            start = time.perf_counter()
            runner(batch)
            times[name].append(time.perf_counter() - start)
    best = {k: min(v) for k, v in times.items()}
    chosen = onnx if best["onnxruntime"] <= best["channels_last"] else fallback
    chosen.note = (f"auto: onnxruntime {1000 * best['onnxruntime'] / batch_size:.1f} ms/img, channels_last "
                   f"{1000 * best['channels_last'] / batch_size:.1f} ms/img")
    return chosen


def model_reference(net: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Four probe-like inputs (the image under fixed random masks) and the model's own
    probabilities on them: what :func:`check_agrees` holds a fast path to."""
    from .model_state import inference_state
    from .models import probabilities

    masks = torch.rand(4, 1, *x.shape[-2:], generator=torch.Generator().manual_seed(0))
    batch = x[:1].float() * masks.to(x.device)
    with inference_state(net), torch.inference_mode():  # the model as the sweep runs it (eval), left as it was
        return batch, probabilities(net(batch))


def check_agrees(run: Callable[[torch.Tensor], torch.Tensor], name: str,
                 reference: tuple[torch.Tensor, torch.Tensor]) -> None:
    """A fast fp32 path against the model itself, once when it is built: its probabilities on
    :func:`model_reference`'s inputs must agree within :data:`AGREEMENT_TOLERANCE`. Catches a graph
    that exported or compiled silently wrong, and a model whose code assumes the NCHW memory
    layout (a custom kernel reading raw strides).

    Raises:
        BackendMismatch: naming the path and the difference.
    """
    from .models import probabilities

    batch, expected = reference
    with torch.inference_mode():
        got = probabilities(run(batch))
    difference = float((got.to(expected.device) - expected).abs().max())
    tolerance = AGREEMENT_TOLERANCE.get(batch.device.type, AGREEMENT_TOLERANCE["cuda"])
    if not difference <= tolerance:  # NaN fails too
        raise BackendMismatch(f"the {name} path gives probabilities up to {difference:.3g} away from the model's "
                              f"own on this image (accepted: {tolerance:g}); use backend='eager'")


def _checked(runner: Runner, reference: Callable[[], tuple[torch.Tensor, torch.Tensor]]) -> Runner:
    """``runner`` after :func:`check_agrees` (fp32 runners; reduced precision measures its own
    agreement); ``reference()`` gives :func:`model_reference` (computed once per build)."""
    if runner.precision == "fp32":
        check_agrees(runner, runner.name, reference())
    return runner


# ----- agreement of a reduced-precision sweep -----------------------------------------------
def pearson(a: torch.Tensor, b: torch.Tensor) -> float:
    """Pearson correlation of two maps (1.0 when both are constant and equal)."""
    return float(pearsons(a[None], b[None])[0])


def pearsons(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pearson correlation of each pair of maps ``a[i]``, ``b[i]`` (``[N, ...]`` each), in float64:
    ``[N]``; 1.0 for a pair of constant, equal maps, 0.0 when only one of the two is constant."""
    a, b = a.flatten(1).double(), b.flatten(1).double()
    a, b = a - a.mean(1, keepdim=True), b - b.mean(1, keepdim=True)
    den = a.norm(dim=1) * b.norm(dim=1)
    r = (a * b).sum(1) / den.clamp(min=torch.finfo(torch.float64).tiny)
    return torch.where(den == 0, (a == b).all(1).double(), r)
