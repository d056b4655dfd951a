"""What the user looks at comes first: foreground work (the faithfulness curves, a baseline, the
sanity check, the sweep of the image on screen) holds background sweeps of other images back
between their probe batches, and they resume where they stopped once it is done."""
from __future__ import annotations

import contextlib
import math
import threading
import time
from typing import Iterator, Optional


class Clock:
    """The time left of a computation that reports ``done`` of ``total`` steps, at the rate so far."""

    def __init__(self) -> None:
        self.started = time.monotonic()

    def restart(self) -> None:
        self.started = time.monotonic()

    def left(self, done: int, total: int) -> str:
        """``"about 40 s left"``, ``"about 3 min left"``; ``""`` before the first step or after the last."""
        if done <= 0 or done >= total:
            return ""
        seconds = (time.monotonic() - self.started) * (total - done) / done
        if seconds < 90:
            return f"about {max(1, math.ceil(seconds))} s left"
        return f"about {math.ceil(seconds / 60)} min left"


class Priority:
    """A count of the foreground computations running; background work waits while it is > 0.

    Background work calls :meth:`wait_for_foreground` between batches (a sweep does through its
    ``cancel`` flag), so pausing costs nothing but the batch in flight.
    """

    def __init__(self) -> None:
        self._running = 0
        self._changed = threading.Condition()

    @contextlib.contextmanager
    def foreground(self) -> Iterator[None]:
        """Mark a block as foreground work: background work pauses until it ends."""
        with self._changed:
            self._running += 1
        try:
            yield
        finally:
            with self._changed:
                self._running -= 1
                self._changed.notify_all()

    def wait_for_foreground(self, stop: Optional[threading.Event] = None) -> None:
        """Block while foreground work runs (returns at once when none does, or once ``stop`` is set)."""
        with self._changed:
            while self._running and not (stop is not None and stop.is_set()):
                self._changed.wait(0.2)
