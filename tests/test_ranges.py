"""gsi.ranges.ReceivedRanges against a set-of-bytes model."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gsi.ranges import RangeLimitExceeded, ReceivedRanges


def ranges_of(r: ReceivedRanges) -> list[tuple[int, int]]:
    """The disjoint ranges, read back through the private lists (white box)."""
    return list(zip(r._starts, r._ends, strict=True))


def make(*pieces: tuple[int, int], max_ranges: int = 16384) -> ReceivedRanges:
    r = ReceivedRanges(max_ranges)
    for start, end in pieces:
        r.add(start, end)
    return r


def test_empty() -> None:
    r = ReceivedRanges()
    assert len(r) == 0
    assert r.total == 0
    assert r.covers(0)
    assert not r.covers(1)


def test_in_order_extends_one_range() -> None:
    r = ReceivedRanges()
    for off in range(0, 6144 * 100, 6144):
        r.add(off, off + 6144)
        assert len(r) == 1
    assert r.covers(6144 * 100)
    assert not r.covers(6144 * 100 + 1)
    assert not r.covers(6144 * 100 - 1)
    assert r.total == 6144 * 100


def test_out_of_order() -> None:
    r = make((20, 30), (0, 10))
    assert ranges_of(r) == [(0, 10), (20, 30)]
    assert not r.covers(30)
    r.add(10, 20)
    assert ranges_of(r) == [(0, 30)]
    assert r.covers(30)


def test_reverse_order() -> None:
    r = make(*((i, i + 5) for i in range(95, -5, -5)))
    assert ranges_of(r) == [(0, 100)]
    assert r.covers(100)


def test_overlapping_and_bridging() -> None:
    r = make((0, 10), (20, 30), (40, 50))
    r.add(5, 45)
    assert ranges_of(r) == [(0, 50)]
    r = make((10, 20), (30, 40))
    r.add(15, 35)
    assert ranges_of(r) == [(10, 40)]
    r = make((10, 20))
    r.add(0, 100)
    assert ranges_of(r) == [(0, 100)]


def test_duplicates_and_contained() -> None:
    r = make((0, 10), (0, 10), (2, 5), (0, 10))
    assert ranges_of(r) == [(0, 10)]
    assert r.total == 10
    r = make((20, 30), (0, 5), (22, 25), (20, 30))
    assert ranges_of(r) == [(0, 5), (20, 30)]


def test_adjacent_ranges_merge() -> None:
    r = make((10, 20), (0, 10))
    assert ranges_of(r) == [(0, 20)]
    r = make((0, 5), (10, 15), (5, 10))
    assert ranges_of(r) == [(0, 15)]


def test_empty_ranges_are_ignored() -> None:
    r = make((5, 5), (7, 3))
    assert len(r) == 0
    assert r.covers(0)


def test_covers_requires_exactly_zero_to_size() -> None:
    assert not make((1, 10)).covers(10)
    assert not make((0, 11)).covers(10)
    assert not make((0, 5), (6, 10)).covers(10)
    assert not make((0, 1)).covers(0)
    assert make((0, 10)).covers(10)


def test_max_ranges_bound() -> None:
    r = ReceivedRanges(max_ranges=3)
    r.add(0, 1)
    r.add(2, 3)
    r.add(4, 5)
    with pytest.raises(RangeLimitExceeded):
        r.add(6, 7)
    with pytest.raises(RangeLimitExceeded):
        r.add(100, 101)
    assert ranges_of(r) == [(0, 1), (2, 3), (4, 5)]
    # Adds that merge are still fine at the bound, and free room again.
    r.add(1, 2)
    assert ranges_of(r) == [(0, 3), (4, 5)]
    r.add(10, 11)
    assert len(r) == 3
    r.add(5, 6)
    assert len(r) == 3


@settings(max_examples=300)
@given(pieces=st.lists(st.tuples(st.integers(0, 64), st.integers(0, 16)), max_size=40),
       size=st.integers(0, 80))
def test_matches_set_model(pieces: list[tuple[int, int]], size: int) -> None:
    r = ReceivedRanges()
    model: set[int] = set()
    for start, length in pieces:
        r.add(start, start + length)
        model.update(range(start, start + length))
        got = ranges_of(r)
        # Disjoint, sorted, non-touching, and exactly the model's bytes.
        assert all(s < e for s, e in got)
        assert all(e1 < s2 for (_, e1), (s2, _) in itertools.pairwise(got))
        assert {b for s, e in got for b in range(s, e)} == model
        assert r.total == len(model)
        assert len(r) == _runs(model)
    assert r.covers(size) == (model == set(range(size)))


@given(pieces=st.lists(st.tuples(st.integers(0, 40), st.integers(1, 4)), max_size=30),
       bound=st.integers(1, 5))
def test_bound_matches_model(pieces: list[tuple[int, int]], bound: int) -> None:
    r = ReceivedRanges(max_ranges=bound)
    model: set[int] = set()
    for start, length in pieces:
        candidate = model | set(range(start, start + length))
        if _runs(candidate) > bound:
            with pytest.raises(RangeLimitExceeded):
                r.add(start, start + length)
        else:
            r.add(start, start + length)
            model = candidate
        assert {b for s, e in ranges_of(r) for b in range(s, e)} == model
        assert len(r) <= bound


def _runs(model: set[int]) -> int:
    """Number of maximal runs of consecutive integers."""
    return sum(1 for b in model if b - 1 not in model)
