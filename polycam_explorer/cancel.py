"""Cancelling long work: a ``cancel`` argument is a ``threading.Event``, a callable returning
True once the work should stop, or None."""
from __future__ import annotations

import threading
from typing import Callable, Union

CancelFlag = Union[threading.Event, Callable[[], bool], None]


class Cancelled(RuntimeError):
    """Long work stopped because its cancel flag was set (a sweep, a report, a baseline, a job)."""


def cancel_check(cancel: object) -> Callable[[], bool]:
    """``cancel`` as a function that says whether the work should stop now.

    Raises:
        TypeError: ``cancel`` is neither None, an object with ``is_set()`` (an Event) nor callable.
    """
    if cancel is None:
        return lambda: False
    is_set = getattr(cancel, "is_set", None)
    check = is_set if callable(is_set) else cancel
    if not callable(check):
        raise TypeError(f"cancel must be a threading.Event, a callable returning True to stop, or None; "
                        f"got {type(cancel).__name__}")
    return lambda: bool(check())
