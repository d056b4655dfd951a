"""The sanity check of saliency maps (ALGORITHM.md, "Faithfulness metrics"; sensitivity-max is in
:mod:`polycam_explorer.sensitivity`).

- :func:`cascading_randomization` (Adebayo et al. 2018; the paper's Appendix, Figure 26): the
  model's layers are re-initialised from the output side to the input side, cumulatively, on a
  deep copy; a faithful map must change as they are. :func:`iter_cascading_randomization` yields
  each step as soon as its map is scored; :func:`randomization_strip` draws the steps.

What the scores mean: after step ``k`` every group from the output down to the ``k``-th one
holds random weights. ``spearman`` is the rank correlation of the pixels of that model's map with
the intact model's map (1: same ordering of pixels; 0: unrelated); ``ssim`` compares the two maps
min-max normalised to [0, 1] (1: identical structure). A map that depends on what the model has
learned falls towards 0 as the cascade goes down (Adebayo et al.: gradients and Grad-CAM do;
Guided Backprop stays near 1 and fails). Both scores compare *maps*, so anything a method takes
from the image rather than from the weights (edges showing through masks, the upsampling chain)
keeps them above 0 even with every weight random: read them against the same check of a baseline.

SciPy and scikit-image are imported on first use (``pip install polycam-explorer[eval]``).
"""
from __future__ import annotations

import copy
import math
import warnings
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
from torch import nn

from .extras import require
from .images import check_image
from .layers import _blocks, module_device, hooks
from .model_state import inference_state
from .models import as_classifier

GRANULARITIES = ("stages", "blocks", "layers")
HEAD = "head"
Progress = Callable[[int, int], None]


# ----- cascading randomisation ---------------------------------------------------------------
@dataclass(frozen=True)
class RandomizationStep:
    """One step of the cascade: ``name`` (the group just re-initialised, with every group after
    it in the forward pass), its parameterised ``modules``, the ``map`` on the randomised copy and
    its Spearman rank correlation and SSIM to ``original`` (the map of the intact model);
    ``resolution`` is the stage's output ``(h, w)`` (None for the head and other granularities)."""

    name: str
    modules: tuple[str, ...]
    map: np.ndarray
    spearman: float
    ssim: float
    original: np.ndarray
    resolution: tuple[int, int] | None = None


@dataclass(frozen=True)
class Group:
    """What one step re-initialises: ``name``, the parameter-owning ``modules`` (forward order) and,
    for a resolution stage, its output ``resolution`` ``(h, w)``."""

    name: str
    modules: tuple[str, ...]
    resolution: tuple[int, int] | None = None


def parameter_groups(model: nn.Module, x: torch.Tensor, granularity: str = "stages") -> list[str]:
    """Names of the groups :func:`cascading_randomization` re-initialises, in forward order
    (the ``name`` of each :func:`randomization_groups` entry)."""
    return [g.name for g in randomization_groups(model, x, granularity)]


def randomization_groups(model: nn.Module, x: torch.Tensor, granularity: str = "stages") -> list[Group]:
    """The groups :func:`cascading_randomization` re-initialises, in forward order.

    - ``"stages"`` (default): one group per resolution stage, the stages of
      :func:`layers.describe_layers` (rule ``"main-path"``, at ``x``'s size): every parameterised
      module that finishes after the previous stage's last block and no later than this stage's
      (VGG16: ``features.3`` .. ``features.29``; ResNet50: ``relu``, ``layer1`` .. ``layer4``;
      EfficientNet-Lite0: ``blocks.0``, ``blocks.1``, ``blocks.2``, ``blocks.4``, ``bn2``), named
      by that block; what runs after the last stage (pooling, the classifier) is one group named
      by its top-level modules (``fc``, ``classifier``), or ``"head"``.
    - ``"blocks"``: the discovery's blocks (``nn.Sequential`` opened, any other module with
      children is one block: a ResNet bottleneck, an EfficientNet block), those with parameters.
    - ``"layers"``: every module that owns parameters itself (conv, linear, norm, ...).

    A module owning parameters outside every block becomes a group of its own; groups that never
    run in a forward pass on ``x`` are dropped (re-initialising them would change nothing).

    Raises:
        ValueError: unknown ``granularity``, or a model without parameters.
    """
    from .layers import describe_layers

    net = as_classifier(model).net
    if granularity not in GRANULARITIES:
        raise ValueError(f"granularity must be one of {GRANULARITIES}, got {granularity!r}")
    named = dict(net.named_modules())
    owners = [n for n, m in named.items() if _owns_parameters(m)]
    if not owners:
        raise ValueError(f"{type(net).__name__} has no parameters to randomise")
    if granularity == "stages":
        stages = describe_layers(net, tuple(x.shape[-2:]), rule="main-path")
        done = _finish_order(net, x, owners + [s.name for s in stages])
        groups, taken = [], set()
        for stage in stages:
            members = tuple(n for n in owners if n in done and n not in taken and done[n] <= done[stage.name])
            taken.update(members)
            groups.append(Group(stage.name, members, (stage.height, stage.width)))
        rest = tuple(n for n in owners if n in done and n not in taken)
        if rest:
            tops = list(dict.fromkeys(n.split(".")[0] for n in rest))
            label = "+".join(tops) if len(tops) <= 3 else HEAD
            groups.append(Group(label if label not in {g.name for g in groups} else HEAD, rest))
        return [Group(g.name, tuple(sorted(g.modules, key=done.__getitem__)), g.resolution)
                for g in groups if g.modules]
    if granularity == "layers":
        names = owners
    else:
        names = [n for n in _blocks(net) if any(True for _ in named[n].parameters())]
        names += [n for n in owners if not any(_inside(n, g) for g in names)]
    return [Group(n, tuple(o for o in owners if _inside(o, n))) for n in _forward_order(net, x, names)]


def _finish_order(net: nn.Module, x: torch.Tensor, names: Sequence[str]) -> dict[str, int]:
    """When each module first finishes in a forward pass on ``x`` (those never run left out)."""
    done: dict[str, int] = {}

    def record(name: str):
        def fn(*_):
            done.setdefault(name, len(done))
        return fn

    with inference_state(net), hooks(net, list(dict.fromkeys(names)), record):
        net(x.to(module_device(net)))
    return done


def _forward_order(net: nn.Module, x: torch.Tensor, names: Sequence[str]) -> list[str]:
    """``names`` sorted by when each module first finishes in a forward pass; those never run dropped."""
    done = _finish_order(net, x, names)
    return sorted((n for n in names if n in done), key=done.__getitem__)


def cascading_randomization(model: nn.Module, x: torch.Tensor, class_idx: int,
                            explain: Callable[[nn.Module, torch.Tensor, int], torch.Tensor], *,
                            granularity: str = "stages", groups: Sequence[str | Group] | None = None, seed: int = 0,
                            progress: Progress | None = None,
                            on_step: Callable[[RandomizationStep], None] | None = None) -> list[RandomizationStep]:
    """Cascading randomisation (Adebayo et al. 2018), from the output side to the input side.

    A deep copy of ``model`` is made (the user's model is never modified). The groups of
    :func:`randomization_groups` are re-initialised one after the other, last in the forward pass
    first and cumulatively, each of their parameterised modules by its own
    ``reset_parameters()`` (``_reset_parameters()`` where only that exists; a module with
    neither has each parameter redrawn from a normal with that parameter's mean and std), under
    ``torch.manual_seed(seed + step)`` inside ``torch.random.fork_rng`` (the caller's RNG is
    untouched). After each group, ``explain(copy, x, class_idx)`` gives the map, compared to the
    intact model's map by Spearman's rank correlation (``scipy.stats.spearmanr``; NaN when either
    map is constant) and SSIM (``skimage.metrics.structural_similarity``, ``data_range=1``, on
    maps min-max normalised to [0, 1]).

    Args:
        model: a :class:`Classifier` or plain ``nn.Module``; ``explain`` receives a copy of it.
        x: the normalised image, ``1 x C x H x W``.
        class_idx: the class explained (passed on to ``explain``).
        explain: ``explain(model, x, class_idx) -> H x W`` map (tensor or array). For Poly-CAM:
            ``lambda m, x, c: pe.compute_mapset(m, x, layers, progress=False).saliency(c, "+-")``.
        granularity: ``"stages"`` (default), ``"blocks"`` or ``"layers"``; see :func:`randomization_groups`.
        groups: explicit groups instead: module names (any order; put in forward order here) or
            :class:`Group` objects (taken in the order given, input side first).
        seed: seeds the re-initialisation (and anything random in ``explain``): same seed, same steps.
        progress: ``progress(done, total)`` after each map.
        on_step: ``on_step(step)`` as soon as each step is scored, before the next is computed.

    Returns:
        One :class:`RandomizationStep` per group, output side first; the last has every group randomised.

    Raises:
        ValueError: bad ``granularity``, unknown ``groups``, or maps of differing shapes.
        ImportError: without SciPy / scikit-image.
    """
    steps = []
    for step in iter_cascading_randomization(model, x, class_idx, explain, granularity=granularity, groups=groups,
                                             seed=seed, progress=progress):
        steps.append(step)
        if on_step is not None:
            on_step(step)
    return steps


def iter_cascading_randomization(model: nn.Module, x: torch.Tensor, class_idx: int,
                                 explain: Callable[[nn.Module, torch.Tensor, int], torch.Tensor], *,
                                 granularity: str = "stages", groups: Sequence[str | Group] | None = None,
                                 seed: int = 0, progress: Progress | None = None) -> Iterator[RandomizationStep]:
    """:func:`cascading_randomization` as a generator: each step is yielded as soon as its map is
    scored, and the next group is randomised only when the next step is asked for. The seeded RNG
    is held only while a step computes (the caller's RNG is the caller's between steps)."""
    stats = require("scipy.stats", "cascading_randomization")
    skm = require("skimage.metrics", "cascading_randomization")
    check_image(x)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed must be an int, got {seed!r}")
    work = copy.deepcopy(model)
    net = as_classifier(work).net
    order = _resolve_groups(net, x, granularity, groups)
    device = module_device(net)
    forks = [device] if device.type == "cuda" else []
    total = len(order) + 1
    with torch.random.fork_rng(devices=forks):
        torch.manual_seed(seed)
        original = _as_map(explain(work, x, class_idx))
    if progress is not None:
        progress(1, total)
    for index, group in enumerate(reversed(order)):
        with torch.random.fork_rng(devices=forks):
            torch.manual_seed(seed + index + 1)
            for name in group.modules:
                _reinitialise(net.get_submodule(name))
            current = _as_map(explain(work, x, class_idx))
        if current.shape != original.shape:
            raise ValueError(f"explain returned a {current.shape} map after randomising {group.name!r}, "
                             f"but {original.shape} for the intact model")
        step = RandomizationStep(group.name, group.modules, current, _spearman(stats, original, current),
                                 _ssim(skm, original, current), original, group.resolution)
        if progress is not None:
            progress(index + 2, total)
        yield step


def _resolve_groups(net: nn.Module, x: torch.Tensor, granularity: str,
                    groups: Sequence[str | Group] | None) -> list[Group]:
    if groups is None:
        return randomization_groups(net, x, granularity)
    named = dict(net.named_modules())
    if isinstance(groups, str) or not groups:
        raise ValueError(f"groups must be a non-empty list of the model's module names, got {groups!r}")
    if all(isinstance(g, Group) for g in groups):
        if any(m not in named or not _owns_parameters(named[m]) for g in groups for m in g.modules):
            raise ValueError(f"groups name modules without parameters of their own or not in the model: {groups!r}")
        return list(groups)
    if any(not isinstance(g, str) or g not in named or g == "" for g in groups):
        raise ValueError(f"groups must be a non-empty list of the model's module names, got {groups!r}")
    owners = [n for n, m in named.items() if _owns_parameters(m)]
    return [Group(n, tuple(o for o in owners if _inside(o, n)))
            for n in _forward_order(net, x, list(dict.fromkeys(groups)))]


def randomization_strip(steps: Sequence[RandomizationStep], image_uint8: np.ndarray, *, cmap: str = "turbo",
                        alpha: float = 0.5, tile: int = 112, frame: tuple[int, int] | None = None) -> np.ndarray:
    """Figure 26 as one ``H x W x 3`` uint8 strip: the intact model's map, then each step.

    Each tile is the map over the image (:func:`render.overlay`), ``tile`` pixels high, with a
    caption: the group randomised last, then ``rho`` (Spearman) and SSIM to the intact map.
    Tiles are ``tile`` high and ``round(tile * W / H)`` wide plus a 26-pixel caption band, laid out by
    :func:`render.grid` with its 4-pixel padding; ``(H, W)`` is ``frame``, the original photo's
    size (the overlay, made at the maps' size, is resized bilinearly onto that aspect ratio), or
    the image's own when None.
    """
    from PIL import Image, ImageDraw

    from . import render

    if not steps:
        raise ValueError("steps must hold at least one RandomizationStep")
    if isinstance(tile, bool) or not isinstance(tile, int) or tile < 8:
        raise ValueError(f"tile must be an int >= 8, got {tile!r}")
    image = np.asarray(image_uint8)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image_uint8 must be an H x W x 3 uint8 array, got {image.shape} {image.dtype}")
    if image.shape[:2] != steps[0].original.shape:
        raise ValueError(f"image_uint8 is {image.shape[:2]} but the maps are {steps[0].original.shape}")
    if frame is not None and (len(frame) != 2 or min(frame) < 1):
        raise ValueError(f"frame must be the photo's (H, W), got {frame!r}")
    high, wide = frame if frame is not None else image.shape[:2]
    width = max(1, round(tile * wide / high))
    tiles = []
    captions = [("original", "")] + [(s.name, f"rho {_fmt(s.spearman)}  ssim {_fmt(s.ssim)}") for s in steps]
    for (title, scores), values in zip(captions, [steps[0].original] + [s.map for s in steps]):
        pixels = render.overlay(image, _unit(values), cmap=cmap, alpha=alpha)
        pixels = Image.fromarray(pixels).resize((width, tile), Image.BILINEAR)
        canvas = Image.new("RGB", (width, tile + 26), "white")
        canvas.paste(pixels, (0, 0))
        draw = ImageDraw.Draw(canvas)
        draw.text((2, tile + 1), _fit(draw, title, width), fill="black")
        draw.text((2, tile + 13), _fit(draw, scores, width), fill="black")
        tiles.append(np.asarray(canvas))
    return render.grid([tiles])


# ----- helpers -------------------------------------------------------------------------------
def _owns_parameters(module: nn.Module) -> bool:
    return any(True for _ in module.parameters(recurse=False))


def _inside(name: str, group: str) -> bool:
    return group == "" or name == group or name.startswith(group + ".")


@torch.no_grad()
def _reinitialise(module: nn.Module) -> None:
    """Re-initialise the parameters ``module`` owns itself (its children are groups' own business)."""
    reset = getattr(module, "reset_parameters", None) or getattr(module, "_reset_parameters", None)
    if callable(reset):
        reset()
        return
    for p in module.parameters(recurse=False):
        std = float(p.float().std()) if p.numel() > 1 else 0.0
        p.copy_(torch.randn_like(p) * std + p.float().mean().to(p.dtype))


def _as_map(values) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        values = values.detach().float().cpu().numpy()
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 2:
        values = np.squeeze(values)
    if values.ndim != 2:
        raise ValueError(f"explain must return an H x W map, got shape {values.shape}")
    return values


def _unit(values: np.ndarray) -> np.ndarray:
    lo, hi = float(values.min()), float(values.max())
    return (values - lo) / (hi - lo) if hi > lo else np.zeros_like(values)


def _spearman(stats, a: np.ndarray, b: np.ndarray) -> float:
    if a.min() == a.max() or b.min() == b.max():
        return float("nan")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(stats.spearmanr(a.reshape(-1), b.reshape(-1)).statistic)


def _ssim(skm, a: np.ndarray, b: np.ndarray) -> float:
    side = min(a.shape)
    win = min(7, side if side % 2 else side - 1)
    if win < 3:
        raise ValueError(f"maps of {a.shape} are too small for SSIM (at least 3 x 3)")
    return float(skm.structural_similarity(_unit(a), _unit(b), data_range=1.0, win_size=win))


def _fmt(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.2f}"


def _fit(draw, text: str, width: int) -> str:
    """``text``, cut short with ``..`` where it would overflow the tile."""
    if draw.textlength(text) <= width - 4:
        return text
    while text and draw.textlength(text + "..") > width - 4:
        text = text[:-1]
    return text + ".."
