"""Leave the user's model as it was found: eval mode and frozen parameters while a computation
runs, every flag restored after it, also when several threads use one model at once.

Each module and parameter carries a count of the computations that hold it. The first to take it
saves its flag and sets it; the last to let it go restores the saved flag. So two threads on one
model (the explorer's background sweep beside the faithfulness curves, say) never save a flag
that the other already changed, and the model comes back exactly as it was, whatever the order in
which they finish. Overlapping trees (a wrapper and its inner network) share the same counts.
"""
from __future__ import annotations

import contextlib
import threading
from typing import Iterator

import torch
from torch import nn

_LOCK = threading.Lock()
_HELD: dict[object, tuple[int, bool]] = {}  # module or parameter -> (holders, flag before the first)


def _take(obj: object, flag: bool) -> None:
    count, saved = _HELD.get(obj, (0, flag))
    _HELD[obj] = (count + 1, saved)


def _release(obj: object) -> bool | None:
    """One holder fewer; the saved flag when it was the last, else None."""
    count, saved = _HELD[obj]
    if count == 1:
        del _HELD[obj]
        return saved
    _HELD[obj] = (count - 1, saved)
    return None


@contextlib.contextmanager
def inference_state(model: nn.Module) -> Iterator[None]:
    """Run ``model`` in eval mode, its parameters frozen and gradients off (in this thread); on
    exit restore every ``training`` and ``requires_grad`` flag as it was before the first of the
    computations that hold it (thread-safe, re-entrant)."""
    modules, params = list(model.modules()), list(model.parameters())
    with _LOCK:
        for m in modules:
            _take(m, m.training)
            m.training = False
        for p in params:
            _take(p, p.requires_grad)
            p.requires_grad_(False)
    try:
        with torch.no_grad():
            yield
    finally:
        with _LOCK:
            for m in modules:
                flag = _release(m)
                if flag is not None:
                    m.training = flag
            for p in params:
                flag = _release(p)
                if flag is not None:
                    p.requires_grad_(flag)
