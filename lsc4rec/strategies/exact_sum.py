"""Sums of float arrays whose bits do not depend on the order of the terms (binned summation).

Float additions do not associate: summing the same replies in another order changes the last bits. The
aggregation rules that fold replies as they arrive (:mod:`.train_fold`) and the ones that see them all at once
(:mod:`.aggregation`) both sum through :class:`ReproducibleSum`, so any arrival order gives the same bits.

Each term is split, element by element, into slices on a grid of bins fixed in absolute terms (bin ``b``
holds multiples of ``2**(BIN_BITS * b)``), as in ReproBLAS (Demmel & Nguyen 2015). A slice depends on the
term alone, and the slices of one bin add without rounding, so each bin's sum is exact and independent of the
order. Each element keeps the ``BINS`` bins below the largest term it has seen (a larger term later drops the
lowest bins, which it would have dropped anyway); what falls below them is at most ``2**-70`` of the largest
term. The total is the bins added from the top.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

__all__ = ["MAX_TERMS", "ReproducibleSum"]

#: Width of a bin in bits, and how many bins an element keeps.
BIN_BITS = 36
BINS = 3
#: Slices hold at most ``2**(BIN_BITS - 1)`` units of their bin: this many add exactly in a float64.
MAX_TERMS = 2 ** (53 - BIN_BITS)
#: The lowest top bin (its ``BINS - 1`` lower bins stay within float64's normal range), and the highest.
_LOWEST_TOP = -27
_HIGHEST_TOP = 26
#: Elements processed at a time (bounds the temporaries to a few MB whatever the array's size).
_BLOCK = 1 << 15


def _frexp_exponent(values: np.ndarray) -> np.ndarray:
    """``np.frexp(values)[1]`` (``|v| < 2**e``) read from the float64 bits, several times faster than frexp.

    A normal value's exponent field ``f`` gives ``e = f - 1022``; subnormals (below every bin) get the
    lowest exponent, zero and non-finite values 0, as frexp gives them."""
    field = ((values.view(np.int64) >> 52) & 0x7FF).astype(np.int32)
    exponent = field - 1022
    exponent[field == 0] = -1022
    exponent[(field == 0x7FF) | (values == 0)] = 0
    return exponent


def _top_bins(values: np.ndarray) -> np.ndarray:
    """The lowest bin ``t`` with ``|v| < 2**(BIN_BITS * (t + 1) - 1)`` for each value (zero: the lowest)."""
    exponent = _frexp_exponent(values)  # |v| < 2**exponent
    top = -((-(exponent + 1)) // BIN_BITS) - 1
    top[values == 0] = _LOWEST_TOP
    return np.clip(top, _LOWEST_TOP, _HIGHEST_TOP).astype(np.int8)


def _one_and_a_half_times_two_to(exponent: np.ndarray) -> np.ndarray:
    """``1.5 * 2**exponent`` for integer exponents of normal float64 range, built from its bits (ldexp's
    value, without its cost)."""
    bits = ((exponent.astype(np.int64) + 1023) << 52) | (1 << 51)
    return bits.view(np.float64)


class ReproducibleSum:
    """A running sum of float arrays of one shape, the same in bits in any order of :meth:`add` calls."""

    def __init__(self, shape: Sequence[int]) -> None:
        """An empty sum of arrays of ``shape``."""
        self.shape = tuple(int(n) for n in shape)
        size = math.prod(self.shape)
        self._top = np.full(size, _LOWEST_TOP, dtype=np.int8)
        self._bins = np.zeros((BINS, size), dtype=np.float64)
        self.terms = 0

    def _row_blocks(self) -> tuple[int, int, int]:
        """Rows (first axis), elements per row, and rows per block."""
        rows = self.shape[0] if self.shape else 1
        width = self._top.shape[0] // max(rows, 1)
        return rows, width, max(1, _BLOCK // max(width, 1))

    def add(self, values: np.ndarray, scale: float | np.ndarray = 1.0) -> None:
        """Add ``values * scale`` (``scale``: a number, or one per row: first axis), computed in float64."""
        flat = np.asarray(values).reshape(-1)
        if flat.shape[0] != self._top.shape[0]:
            raise ValueError(f"term of shape {np.shape(values)} added to a sum of shape {self.shape}")
        if self.terms >= MAX_TERMS:
            raise ValueError(f"a reproducible sum holds at most {MAX_TERMS} terms")
        self.terms += 1
        rows, width, step = self._row_blocks()
        per_row = np.broadcast_to(np.asarray(scale, dtype=np.float64), (rows,))
        with np.errstate(over="ignore", invalid="ignore"):
            for first in range(0, rows, step):
                where = slice(first * width, (first + step) * width)
                term = flat[where].astype(np.float64).reshape(-1, width) * per_row[first : first + step, None]
                self._add_block(where, term.reshape(-1))

    def _add_block(self, where: slice, remainder: np.ndarray) -> None:
        top = np.maximum(self._top[where], _top_bins(remainder))
        shift = (top - self._top[where]).astype(np.int32)
        if shift.any():
            old = self._bins[:, where]
            moved = np.zeros_like(old)
            for k in range(BINS):
                source = k - shift
                picked = np.take_along_axis(old, np.clip(source, 0, None)[None, :], axis=0)[0]
                moved[k] = np.where(source >= 0, picked, 0.0)
            self._bins[:, where] = moved
            self._top[where] = top
        exponent = BIN_BITS * top.astype(np.int32) + 52
        for k in range(BINS):
            # Round to a multiple of the bin's unit: exact for |remainder| <= 2**(unit exponent + 51).
            magic = _one_and_a_half_times_two_to(exponent - BIN_BITS * k)
            sliced = (remainder + magic) - magic
            remainder -= sliced
            self._bins[k, where] += sliced

    def total(self, divisor: float | np.ndarray = 1.0, dtype: np.dtype | type = np.float64) -> np.ndarray:
        """The sum divided by ``divisor`` (a number, or one per row: first axis), cast to ``dtype`` (rounded
        to the nearest integer for an integer dtype). The bins are added from the top, in float64."""
        if self._top.shape[0] == 0:
            return np.zeros(self.shape, dtype=dtype)
        rows, width, step = self._row_blocks()
        per_row = np.broadcast_to(np.asarray(divisor, dtype=np.float64), (rows,))
        out = np.empty((rows, width), dtype=dtype)
        with np.errstate(divide="ignore", invalid="ignore"):
            for first in range(0, rows, step):
                block = slice(first * width, (first + step) * width)
                value = self._bins[0, block].copy()
                for k in range(1, BINS):
                    value += self._bins[k, block]
                value = value.reshape(-1, width) / per_row[first : first + step, None]
                out[first : first + step] = np.rint(value) if np.issubdtype(dtype, np.integer) else value
        return out.reshape(self.shape)
