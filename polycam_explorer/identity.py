"""A model's identity: one hash of what makes it compute what it computes (weights, buffers,
module tree and code), so that a map set is never served for, or accepted by, another model."""
from __future__ import annotations

import contextlib
import contextvars
import dis
import enum
import functools
import hashlib
import os
import sys
import sysconfig
import threading
import types
import weakref
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Iterator

import numpy as np
import torch
from torch import nn
from torch.nn.modules import module as torch_module

from .models import as_classifier


def model_fingerprint(model: nn.Module) -> str:
    """A short hex hash (16 digits) of what makes the network compute what it computes.

    Covered, for the network (``Classifier.net``, or the module itself):

    - every parameter and every buffer, persistent or not: name, shape, dtype and all its bytes
      (a tensor registered twice, as tied weights are, is hashed once and recorded as tied);
    - the module tree: each module's qualified name (in registration order, shared modules under
      each of their names), its class (module and qualname), its ``extra_repr()`` and its
      attributes, as every value below is described: numbers, strings, enums, containers, tensors
      and arrays by their bytes; modules held outside the tree (in a list, as a global) with their
      weights; functions by their code; bound methods with their object; builtins (``torch.tanh``)
      by name; other objects by their class's code and their attributes (``__dict__``,
      ``__slots__``: a config object, a dataclass, a hook object's settings); standard-library
      objects other than namespaces by their type;
    - code: for each class met (modules', objects'), every function on it and its bases up to
      ``nn.Module`` by its bytecode, constants, names, defaults and closure, and its other class
      attributes; the functions and classes of its own Python module that its code loads as
      globals and, for the user's own code (not the standard library nor an installed package),
      every other global value it loads (a module-level temperature, a helper module), nested
      lambdas and generator expressions included; a ``forward`` patched on an instance; the
      forward (pre-)hooks on any module and the global ones (``register_module_forward_hook``),
      except this package's own, which live for one call and may be registered by another thread.

    Not covered: the training flag and ``requires_grad`` (flags, not identity), the device and
    the memory layout; a :class:`Classifier`'s labels (name, class names, weights id, input size)
    and its ``layer_rule`` (it only chooses layers: the layers are stored in a map set and the rule
    goes into the cache key separately); its preprocessing ``mean`` and ``std``, which are not
    the network's: a map set stores the normalised image it explains with its mean and std, and
    the cache key hashes the normalised input tensor. Nor the code of functions of other modules
    or packages called by the code (``torch.nn.functional``, even monkeypatched), the module-level
    values installed packages read, or values read as another module's attribute
    (``settings.SCALE``). Bytecode differs between Python versions, so the same model under
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
    hasher = _Hasher()
    hasher.tree(net, "")
    for table in ("_global_forward_pre_hooks", "_global_forward_hooks"):  # hooks on every module
        for hook in list(getattr(torch_module, table, {}).values()):
            if not _ours(hook):
                hasher.put(table, hasher.describe(hook, "global hook"))
    for kind in hasher.classes:  # a list that grows: classes met while hashing code are hashed in turn
        hasher.class_code(kind)
    return hasher.digest.hexdigest()[:16]


_MODULE_INTERNALS = frozenset(vars(nn.Module())) | {"training"}
_MAX_DEPTH = 16  # nesting of containers and objects described
_MAX_ITEMS = 200_000  # values described per fingerprint; beyond it, types only (a huge object graph)
_UNSET = object()


class _Hasher:
    """One fingerprint's digest and what it met: tensors (tied weights hash once), modules by name,
    functions and classes hashed, objects being described (a cycle is named, not followed)."""

    def __init__(self) -> None:
        self.digest, self.items = hashlib.sha256(), 0
        self.tensors: dict[int, str] = {}
        self.modules: dict[int, str] = {}  # id -> qualified name
        self.functions: set[int] = set()
        self.classes: list[type] = []
        self.open: set[int] = set()

    def put(self, *parts: object) -> None:
        self.digest.update(repr(parts).encode())

    def add_class(self, kind: type) -> None:
        if kind not in self.classes:
            self.classes.append(kind)

    def tree(self, root: nn.Module, prefix: str) -> str:
        """Hash a module tree (modules not met before): the root's qualified name."""
        known, named = set(self.modules), list(root.named_modules(prefix=prefix, remove_duplicate=False))
        for name, module in named:
            self.modules.setdefault(id(module), name)
        for name, module in (item for item in named if id(item[1]) not in known):
            self.module(name, module)
        return self.modules[id(root)]

    def module(self, name: str, module: nn.Module) -> None:
        kind = type(module)
        self.add_class(kind)
        self.put("module", name, kind.__module__, kind.__qualname__, module.extra_repr())
        for key, value in sorted(vars(module).items()):
            if key not in _MODULE_INTERNALS:
                self.put("attribute", key, self.describe(value, f"{name}.{key}"))
        for table in ("_parameters", "_buffers"):
            for key, tensor in getattr(module, table).items():
                self.put(table, key)
                if tensor is not None:
                    _hash_tensor(tensor, self.digest, self.tensors, f"{name}.{key}")
        for table in ("_forward_pre_hooks", "_forward_hooks"):
            # a snapshot (list() holds the GIL): another thread may add or remove its hooks meanwhile
            for hook in list(getattr(module, table).values()):
                if not _ours(hook):
                    self.put(table, self.describe(hook, name))

    def class_code(self, kind: type) -> None:
        """Every function of a class and its bases up to ``nn.Module`` (or ``object``), and their
        other attributes (constants the code may read through ``self``)."""
        for base in kind.__mro__:
            if base is nn.Module or base is object:
                break
            self.put("class", base.__module__, base.__qualname__)
            for key, value in sorted(vars(base).items()):
                functions = _functions_of(value)
                for function in functions:
                    self.put("method", key)
                    self.function(function)
                if not functions and not (key.startswith("__") and key.endswith("__")):
                    self.put("class attribute", key, self.describe(value, f"{base.__qualname__}.{key}"))

    def function(self, function: types.FunctionType) -> None:
        """A function's code, defaults and closure, and the globals its code loads: functions and
        classes of its own module by their code, other values as :meth:`describe` says (for user
        code only: installed libraries' module-level values are not read)."""
        if id(function) in self.functions:
            return
        self.functions.add(id(function))
        self.code(function.__code__)
        self.put("defaults", self.describe((function.__defaults__, function.__kwdefaults__), "defaults"))
        for cell in function.__closure__ or ():
            with contextlib.suppress(ValueError):  # an empty cell
                self.put("closure", self.describe(cell.cell_contents, "closure"))
        user = _user_code(function.__code__.co_filename)
        for name in _global_names(function.__code__):
            target = function.__globals__.get(name, _UNSET)
            if target is _UNSET:  # a builtin, or a name not defined (yet)
                continue
            mine = getattr(target, "__module__", None) == function.__module__
            if isinstance(target, types.FunctionType) and not mine:
                self.put("global", name, "function", target.__module__, target.__qualname__)
            elif isinstance(target, type) and mine:
                self.add_class(target)
                self.put("global", name, "class", target.__qualname__)
            elif user or isinstance(target, types.FunctionType):
                self.put("global", name, self.describe(target, name))

    def code(self, code: types.CodeType) -> str:
        """Bytecode, names and constants (nested code, sets in a stable order)."""
        consts = [self.code(c) if isinstance(c, types.CodeType) else self.describe(c, "constant") for c in code.co_consts]
        self.put("code", code.co_code, code.co_names, consts)
        return "code"

    def describe(self, value: object, name: str, depth: int = 0) -> object:
        """A stable description of a value (no addresses, no set order); tensors, arrays,
        functions, modules and classes met are hashed into the digest."""
        if value is None or isinstance(value, (bool, int, float, complex, str, bytes)):
            return value
        if isinstance(value, (torch.dtype, torch.Size, torch.device)):  # a device is not identity
            return "device" if isinstance(value, torch.device) else str(value)
        if isinstance(value, type):
            if _user_module(value.__module__):
                self.add_class(value)  # a class the code may build (``self.block = Block``): its code
            return ("class", value.__module__, value.__qualname__)
        if isinstance(value, types.ModuleType):
            return ("python module", value.__name__)
        if isinstance(value, torch.Tensor):
            _hash_tensor(value, self.digest, self.tensors, name)
            return "tensor"
        kind = (type(value).__module__, type(value).__qualname__)
        if isinstance(value, enum.Enum):
            return ("enum", *kind, value.name)
        self.items += 1
        if depth >= _MAX_DEPTH or self.items > _MAX_ITEMS or id(value) in self.open:
            return ("not followed", *kind)
        self.open.add(id(value))
        try:
            return self._compound(value, name, depth + 1)
        finally:
            self.open.discard(id(value))

    def _compound(self, value: object, name: str, depth: int) -> object:
        kind = type(value)
        if isinstance(value, np.ndarray):
            if value.dtype.hasobject:
                return ("ndarray", value.shape, self.describe(value.tolist(), name, depth))
            self.digest.update(np.ascontiguousarray(value).tobytes())
            return ("ndarray", value.dtype.str, value.shape)
        if isinstance(value, (tuple, list)):
            return (kind.__name__, *[self.describe(v, name, depth) for v in value])
        if isinstance(value, (set, frozenset)):
            return (kind.__name__, *sorted((self.describe(v, name, depth) for v in value), key=repr))
        if isinstance(value, dict):
            return ("dict", *[(self.describe(k, name, depth), self.describe(v, name, depth)) for k, v in value.items()])
        if isinstance(value, nn.Module):  # in the network: its name; else its own tree, hashed
            return ("module", self.modules.get(id(value)) or self.tree(value, f"<{name}>"))
        if isinstance(value, types.MethodType):
            return ("method", self.describe(value.__func__, name, depth), self.describe(value.__self__, name, depth))
        if isinstance(value, functools.partial):
            return ("partial", *[self.describe(v, name, depth) for v in (value.func, value.args, value.keywords)])
        if isinstance(value, types.FunctionType):
            self.function(value)
            return ("function", value.__module__, value.__qualname__)
        if isinstance(value, _BUILTIN_CALLABLES):  # torch.tanh, np.tanh, a tensor's bound method
            owner = getattr(value, "__self__", None)
            return ("builtin", getattr(value, "__module__", None), getattr(value, "__qualname__", None),
                    getattr(value, "__name__", None), self.describe(owner, name, depth))
        state = _state(value)
        if state is None:  # a standard-library object (a lock, a file, a logger): its type
            return ("object", kind.__module__, kind.__qualname__)
        self.add_class(kind)  # its methods: a hook's or a callable setting's code
        return ("object", kind.__module__, kind.__qualname__,
                *[(str(key), self.describe(v, f"{name}.{key}", depth)) for key, v in sorted(state.items(), key=repr)])


_BUILTIN_CALLABLES = (types.BuiltinFunctionType, types.MethodWrapperType, types.WrapperDescriptorType,
                      types.MethodDescriptorType, types.ClassMethodDescriptorType, np.ufunc)


def _ours(hook: object) -> bool:
    """This package's own hooks live for one call and may be registered by another thread meanwhile."""
    return str(getattr(hook, "__module__", None)).startswith(__package__ + ".")


def _state(value: object) -> dict | None:
    """An object's attributes (``__dict__`` and ``__slots__``, read without running its code), or
    None for a standard-library object other than a plain namespace."""
    kind = type(value)
    if kind.__module__.partition(".")[0] in _STDLIB and (kind.__module__, kind.__qualname__) not in _PLAIN_STDLIB:
        return None
    state = dict(vars(value)) if kind.__dictoffset__ else {}
    for base in kind.__mro__:
        for slot, member in vars(base).items():
            if isinstance(member, types.MemberDescriptorType) and slot not in state:
                with contextlib.suppress(AttributeError):  # a slot never set
                    state[slot] = member.__get__(value, kind)
    return state


_STDLIB = frozenset(sys.stdlib_module_names) | {"builtins"}
_STDLIB_FOLDERS = ("<frozen", *{sysconfig.get_paths()[key] for key in ("stdlib", "platstdlib")})
_PLAIN_STDLIB = {("types", "SimpleNamespace"), ("argparse", "Namespace")}  # stdlib objects holding settings


@functools.lru_cache(maxsize=None)
def _user_code(filename: str) -> bool:
    """Whether code comes from the user (a notebook cell, a script, a project folder, ``exec``),
    not from the standard library nor an installed package."""
    return not (filename.startswith(_STDLIB_FOLDERS) or "site-packages" in filename or "dist-packages" in filename)


def _user_module(name: str) -> bool:
    file = getattr(sys.modules.get(name), "__file__", None)
    return name.partition(".")[0] not in _STDLIB and _user_code(file or "<no file: a notebook's __main__>")


def _global_names(code: types.CodeType) -> list[str]:
    """The global names a function's code loads, nested code (lambdas, generator expressions,
    inner functions) included, in order of first use."""
    names = [i.argval for i in dis.get_instructions(code) if i.opname in ("LOAD_GLOBAL", "LOAD_NAME")]
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names.extend(_global_names(const))
    return list(dict.fromkeys(names))


def _functions_of(value: object) -> list:
    if isinstance(value, (staticmethod, classmethod)):
        value = value.__func__
    values = (value.fget, value.fset) if isinstance(value, property) else (value,)
    return [f for f in values if isinstance(f, types.FunctionType)]


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
