"""The receiver's safety invariant, as a property over fault plans (hypothesis).

Against the real server (``open_guest``: the Receiver over a real Unix socket, writing
real files), a sequence of copies with random faults runs on one channel (reconnecting
when a fault or the guest closed it). Afterwards, for every target path:

- the file is absent (if it was absent), byte-identical to its previous content, or
  byte-identical to the complete new source of a copy to it; more precisely, after each
  copy the target is the new source if the guest answered COMPLETE with 0, unchanged if
  it did not, and either when a COMPLETE was sent and never answered;
- no temp file is left once the connections are gone;
- nothing changed outside the root, and nothing appeared in it but the targets (and the
  directories on their way).

Generation rule: every copy's START reaches the guest as a START (its operation and
message type are never corrupted, and cancel / complete-early / abandon never replace
it). Otherwise a host could steer a copy's WRITEs and COMPLETE into the copy an earlier,
abandoned one left open, and the guest would rightly commit them there: the protocol has
no copy identity, so that is the host lying, not a receiver fault.
"""

from __future__ import annotations

import random
import tempfile
from dataclasses import dataclass
from pathlib import Path

import trio
from fault_helpers import content, sessions_gone, snapshot, temp_files
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from gsi.testing import open_guest
from host_sim.fault_plan import (
    FIELDS,
    Abandon,
    Cancel,
    CompleteEarly,
    Corrupt,
    Disconnect,
    Duplicate,
    Fault,
    Garbage,
    Idle,
    KeepGoing,
    NoRead,
    Overlap,
    Point,
    Reorder,
    Stall,
    Truncate,
    parse_fault,
)
from host_sim.faults import FaultyHost

IDLE = 0.3
"""The receiver's idle timeout: some stalls and idle connections go beyond it."""
TARGETS = ("/t0", "/a/t1", "/a/b/t2", "/esc/t3")
"""``/esc`` is a symlink leading outside the root: every copy there must be refused."""

# Values each field may be corrupted to. Offsets only out of range, file sizes only up:
# an in-range wrong offset is wrong data, and a START announcing fewer bytes plus a fault
# that drops the WRITEs beyond them is a complete copy of what was announced; neither can
# be detected by any receiver (docs/faults.md).
VALUES: dict[str, list[str]] = {
    "pipe-flags": ["0", "2", "max"],
    "msgsize": ["0", "19", "-1", "+1", "+64", "max"],
    "icmsgtype": ["0", "1", "5", "max"],
    "icmsgsize": ["0", "max"],
    "transaction-id": ["+1", "+100"],
    "icflags": ["0", "max"],
    "frame-count": ["0", "1", "3", "101", "max"],
    "msg-count": ["0", "2", "101", "max"],
    "operation": ["0", "1", "2", "3", "7", "max"],
    "offset": ["max", "+{size}"],
    "size": ["0", "-1", "+1", "max"],
    "copy-flags": ["0", "1", "2", "3", "max"],
    "file-size": ["+1", "max"],
}
START_SAFE = {"operation", "icmsgtype"}
"""Fields never corrupted on START (see the generation rule)."""


@dataclass(frozen=True)
class Attempt:
    target: str
    size: int
    seed: int
    force: bool
    create_path: bool
    window: int
    full_body: bool
    faults: tuple[Fault, ...]


def points(writes: int, *, start: bool = True) -> st.SearchStrategy[Point]:
    """Mostly a WRITE that is sent; sometimes a named step or one past the end."""
    named = ["negotiate", "start", "complete"] if start else ["complete"]
    sent = st.integers(0, max(writes - 1, 0)).map(lambda i: Point("write", i))
    return st.one_of(sent, sent, st.sampled_from([Point(k) for k in named]),
                     st.just(Point("write", writes)))


def corruptions(writes: int, size: int) -> st.SearchStrategy[Fault]:
    def build(draw: st.DrawFn) -> Fault:
        at = draw(points(writes))
        fields = [f for f, spec in FIELDS.items() if at.kind in spec.kinds
                  and not (at.kind == "start" and f in START_SAFE)]
        name = draw(st.sampled_from(sorted(fields)))
        value = draw(st.sampled_from(VALUES[name])).format(size=max(size, 1))
        return Corrupt(at=at, field=name, value=value)
    return st.composite(build)()


def faults_for(writes: int, size: int, fragment: int) -> st.SearchStrategy[Fault]:
    write_at = st.integers(0, max(writes - 1, 0)).map(lambda i: Point("write", i))
    return st.one_of(
        st.builds(Disconnect, at=points(writes)),
        st.builds(Disconnect, after_bytes=st.integers(0, 1300 + size + 100 * writes)),
        st.builds(Disconnect, after_messages=st.integers(0, writes + 3)),
        st.builds(Cancel, at=points(writes, start=False)),
        st.builds(CompleteEarly, at=points(writes, start=False)),
        st.builds(Abandon, at=points(writes, start=False)),
        st.builds(Stall, at=points(writes), seconds=st.sampled_from([0.0, 0.02, IDLE * 1.5])),
        st.builds(Duplicate, at=write_at),
        st.builds(Reorder, at=write_at),
        st.builds(Overlap, at=write_at, nbytes=st.integers(1, fragment)),
        corruptions(writes, size),
        st.builds(Garbage, at=points(writes), nbytes=st.integers(1, 3000),
                  seed=st.integers(0, 99)),
        st.builds(Truncate, at=points(writes), keep=st.none() | st.integers(0, 90)),
        st.builds(NoRead, at=points(writes), seconds=st.sampled_from([0.0, 0.03])),
        st.builds(Idle, connections=st.integers(1, 3),
                  seconds=st.sampled_from([0.02, IDLE * 3])),
        st.just(KeepGoing()),
    )


@st.composite
def attempts(draw: st.DrawFn, fragment: int) -> Attempt:
    size = draw(st.sampled_from([0, 1, fragment - 1, fragment, fragment + 1])
                | st.integers(0, 8 * fragment) | st.integers(0, 8 * fragment))
    writes = -(-size // fragment)
    faults = draw(st.lists(faults_for(writes, size, fragment), min_size=1, max_size=3))
    target = draw(st.sampled_from(TARGETS[:3] * 4 + TARGETS[3:]))
    return Attempt(target=target, size=size, seed=draw(st.integers(0, 2**32)),
                   force=draw(st.sampled_from([True, True, True, False])),
                   create_path=draw(st.booleans()), window=draw(st.integers(1, 6)),
                   full_body=draw(st.booleans()), faults=tuple(faults))


scenarios = st.integers(0, 2).map(lambda i: (512, 1024, 6144)[i]).flatmap(
    lambda fragment: st.tuples(
        st.just(fragment),
        st.lists(st.sampled_from([None, b"", b"old\n", b"O" * 3000]),
                 min_size=3, max_size=3),
        st.lists(attempts(fragment), min_size=1, max_size=4),
    ))


def source_bytes(attempt: Attempt) -> bytes:
    return random.Random(attempt.seed).randbytes(attempt.size)


def _attempt(target: str, size: int, *faults: str, window: int = 1, seed: int = 1,
             force: bool = True) -> Attempt:
    return Attempt(target=target, size=size, seed=seed, force=force, create_path=True,
                   window=window, full_body=True,
                   faults=tuple(parse_fault(spec) for spec in faults))


# Sharp cases always run: a hole in the middle of a file of the right size (reorder
# the last two WRITEs, COMPLETE before the last one arrives); a WRITE one byte short;
# an abandoned copy retried on the same channel; a COMPLETE sent but never answered.
SHARP = [
    (1024, [b"old\n", None, None],
     [_attempt("/t0", 4096, "reorder:at=2", "complete-early:at=3")]),
    (1024, [b"old\n", None, None],
     [_attempt("/t0", 3000, "corrupt:at=write:0,field=size,value=-1", window=2)]),
    (512, [None, b"O" * 3000, None],
     [_attempt("/a/t1", 2000, "abandon:at=2"), _attempt("/a/t1", 2000, seed=2),
      _attempt("/t0", 100, "cancel:at=complete")]),
    (512, [b"", None, b"old\n"],
     [_attempt("/a/b/t2", 1500, "disconnect:bytes=3000"),
      _attempt("/a/b/t2", 1500, "duplicate:at=1", "overlap:at=0,bytes=7", seed=3)]),
]


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(scenarios)
@example(SHARP[0])
@example(SHARP[1])
@example(SHARP[2])
@example(SHARP[3])
async def test_invariant_after_any_faults(
        scenario: tuple[int, list[bytes | None], list[Attempt]]) -> None:
    fragment, initial, plan = scenario
    with tempfile.TemporaryDirectory(prefix="gsi-invariant-") as tmp:
        top = Path(tmp)
        root = top / "root"
        (root / "a" / "b").mkdir(parents=True)
        (top / "outside").mkdir()
        (top / "outside" / "t3").write_bytes(b"outside: never touched\n")
        (root / "esc").symlink_to(top / "outside")
        (root / "unrelated").write_bytes(b"not a target\n")
        for path, old in zip(TARGETS, initial, strict=False):
            if old is not None:
                root.joinpath(path.lstrip("/")).write_bytes(old)
        before_outside = {k: v for k, v in snapshot(top).items() if not k.startswith("root")}
        before_root = snapshot(root)
        # What each target may hold: its content now, plus new sources as copies go.
        expected: dict[str, set[bytes | None]] = {
            path: {content(root / path.lstrip("/"))} for path in TARGETS}
        expected["/esc/t3"] = {None}  # seen from the root: nothing may appear there

        async with open_guest(root, idle_timeout=IDLE, max_fragment=fragment) as guest:
            host = FaultyHost(guest.url, fragment_size=fragment, answer_timeout=5)
            for attempt in plan:
                data = source_bytes(attempt)
                directory, _, name = attempt.target.rpartition("/")
                host.window = attempt.window
                host.full_write_body = attempt.full_body
                with trio.fail_after(30):
                    report = await host.copy(data, directory or "/", name=name,
                                             force=attempt.force,
                                             create_full_path=attempt.create_path,
                                             plan=attempt.faults)
                    if not host.connected:
                        # Closed: let the receiver finish that session before the next
                        # copy, so that a late COMPLETE cannot race with it.
                        await sessions_gone(guest)
                print("REPORT", len(data), attempt.window, report)
                if report.committed is True:
                    expected[attempt.target] = {data}
                elif report.committed is None:
                    expected[attempt.target].add(data)
            await host.aclose()
            await sessions_gone(guest)

            for path in TARGETS:
                got = content(root / path.lstrip("/")) if path != "/esc/t3" else None
                assert got in expected[path], (path, plan)
            assert temp_files(root) == [], plan
            after_root = snapshot(root)
            targets = {p.lstrip("/") for p in TARGETS}
            for rel, entry in after_root.items():
                if rel in targets:
                    continue
                if rel in before_root:
                    assert entry == before_root[rel], (rel, plan)
                else:  # only directories on a target's way may appear
                    assert entry[0] == "dir" and any(t.startswith(rel + "/") for t in targets), (
                        rel, plan)
            after_outside = {k: v for k, v in snapshot(top).items() if not k.startswith("root")}
            assert after_outside == before_outside, plan
