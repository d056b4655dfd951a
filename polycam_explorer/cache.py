"""A disk cache of map sets, keyed by model, layers and image, so a second look is instant."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Optional, Sequence

import torch

from .layers import module_device
from .mapset import MapSet
from .models import model_fingerprint


def cache_dir(path: str | os.PathLike | None = None) -> Path:
    """``path``, else ``$POLYCAM_EXPLORER_CACHE``, else the user cache folder."""
    if path is not None:
        return Path(path)
    if os.environ.get("POLYCAM_EXPLORER_CACHE"):
        return Path(os.environ["POLYCAM_EXPLORER_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "polycam-explorer"


def cache_key(model: torch.nn.Module, layers: Optional[Sequence[str]], x: torch.Tensor) -> str:
    """Hash of the model's weights, the layer choice and the exact input tensor."""
    digest = hashlib.sha256()
    digest.update(model_fingerprint(model).encode())
    rule = getattr(model, "layer_rule", "main-path")
    digest.update(repr(list(layers) if layers is not None else f"discovered/{rule}").encode())
    digest.update(repr(tuple(x.shape)).encode())
    digest.update(x.detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:24]


def cached(model: torch.nn.Module, layers: Optional[Sequence[str]], x: torch.Tensor,
           folder: str | os.PathLike | None = None, device=None) -> Optional[MapSet]:
    """The cached map set for this model, layers and image, or None (a damaged file is ignored)."""
    path = cache_dir(folder) / f"{cache_key(model, layers, x)}.mapset.npz"
    if not path.is_file():
        return None
    try:
        return MapSet.load(path, device=device, model=model)
    except ValueError:
        return None


def store(ms: MapSet, model: torch.nn.Module, layers: Optional[Sequence[str]], x: torch.Tensor,
          folder: str | os.PathLike | None = None) -> Path:
    """Save a complete map set in the cache (fp16, atomically)."""
    if not ms.complete:
        raise ValueError("only complete map sets are cached")
    path = cache_dir(folder) / f"{cache_key(model, layers, x)}.mapset.npz"
    ms.save(path, fp16=True)
    return path


def mapset_for(image, model: Optional[torch.nn.Module] = None, *, layers: Optional[Sequence[str]] = None,
               size=None, batch_size: Optional[int] = None, device=None,
               cache_dir: str | os.PathLike | None = None, progress: bool = True) -> MapSet:
    """The map set of ``image`` (path, PIL image or array): from the disk cache, else computed
    (one sweep) and cached. The embedded model is used unless ``model`` is given."""
    from .mapset import compute_mapset
    from .models import as_classifier, load_image, load_model

    model = as_classifier(model) if model is not None else load_model()
    x = load_image(image, model, size=size)
    ms = cached(model, layers, x, cache_dir, device)
    if ms is None:
        run_device = torch.device(device) if device is not None else module_device(model)
        ms = compute_mapset(model, x, layers, batch_size=batch_size or default_batch_size(run_device),
                            device=device, progress=progress)
        store(ms, model, layers, x, cache_dir)
    return ms


def default_batch_size(device: torch.device) -> int:
    """64 images per pass on a GPU; 16 on a CPU, where larger batches run slower per image here."""
    return 64 if device.type == "cuda" else 16


def sample_images() -> list[Path]:
    """The bundled sample photographs (cat, coffee, astronaut, rocket; CC0 / public domain)."""
    folder = Path(__file__).resolve().parent / "data"
    return [folder / f"{name}.jpg" for name in ("chelsea", "coffee", "astronaut", "rocket")]
