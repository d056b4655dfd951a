"""What every baseline method shares (:mod:`polycam_explorer.baselines`, :mod:`polycam_explorer.rise`):
argument checks, the model and input prepared, target layers, maps brought to the input size,
seeded randomness, and the model held as found."""
from __future__ import annotations

import contextlib
import operator
import threading
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from .cancel import CancelFlag, Cancelled, cancel_check
from .images import check_image
from .layers import check_layers, describe_layers, module_device
from .model_state import inference_state
from .models import Classifier, as_classifier, probabilities


def positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


def optional_batch(value: object) -> int | None:
    return None if value is None else positive_int("batch_size", value)


def prepare(model: nn.Module, x: torch.Tensor, class_idx: int) -> tuple[nn.Module, torch.Tensor, int]:
    """The network, a detached copy of ``x`` on its device, and ``class_idx`` checked against its outputs."""
    clf = as_classifier(model)
    net = clf.net
    device = module_device(net)
    check_image(x, clf.channels)
    if isinstance(class_idx, bool):
        raise TypeError("class_idx must be an int, got bool")
    try:
        c = operator.index(class_idx)
    except TypeError:
        raise TypeError(f"class_idx must be an int, got {type(class_idx).__name__}") from None
    x = x.detach().to(device).clone()
    with inference_state(net):
        n_classes = probabilities(net(x)).shape[1]
    if not 0 <= c < n_classes:
        raise ValueError(f"class_idx must be in 0..{n_classes - 1}, got {c}")
    return net, x, c


def target_layers(model: nn.Module, net: nn.Module, x: torch.Tensor) -> list[str]:
    """The discovered target layers (the model's rule), input side first, at the Classifier's input
    size (else at x's): the layers Poly-CAM uses."""
    clf = as_classifier(model)
    size = clf.input_size if isinstance(model, Classifier) else tuple(x.shape[-2:])
    return [info.name for info in describe_layers(net, size, clf.layer_rule)]


def one_layer(model: nn.Module, net: nn.Module, x: torch.Tensor, target_layer: str | None) -> str:
    if target_layer is None:
        return target_layers(model, net, x)[-1]
    if not isinstance(target_layer, str):
        raise TypeError(f"target_layer must be a module name (str) or None, got {type(target_layer).__name__}")
    return check_layers(net, [target_layer])[0]


def to_input_size(cam: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """A ``h x w`` map upsampled bilinearly (``align_corners=False``) to ``x``'s ``H x W``."""
    cam = cam.detach().float()
    if tuple(cam.shape) != tuple(x.shape[-2:]):
        cam = F.interpolate(cam[None, None], size=x.shape[-2:], mode="bilinear", align_corners=False)[0, 0]
    return cam


@contextlib.contextmanager
def seeded(seed: int | None, device: torch.device) -> Iterator[None]:
    """Seed torch's global generators for one block and give them back as they were (no-op for None)."""
    if seed is None:
        yield
        return
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed must be an int or None, got {seed!r}")
    # manual_seed seeds every CUDA device: hand every one back
    devices = list(range(torch.cuda.device_count())) if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


@contextlib.contextmanager
def explaining(net: nn.Module) -> Iterator[None]:
    """Eval mode, parameters frozen, gradients on (for the input copy); every flag restored after."""
    with inference_state(net), torch.enable_grad():
        yield


class BaselineCancelled(Cancelled):
    """A baseline map stopped at a forward pass because its cancel flag was set."""


@contextlib.contextmanager
def cancellable(net: nn.Module, cancel: CancelFlag) -> Iterator[None]:
    """Stop at the next forward pass of ``net`` in this thread once ``cancel`` is set (raising
    :class:`BaselineCancelled`): the methods run inside torchcam and Captum, whose loops of
    forward passes (Score-CAM's masks, SmoothGrad's samples, occlusion's windows) have no other
    way out. Passes in other threads (a sweep beside it on the same network) are left alone."""
    if cancel is None:
        yield
        return
    stop_now, owner = cancel_check(cancel), threading.get_ident()

    def check(_module, _inputs) -> None:
        if threading.get_ident() == owner and stop_now():
            raise BaselineCancelled("baseline map cancelled")

    handle = net.register_forward_pre_hook(check)
    try:
        yield
    finally:
        handle.remove()
