"""The explorer's data: map sets, decoded images and results (curves, sanity checks, baseline
maps), behind one lock, with change events.

Workers (sweeps, curves, baselines) write here and never touch a view; views subscribe with
:meth:`Store.subscribe` and draw what they read from the store and the view state.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Hashable, Mapping, Optional, Sequence, Union

import numpy as np

from .. import render
from ..mapset import MapSet

RESULT_KINDS = ("curves", "sanity", "baseline")
MapSets = Union[MapSet, Sequence[MapSet], Mapping[str, MapSet], str, Path]


@dataclass(frozen=True)
class Event:
    """A change in the store.

    ``kind`` is one of: ``"mapset"`` (a map set was added or replaced; ``name``, ``show``),
    ``"probed"`` (a running sweep probed another layer of ``name``), ``"result"`` (``what`` is a
    :data:`RESULT_KINDS` entry, ``key`` its key), ``"progress"`` (``value``: the sweep's
    ``(name, done, total)`` or None when it is over), ``"error"`` (``value``: the exception).
    """

    kind: str
    name: str = ""
    what: str = ""
    key: Any = None
    value: Any = None
    show: bool = False


class Store:
    """Map sets by name (in the order added), their uint8 images and results, thread-safe."""

    def __init__(self, mapsets: Optional[dict[str, MapSet]] = None) -> None:
        self._lock = threading.RLock()
        self._mapsets: dict[str, MapSet] = dict(mapsets or {})
        self._images: dict[str, np.ndarray] = {}
        self._pictures: dict[str, np.ndarray] = {}  # the original photos (longest side <= PICTURE_MAX)
        self._frames: dict[str, tuple[int, int]] = {}  # their sizes before that cap
        self._fitted: dict[tuple[str, tuple[int, int]], np.ndarray] = {}
        self._results: dict[str, dict[Hashable, Any]] = {k: {} for k in RESULT_KINDS}
        self._subscribers: list[Callable[[Event], None]] = []
        self.progress: Optional[tuple] = None

    # ----- events ---------------------------------------------------------------------------
    def subscribe(self, callback: Callable[[Event], None]) -> None:
        """Call ``callback(event)`` after every change (in the thread that made it)."""
        with self._lock:
            self._subscribers.append(callback)

    def _emit(self, event: Event) -> None:
        with self._lock:
            subscribers = list(self._subscribers)
        for callback in subscribers:  # outside the lock: a subscriber may read the store
            callback(event)

    # ----- map sets -------------------------------------------------------------------------
    def names(self) -> list[str]:
        with self._lock:
            return list(self._mapsets)

    def __contains__(self, name: object) -> bool:
        with self._lock:
            return name in self._mapsets

    def __len__(self) -> int:
        with self._lock:
            return len(self._mapsets)

    def mapset(self, name: str) -> MapSet:
        """The map set ``name`` (KeyError naming the images if there is none)."""
        with self._lock:
            try:
                return self._mapsets[name]
            except KeyError:
                raise KeyError(f"no image {name!r}; the images are {list(self._mapsets)}") from None

    def get(self, name: str) -> Optional[MapSet]:
        with self._lock:
            return self._mapsets.get(name)

    def mapsets(self) -> dict[str, MapSet]:
        """A copy of the name -> map set dict."""
        with self._lock:
            return dict(self._mapsets)

    def add_mapset(self, name: str, ms: MapSet, *, show: bool = False, picture: Any = None) -> None:
        """Add or replace a map set; a replaced one's image, picture and results are forgotten.

        ``picture``: the original photo the map set explains (a path, PIL image or array, as
        :func:`polycam_explorer.load_image` reads), shown at its own aspect ratio; None: the map
        set's ``frame`` (original ``(H, W)``) if it has one, else its input image as it is.
        """
        if not isinstance(ms, MapSet):
            raise TypeError(f"add_mapset takes a MapSet (from pe.compute_mapset or pe.MapSet.load), "
                            f"got {type(ms).__name__}")
        if not isinstance(name, str) or not name:
            raise ValueError(f"the name of a map set must be a non-empty str, got {name!r}")
        decoded = decode_picture(picture) if picture is not None else None
        with self._lock:
            self._mapsets[name] = ms
            self._forget(name)
            if decoded is not None:
                self._pictures[name], self._frames[name] = decoded
        self._emit(Event("mapset", name=name, show=show))

    def set_picture(self, name: str, picture: Any) -> None:
        """Give the map set ``name`` its original photo (see :meth:`add_mapset`) and redraw."""
        pixels, size = decode_picture(picture)
        with self._lock:
            self.mapset(name)
            self._pictures[name], self._frames[name] = pixels, size
            self._fitted = {k: v for k, v in self._fitted.items() if k[0] != name}
        self._emit(Event("probed", name=name))

    def probed(self, name: str) -> None:
        """A running sweep of ``name`` has probed another layer."""
        self._emit(Event("probed", name=name))

    def image(self, name: str) -> np.ndarray:
        """The map set's input image as ``H x W x 3`` uint8 (decoded once)."""
        with self._lock:
            if name not in self._images:
                ms = self._mapsets[name]
                self._images[name] = render.image_uint8(ms.image, ms.mean, ms.std)
            return self._images[name]

    def frame_size(self, name: str) -> tuple[int, int]:
        """``(H, W)`` of the photo ``name`` explains: its original picture's, else the map set's
        ``frame`` attribute if it has one, else the map's own size."""
        with self._lock:
            if name in self._frames:
                return self._frames[name]
            ms = self._mapsets[name]
        frame = getattr(ms, "frame", None)
        return (int(frame[0]), int(frame[1])) if frame is not None else tuple(ms.size)

    def picture(self, name: str, size: tuple[int, int]) -> np.ndarray:
        """The photo ``name`` as ``size[0] x size[1] x 3`` uint8 (the original picture resized, or
        the input image when there is none); the last few sizes asked are kept."""
        size = (int(size[0]), int(size[1]))
        with self._lock:
            if (name, size) in self._fitted:
                return self._fitted[(name, size)]
            source = self._pictures.get(name)
        if source is None:
            source = self.image(name)
        fitted = render.fit_picture(source, size)
        with self._lock:
            if len(self._fitted) >= 16:
                self._fitted.pop(next(iter(self._fitted)))
            self._fitted[(name, size)] = fitted
        return fitted

    # ----- results --------------------------------------------------------------------------
    def result(self, what: str, key: Hashable) -> Any:
        """The cached result of kind ``what`` under ``key``, or None."""
        with self._lock:
            return self._results[what].get(key)

    def results(self, what: str) -> dict:
        """A copy of every result of kind ``what``."""
        with self._lock:
            return dict(self._results[what])

    def put_result(self, what: str, key: Hashable, value: Any) -> None:
        """Store a result (keys of curves and sanity checks start with the image name)."""
        with self._lock:
            self._results[what][key] = value
        self._emit(Event("result", what=what, key=key, value=value))

    def _forget(self, name: str) -> None:
        self._images.pop(name, None)
        self._pictures.pop(name, None)
        self._frames.pop(name, None)
        self._fitted = {k: v for k, v in self._fitted.items() if k[0] != name}
        for what, results in self._results.items():
            self._results[what] = {k: v for k, v in results.items() if k[0] != name}

    # ----- what workers report ----------------------------------------------------------------
    def set_progress(self, progress: Optional[tuple]) -> None:
        """``(name, done, total)`` while a sweep runs; None when it is over."""
        self.progress = progress
        self._emit(Event("progress", value=progress))

    def report_error(self, exc: BaseException) -> None:
        """An error in background work or in a callback, for the status line."""
        self._emit(Event("error", value=exc))

    def clear(self) -> None:
        """Drop every map set (and free their cached maps), image and result."""
        with self._lock:
            for ms in self._mapsets.values():
                ms.clear_cache()
            self._mapsets.clear()
            self._images.clear()
            self._pictures.clear()
            self._frames.clear()
            self._fitted.clear()
            for results in self._results.values():
                results.clear()
            self._subscribers.clear()


PICTURE_MAX = 2048  # the longest side of an original photo kept for display


def decode_picture(picture: Any) -> tuple[np.ndarray, tuple[int, int]]:
    """An original photo (path, PIL image or array, read as :func:`load_image` reads them: EXIF
    orientation, 16-bit, floats) as ``H x W x 3`` uint8, its longest side at most
    :data:`PICTURE_MAX`, and its own ``(H, W)``."""
    from ..images import load_image

    x = load_image(picture, None, size=0)
    size = (int(x.shape[-2]), int(x.shape[-1]))
    pixels = render.image_uint8(x, (0.5,) * 3, (0.5,) * 3)
    if max(size) > PICTURE_MAX:
        pixels = render.fit_picture(pixels, render.fitted_size(size, PICTURE_MAX))
    return pixels, size


def named_mapsets(mapsets: MapSets) -> dict[str, MapSet]:
    """Name the map sets the Explorer is given: one ("image"), a list ("image 1", ...), a dict, or
    a folder of saved map sets (by file name).

    Raises:
        TypeError: something else, or a list or dict holding something else than MapSets.
        ValueError: a folder without map-set files.
    """
    if isinstance(mapsets, MapSet):
        return {"image": mapsets}
    if isinstance(mapsets, (str, Path)):
        files = sorted(Path(mapsets).glob("*.npz"))
        if not files:
            raise ValueError(f"no map-set files (*.npz) in {str(mapsets)!r}")
        return {f.name.removesuffix(".npz").removesuffix(".mapset"): MapSet.load(f) for f in files}
    if isinstance(mapsets, Mapping):
        named = dict(mapsets)
    elif isinstance(mapsets, Sequence):
        named = {f"image {i + 1}": ms for i, ms in enumerate(mapsets)}
    else:
        raise TypeError("Explorer takes a MapSet, a list or dict of them, or a folder of saved map sets; "
                        f"got {type(mapsets).__name__}")
    if not all(isinstance(ms, MapSet) for ms in named.values()):
        raise TypeError("Explorer takes MapSet objects (a MapSet, a list or a dict of them)")
    return named
