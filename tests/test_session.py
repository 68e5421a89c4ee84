"""``Session`` in process, over in-memory streams, with a fake sink and a virtual clock.

Every test runs in milliseconds of real time: the streams are ``trio.testing`` memory
streams (``lockstep_stream_pair`` where back-pressure matters), the sink is
:class:`gsi.fake_sink.MemorySink` and the clock is ``autojump_clock``, which jumps to the
next deadline as soon as every task waits. Requests are built by the host engine,
:class:`host_sim.protocol.HostConnection`.

trio's autojump clock also jumps while a worker thread runs (the loop only sees tasks
waiting), which would let virtual time pass during every sink call; so these tests run
``trio.to_thread.run_sync`` and the writer thread inline (the ``inline_threads``
fixture). A sink call that is to take time moves the clock itself (``MemorySink(on_call=...)``).
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest
import trio
import trio.testing

from gsi.constants import CopyFlags, Status
from gsi.errors import SinkError
from gsi.fake_sink import MemorySink
from gsi.protocol import GuestConnection
from gsi.server import Receiver, ReceiverConfig
from gsi.session import CopyRecord, Session
from gsi.writer import WriterThread
from host_sim.protocol import Answer, HostConnection

T = 8.0
"""The idle timeout in these tests (virtual seconds)."""
UPPER = T * 17 / 16
"""Session._touch: a connection is dropped after T and before 17/16 of T without progress."""
DATA = random.Random(7).randbytes(3 * 6144 + 100)
FORCE = CopyFlags.OVER_WRITE | CopyFlags.CREATE_PATH

R = TypeVar("R")


@pytest.fixture
def inline_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    """Sink calls run on the loop thread, so the autojump clock does not jump during them."""

    async def run_sync(fn: Callable[..., R], *args: Any, **_: Any) -> R:
        await trio.lowlevel.checkpoint()
        return fn(*args)

    monkeypatch.setattr(trio.to_thread, "run_sync", run_sync)

    async def run_inline(self: WriterThread, fn: Callable[..., R], *args: Any) -> R:
        return await run_sync(fn, *args)

    monkeypatch.setattr(WriterThread, "run", run_inline)


pytestmark = pytest.mark.usefixtures("inline_threads")


@dataclass
class Host:
    """The host end: requests from HostConnection, answers paired by it."""

    stream: trio.abc.Stream
    conn: HostConnection = field(default_factory=HostConnection)

    async def send(self, request: bytes) -> None:
        await self.stream.send_all(request)

    async def answer(self) -> Answer:
        while True:
            answer = self.conn.next_answer()
            if isinstance(answer, Answer):
                return answer
            assert answer is not None, "the guest closed the connection"
            self.conn.receive_data(await self.stream.receive_some(1 << 16))

    async def request(self, request: bytes) -> Answer:
        await self.send(request)
        return await self.answer()

    async def negotiate(self) -> None:
        assert (await self.request(self.conn.negotiate())).ok

    async def start(self, file_size: int = len(DATA), name: str = "f", path: str = "/d",
                    flags: CopyFlags = FORCE) -> Answer:
        return await self.request(self.conn.start_copy(file_name=name, path_name=path,
                                                       flags=flags, file_size=file_size))

    async def write(self, data: bytes = DATA, start: int = 0, end: int | None = None) -> None:
        end = len(data) if end is None else end
        for offset in range(start, end, 6144):
            chunk = data[offset:min(offset + 6144, end)]
            assert (await self.request(self.conn.write(offset, chunk))).ok

    async def until_closed(self) -> None:
        """Read until the guest closes (answers on the way are taken as they come)."""
        while await self.stream.receive_some(1 << 16):
            pass


@dataclass
class Running:
    session: Session
    sink: MemorySink
    host: Host
    records: list[CopyRecord]
    ended: list[float]
    """The virtual time at which Session.run returned."""

    async def closed(self) -> float:
        """Wait until the guest closes the connection; when its session ended."""
        await self.host.until_closed()
        await trio.testing.wait_all_tasks_blocked()
        (ended,) = self.ended
        return ended


@asynccontextmanager
async def running(sink: MemorySink | None = None, *, lockstep: bool = False,
                  idle_timeout: float = T) -> AsyncIterator[Running]:
    sink = MemorySink() if sink is None else sink
    host_end, guest_end = (trio.testing.lockstep_stream_pair() if lockstep
                           else trio.testing.memory_stream_pair())
    records: list[CopyRecord] = []
    ended: list[float] = []
    session = Session(guest_end, sink, GuestConnection(), idle_timeout=idle_timeout,
                      on_record=records.append)

    async def run() -> None:
        await session.run()
        ended.append(trio.current_time())

    with trio.fail_after(1000):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(run)
            yield Running(session, sink, Host(host_end), records, ended)
            await trio.testing.wait_all_tasks_blocked()
            nursery.cancel_scope.cancel()


def outcomes(records: list[CopyRecord]) -> list[tuple[str, str, int, str]]:
    return [(r.outcome, r.target, r.status, r.reason) for r in records]


# -- copies -----------------------------------------------------------------------------

async def test_copy_committed_with_fsync_of_file_then_directory(
        autojump_clock: trio.testing.MockClock) -> None:
    async with running() as r:
        await r.host.negotiate()
        assert (await r.host.start()).ok
        await r.host.write()
        assert (await r.host.request(r.host.conn.complete())).ok
    assert r.sink.files == {"/d/f": DATA}
    assert r.sink.fsyncs == [("file", "/d/f"), ("directory", "/d")]
    assert [(x.outcome, x.target, x.received, x.size) for x in r.records] == [
        ("committed", "/d/f", len(DATA), len(DATA))]
    assert not r.session.copy_open and not r.sink.open_copies


async def test_no_fsync_when_the_sink_has_it_off(autojump_clock: trio.testing.MockClock) -> None:
    async with running(MemorySink(fsync=False)) as r:
        await r.host.negotiate()
        assert (await r.host.start(3)).ok
        await r.host.write(b"abc")
        assert (await r.host.request(r.host.conn.complete())).ok
    assert r.sink.files == {"/d/f": b"abc"} and r.sink.fsyncs == []


async def test_copy_cancelled(autojump_clock: trio.testing.MockClock) -> None:
    async with running() as r:
        await r.host.negotiate()
        assert (await r.host.start()).ok
        await r.host.write(end=6144)
        assert (await r.host.request(r.host.conn.cancel())).ok
        assert not r.session.copy_open
    assert r.sink.files == {} and not r.sink.open_copies
    assert outcomes(r.records) == [("cancelled", "/d/f", 0, "the host cancelled")]
    assert r.records[0].received == 6144


async def test_copy_aborted_when_the_host_closes_mid_copy(
        autojump_clock: trio.testing.MockClock) -> None:
    async with running() as r:
        await r.host.negotiate()
        assert (await r.host.start()).ok
        await r.host.write(end=6144)
        await r.host.stream.aclose()
        await trio.testing.wait_all_tasks_blocked()
        assert r.ended
    assert r.sink.files == {} and not r.sink.open_copies
    assert outcomes(r.records) == [("aborted", "/d/f", Status.E_FAIL,
                                    "connection closed mid-copy")]


async def test_start_failing_in_the_sink(autojump_clock: trio.testing.MockClock) -> None:
    sink = MemorySink(fail={"begin": SinkError(Status.DISK_FULL, "no room here")})
    async with running(sink) as r:
        await r.host.negotiate()
        assert (await r.host.start()).status == Status.DISK_FULL
        assert not r.session.copy_open
        # the refused copy's WRITE is refused by the core: no copy is open
        assert (await r.host.request(r.host.conn.write(0, b"x"))).status == Status.E_FAIL
        del sink.fail["begin"]
        assert (await r.host.start(3)).ok  # the connection still serves
    assert outcomes(r.records)[0] == ("failed", "/d/f", Status.DISK_FULL, "no room here")


async def test_existing_target_without_overwrite(autojump_clock: trio.testing.MockClock) -> None:
    sink = MemorySink()
    sink.directories.add("/d")
    sink.files["/d/f"] = b"old"
    async with running(sink) as r:
        await r.host.negotiate()
        answer = await r.host.start(flags=CopyFlags(0))
        assert answer.status == Status.ALREADY_EXISTS
    assert sink.files == {"/d/f": b"old"}
    assert r.records[0].outcome == "failed" and r.records[0].status == Status.ALREADY_EXISTS


@pytest.mark.parametrize("status", [Status.E_FAIL, Status.DISK_FULL])
async def test_complete_failing_in_the_sink(autojump_clock: trio.testing.MockClock,
                                            status: int) -> None:
    sink = MemorySink(fail={"commit": SinkError(status, "commit refused")})
    async with running(sink) as r:
        await r.host.negotiate()
        assert (await r.host.start()).ok
        await r.host.write()
        assert (await r.host.request(r.host.conn.complete())).status == status
        assert not r.session.copy_open
        # the copy is over: a WRITE now gets 0x80004005 (section 8)
        assert (await r.host.request(r.host.conn.write(0, b"x"))).status == Status.E_FAIL
    assert sink.files == {} and not sink.open_copies and sink.fsyncs == []
    assert outcomes(r.records) == [("failed", "/d/f", status, "commit refused")]


async def test_write_failing_in_the_sink_ends_the_copy(
        autojump_clock: trio.testing.MockClock) -> None:
    """The sink's failure reaches the host at the latest at COMPLETE (a lone WRITE may be
    gathered and answered before it reaches the sink, gsi.writer): the first non-zero
    answer carries the sink's status, every later one 0x80004005, nothing is committed."""
    sink = MemorySink()
    async with running(sink) as r:
        await r.host.negotiate()
        assert (await r.host.start(file_size=2 * 6144)).ok
        sink.fail["write"] = SinkError(Status.DISK_FULL, "disk full")
        statuses = [(await r.host.request(r.host.conn.write(offset, bytes(6144)))).status
                    for offset in (0, 6144)]
        statuses.append((await r.host.request(r.host.conn.complete())).status)
        del sink.fail["write"]
        statuses.append((await r.host.request(r.host.conn.write(0, b"x"))).status)
    failures = [status for status in statuses if status != Status.S_OK]
    assert failures[0] == Status.DISK_FULL
    assert failures[1:] == [Status.E_FAIL] * (len(failures) - 1)
    assert statuses[-1] == Status.E_FAIL
    assert outcomes(r.records) == [("failed", "/d/f", Status.DISK_FULL, "disk full")]
    assert not sink.open_copies
    assert "/d/f" not in sink.files


# -- idle timeout -----------------------------------------------------------------------

@pytest.mark.parametrize("mid_copy", [False, True])
async def test_idle_timeout_bounds(autojump_clock: trio.testing.MockClock,
                                   mid_copy: bool) -> None:
    """A host that talks at least every 0.9 T is never dropped, however long; one that
    falls silent is dropped after T and before 17/16 T (Session._touch)."""
    async with running() as r:
        await r.host.negotiate()
        if mid_copy:
            assert (await r.host.start()).ok
        began = trio.current_time()
        offset = 0
        while trio.current_time() - began < 10 * T:
            await trio.sleep(0.9 * T)
            if mid_copy:
                await r.host.write(start=offset, end=offset + 10)
                offset += 10
            else:
                await r.host.negotiate()
        assert not r.ended
        silent_from = trio.current_time()
        ended = await r.closed()
    assert T <= ended - silent_from <= UPPER
    if mid_copy:
        assert outcomes(r.records) == [("aborted", "/d/f", Status.E_FAIL, "idle timeout")]
        assert not r.sink.open_copies
    else:
        assert r.records == []


async def test_idle_timeout_right_after_connecting(autojump_clock: trio.testing.MockClock,
                                                   ) -> None:
    async with running() as r:
        began = trio.current_time()
        ended = await r.closed()
    assert T <= ended - began <= UPPER


async def test_slow_sink_work_is_not_idleness(autojump_clock: trio.testing.MockClock) -> None:
    """START and COMPLETE that take 10 T (a slow fsync) do not count as an idle host."""
    def slow(operation: str) -> None:
        if operation in ("begin", "commit"):
            autojump_clock.jump(10 * T)

    async with running(MemorySink(on_call=slow)) as r:
        await r.host.negotiate()
        began = trio.current_time()
        assert (await r.host.start(3)).ok
        await r.host.write(b"abc")
        assert (await r.host.request(r.host.conn.complete())).ok
        assert trio.current_time() - began >= 20 * T
        assert not r.ended
    assert r.sink.files == {"/d/f": b"abc"}


async def test_host_that_stops_reading_answers_is_dropped(
        autojump_clock: trio.testing.MockClock) -> None:
    """With a lockstep stream the guest's send blocks until the host reads: a host that
    stops reading is dropped after T and before 17/16 T, its open copy aborted."""
    async with running(lockstep=True) as r:
        await r.host.negotiate()
        assert (await r.host.start()).ok
        await r.host.send(r.host.conn.write(0, DATA[:6144]))  # then no more reading
        stopped = trio.current_time()
        await trio.testing.wait_all_tasks_blocked()
        await trio.sleep(2 * T)
        (ended,) = r.ended
    assert T <= ended - stopped <= UPPER
    assert outcomes(r.records) == [("aborted", "/d/f", Status.E_FAIL,
                                    "host not reading answers")]
    assert not r.sink.open_copies and r.sink.files == {}


# -- graceful stop ----------------------------------------------------------------------

async def test_request_stop_with_no_copy_leaves_at_once(
        autojump_clock: trio.testing.MockClock) -> None:
    async with running() as r:
        await r.host.negotiate()
        asked = trio.current_time()
        r.session.request_stop()
        assert await r.closed() == asked


async def test_request_stop_lets_the_open_copy_finish(
        autojump_clock: trio.testing.MockClock) -> None:
    async with running() as r:
        await r.host.negotiate()
        assert (await r.host.start()).ok
        r.session.request_stop()
        await trio.sleep(T / 2)
        await r.host.write()
        assert not r.ended
        assert (await r.host.request(r.host.conn.complete())).ok
        finished = trio.current_time()
        assert await r.closed() == finished  # the copy is done: the session leaves
    assert r.sink.files == {"/d/f": DATA}


class _OneStreamListener(trio.abc.Listener[trio.abc.Stream]):
    """A listener that hands out one in-memory stream, then waits until closed."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self._stream: trio.abc.Stream | None = stream
        self._closed = trio.Event()

    async def accept(self) -> trio.abc.Stream:
        if self._stream is not None:
            stream, self._stream = self._stream, None
            await trio.lowlevel.checkpoint()
            return stream
        await self._closed.wait()
        raise trio.ClosedResourceError("closed")

    async def aclose(self) -> None:
        self._closed.set()
        await trio.lowlevel.checkpoint()


@pytest.mark.parametrize("finish", [False, True])
async def test_grace_period(autojump_clock: trio.testing.MockClock, root: Path,
                            finish: bool) -> None:
    """Receiver.shutdown gives an open copy the grace period, then drops it (on the real
    FileSink: the temp file goes, the old target stays)."""
    grace = 5.0
    (root / "t.bin").write_bytes(b"old")
    host_end, guest_end = trio.testing.memory_stream_pair()
    receiver = Receiver(ReceiverConfig(root=root, fsync=False, grace_period=grace,
                                       idle_timeout=100 * grace))
    host = Host(host_end)
    with trio.fail_after(1000):
        async with trio.open_nursery() as nursery:
            await nursery.start(receiver.serve, [_OneStreamListener(guest_end)])
            await host.negotiate()
            assert (await host.start(path="/", name="t.bin")).ok
            await host.write(end=6144)
            receiver.shutdown()
            asked = trio.current_time()
            if finish:
                await trio.sleep(grace * 0.9)
                await host.write(start=6144)
                assert (await host.request(host.conn.complete())).ok
            await host.until_closed()
            closed = trio.current_time()
    assert receiver.active_connections == 0
    (record,) = receiver.stats.last_records
    if finish:
        assert closed - asked == pytest.approx(grace * 0.9)
        assert (root / "t.bin").read_bytes() == DATA
        assert (record.outcome, record.received) == ("committed", len(DATA))
    else:
        assert closed - asked == pytest.approx(grace)
        assert (root / "t.bin").read_bytes() == b"old"
        assert (record.outcome, record.target, record.received, record.size) == (
            "failed", "/t.bin", 6144, len(DATA))
        assert record.reason == "the session ended with the copy open"
    assert sorted(p.name for p in root.iterdir()) == ["t.bin"]  # no temp file left
