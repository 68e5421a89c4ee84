"""Which byte ranges of a file have been received (pure bookkeeping)."""

from __future__ import annotations

import bisect


class RangeLimitExceeded(Exception):
    """More disjoint ranges than the configured bound (a hostile write pattern)."""


class ReceivedRanges:
    """A set of disjoint, sorted half-open byte ranges.

    In-order fragments (the normal case, whatever the window) only ever extend the
    last range, in O(1). Out-of-order, duplicate and overlapping fragments are merged.
    The number of disjoint ranges is bounded so that memory stays bounded whatever
    pattern a host writes in.
    """

    __slots__ = ("_ends", "_max_ranges", "_starts")

    def __init__(self, max_ranges: int = 16384) -> None:
        self._starts: list[int] = []
        self._ends: list[int] = []
        self._max_ranges = max_ranges

    def add(self, start: int, end: int) -> None:
        """Mark ``[start, end)`` received.

        Raises:
            RangeLimitExceeded: the ranges would exceed ``max_ranges`` disjoint pieces.
        """
        if end <= start:
            return
        starts, ends = self._starts, self._ends
        if starts and starts[-1] <= start <= ends[-1]:
            if end > ends[-1]:
                ends[-1] = end
            return
        # General case: merge with every range that touches [start, end).
        lo = bisect.bisect_left(ends, start)
        hi = bisect.bisect_right(starts, end)
        if lo < hi:
            start = min(start, starts[lo])
            end = max(end, ends[hi - 1])
        elif len(starts) >= self._max_ranges:
            raise RangeLimitExceeded(
                f"more than {self._max_ranges} disjoint ranges received"
            )
        starts[lo:hi] = [start]
        ends[lo:hi] = [end]

    def covers(self, size: int) -> bool:
        """True when the ranges are exactly ``[0, size)`` (empty for size 0)."""
        if size == 0:
            return not self._starts
        return self._starts == [0] and self._ends == [size]

    @property
    def total(self) -> int:
        """Bytes covered."""
        return sum(e - s for s, e in zip(self._starts, self._ends, strict=True))

    def __len__(self) -> int:
        return len(self._starts)
