"""A disk cache of map sets, keyed by model, layers and image, so a second look is instant."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Optional, Sequence

import torch

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
    digest.update(repr(list(layers) if layers is not None else "discovered").encode())
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
