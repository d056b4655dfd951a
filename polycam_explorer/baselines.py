"""The Poly-CAM paper's baseline saliency methods, behind one call signature.

Englebert, Cornu and De Vleeschouwer (ICPR 2022, arXiv 2204.13359, Sec. 4) compare Poly-CAM
with Grad-CAM, Grad-CAM++, Smooth Grad-CAM++, Score-CAM, SS-CAM (35 perturbations, sigma 2),
IS-CAM (10 steps) and Layer-CAM, run with torchcam; Occlusion (64x64 patch, stride 8), Input x
Gradient, Integrated Gradients (50 steps) and SmoothGrad (50 samples, sigma 1), run with Captum;
RISE (6000 masks) and Zoom-CAM. Every method here, listed in :data:`METHODS` under the authors'
command-line names, is called as

    fn(model, x, class_idx, **options) -> torch.Tensor   # H x W, float32, on the model's device

``model`` is a :class:`~polycam_explorer.Classifier` or any ``nn.Module`` classifier (its
``as_classifier(model).net`` is what runs), ``x`` is one normalised image ``1 x C x H x W`` and
``class_idx`` the explained output. The score explained is the model's logit for every library
method (the authors passed their torchvision models, which return logits, to torchcam and Captum)
and the class probability for RISE (the authors wrapped the model in a softmax for it).

Maps are not rescaled beyond what the method itself does. CAM maps (ReLU'd by torchcam) are upsampled
bilinearly from the layer's resolution; ``layercamfusion`` is in [0, 1]; ``rise`` and ``sg`` are
non-negative; ``ig``, ``ixg`` and ``occlusion`` are signed (evidence for and against the class).

Every call runs the network in eval mode with its parameters' ``requires_grad`` off and restores
both afterwards; gradients flow from a copy of ``x`` only. Hooks (torchcam's) are removed before the
call returns, also when it raises. torchcam and Captum are the optional ``[eval]`` extra and are
imported on first use. Zoom-CAM is not offered: it has no maintained package.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from . import baseline_common as common
from .cancel import CancelFlag, cancel_check
from .layers import check_layers
from .models import as_classifier
from .rise import rise
from .extras import require

# ----- torchcam ----------------------------------------------------------------------------------
_SCORE_CAMS = ("ScoreCAM", "SSCAM", "ISCAM")  # forward passes only; the others backpropagate


def _torchcam(cls_name: str, method: str, net: nn.Module, x: torch.Tensor, c: int, layers: Sequence[str], *,
              seed: int | None = None, normalized: bool = False, **kwargs) -> list[torch.Tensor]:
    """Run one torchcam extractor on ``layers``; its maps ``[h_l x w_l]``, one per layer.

    The extractor is a context manager: its hooks are removed on exit, also after an error.
    """
    extractor_cls = getattr(require("torchcam.methods", f"the {method!r} baseline"), cls_name)
    with common.explaining(net), common.seeded(seed, x.device), \
            extractor_cls(net, target_layer=list(layers), **kwargs) as extractor:
        if cls_name in _SCORE_CAMS:  # one clean pass records the activations and the input
            with torch.no_grad():
                net(x)
            cams = extractor(c, normalized=normalized)
        else:  # the parameters are frozen: the graph runs through the input copy only
            scores = net(x.clone().requires_grad_(True))
            cams = extractor(c, scores, normalized=normalized)
    return [cam[0].detach().float() for cam in cams]


def _single_cam(cls_name: str, method: str, model, x, class_idx, target_layer, **kwargs) -> torch.Tensor:
    net, x, c = common.prepare(model, x, class_idx)
    layer = common.one_layer(model, net, x, target_layer)
    return common.to_input_size(_torchcam(cls_name, method, net, x, c, [layer], **kwargs)[0], x)


def gradcam(model: nn.Module, x: torch.Tensor, class_idx: int, *, target_layer: str | None = None) -> torch.Tensor:
    """Grad-CAM (Selvaraju et al., ICCV 2017) by ``torchcam.methods.GradCAM``.

    ``ReLU(sum_k mean(dY_c/dA_k) A_k)`` on ``target_layer`` (default: the coarsest discovered
    target layer), not normalised, upsampled bilinearly to ``H x W``. Non-negative.
    """
    return _single_cam("GradCAM", "gradcam", model, x, class_idx, target_layer)


def gradcampp(model: nn.Module, x: torch.Tensor, class_idx: int, *, target_layer: str | None = None) -> torch.Tensor:
    """Grad-CAM++ (Chattopadhay et al., WACV 2018) by ``torchcam.methods.GradCAMpp``.

    torchcam's settings; the coarsest target layer by default; not normalised; upsampled
    bilinearly to ``H x W``. Non-negative.
    """
    return _single_cam("GradCAMpp", "gradcampp", model, x, class_idx, target_layer)


def smoothgradcampp(model: nn.Module, x: torch.Tensor, class_idx: int, *, target_layer: str | None = None,
                    n_samples: int = 4, std: float = 0.3, seed: int | None = None) -> torch.Tensor:
    """Smooth Grad-CAM++ (Omeiza et al., arXiv 1908.01224, 2019) by ``torchcam.methods.SmoothGradCAMpp``.

    torchcam's defaults, which the paper kept: ``n_samples=4`` noisy copies of the input
    (torchcam's ``num_samples``), noise std ``0.3`` in the normalised space. torchcam's final
    weighted sum uses the activation of its last noisy pass. ``seed`` (optional) fixes the noise
    without touching the global generators. Coarsest target layer by default; upsampled to ``H x W``.
    """
    return _single_cam("SmoothGradCAMpp", "smoothgradcampp", model, x, class_idx, target_layer,
                       num_samples=common.positive_int("n_samples", n_samples), std=float(std), seed=seed)


def scorecam(model: nn.Module, x: torch.Tensor, class_idx: int, *, target_layer: str | None = None,
             batch_size: int = 32) -> torch.Tensor:
    """Score-CAM (Wang et al., CVPR Workshops 2020) by ``torchcam.methods.ScoreCAM``.

    torchcam's formulation: channel weights are the softmax over channels of the logit gain
    ``Y_c(X * norm(U(A_k))) - Y_c(X)``. One forward pass per channel, ``batch_size`` at a time.
    Coarsest target layer by default; upsampled to ``H x W``. Non-negative.
    """
    return _single_cam("ScoreCAM", "scorecam", model, x, class_idx, target_layer,
                       batch_size=common.positive_int("batch_size", batch_size))


def sscam(model: nn.Module, x: torch.Tensor, class_idx: int, *, target_layer: str | None = None,
          n_samples: int = 35, std: float = 2.0, batch_size: int = 32, seed: int | None = None) -> torch.Tensor:
    """SS-CAM (Wang et al., "Smoothed Score-CAM", arXiv 2006.14255, 2020) by ``torchcam.methods.SSCAM``.

    The paper's settings: 35 noisy copies of each mask (``n_samples``, torchcam's ``num_samples``),
    noise sigma 2 (``std``). ``seed`` (optional) fixes the noise. Coarsest target layer by default;
    upsampled to ``H x W``. Non-negative.
    """
    return _single_cam("SSCAM", "sscam", model, x, class_idx, target_layer,
                       batch_size=common.positive_int("batch_size", batch_size),
                       num_samples=common.positive_int("n_samples", n_samples), std=float(std), seed=seed)


def iscam(model: nn.Module, x: torch.Tensor, class_idx: int, *, target_layer: str | None = None,
          n_steps: int = 10, batch_size: int = 32) -> torch.Tensor:
    """IS-CAM (Naidu et al., "Integrated Score-CAM", arXiv 2010.03023, 2020) by ``torchcam.methods.ISCAM``.

    The paper's setting: 10 integration steps (``n_steps``, torchcam's ``num_samples``). Coarsest
    target layer by default; upsampled to ``H x W``. Non-negative.
    """
    return _single_cam("ISCAM", "iscam", model, x, class_idx, target_layer,
                       batch_size=common.positive_int("batch_size", batch_size),
                       num_samples=common.positive_int("n_steps", n_steps))


def layercam(model: nn.Module, x: torch.Tensor, class_idx: int, *, target_layer: str | None = None) -> torch.Tensor:
    """Layer-CAM (Jiang et al., IEEE TIP 2021) of one layer by ``torchcam.methods.LayerCAM``.

    ``ReLU(sum_k ReLU(dY_c/dA_k) * A_k)`` (pixel-wise weights) on the coarsest target layer by
    default, not normalised, upsampled to ``H x W``. Non-negative. See :func:`layercamfusion`
    for the multi-layer map.
    """
    return _single_cam("LayerCAM", "layercam", model, x, class_idx, target_layer)


def layercamfusion(model: nn.Module, x: torch.Tensor, class_idx: int, *, target_layers: Sequence[str] | None = None,
                   n_scaled: int = 3, gamma: float = 2.0) -> torch.Tensor:
    """Multi-layer Layer-CAM (Jiang et al., IEEE TIP 2021, eq. 9), fused as the Poly-CAM authors ran it.

    Layer-CAM maps of every target layer (default: all discovered ones; any order given is sorted
    by resolution) come from one forward and one backward pass, each min-max normalised to [0, 1]
    as torchcam does by default. The ``n_scaled`` finest of them (3, as the authors) are squashed to
    ``tanh(gamma * cam / max(cam))`` with ``gamma = 2``, so that the weak but sharp evidence of the
    early layers shows next to the deep maps (a map that is all zero stays zero). Starting from the
    coarsest, the running map is upsampled bilinearly to the next finer layer's size and merged by an
    elementwise maximum. The result, at the finest layer's size, is upsampled to ``H x W``; in [0, 1].
    """
    if isinstance(n_scaled, bool) or not isinstance(n_scaled, int) or n_scaled < 0:
        raise ValueError(f"n_scaled must be a non-negative int, got {n_scaled!r}")
    net, x, c = common.prepare(model, x, class_idx)
    if target_layers is None:
        layers = common.target_layers(model, net, x)
    else:
        layers = check_layers(net, list(target_layers) if not isinstance(target_layers, str) else target_layers)
    cams = _torchcam("LayerCAM", "layercamfusion", net, x, c, layers, normalized=True)
    cams = sorted(cams, key=lambda cam: -cam.numel())  # fine -> coarse, stable
    fused = None
    for index in reversed(range(len(cams))):
        cam = cams[index][None, None]
        if index < n_scaled:
            cam = torch.tanh(float(gamma) * cam / cam.max().clamp_min(1e-12))
        if fused is None:
            fused = cam.clamp_min(0)
        else:
            fused = F.interpolate(fused, size=cam.shape[-2:], mode="bilinear", align_corners=False)
            fused = torch.maximum(fused, cam)
    return common.to_input_size(fused[0, 0], x)


# ----- Captum ------------------------------------------------------------------------------------
def _captum(method: str, model, x, class_idx, run: Callable) -> torch.Tensor:
    """Run ``run(captum.attr, net, x, c)`` with the net in eval mode; the attribution summed over channels."""
    attr = require("captum.attr", f"the {method!r} baseline")
    net, x, c = common.prepare(model, x, class_idx)
    with common.explaining(net):
        out = run(attr, net, x.requires_grad_(True), c)  # the copy: Captum then leaves it as it is
    return out.detach()[0].sum(0).float()


def ig(model: nn.Module, x: torch.Tensor, class_idx: int, *, n_steps: int = 50,
       batch_size: int | None = None) -> torch.Tensor:
    """Integrated Gradients (Sundararajan et al., ICML 2017) by ``captum.attr.IntegratedGradients``.

    The paper's 50 steps (``n_steps``), Captum's Gauss-Legendre rule and all-zero baseline (the
    dataset's mean colour in the normalised space), ``batch_size`` = Captum's ``internal_batch_size``.
    Summed over channels; signed.
    """
    n_steps, batch_size = common.positive_int("n_steps", n_steps), common.optional_batch(batch_size)
    return _captum("ig", model, x, class_idx, lambda attr, net, x, c: attr.IntegratedGradients(net).attribute(
        x, target=c, n_steps=n_steps, internal_batch_size=batch_size))


def ixg(model: nn.Module, x: torch.Tensor, class_idx: int) -> torch.Tensor:
    """Input x Gradient (Shrikumar et al., arXiv 1605.01713, 2016) by ``captum.attr.InputXGradient``.

    ``x * dY_c/dx`` summed over channels; signed.
    """
    return _captum("ixg", model, x, class_idx,
                   lambda attr, net, x, c: attr.InputXGradient(net).attribute(x, target=c))


def sg(model: nn.Module, x: torch.Tensor, class_idx: int, *, n_samples: int = 50, std: float = 1.0,
       batch_size: int | None = None, seed: int | None = None) -> torch.Tensor:
    """SmoothGrad (Smilkov et al., arXiv 1706.03825, 2017): ``captum.attr.NoiseTunnel`` over ``Saliency``.

    The paper's settings: 50 noisy samples (``n_samples``, Captum's ``nt_samples``), sigma 1 in
    the normalised space (``std``, Captum's ``stdevs``); ``batch_size`` = ``nt_samples_batch_size``.
    Saliency takes absolute gradients, so the map, summed over channels, is non-negative. ``seed``
    (optional) fixes the noise without touching the global generators.
    """
    n_samples, batch_size = common.positive_int("n_samples", n_samples), common.optional_batch(batch_size)

    def run(attr, net, x, c):
        with common.seeded(seed, x.device):
            return attr.NoiseTunnel(attr.Saliency(net)).attribute(
                x, nt_type="smoothgrad", nt_samples=n_samples, nt_samples_batch_size=batch_size,
                stdevs=float(std), target=c)
    return _captum("sg", model, x, class_idx, run)


def occlusion(model: nn.Module, x: torch.Tensor, class_idx: int, *, window: int = 64, stride: int = 8,
              batch_size: int = 1) -> torch.Tensor:
    """Occlusion (Zeiler & Fergus, ECCV 2014) by ``captum.attr.Occlusion``.

    The paper's setting: a ``C x 64 x 64`` window (``window``) slid with stride 8 (``stride``),
    replaced by 0 (the mean colour); each pixel gets the mean logit drop of the windows covering
    it. ``batch_size`` = Captum's ``perturbations_per_eval``. Summed over channels; signed.

    Raises:
        ValueError: if the window is larger than the image.
    """
    window, stride = common.positive_int("window", window), common.positive_int("stride", stride)
    batch_size = common.positive_int("batch_size", batch_size)

    def run(attr, net, x, c):
        if window > min(x.shape[-2:]):
            raise ValueError(f"window ({window}) must not exceed the image size {tuple(x.shape[-2:])}")
        channels = x.shape[1]
        return attr.Occlusion(net).attribute(x, sliding_window_shapes=(channels, window, window),
                                             strides=(channels, stride, stride), target=c,
                                             perturbations_per_eval=batch_size)
    return _captum("occlusion", model, x, class_idx, run)


# ----- by name -----------------------------------------------------------------------------------
METHODS: dict[str, Callable[..., torch.Tensor]] = {
    "gradcam": gradcam,
    "gradcampp": gradcampp,
    "smoothgradcampp": smoothgradcampp,
    "scorecam": scorecam,
    "sscam": sscam,
    "iscam": iscam,
    "layercam": layercam,
    "layercamfusion": layercamfusion,
    "ig": ig,
    "ixg": ixg,
    "sg": sg,
    "occlusion": occlusion,
    "rise": rise,
}


def saliency(method: str, model: nn.Module, x: torch.Tensor, class_idx: int, *, cancel: CancelFlag = None,
             **options) -> torch.Tensor:
    """The ``H x W`` map of the baseline named ``method`` (a key of :data:`METHODS`).

    ``cancel`` (a ``threading.Event`` or a callable): once set, the method stops at its next
    forward pass with :class:`~polycam_explorer.baseline_common.BaselineCancelled`.

    Raises:
        ValueError: for an unknown method name (the accepted ones are listed), or a bad option value.
        TypeError: for an option the method does not take, or a ``cancel`` that cannot be asked.
        ImportError: if the method's library (torchcam or Captum) is missing.
        BaselineCancelled: ``cancel`` was set.
    """
    fn = METHODS.get(method) if isinstance(method, str) else None
    if fn is None:
        raise ValueError(f"unknown saliency method {method!r}; accepted: {', '.join(METHODS)}")
    cancel_check(cancel)  # a bad value is refused before any work
    with common.cancellable(as_classifier(model).net, cancel):
        return fn(model, x, class_idx, **options)
