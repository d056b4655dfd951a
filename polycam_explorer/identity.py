"""A model's identity: one hash of what makes it compute what it computes (weights, buffers,
module tree and code), so that a map set is never served for, or accepted by, another model."""
from __future__ import annotations

import contextlib
import contextvars
import functools
import hashlib
import os
import threading
import types
import weakref
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Iterator

import numpy as np
import torch
from torch import nn

from .models import as_classifier


def model_fingerprint(model: nn.Module) -> str:
    """A short hex hash (16 digits) of what makes the network compute what it computes.

    Covered, for the network (``Classifier.net``, or the module itself):

    - every parameter and every buffer, persistent or not: name, shape, dtype and all its bytes
      (a tensor registered twice, as tied weights are, is hashed once and recorded as tied);
    - the module tree: each module's qualified name (in registration order, shared modules under
      each of their names), its class (module and qualname), its ``extra_repr()`` (kernel sizes,
      strides, ``negative_slope``, ``inplace``, ``eps``, ``momentum``, ...) and its plain
      attributes (numbers, strings, containers of them, tensors not registered as buffers;
      functions by their code, other objects by their type);
    - code: for each distinct class, every function defined on it and on its bases up to
      ``nn.Module`` (``forward``, the helpers it calls, overrides in subclasses) by its bytecode,
      constants, the names it refers to, defaults and closure values, plus the code of the
      functions of its own Python module that it refers to by name; a ``forward`` patched on an
      instance; the forward (pre-)hooks registered on any module (except this package's own,
      which live for one call and may be registered by another thread meanwhile).

    Not covered: the training flag and ``requires_grad`` (flags, not identity), the device and
    the memory layout; a :class:`Classifier`'s labels (name, class names, weights id, input size)
    and its ``layer_rule`` (it only chooses layers: the layers are stored in a map set and the rule
    goes into the cache key separately); its preprocessing ``mean`` and ``std``, which are not
    the network's: a map set stores the normalised image it explains with its mean and std, and
    the cache key hashes the normalised input tensor. Nor the code of functions from other
    modules or packages called inside an unchanged forward (``torch.nn.functional``, ...), nor
    global state they read. Bytecode differs between Python versions, so the same model under
    another Python minor version has another fingerprint (its saved map sets are refused:
    recompute them).
    """
    net = as_classifier(model).net
    pinned = _PINNED.get()
    if pinned is not None and id(net) in pinned:
        return pinned[id(net)][1]
    with _copy_stream(net):
        fingerprint = _fingerprint(net)
    with _LAST_LOCK:
        _LAST[net] = fingerprint
    if pinned is not None:
        pinned[id(net)] = (net, fingerprint)  # the network is held: its id is not reused meanwhile
    return fingerprint


def fingerprint_in_background(model: nn.Module) -> Future:
    """:func:`model_fingerprint` computed in a worker thread (in the caller's :func:`one_model`
    scope, if any): a sweep plans its masks meanwhile, and on a GPU runs its probes meanwhile."""
    return _WORKERS.submit(contextvars.copy_context().run, model_fingerprint, model)


def last_fingerprint(model: nn.Module) -> str | None:
    """The fingerprint this very network object had when it was last computed, or None. A guess
    only: its weights may have changed since; compare with :func:`model_fingerprint`."""
    with _LAST_LOCK:
        return _LAST.get(as_classifier(model).net)


@contextlib.contextmanager
def one_model() -> Iterator[None]:
    """Within this block each network's fingerprint is computed once: one operation (look up the
    cache, load or compute, store) takes the model to stay the same model throughout."""
    token = _PINNED.set({} if _PINNED.get() is None else _PINNED.get())
    try:
        yield
    finally:
        _PINNED.reset(token)


_PINNED: contextvars.ContextVar[dict[int, tuple[nn.Module, str]] | None] = contextvars.ContextVar("pinned_fingerprints", default=None)
_LAST: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_LAST_LOCK = threading.Lock()
_WORKERS = ThreadPoolExecutor(max_workers=2, thread_name_prefix="polycam-fingerprint")


def _fingerprint(net: nn.Module) -> str:
    digest = hashlib.sha256()
    put = lambda *parts: digest.update(repr(parts).encode())  # noqa: E731
    seen_tensors: dict[int, str] = {}
    classes: dict[type, None] = {}
    for name, module in net.named_modules(remove_duplicate=False):
        kind = type(module)
        classes.setdefault(kind, None)
        put("module", name, kind.__module__, kind.__qualname__, module.extra_repr())
        for key, value in sorted(vars(module).items()):
            if key not in _MODULE_INTERNALS:
                put("attribute", key, _describe(value, digest, seen_tensors, f"{name}.{key}"))
        for table in ("_parameters", "_buffers"):
            for key, tensor in getattr(module, table).items():
                put(table, key)
                if tensor is not None:
                    _hash_tensor(tensor, digest, seen_tensors, f"{name}.{key}")
        for table in ("_forward_pre_hooks", "_forward_hooks"):
            # a snapshot (list() runs without releasing the GIL): another thread's sweep may
            # register or remove its own hooks on this module meanwhile
            for hook in list(getattr(module, table).values()):
                if not getattr(hook, "__module__", "").startswith(__package__ + "."):
                    put(table, _describe(hook, digest, seen_tensors, name))
    visited: set[int] = set()
    for kind in classes:
        for base in kind.__mro__:
            if base is nn.Module or base is object:
                break
            put("class", base.__module__, base.__qualname__)
            for key, value in sorted(vars(base).items()):
                for function in _functions_of(value):
                    put("method", key)
                    _hash_function(function, digest, visited)
    return digest.hexdigest()[:16]


_MODULE_INTERNALS = frozenset(vars(nn.Module())) | {"training"}


def _functions_of(value: object) -> list:
    if isinstance(value, (staticmethod, classmethod)):
        value = value.__func__
    if isinstance(value, property):
        return [f for f in (value.fget, value.fset) if f is not None]
    return [value] if isinstance(value, types.FunctionType) else []


def _hash_tensor(tensor: torch.Tensor, digest, seen: dict[int, str], name: str) -> None:
    if id(tensor) in seen:
        digest.update(f"same as {seen[id(tensor)]}".encode())
        return
    seen[id(tensor)] = name
    digest.update(f"{tuple(tensor.shape)}{tensor.dtype}".encode())
    data = tensor.detach()
    if data.is_sparse:
        data = data.to_dense()
    if data.is_meta:
        digest.update(b"meta")
        return
    flat = data.reshape(-1).contiguous().view(torch.uint8)  # on its device: bytes in logical order
    if not flat.numel():
        return
    stream = _STREAM.value
    if flat.numel() <= _CHUNK:
        digest.update(_host_bytes(flat, stream))
        return
    # a large tensor: the hashes of its fixed 8 MiB chunks, each copied to the host and hashed in
    # a thread (both release the GIL), in order: the same value on every device, machine and
    # thread count
    chunks = [flat[i:i + _CHUNK] for i in range(0, flat.numel(), _CHUNK)]
    with ThreadPoolExecutor(max_workers=min(8, len(chunks), os.cpu_count() or 1)) as pool:
        digest.update(b"".join(pool.map(lambda c: hashlib.sha256(_host_bytes(c, stream)).digest(), chunks)))


_CHUNK = 1 << 23


class _Stream(threading.local):
    value = None  # the CUDA stream this thread's fingerprint copies tensors on (None: the current one)


_STREAM = _Stream()


@contextlib.contextmanager
def _copy_stream(net: nn.Module):
    """For a network on a CUDA device: copy its tensors to the host on a side stream, after the
    work queued so far, so that a fingerprint taken beside a sweep does not wait behind the sweep's
    probe batches on the default stream (nothing the sweep runs writes the weights)."""
    device = next((t.device for t in net.parameters()), None)
    if device is None or device.type != "cuda":
        yield
        return
    stream = torch.cuda.Stream(device)
    stream.wait_stream(torch.cuda.current_stream(device))
    _STREAM.value = stream
    try:
        with torch.cuda.stream(stream):  # this thread's own copies (``contiguous``, ...) too
            yield
    finally:
        _STREAM.value = None


def _host_bytes(flat: torch.Tensor, stream) -> memoryview:
    """The bytes of a flat uint8 tensor, copied to the host (on ``stream`` for a tensor on it)."""
    if stream is None or flat.device != stream.device:
        return flat.cpu().numpy().data
    with torch.cuda.stream(stream):
        return flat.cpu().numpy().data


def _describe(value: object, digest, seen: dict[int, str], name: str, depth: int = 0) -> object:
    """A stable description of a plain attribute; tensors and functions are hashed into ``digest``."""
    if value is None or isinstance(value, (bool, int, float, complex, str, bytes)):
        return value
    if isinstance(value, (torch.dtype, torch.Size)):
        return str(value)
    if isinstance(value, type):
        return ("class", value.__module__, value.__qualname__)
    if isinstance(value, torch.Tensor):
        _hash_tensor(value, digest, seen, name)
        return "tensor"
    if isinstance(value, np.ndarray):
        digest.update(np.ascontiguousarray(value).tobytes())
        return ("ndarray", value.dtype.str, value.shape)
    if depth < 4 and isinstance(value, (tuple, list, set, frozenset)):
        items = sorted(value, key=_stable_repr) if isinstance(value, (set, frozenset)) else value
        return (type(value).__name__, *[_describe(v, digest, seen, name, depth + 1) for v in items])
    if depth < 4 and isinstance(value, dict):
        return ("dict", *[(_stable_repr(k), _describe(v, digest, seen, name, depth + 1))
                          for k, v in value.items()])
    if isinstance(value, types.MethodType):
        value = value.__func__
    if isinstance(value, functools.partial):
        return ("partial", _describe(value.func, digest, seen, name, depth + 1),
                _describe(value.args, digest, seen, name, depth + 1),
                _describe(value.keywords, digest, seen, name, depth + 1))
    if isinstance(value, types.FunctionType):
        _hash_function(value, digest, set())
        return ("function", value.__module__, value.__qualname__)
    kind = type(value)
    if not isinstance(value, nn.Module) and isinstance(vars(kind).get("__call__"), types.FunctionType):
        _hash_function(kind.__call__, digest, set())  # a callable object: its class's code
    return ("object", kind.__module__, kind.__qualname__)


def _hash_function(function: types.FunctionType, digest, visited: set[int]) -> None:
    """Hash a function's code, defaults and closure, and the same-module functions it names."""
    if id(function) in visited:
        return
    visited.add(id(function))
    _hash_code(function.__code__, digest)
    digest.update(repr(_describe((function.__defaults__, function.__kwdefaults__), digest, {}, "defaults", 2)).encode())
    for cell in function.__closure__ or ():
        try:
            contents = cell.cell_contents
        except ValueError:  # an empty cell
            continue
        if isinstance(contents, types.FunctionType):
            _hash_function(contents, digest, visited)
        elif isinstance(contents, type):
            digest.update(f"{contents.__module__}.{contents.__qualname__}".encode())
        else:
            digest.update(repr(_describe(contents, digest, {}, "closure", 3)).encode())
    for global_name in function.__code__.co_names:
        target = function.__globals__.get(global_name)
        if isinstance(target, types.FunctionType) and target.__module__ == function.__module__:
            _hash_function(target, digest, visited)


def _hash_code(code: types.CodeType, digest) -> None:
    digest.update(code.co_code)
    digest.update(repr(code.co_names).encode())
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            _hash_code(const, digest)
        else:
            digest.update(_stable_repr(const).encode())


def _stable_repr(value: object) -> str:
    """``repr`` with sets sorted (their order changes with the interpreter's hash seed)."""
    if isinstance(value, (set, frozenset)):
        return f"{type(value).__name__}({sorted(_stable_repr(v) for v in value)})"
    if isinstance(value, tuple):
        return f"({', '.join(_stable_repr(v) for v in value)},)"
    return repr(value)
