"""Images to normalised tensors, read as image viewers show them (EXIF orientation, bit depths)."""
from __future__ import annotations

import io
import re
import numbers
import os
from pathlib import Path
from typing import Union

import numpy as np
import torch
from PIL import Image, ImageOps
from torch import nn

from .models import as_classifier

ImageLike = Union[str, os.PathLike, Image.Image, np.ndarray]


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
            or ``0`` to keep the image's own size. The whole image is resized (nothing is cropped);
            at most ``Image.MAX_IMAGE_PIXELS`` pixels, as for files.

    Raises:
        ValueError / TypeError: naming what was wrong and what is accepted: a missing, unreadable
            or too large file (PIL's ``Image.MAX_IMAGE_PIXELS`` decompression-bomb limit; a folder,
            a broken link or a pipe is named as such), an empty image, another array dtype or shape, floats outside [0, 1], a malformed ``size``.
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


def check_image(x: torch.Tensor, channels: int | None = None, *, min_side: int = 1, needed_by: str = "this",
                name: str = "x") -> None:
    """``x`` is one finite floating-point image tensor ``1 x C x H x W``, with ``channels`` channels
    and sides of at least ``min_side`` pixels (what ``needed_by`` needs), or a TypeError /
    ValueError naming what is wrong and what is accepted. The one check of an image tensor given to
    the sweep, the metrics, the baselines and the robustness checks."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape 1 x C x H x W (see pe.load_image), "
                        f"got {type(x).__name__}")
    if x.is_meta:
        raise ValueError(f"{name} is on the meta device: it has a shape but no values; give an image with values "
                         "(see pe.load_image)")
    if x.dim() != 4 or x.shape[0] != 1:
        raise ValueError(f"{name} must have shape 1 x C x H x W (one image), got {tuple(x.shape)}")
    if not torch.is_floating_point(x):
        raise ValueError(f"{name} must be a floating-point tensor, got {x.dtype}")
    if channels is not None and x.shape[1] != channels:
        raise ValueError(f"{name} has {x.shape[1]} channels but the model takes {channels}; pe.load_image converts "
                         "grayscale and RGBA images")
    h, w = x.shape[-2:]
    if min(h, w) < min_side:
        raise ValueError(f"{name} is {h} x {w} pixels; {needed_by} needs at least {min_side} x {min_side} pixels")
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} contains NaN or infinite values")


def image_frame(image: ImageLike) -> tuple[int, int]:
    """``(H, W)`` of ``image`` as a viewer shows it (EXIF orientation applied): the frame that maps
    computed on its resized copy are drawn back onto (``MapSet.frame``)."""
    return tuple(int(v) for v in _pixels(image, 3).shape[-2:])


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
    limit = Image.MAX_IMAGE_PIXELS
    if limit and pair[0] * pair[1] > limit:  # the limit files are read under: checked before allocating
        raise ValueError(f"size {size!r} asks for {pair[0] * pair[1]} pixels, over PIL's decompression-bomb "
                         f"limit of {limit} (Image.MAX_IMAGE_PIXELS); give a smaller size")
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
        if not len(source):
            raise ValueError(f"{label} is empty (0 bytes): nothing to read as an image (accepted: {IMAGE_TYPES})")
        stream = io.BytesIO(bytes(source))
    elif isinstance(source, (str, os.PathLike)):
        label = repr(str(source))
        _check_file(Path(source), label)
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
        reason = re.sub(r"<_io\.BytesIO object at 0x[0-9a-f]+>", label, str(exc))  # not a memory address
        raise ValueError(f"could not read {label} as an image (accepted: {IMAGE_TYPES}): {reason}") from exc


def _check_file(path: Path, label: str) -> None:
    """A ValueError saying what ``path`` is when it is not a readable regular file."""
    if path.is_file():
        return
    if path.is_dir():
        raise ValueError(f"image file {label} is a folder, not an image file")
    if path.is_symlink():
        raise ValueError(f"image file {label} is a symbolic link to {str(path.readlink())!r}, which does not exist")
    if path.exists():
        raise ValueError(f"image file {label} is not a regular file (a pipe, socket or device); give an image file")
    raise ValueError(f"image file {label} does not exist")


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
