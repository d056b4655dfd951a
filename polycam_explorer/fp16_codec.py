"""fp16 storage that round-trips: float16 mantissas with one power-of-two exponent per slice (and
an optional float32 offset per slice), so nothing overflows fp16 or flushes to zero (the map-set
format, :mod:`polycam_explorer.mapset_io`)."""
from __future__ import annotations

import numpy as np

TOP = 15  # a slice's largest magnitude is stored in [2**(TOP - 1), 2**TOP)
EXP_RANGE = (-200, 200)  # float32 values need exponents in about -163..114


def slice_shape(ndim: int, axis: int) -> list[int]:
    shape = [1] * ndim
    shape[axis] = -1
    return shape


def offsets_of(x: np.ndarray) -> np.ndarray:
    """Per-channel minimum of ``[K, ...]`` activations (float32)."""
    return x.reshape(x.shape[0], -1).min(axis=1).astype(np.float32) if x.size else np.zeros(x.shape[0], np.float32)


def encode(x: np.ndarray, axis: int, offsets: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """fp16 mantissas and one power-of-two exponent per slice along ``axis`` (exact scaling),
    after subtracting the slices' ``offsets`` if given."""
    shape = slice_shape(x.ndim, axis)
    x = x.astype(np.float64)
    if offsets is not None:
        x = x - offsets.astype(np.float64).reshape(shape)
    others = tuple(a for a in range(x.ndim) if a != axis)
    peak = np.abs(x).max(axis=others) if x.size else np.zeros(x.shape[axis])
    exps = (np.frexp(peak)[1] - TOP).astype(np.int16)  # peak = m * 2**e, m in [0.5, 1)
    mantissas = np.ldexp(x, -exps.astype(np.int32).reshape(shape))
    return mantissas.astype(np.float16), exps


def decode(mantissas: np.ndarray, exps: np.ndarray, axis: int, offsets: np.ndarray | None = None) -> np.ndarray:
    shape = slice_shape(mantissas.ndim, axis)
    with np.errstate(over="ignore", invalid="ignore"):
        x = np.ldexp(mantissas.astype(np.float64), exps.astype(np.int32).reshape(shape))
        if offsets is not None:
            x = x + offsets.astype(np.float64).reshape(shape)
        return x.astype(np.float32)
