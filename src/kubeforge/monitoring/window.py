"""Counts over a sliding time window, kept as a ring of time buckets.

Drift is measured over the last few minutes of traffic. Keeping those minutes' raw values
would cost memory in proportion to the traffic; a ring of buckets, each one counts vector
covering ``window_s / buckets`` seconds, costs ``buckets * slots`` integers whatever the
traffic, and the window slides by reusing the oldest bucket. The price is granularity:
the window covers between ``window_s - window_s / buckets`` and ``window_s`` seconds,
because the bucket in progress is counted from its start.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

_NEVER = np.iinfo(np.int64).min


class SlidingCounts:
    """A counts vector of ``slots`` entries summed over the last ``window_s`` seconds of ``clock`` (dtype float64
    for sums of values rather than counts)."""

    def __init__(self, slots: int, window_s: float, buckets: int, clock: Callable[[], float], dtype: type = np.int64):
        if window_s <= 0 or buckets < 1:
            raise ValueError(f"window_s must be > 0 and buckets >= 1, got {window_s} and {buckets}")
        self._width = window_s / buckets
        self._clock = clock
        self._counts: np.ndarray = np.zeros((buckets, slots), dtype=dtype)
        # The bucket number (clock // width) each row of the ring holds; a row is live while
        # its number is among the last `buckets` ones.
        self._numbers = np.full(buckets, _NEVER, dtype=np.int64)

    def add(self, counts: np.ndarray) -> None:
        """Add counts (one entry per slot) to the bucket of the current time."""
        number = int(self._clock() // self._width)
        row = number % len(self._numbers)
        if self._numbers[row] != number:
            self._counts[row] = 0
            self._numbers[row] = number
        self._counts[row] += counts

    def totals(self) -> np.ndarray:
        """The counts of every slot over the window that ends now."""
        number = int(self._clock() // self._width)
        live = (self._numbers > number - len(self._numbers)) & (self._numbers <= number)
        return self._counts[live].sum(axis=0)

    @property
    def nbytes(self) -> int:
        """Memory held by the ring: fixed at construction."""
        return self._counts.nbytes + self._numbers.nbytes
