"""A disk cache of map sets, keyed by model, layers and image, so a second look is instant.

The cache never loses work and never changes results: a cache folder that cannot be written (read
only, a file in its place, a full disk) is a :class:`CacheWriteWarning` and the computed map set is
returned; entries are read only in the current map-set format (fp16 scaled per channel and class,
see :mod:`polycam_explorer.mapset_io`), so a cache hit gives the maps of a fresh sweep. An entry
records the key it was stored under and is read only under that key, for that very input tensor:
a file copied, renamed or linked onto another entry's name is a miss, never another image's maps.
"""
from __future__ import annotations

import copy
import errno
import hashlib
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Optional, Sequence

import torch

from .layers import module_device
from .mapset import MapSet
from .files import cache_dir
from .identity import model_fingerprint, one_model

_KEY = "cache_key"  # the stats entry in which a cache file records the key it was stored under
MIN_FREE_BYTES = 1 << 20  # below this much free space, a map set (VGG16 at 224: ~10 MB) will not fit


class CacheWriteWarning(RuntimeWarning):
    """The map-set cache could not be written; the result was kept in memory only."""


def cache_key(model: torch.nn.Module, layers: Optional[Sequence[str]], x: torch.Tensor, *,
              model_id: Optional[str] = None) -> str:
    """Hash of the model's identity (``model_id``, its :func:`model_fingerprint`, when already
    known), the layer choice and the exact input tensor."""
    digest = hashlib.sha256()
    digest.update((model_id or model_fingerprint(model)).encode())
    rule = getattr(model, "layer_rule", "main-path")
    digest.update(repr(list(layers) if layers is not None else f"discovered/{rule}").encode())
    digest.update(repr(tuple(x.shape)).encode())
    digest.update(x.detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:24]


def cached(model: torch.nn.Module, layers: Optional[Sequence[str]], x: torch.Tensor,
           folder: str | os.PathLike | None = None, device=None) -> Optional[MapSet]:
    """The cached map set for this model, layers and image, or None (a damaged file is ignored).

    An entry is used only if it is what :func:`store` wrote under this key: complete, recording this
    key, of this very input tensor and these layers. Another entry copied, renamed or linked to
    this name, a partial map set or a file written by hand is a miss (recomputed and replaced).

    Its labels and model name are ``model``'s (the key, the network's fingerprint, ignores labels: an
    entry filled under other labels gives this model's)."""
    from .models import as_classifier

    key = cache_key(model, layers, x)
    path = cache_dir(folder) / f"{key}.mapset.npz"
    try:
        if not path.is_file():
            return None
        ms = MapSet.load(path, device, model=model, layers=layers, current_version_only=True)
    except (ValueError, OSError):  # unreadable, damaged, older format or another model: a miss
        return None
    if not (ms.complete and ms.stats.pop(_KEY, None) == key and ms.image.shape == x.shape
            and torch.equal(ms.image.cpu(), x.detach().float().cpu())):
        return None
    clf = as_classifier(model)
    ms.class_names, ms.model_name = [clf.class_name(i) for i in range(ms.num_classes)], clf.name
    return ms


def store(ms: MapSet, model: torch.nn.Module, layers: Optional[Sequence[str]], x: torch.Tensor,
          folder: str | os.PathLike | None = None) -> Optional[Path]:
    """Save a complete map set in the cache (fp16, atomically): its path, or None with a
    :class:`CacheWriteWarning` where the cache cannot be written (nothing partial is left).

    A map set that cannot be stored faithfully (NaN or infinite values) is not cached either, with
    the same warning.

    Raises:
        ValueError: ``ms`` is not complete.
    """
    if not ms.complete:
        raise ValueError("only complete map sets are cached")
    # the map set carries the model's fingerprint: not hashed again (0.1 s for VGG16)
    key = cache_key(model, layers, x, model_id=ms.model_id)
    path = cache_dir(folder) / f"{key}.mapset.npz"
    entry = copy.copy(ms)  # the file records its key (checked when read); the caller's stats stay as they are
    entry.stats = {**ms.stats, _KEY: key}
    try:
        entry.save(path, fp16=True)
    except OSError as exc:
        _warn_unwritable(path.parent, exc, "this map set was not cached")
        return None
    except ValueError as exc:  # contents that no file can hold faithfully
        warnings.warn(f"this map set was not cached: {exc}", CacheWriteWarning, stacklevel=2)
        return None
    return path


def writable(folder: str | os.PathLike | None = None) -> bool:
    """Whether the cache folder can take a map set now: it can be created, a file can be written in
    it and it has room. Where it cannot, warns (:class:`CacheWriteWarning`) and returns False."""
    folder = cache_dir(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
        free = shutil.disk_usage(folder).free
        if free < MIN_FREE_BYTES:
            raise OSError(errno.ENOSPC, f"No space left on device: {free} bytes free")
    except OSError as exc:
        _warn_unwritable(folder, exc, "the map set will be computed but not cached")
        return False
    return True


def _warn_unwritable(folder: Path, exc: OSError, consequence: str) -> None:
    reason = exc.strerror or str(exc)
    if isinstance(exc, FileExistsError) or (exc.errno == errno.ENOTDIR):
        reason = f"{reason} (a file stands where the folder should be)"
    warnings.warn(f"cannot write the map-set cache in {str(folder)!r}: {reason}; {consequence} "
                  "(set cache_dir or $POLYCAM_EXPLORER_CACHE to a writable folder)",
                  CacheWriteWarning, stacklevel=3)


def mapset_for(image, model: Optional[torch.nn.Module] = None, *, layers: Optional[Sequence[str]] = None,
               size=None, batch_size: Optional[int] = None, device=None,
               cache_dir: str | os.PathLike | None = None, progress: bool = True,
               backend: str = "auto") -> MapSet:
    """The map set of ``image`` (path, PIL image or array): from the disk cache, else computed
    (one sweep, forward passes on ``backend``: see :func:`compute_mapset`) and cached. The
    embedded model is used unless ``model`` is given. Every fp32 backend gives the same maps, so
    the cache key does not depend on it."""
    from .backends import check_backend
    from .compute import compute_mapset
    from .images import image_frame, load_image
    from .models import as_classifier, load_model

    check_backend(backend)  # a bad name is refused before any work
    model = as_classifier(model) if model is not None else load_model()
    x = load_image(image, model, size=size)
    with one_model():  # the cache key, the loaded file's check and the sweep: one hash of the model
        ms = cached(model, layers, x, cache_dir, device)
        if ms is None:
            can_write = writable(cache_dir)  # warns before the sweep; the sweep runs either way
            run_device = torch.device(device) if device is not None else module_device(model)
            ms = compute_mapset(model, x, layers, batch_size=batch_size or default_batch_size(run_device),
                                device=device, progress=progress, backend=backend)
            ms.frame = image_frame(image)  # the photo's own (H, W): maps are drawn back onto it
            if can_write:
                store(ms, model, layers, x, cache_dir)
        else:  # this photo's frame, not that of the photo (resized to the same input) that filled the entry
            ms.frame = image_frame(image)
    return ms


def default_batch_size(device: torch.device) -> int:
    """64 images per pass on a GPU; 16 on a CPU, where larger batches run slower per image here."""
    return 64 if device.type == "cuda" else 16


def sample_images() -> list[Path]:
    """The bundled sample photographs (cat, coffee, astronaut, rocket; CC0 / public domain)."""
    folder = Path(__file__).resolve().parent / "data"
    return [folder / f"{name}.jpg" for name in ("chelsea", "coffee", "astronaut", "rocket")]
