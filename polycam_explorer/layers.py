"""Target-layer discovery and activation capture (ALGORITHM.md, "Target layers").

Every hook registered here lives for one call: a context manager owns the handles and removes
them in ``finally``, also when the forward pass raises.
"""
from __future__ import annotations

import contextlib
import threading
from dataclasses import dataclass
from typing import Iterator, Sequence

import torch
from torch import nn

from .model_state import inference_state

LAYER_RULES = ("main-path", "activations")  # see describe_layers
_POOLING = (nn.modules.pooling._MaxPoolNd, nn.modules.pooling._AvgPoolNd,
            nn.modules.pooling._AdaptiveAvgPoolNd, nn.modules.pooling._AdaptiveMaxPoolNd,
            nn.modules.pooling._LPPoolNd)
_PADDING = (nn.modules.padding._ConstantPadNd, nn.modules.padding._ReflectionPadNd,
            nn.modules.padding._ReplicationPadNd, nn.modules.padding.CircularPad2d)


@dataclass(frozen=True)
class LayerInfo:
    """One row of the stage table: a target layer and the shape of its output."""

    name: str
    channels: int
    height: int
    width: int
    stride: int  # the subsampling factor s_l = H / h_l


@contextlib.contextmanager
def hooks(model: nn.Module, names: Sequence[str], hook_factory) -> Iterator[None]:
    """Register ``hook_factory(name)`` as a forward hook on each named module, for one block.

    The hooks see only the forward passes of the thread that registered them: another thread
    running the same model meanwhile (the explorer's background work) is not recorded."""
    modules = dict(model.named_modules())
    owner = threading.get_ident()

    def this_thread_only(hook):
        def fn(module, inputs, output):
            if threading.get_ident() == owner:
                return hook(module, inputs, output)
            return None
        return fn

    handles = []
    try:
        for name in names:
            handles.append(modules[name].register_forward_hook(this_thread_only(hook_factory(name))))
        yield
    finally:
        for handle in handles:
            handle.remove()


def _is_transparent(module: nn.Module) -> bool:
    """Plain containers whose children are the real blocks (a subclass keeping Sequential's forward too)."""
    if isinstance(module, (nn.ModuleList, nn.ModuleDict)) and type(module).forward is nn.Module.forward:
        return True
    return isinstance(module, nn.Sequential) and type(module).forward is nn.Sequential.forward


def _blocks(model: nn.Module, opened: frozenset[str] = frozenset()) -> list[str]:
    """Candidate block names: containers are opened, any other module with children is one block;
    the blocks named in ``opened`` are candidates and so are their children (recursively)."""
    out: list[str] = []

    def visit(prefix: str, module: nn.Module) -> None:
        for name, child in module.named_children():
            full = f"{prefix}{name}"
            if _is_transparent(child):
                visit(full + ".", child)
                continue
            out.append(full)
            if full in opened:
                visit(full + ".", child)

    visit("", model)
    return out


def _open_wrappers(model: nn.Module, resolution: dict[str, tuple[int, int]],
                   starts_at: dict[str, tuple[int, int]]) -> list[str]:
    """The blocks, with every block opened whose modules reveal a resolution that no block gives
    and that is not the one the block starts at.

    ``resolution`` maps each module that qualifies as a target to its output size, ``starts_at``
    each module to the size of its input. A plain wrapper (``nn.Sequential(resnet)``,
    ``self.model = resnet``) is one block whose output is the logits; a feature extractor holding
    the stages outputs only the last resolution; a module used through its children is never
    called: each hides the network's stages. Opening them, until nothing new appears, finds the
    layers of the bare network, named under the wrapper. An ordinary block (a bottleneck, an
    inverted residual, ShuffleNet's unit after a max-pool) reveals at most the resolution it
    starts at, which is not opened for: its inside is not the main path.
    """
    opened: frozenset[str] = frozenset()
    names = [n for n in resolution]
    while True:
        blocks = _blocks(model, opened)
        found = {resolution[b] for b in blocks if b in resolution}
        more = {b for b in blocks if b not in opened and any(
            n.startswith(b + ".") and resolution[n] not in found and resolution[n] != starts_at.get(b)
            for n in names)}
        if not more:
            return blocks
        opened |= more


def input_channels(model: nn.Module) -> int:
    """Channels the model expects: those of its first 2-D convolution (3 if it has none)."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            return m.in_channels
    return 3


def float_dtype(module: nn.Module) -> torch.dtype:
    """The floating-point type of a module's parameters (float32 for a module without any)."""
    return next((p.dtype for p in module.parameters() if p.is_floating_point()), torch.float32)


def module_device(module: nn.Module) -> torch.device:
    """Where a module's parameters live (the CPU for a module without parameters)."""
    for p in module.parameters():
        return p.device
    return torch.device("cpu")


def check_layer_rule(rule: str, what: str = "rule") -> str:
    """``rule`` if it is one of :data:`LAYER_RULES`, else a ValueError naming ``what`` and the choices."""
    if rule not in LAYER_RULES:
        raise ValueError(f"{what} must be one of {LAYER_RULES}, got {rule!r}")
    return rule


def describe_layers(model: nn.Module, input_size: Sequence[int] = (224, 224),
                    rule: str = "main-path") -> list[LayerInfo]:
    """Discover the target layers and return their stage table, input side (finest) first.

    One forward pass on a fixed random input of ``input_size``. ``rule`` picks, per resolution:

    - ``"main-path"`` (ALGORITHM.md): the last block that outputs it; pooling, padding-only and
      repeatedly called modules are skipped, as are outputs whose size does not divide the input
      and 1x1 outputs.
    - ``"activations"``: at each of those resolutions, the last module (of any depth) whose output
      is non-negative, i.e. the last ReLU-family activation there, else the main-path block. On
      VGG16 and ResNet50 both rules give the paper's layers; they differ where the main path
      carries signed tensors (the linear bottlenecks of EfficientNet and MobileNet).

    A container whose output is the very tensor of its last child names the layer (``layer1``,
    not ``layer1.2``). A module wrapping the network's stages (``nn.Sequential(resnet)``, a
    ``Wrapper`` whose forward calls ``self.model``, a backbone returning only its last map) is
    looked into: the layers are those of the bare network, named under the wrapper
    (``model.layer1``).

    Raises:
        ValueError: an unknown ``rule``, or a model without a 4-D activation that qualifies.
    """
    check_layer_rule(rule)
    h_in, w_in = int(input_size[0]), int(input_size[1])
    named = dict(model.named_modules())
    outputs: dict[str, object] = {}
    non_negative: dict[str, bool] = {}
    calls: dict[str, int] = {}
    order: list[str] = []

    starts_at: dict[str, tuple[int, int]] = {}

    def record(name: str):
        def fn(_module, inputs, output):
            calls[name] = calls.get(name, 0) + 1
            outputs[name] = output
            if inputs and isinstance(inputs[0], torch.Tensor) and inputs[0].dim() == 4:
                starts_at[name] = tuple(inputs[0].shape[-2:])
            if rule == "activations" and isinstance(output, torch.Tensor) and output.dim() == 4:
                # checked now: in-place operations may change the tensor later in the pass
                non_negative[name] = bool(output.min() >= 0)
            order.append(name)
        return fn

    generator = torch.Generator().manual_seed(0)  # the caller's random state is left alone
    x = torch.rand(1, input_channels(model), h_in, w_in, generator=generator).to(module_device(model), float_dtype(model))
    every = [n for n in named if n]
    with inference_state(model), hooks(model, every, record):
        model(x)

    def last_per_resolution(candidate) -> dict[tuple[int, int], str]:
        found: dict[tuple[int, int], str] = {}
        for name in order:  # completion order: later wins within a resolution
            if candidate(name) and _qualifies(name, named, outputs, calls, (h_in, w_in)):
                size = tuple(outputs[name].shape[-2:])
                found.pop(size, None)
                found[size] = name
        return found

    blocks = set(_open_wrappers(model, {
        n: tuple(outputs[n].shape[-2:]) for n in order if _qualifies(n, named, outputs, calls, (h_in, w_in))},
        starts_at))
    by_resolution = last_per_resolution(blocks.__contains__)
    if not by_resolution:
        raise ValueError(
            f"{type(model).__name__} has no 4-D activation (N x C x h x w) whose size divides the "
            f"input size {h_in}x{w_in}: Poly-CAM needs a convolutional network")
    if rule == "activations":
        activations = last_per_resolution(lambda n: non_negative.get(n, False))
        by_resolution = {size: activations.get(size, name) for size, name in by_resolution.items()}

    table = []
    for (h, w), name in sorted(by_resolution.items(), key=lambda kv: -kv[0][0] * kv[0][1]):
        name = _container_name(name, named, outputs)
        out = outputs[name]
        table.append(LayerInfo(name, int(out.shape[1]), int(h), int(w), h_in // int(h)))
    for finer, coarser in zip(table, table[1:]):
        if coarser.stride <= finer.stride:
            raise ValueError(f"layer strides must increase from input to output, got "
                             f"{finer.name} (/{finer.stride}) then {coarser.name} (/{coarser.stride})")
    return table


def _qualifies(name: str, named: dict[str, nn.Module], outputs: dict[str, object], calls: dict[str, int],
               input_size: tuple[int, int]) -> bool:
    """A module run once whose output is a 4-D tensor, larger than 1x1, whose size divides the
    input's, and that is not a pooling or padding module."""
    out = outputs[name]
    if (calls[name] != 1 or isinstance(named[name], _POOLING + _PADDING)
            or not isinstance(out, torch.Tensor) or out.dim() != 4):
        return False
    h, w = out.shape[-2:]
    return h * w > 1 and input_size[0] % h == 0 and input_size[1] % w == 0


def _container_name(name: str, named: dict[str, nn.Module], outputs: dict[str, object]) -> str:
    """Climb to the outermost container whose output is the very tensor of this block's."""
    while "." in name:
        parent = name.rsplit(".", 1)[0]
        children = list(named[parent].named_children())
        if not children or f"{parent}.{children[-1][0]}" != name or outputs.get(parent) is not outputs[name]:
            break
        name = parent
    return name


def check_layers(model: nn.Module, layers: Sequence[str]) -> list[str]:
    """Validate explicit layer names against the model's modules.

    Raises:
        ValueError: for an unknown or repeated name, or an empty list.
    """
    if isinstance(layers, str) or not layers:
        raise ValueError(f"layers must be a non-empty list of module names, got {layers!r}")
    named = dict(model.named_modules())
    unknown = [n for n in layers if n not in named or n == ""]
    if unknown:
        sample = ", ".join(list(n for n in named if n)[:12])
        raise ValueError(f"unknown layer name(s) {unknown}; the model's modules include: {sample}, ...")
    if len(set(layers)) != len(layers):
        raise ValueError(f"layer names must be distinct, got {list(layers)}")
    return list(layers)


def capture_activations(model: nn.Module, x: torch.Tensor, layers: Sequence[str]
                        ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """One forward pass returning the logits and a copy of each layer's output ``[C, h, w]``.

    Copies are taken inside the hook, so later in-place operations cannot change them; the model
    gets a copy of ``x``, so ``x`` (the user's image, reused by the probes) stays as it was.

    Raises:
        ValueError: if a layer runs more than once in the pass, its output is not 4-D, or a
            layer is larger than the one before it (names must go fine -> coarse).
    """
    captured: dict[str, list[torch.Tensor]] = {name: [] for name in layers}

    def keep(name: str):
        def fn(_module, _inputs, output):
            captured[name].append(output.detach().clone() if isinstance(output, torch.Tensor) else output)
        return fn

    with hooks(model, layers, keep):
        logits = model(x.clone())  # a model that changes its input in place must not change ``x``
    acts = {}
    for name, outs in captured.items():
        if len(outs) != 1:
            raise ValueError(f"layer {name!r} ran {len(outs)} times in one forward pass; "
                             "choose a module that runs exactly once")
        out = outs[0]
        if not isinstance(out, torch.Tensor) or out.dim() != 4:
            shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ValueError(f"layer {name!r} outputs {shape}; a target layer must output N x C x h x w")
        acts[name] = out[0]
    for finer, coarser in zip(layers, layers[1:]):
        (h1, w1), (h2, w2) = acts[finer].shape[-2:], acts[coarser].shape[-2:]
        if h2 > h1 or w2 > w1:
            raise ValueError(f"layers must be given input side first (fine -> coarse), but {coarser!r} "
                             f"({h2} x {w2}) comes after {finer!r} ({h1} x {w1})")
    return logits, acts
