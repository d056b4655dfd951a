"""How the explorer's work runs: background jobs that write the store, and drawing one frame at a
time.

- :class:`Job`: one cancellable computation in a daemon thread; its ``running``/``done``/``total``
  are traits the tab's widgets follow (the worker writes numbers, never widgets).
- :class:`JobTab`: the button / cancel / progress / cached-result pattern of the Faithfulness
  and Sanity tabs.
- :class:`Draws`: views ask it to draw; it runs one draw at a time (under a lock), coalesces
  requests (the latest state wins) and defers them while held (several changes, one frame).
- :class:`Jobs`: what a view gets besides the state and the store: the model, the draws, the
  baseline maps computed in the background and the sweep runner, if any.
"""
from __future__ import annotations

import contextlib
import html
import threading
from typing import Any, Callable, Hashable, Iterable, Iterator, Optional

import ipywidgets as W
import torch
import traitlets as T

from ..cancel import Cancelled
from ..scheduler import Clock, Priority
from .panels import main_panel
from .store import Event, Store


class Job(T.HasTraits):
    """Runs one computation at a time, in a daemon thread unless ``block``.

    Cancellation is cooperative: the work calls :meth:`check` (or passes :attr:`stop` on, e.g. as
    a sweep's ``cancel`` flag) and stops at the next chance.

    Attributes:
        running (bool): a computation is under way.
        done, total (int): its progress, as the work reports it with :meth:`report`.
        message (str): HTML the tab shows (busy, cancelled, an error).
    """

    running = T.Bool(False)
    done = T.Int(0)
    total = T.Int(1)
    message = T.Unicode("")
    time_left = T.Unicode("")  # "about 40 s left", at the rate so far

    def __init__(self, priority: Optional[Priority] = None) -> None:
        super().__init__()
        self.stop = threading.Event()
        self.priority = priority or Priority()
        self._clock = Clock()
        self._thread: Optional[threading.Thread] = None

    def start(self, work: Callable[[], None], *, block: bool = False) -> None:
        """Run ``work()``; ``running`` goes back to False when it ends, however it ends."""
        self.stop.clear()
        self.done = 0
        self.time_left = ""
        self._clock.restart()
        self.running = True

        def run() -> None:
            try:
                with self.priority.foreground():  # background sweeps pause meanwhile
                    work()
            finally:
                self.running = False

        if block:
            run()
        else:
            self._thread = threading.Thread(target=run, daemon=True)
            self._thread.start()

    def report(self, done: int, total: Optional[int] = None) -> None:
        """Progress from the work (raises :class:`Cancelled` once cancel has been asked)."""
        self.check()
        if total is not None:
            self.total = max(1, int(total))
        self.done = int(done)
        self.time_left = self._clock.left(self.done, self.total)

    def check(self) -> None:
        """Raise :class:`Cancelled` if cancel has been asked."""
        if self.stop.is_set():
            raise Cancelled

    def cancel(self) -> None:
        """Ask the running work to stop."""
        self.stop.set()

    def wait(self, timeout: Optional[float] = None) -> None:
        """Block until work running in the background has finished."""
        if self._thread is not None:
            self._thread.join(timeout)


@contextlib.contextmanager
def one_torch_thread() -> Iterator[None]:
    """Run this thread's tensor work on one intra-op thread, then restore the count.

    A draw's tensors are small (a 224 x 224 map): on a busy 2-core CPU the thread pool's hand-offs
    cost far more than the work (a map's saliency: 110 ms on two threads, 0.8 ms on one, measured
    beside a browser and other processes). OpenMP keeps the count per thread, so a sweep running
    in another thread keeps its own."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class Draws:
    """One draw at a time, latest state wins.

    ``request(draw)`` runs ``draw()`` now unless a draw is held (:meth:`held`) or under way in
    this thread; requests made meanwhile (from any thread) are coalesced and run once after it.
    Draws run on one torch thread (:func:`one_torch_thread`). An exception from a draw goes to
    ``on_error``.
    """

    def __init__(self, on_error: Callable[[BaseException], None]) -> None:
        self._on_error = on_error
        self._lock = threading.RLock()  # held while drawing
        self._mutex = threading.Lock()  # guards the pending requests and the hold count
        self._pending: dict[Callable[[], None], None] = {}
        self._held = 0
        self._local = threading.local()

    def request(self, draw: Callable[[], None]) -> None:
        with self._mutex:
            self._pending[draw] = None
        self._run()

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        """Change several things and draw once, at the end."""
        with self._mutex:
            self._held += 1
        try:
            yield
        finally:
            with self._mutex:
                self._held -= 1
            self._run()

    def _run(self) -> None:
        if self._held or getattr(self._local, "drawing", False):
            return
        with self._lock, one_torch_thread():
            self._local.drawing = True
            try:
                for _ in range(8):  # a draw that requests another is run again, not forever
                    with self._mutex:
                        if not self._pending or self._held:
                            return
                        todo = list(self._pending)
                        self._pending.clear()
                    for draw in todo:
                        try:
                            draw()
                        except Exception as exc:  # noqa: BLE001 - shown in the status line
                            self._on_error(exc)
            finally:
                self._local.drawing = False

    def close(self) -> None:
        """Draw nothing more (the widgets are closed)."""
        with self._mutex:
            self._pending.clear()
            self._held += 1


class Jobs:
    """The model and the background work of one explorer.

    Args:
        store: where results are written.
        model: the classifier (None: no curves, sanity check or baselines).
    """

    def __init__(self, store: Store, model: Optional[torch.nn.Module] = None) -> None:
        self.store, self.model = store, model
        self.draws = Draws(on_error=store.report_error)
        self.priority = Priority()  # curves, baselines and the sanity check hold background sweeps back
        self.runner = None  # a SweepRunner, once attached
        self._lock = threading.Lock()
        self._baselines: dict[tuple, threading.Event] = {}  # running, with their cancel flags
        self._jobs: list[Job] = []

    def job(self) -> Job:
        """A new :class:`Job` (foreground work), cancelled by :meth:`cancel`."""
        job = Job(self.priority)
        self._jobs.append(job)
        return job

    def baseline(self, name: str, class_idx: int, method: str) -> Optional[torch.Tensor]:
        """The baseline ``method``'s map of the class in [0, 1] at the image size; None until a
        background thread has computed it (started here, unless running or without a model)."""
        key = (name, class_idx, method)
        values = self.store.result("baseline", key)
        if values is not None or self.model is None:
            return values
        with self._lock:
            running = self._baselines.get(key)
            if running is not None and not running.is_set():
                return None
            stop = self._baselines[key] = threading.Event()  # a new one, also after a cancel
        threading.Thread(target=self._compute_baseline, args=(key, self.store.mapset(name), stop),
                         daemon=True).start()
        return None

    def keep_baselines(self, wanted: Iterable[tuple]) -> None:
        """Cancel the baselines being computed that are not ``wanted`` (``(image, class, method)``
        keys of the panels on screen): Score-CAM or RISE for a class left behind takes minutes
        of a CPU the map on screen needs."""
        wanted = set(wanted)
        with self._lock:
            for key, stop in self._baselines.items():
                if key not in wanted:
                    stop.set()

    def _compute_baseline(self, key: tuple, ms, stop: threading.Event) -> None:
        with self.priority.foreground():  # a baseline beside the map does not wait behind sweeps
            self._baseline_values(key, ms, stop)

    def baseline_running(self, name: str, class_idx: int, method: str) -> bool:
        with self._lock:
            stop = self._baselines.get((name, class_idx, method))
            return stop is not None and not stop.is_set()

    def _baseline_values(self, key: tuple, ms, stop: threading.Event) -> None:
        from .. import baselines
        from ..polycam import display_map

        _, class_idx, method = key
        try:
            raw = baselines.saliency(method, self.model, ms.image, class_idx, cancel=stop)
            values = display_map(raw.detach().float().to(ms.device), ms.size)
            if self.store.get(key[0]) is ms:  # not replaced meanwhile
                self.store.put_result("baseline", key, values)
        except Cancelled:
            pass  # left behind: asked for again, it starts anew
        except Exception as exc:  # noqa: BLE001 - shown in the widget
            self.store.report_error(exc)
        finally:
            with self._lock:
                if self._baselines.get(key) is stop:  # not a newer computation of the same key
                    del self._baselines[key]

    def cancel(self) -> None:
        """Stop every running job, baseline and sweep."""
        for job in self._jobs:
            job.cancel()
        self.keep_baselines(())
        if self.runner is not None:
            self.runner.cancel()

    def close(self) -> None:
        """:meth:`cancel`, and the sweep runner takes no more images."""
        self.cancel()
        if self.runner is not None:
            self.runner.close()


class JobTab:
    """A tab that computes a result on demand for the main panel: a button, a cancel button, a
    progress bar and a message; results are kept in the store under :attr:`what` and the one for
    the state on screen is shown.

    Subclasses set :attr:`what`, :attr:`watches` (the state traits their key depends on) and
    implement :meth:`key`, :meth:`run` (in the worker: returns the result) and :meth:`show`.
    """

    what: str = ""
    watches: tuple[str, ...] = ("image", "klass", "variant", "depth", "lnorm")

    def __init__(self, state, store: Store, jobs: Jobs, *, label: str) -> None:
        self.state, self.store, self.jobs = state, store, jobs
        self.job = jobs.job()
        self.button = W.Button(description=label)
        self.stop_button = W.Button(description="cancel", disabled=True)
        self.progress = W.IntProgress(min=0, max=1, value=0, layout=W.Layout(width="200px"))
        self.message = W.HTML()
        self.time_left = W.HTML()
        T.dlink((self.job, "time_left"), (self.time_left, "value"))
        T.dlink((self.job, "total"), (self.progress, "max"))
        T.dlink((self.job, "done"), (self.progress, "value"))
        T.dlink((self.job, "message"), (self.message, "value"))
        self.job.observe(self._on_running, names="running")
        self.button.on_click(lambda _: self._clicked())
        self.stop_button.on_click(lambda _: self.cancel())
        state.observe(lambda _: self.refresh(), names=list(self.watches))
        store.subscribe(self._on_store)
        self._idle = not self.available()
        self.button.disabled = self._idle

    # ----- what subclasses provide ----------------------------------------------------------
    def available(self) -> bool:
        """Whether the tab can compute at all (a model, the libraries it needs)."""
        return self.jobs.model is not None

    def key(self, panel) -> tuple:
        raise NotImplementedError

    def run(self, key: tuple, ms, panel) -> Any:
        raise NotImplementedError

    def show(self, result: Any, key: Optional[tuple]) -> None:
        raise NotImplementedError

    def check_available(self) -> None:
        """Raise (ValueError, ImportError) naming what is missing to compute."""

    def busy_message(self, key: tuple, ms) -> str:
        return ""

    # ----- the pattern ----------------------------------------------------------------------
    @property
    def cache(self) -> dict[Hashable, Any]:
        """The results computed so far (a copy)."""
        return self.store.results(self.what)

    def current(self) -> Optional[tuple]:
        """(key, map set, main panel) of the state on screen, or None without an image."""
        ms = self.store.get(self.state.image)
        if ms is None or ms.depth_available == 0:
            return None
        panel = main_panel(self.state, ms)
        return self.key(panel), ms, panel

    def refresh(self) -> None:
        """Show the cached result of the state on screen (or none), as one draw."""
        self.jobs.draws.request(self._show_current)

    def _show_current(self) -> None:
        now = self.current()
        key = now[0] if now is not None else None
        self.show(self.store.result(self.what, key) if key is not None else None, key)

    def compute(self, *, block: bool = False) -> None:
        """Compute the result for the main panel (in a thread unless ``block``); a cached one is shown."""
        self.check_available()
        if self.job.running:
            return
        now = self.current()
        if now is None:
            return
        key, ms, panel = now
        if self.store.result(self.what, key) is not None:
            self.refresh()
            return
        self.job.message = self.busy_message(key, ms)
        self.job.start(lambda: self._work(key, ms, panel), block=block)

    def _work(self, key: tuple, ms, panel) -> None:
        try:
            result = self.run(key, ms, panel)
            self.job.message = ""
            self.store.put_result(self.what, key, result)
        except Cancelled:  # the job's own, or the sweep's
            self.job.message = "<i>cancelled</i>"
        except Exception as exc:  # noqa: BLE001 - shown in the widget
            self.job.message = (f"<span style='color:#b00020'><b>{type(exc).__name__}</b>: "
                                  f"{html.escape(str(exc))}</span>")
            self.store.report_error(exc)

    def _clicked(self) -> None:
        try:
            self.compute()
        except Exception as exc:  # noqa: BLE001
            self.store.report_error(exc)

    def _on_running(self, change) -> None:
        self.button.disabled = change["new"] or self._idle
        self.stop_button.disabled = not change["new"]

    def _on_store(self, event: Event) -> None:
        if event.kind == "result" and event.what == self.what or event.kind in ("mapset", "probed"):
            self.refresh()

    def cancel(self) -> None:
        """Stop a computation running in the background (at its next progress report)."""
        self.job.cancel()

    def wait(self, timeout: Optional[float] = None) -> None:
        """Block until a computation running in the background has finished."""
        self.job.wait(timeout)
