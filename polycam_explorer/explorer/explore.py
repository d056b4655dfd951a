"""From images to the explorer in one call: sweeps run in a background thread, coarse depths
appear as soon as their layers are probed, finished map sets are cached on disk."""
from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Callable, Mapping, Optional, Sequence, Union

import numpy as np
import torch
from PIL import Image

from .. import backends, cache
from ..images import ImageLike, image_frame, load_image
from ..layers import module_device
from ..compute import iter_mapset
from ..models import as_classifier, load_model
from ..scheduler import Priority
from .app import Explorer
from .store import Store
from .uploads import free_name, upload_to_image

__all__ = ["SweepRunner", "explore", "upload_to_image"]

Images = Union[ImageLike, Sequence[ImageLike], Mapping[str, ImageLike], None]


def _named_images(images: Images) -> dict[str, ImageLike]:
    if images is None:
        return {p.stem: p for p in cache.sample_images()}
    if isinstance(images, Mapping):
        return dict(images)
    if isinstance(images, (str, os.PathLike, Image.Image, np.ndarray)):
        images = [images]
    named = {}
    for i, image in enumerate(images):
        name = Path(image).stem if isinstance(image, (str, os.PathLike)) else f"image {i + 1}"
        named[free_name(name, named)] = image
    return named


class SweepRunner:
    """Runs the sweeps of queued images in a daemon thread, one after the other; the image the user
    looks at (or asked to see: an upload) is swept at once in a thread of its own, while the sweep
    of another image pauses between its probe batches. Map sets, progress and errors go to
    ``store`` (never to a view)."""

    def __init__(self, store: Store, model: torch.nn.Module, *, layers, batch_size: Optional[int],
                 device, size, cache_dir, backend: str = "auto") -> None:
        self.store, self.model, self.backend = store, as_classifier(model), backend
        self.layers, self.device, self.size, self.cache_dir = layers, device, size, cache_dir
        run_device = torch.device(device) if device is not None else module_device(self.model)
        self.batch_size = batch_size or cache.default_batch_size(run_device)
        self.queue: list[tuple[str, ImageLike, bool]] = []  # under _lock
        self.stop = threading.Event()
        # set by Explorer.attach_runner: foreground work (curves, baselines, the sanity check)
        # pauses the sweeps of images not on screen, and the image on screen is swept first
        self.priority = Priority()
        self.on_screen: Callable[[], Optional[str]] = lambda: None
        self.thread: Optional[threading.Thread] = None  # the worker; None once it has finished
        self.now: list[threading.Thread] = []  # sweeps started at once for the user (look_at)
        self.sweeping: set[str] = set()  # images being swept, in any thread (under _lock)
        self.wanted: Optional[str] = None  # an upload to show, until it is on screen
        # the worker decides to finish and submit decides to start one under this lock, so an
        # image submitted just as the worker finds the queue empty is never left in the queue
        self._lock = threading.Lock()
        self.closed = False  # under _lock: set by close(), for good

    @property
    def busy(self) -> bool:
        """True while images are queued or being probed."""
        return any(t.is_alive() for t in self._threads())

    def _threads(self) -> list[threading.Thread]:
        return [t for t in (self.thread, *self.now) if t is not None]

    def names(self) -> list[str]:
        """The images queued or being swept (not yet, or not completely, in the store)."""
        with self._lock:
            return [item[0] for item in self.queue] + sorted(self.sweeping)

    def cancel(self) -> None:
        """Stop the running sweeps and drop the queued images."""
        with self._lock:
            self.stop.set()
            self.queue.clear()

    def close(self) -> None:
        """Stop for good (the explorer is closed): :meth:`cancel`, and refuse later images."""
        with self._lock:
            self.closed = True
        self.cancel()

    def submit(self, name: str, image: ImageLike, *, show: bool = False) -> None:
        """Queue an image; ``show`` puts it on screen as soon as its first depth is ready, and
        sweeps it at once (any other sweep pauses).

        Raises:
            RuntimeError: the runner is closed (its explorer was closed): nothing is swept.
        """
        with self._lock:
            if self.closed:
                raise RuntimeError(f"cannot sweep {name!r}: this explorer is closed")
            self.queue.append((name, image, show))
            if show:  # before any thread can take it: _still_wanted asks at its first map
                self.wanted = name
            if self.thread is None or not self.thread.is_alive():  # (not alive: it died of an error)
                self.stop.clear()
                self.thread = threading.Thread(target=self._work, daemon=True)
                self.thread.start()
        if show:
            self.look_at(name)

    def look_at(self, name: Optional[str]) -> None:
        """The user looks at ``name`` (or asked to see it): when it is queued behind the sweep of
        another image, sweep it now, in its own thread; the other sweep pauses between its batches
        (:meth:`_stopped`) and resumes where it stopped."""
        with self._lock:
            at = next((i for i, item in enumerate(self.queue) if item[0] == name), None)
            if at is None or not self.sweeping:  # not queued, or the worker takes it next anyway
                return
            item = self.queue.pop(at)
            self.sweeping.add(name)  # from here on, not from when the thread starts: names() sees it
            thread = threading.Thread(target=self._sweep, args=item, daemon=True)
            self.now = [t for t in self.now if t.is_alive()] + [thread]
            thread.start()

    def wait(self, timeout: Optional[float] = None) -> None:
        """Block until the queued sweeps are done (for scripts and tests)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while threads := [t for t in self._threads() if t is not threading.current_thread() and t.is_alive()]:
            for thread in threads:
                thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
            if deadline is not None and time.monotonic() >= deadline:
                return

    def _work(self) -> None:
        while True:
            with self._lock:
                if self.stop.is_set() or not self.queue:
                    self.thread = None
                    return
                item = self.queue.pop(self._next_index())
                self.sweeping.add(item[0])
            self._sweep(*item)

    def _sweep(self, name: str, image: ImageLike, show: bool) -> None:
        """Sweep an image taken from the queue (and put in ``sweeping`` by whoever took it)."""
        try:
            self._run(name, image, show)
        except Exception as exc:  # noqa: BLE001 - shown in the widget
            self.store.report_error(exc)
        finally:
            with self._lock:
                self.sweeping.discard(name)
                if self.wanted == name:
                    self.wanted = None
                if not self.sweeping and (self.stop.is_set() or not self.queue):  # the last sweep, in any thread
                    self.store.set_progress(None)

    def _focus(self) -> Optional[str]:
        """The image the user looks at: an upload asked for until it is shown, else the one on screen."""
        return self.wanted or self.on_screen()

    def _next_index(self) -> int:
        """The image looked at first (the upload asked for last, or the one on screen), then the
        uploads, then in order."""
        current = self._focus()
        looked_at = (i for i, item in enumerate(self.queue) if item[0] == current)
        return next(looked_at, next((i for i, item in enumerate(self.queue) if item[2]), 0))

    def _stopped(self, name: str) -> bool:
        """The sweep's cancel flag, asked between batches: a sweep of an image the user does not
        look at waits here while foreground work runs or the image looked at is being swept."""
        while not self.stop.is_set() and (focus := self._focus()) != name:
            self.priority.wait_for_foreground(self.stop)
            with self._lock:
                behind = focus in self.sweeping
            if not behind:
                break
            time.sleep(0.05)
        return self.stop.is_set()

    def _still_wanted(self, name: str, show: bool) -> bool:
        """Whether an image submitted with ``show`` is still to be shown: not when the user has
        asked for another upload since (the last one asked for stays on screen)."""
        return show and self.wanted == name

    def _run(self, name: str, image: ImageLike, show: bool) -> None:
        x = load_image(image, self.model, size=self.size)
        ms = cache.cached(self.model, self.layers, x, self.cache_dir, self.device)
        if ms is not None:
            self.store.add_mapset(name, ms, show=self._still_wanted(name, show), picture=image)
            return
        self.store.set_progress((name, 0, 1))
        first = True
        for ms in iter_mapset(self.model, x, self.layers, batch_size=self.batch_size, device=self.device,
                              progress=lambda done, total: self.store.set_progress((name, done, total)),
                              cancel=lambda: self._stopped(name), backend=self.backend, progressive=True):
            # progressive: the first yields are labelled estimates of depth 1 (ms.estimate), within
            # seconds; each later yield (estimate or layer) redraws
            if first:
                ms.frame = image_frame(image)  # kept in the cache: the photo's own (H, W)
                self.store.add_mapset(name, ms, show=self._still_wanted(name, show), picture=image)
                first = False
            else:
                self.store.probed(name)
        cache.store(ms, self.model, self.layers, x, self.cache_dir)


def explore(images: Images = None, model: Optional[torch.nn.Module] = None, *,
            layers: Optional[Sequence[str]] = None, batch_size: Optional[int] = None, device=None,
            size: Optional[int] = None, cache_dir: Union[str, os.PathLike, None] = None,
            panel_size: int = 320, export_dir: Union[str, os.PathLike, None] = None, backend: str = "auto",
            wait: bool = False) -> Explorer:
    """Open the explorer on images: a path, PIL image or array, a list or dict of them, or None for
    the bundled samples. The embedded model is used unless ``model`` is given.

    Sweeps run in the background (progress shown in the widget; coarse depths appear first) and
    finished map sets are cached in ``cache_dir`` (see :func:`polycam_explorer.cache.cache_dir`).
    ``wait=True`` blocks until every sweep is done. ``export_dir``: where the Export tab writes
    (see :class:`Explorer`). ``backend``: how the sweeps' forward passes run (see
    :func:`polycam_explorer.compute_mapset`).
    """
    backends.check_backend(backend)  # a bad name is refused here, not in the worker
    model = as_classifier(model) if model is not None else load_model()
    named = _named_images(images)
    explorer = Explorer({}, model=model, size=panel_size, export_dir=export_dir)
    runner = SweepRunner(explorer.store, model, layers=layers, batch_size=batch_size, device=device, size=size,
                         cache_dir=cache_dir, backend=backend)
    explorer.attach_runner(runner)
    for name, image in named.items():
        runner.submit(name, image)
    if wait:
        runner.wait()
    return explorer
