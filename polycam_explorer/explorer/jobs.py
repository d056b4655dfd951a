"""One background computation per tab: started from a button, cancellable, never freezing the widget."""
from __future__ import annotations

import threading
from typing import Callable, Optional

import ipywidgets as W


class Cancelled(Exception):
    """Raised by :meth:`ButtonJob.check` once cancel has been asked."""


class ButtonJob:
    """Runs one computation at a time, in a daemon thread unless ``block``; while it runs ``button``
    is disabled and ``stop_button`` (which cancels it) enabled.

    Cancellation is cooperative: the work calls :meth:`check` (or passes :attr:`stop` on, e.g. as
    a sweep's ``cancel`` flag) and stops at the next chance.
    """

    def __init__(self, button: W.Button, stop_button: W.Button) -> None:
        self.button, self.stop_button = button, stop_button
        self.stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        stop_button.on_click(lambda _: self.cancel())

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self, work: Callable[[], None], *, block: bool = False) -> None:
        """Run ``work()``; the buttons come back when it ends, however it ends."""
        self.stop.clear()
        self.button.disabled, self.stop_button.disabled = True, False

        def run() -> None:
            try:
                work()
            finally:
                self.button.disabled, self.stop_button.disabled = False, True

        if block:
            run()
        else:
            self._thread = threading.Thread(target=run, daemon=True)
            self._thread.start()

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
