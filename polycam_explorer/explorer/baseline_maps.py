"""Baseline maps (Grad-CAM, ...) shown beside Poly-CAM: computed once each in a background
thread, then cached per (map set, class, method)."""
from __future__ import annotations

import threading
from typing import Callable, Optional

import torch

from ..mapset import MapSet


class BaselineMaps:
    """A cache of baseline maps in [0, 1] at the map set's image size, filled in the background.

    Args:
        on_ready: called (from the worker thread) when a map has been computed.
        on_error: called with the exception when computing a map failed.
    """

    def __init__(self, on_ready: Callable[[], None], on_error: Callable[[BaseException], None]) -> None:
        self.on_ready, self.on_error = on_ready, on_error
        self.maps: dict[tuple, torch.Tensor] = {}
        self.jobs: set[tuple] = set()

    def ready(self, ms: MapSet, class_idx: int, method: str) -> bool:
        """Whether the map of ``method`` for ``class_idx`` is cached."""
        return (ms, class_idx, method) in self.maps

    def values(self, ms: MapSet, class_idx: int, method: str,
               model: Optional[torch.nn.Module]) -> Optional[torch.Tensor]:
        """The method's map of the class (``u`` of its raw map, as shown for Poly-CAM); None until
        a background thread has computed it (started here unless running, or without a model)."""
        key = (ms, class_idx, method)
        if key in self.maps:
            return self.maps[key]
        if key not in self.jobs and model is not None:
            self.jobs.add(key)
            threading.Thread(target=self._compute, args=(key, model), daemon=True).start()
        return None

    def _compute(self, key: tuple, model: torch.nn.Module) -> None:
        from .. import baselines
        from ..polycam import display_map

        ms, class_idx, method = key
        try:
            raw = baselines.saliency(method, model, ms.image, class_idx)
            self.maps[key] = display_map(raw.detach().float().to(ms.device), ms.size)
            self.on_ready()
        except Exception as exc:  # noqa: BLE001 - shown in the widget
            self.on_error(exc)
        finally:
            self.jobs.discard(key)

    def clear(self) -> None:
        """Forget every cached map (and the map sets their keys hold)."""
        self.maps.clear()
