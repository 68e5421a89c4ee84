"""Fault injection: a :class:`FaultPlan` applied to copies, from Python and from
``host-sim copy --fault SPEC``.

Theory of operation
-------------------
A plan is a tuple of faults, each written as a SPEC ``KIND[:KEY=VALUE[,KEY=VALUE...]]``
(``docs/faults.md`` lists every kind with what the receiver is expected to do). Most
faults act at a :class:`Point` of a copy: ``negotiate``, ``start``, ``write:N`` (the N-th
WRITE as sent, from 0; a bare ``N`` means the same) or ``complete``.

:class:`FaultyHost` drives copies over one channel with its own small loop (the clean
loop in :mod:`host_sim.client` stays free of faults); every message comes out of the
channel's :class:`host_sim.HostConnection`, which also pairs every answer
(:mod:`host_sim.fault_channel`):

1. structural faults (reorder, duplicate, overlap) reshape the list of WRITEs first, in
   plan order, so that ``write:N`` in every other fault names the N-th WRITE as sent;
2. at each step, the faults acting *before* it run in plan order (stall, noread, cancel,
   complete-early, abandon, garbage, disconnect); then the message is built, corrupted,
   maybe truncated, and sent (``disconnect:bytes=``/``messages=`` count what was sent);
3. a reader task pairs the guest's answers with the requests by transaction id
   (``HostConnection.next_reply``), relying on the guest answering in order. START and
   COMPLETE wait for their answer; WRITEs keep up to ``window`` requests in flight; a
   failure answer ends the copy like a real host does, unless the plan holds
   ``keep-going``.

The :class:`FaultReport` says which faults ran, every answer, how the copy ended and
whether the guest committed the file: True (an answer to a COMPLETE came back with status
0), False (it cannot have), None (a request that could have committed was sent and never
answered, so either may be true).
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import os
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import trio

from gsi import codec
from gsi.codec import WRITE_DATA_OFFSET
from gsi.constants import DATA_FRAGMENT, ICMSG_HDR_END, CopyFlags, IcMsgType, Operation
from gsi.errors import CopyFailed
from gsi.names import encode_name

from .client import connect_host, surface_errors
from .fault_channel import Channel, CopyRun, Ended, Sent, hold_idle, make_report, read_answers
from .fault_plan import (
    BEFORE_KINDS,
    FIELDS,
    STRUCTURAL_KINDS,
    Abandon,
    Cancel,
    CompleteEarly,
    Corrupt,
    Disconnect,
    Duplicate,
    Fault,
    FaultPlan,
    FaultReport,
    Garbage,
    Idle,
    KeepGoing,
    NoRead,
    Overlap,
    Point,
    Reorder,
    Stall,
    Truncate,
    resolve_value,
)
from .protocol import MAX_WINDOW
from .sender import _Chunk, read_slots

__all__ = ["FaultyHost", "faulty_copy"]

WRITE0 = Point("write", 0)
READ_BLOCK = 1 << 20
"""Bytes of a file source read at a time."""


@dataclass(slots=True)
class _Step:
    point: Point
    offset: int = 0
    length: int = 0


class FaultyHost:
    """Copies with faults over one channel to ``url`` (reconnecting when it died).

    Args:
        url: the guest.
        fragment_size: data bytes per WRITE.
        full_write_body: pad WRITE bodies to full length, as the real host does.
        window: WRITEs in flight (1: stop-and-wait).
        answer_timeout: seconds to wait for an answer (or for the guest to close after
            garbage / a truncated message) before giving up on the copy and the channel.
        native: hyperv:// only: trio's native stream (True), the thread-backed one
            (False), or probe (None), as for :func:`host_sim.client.connect_host`, which
            opens every connection (the channel and ``idle`` ones).
    """

    def __init__(self, url: str, *, fragment_size: int = DATA_FRAGMENT,
                 full_write_body: bool = True, window: int = 1,
                 answer_timeout: float = 30.0, native: bool | None = None) -> None:
        if not 1 <= window <= MAX_WINDOW:
            raise ValueError(f"window must be between 1 and {MAX_WINDOW}, not {window}")
        if fragment_size < 1:
            raise ValueError("fragment_size must be at least 1")
        self.url = url
        self.fragment_size = fragment_size
        self.full_write_body = full_write_body
        self.window = window
        self.answer_timeout = answer_timeout
        self.native = native
        self.copies = 0
        self._chan: Channel | None = None

    @property
    def connected(self) -> bool:
        return self._chan is not None and not self._chan.dead

    async def aclose(self) -> None:
        if self._chan is not None:
            await self._chan.close()

    async def __aenter__(self) -> FaultyHost:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def copy(self, source: bytes | str | os.PathLike[str], dest_dir: str, *,
                   name: str | None = None, create_full_path: bool = False,
                   force: bool = False, plan: FaultPlan | Sequence[Fault] = ()) -> FaultReport:
        """One copy of ``source`` (bytes, or a file path) into ``dest_dir`` with faults.

        ``name`` defaults to the source file's base name (required for bytes). Errors of
        the guest or the connection never raise: they are in the report.

        Raises:
            InvalidNameError: a name does not fit the 260-unit UTF-16 field.
            OSError: the source cannot be read; CopyFailed: it shrank while it was read
                (both close the channel); TransportError: no connection.
        """
        plan = plan if isinstance(plan, FaultPlan) else FaultPlan(tuple(plan))
        index, self.copies = self.copies, self.copies + 1
        faults = plan.for_copy(index)
        if isinstance(source, bytes):
            if name is None:
                raise ValueError("a bytes source needs a name")
        else:
            name = name if name is not None else os.path.basename(os.fspath(source))
        flags = (CopyFlags.CREATE_PATH if create_full_path else CopyFlags.NONE) | (
            CopyFlags.OVER_WRITE if force else CopyFlags.NONE)
        with _Source(source) as src:
            for text in (name, dest_dir):
                encode_name(text)  # refuse a bad name before connecting
            start = {"file_name": name, "path_name": dest_dir, "flags": flags,
                     "file_size": src.size}
            started = time.perf_counter()
            run = CopyRun(faults, keep_going=any(isinstance(f, KeepGoing) for f in faults))
            if self._chan is None or self._chan.dead:
                self._chan = Channel(await connect_host(
                    self.url, fragment_size=self.fragment_size,
                    full_write_body=self.full_write_body, native=self.native,
                    max_in_flight=None))  # noread sends more than 255: ids then repeat
            chan = self._chan
            try:
                with surface_errors():
                    outcome = await self._run(chan, self._steps(chan, src.size, run), start,
                                              src.read, run)
            except (CopyFailed, OSError):
                await chan.close()  # the copy cannot go on; the guest drops it on the close
                raise
        return make_report(chan, run, f"{dest_dir.rstrip('/')}/{name}", src.size, outcome,
                           time.perf_counter() - started)

    async def _run(self, chan: Channel, steps: list[_Step], start: dict[str, Any],
                   read: Callable[[int, int], Awaitable[bytes]], run: CopyRun) -> str:
        """Drive the steps with the answer reader (and any idle connections) alongside;
        how the copy ended."""
        outcome = "incomplete"
        async with trio.open_nursery() as idlers:
            for fault in run.faults:
                if isinstance(fault, Idle):
                    run.apply(fault)
                    for _ in range(fault.connections):
                        idlers.start_soon(hold_idle, self.url, self.native, fault, run)
            for fault in run.faults:
                if isinstance(fault, KeepGoing):
                    run.apply(fault)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(read_answers, chan, run)
                try:
                    await self._drive(chan, steps, start, read, run)
                    outcome = "committed" if run.committed else (
                        "refused" if run.refused else "incomplete")
                except Ended as ended:
                    outcome = "committed" if run.committed else ended.outcome
                finally:
                    nursery.cancel_scope.cancel()
        return outcome

    # -- building the steps ------------------------------------------------------------

    def _steps(self, chan: Channel, size: int, run: CopyRun) -> list[_Step]:
        frag = self.fragment_size
        writes = [_Step(WRITE0, off, min(frag, size - off)) for off in range(0, size, frag)]
        for fault in run.faults:
            if not isinstance(fault, STRUCTURAL_KINDS):
                continue
            n = fault.at.index
            if isinstance(fault, Reorder) and n + 1 < len(writes):
                writes[n], writes[n + 1] = writes[n + 1], writes[n]
            elif isinstance(fault, Duplicate) and n < len(writes):
                writes.insert(n + 1, dataclasses.replace(writes[n]))
            elif isinstance(fault, Overlap) and n < len(writes):
                end = writes[n].offset + writes[n].length
                start = max(0, end - fault.nbytes)
                writes.insert(n + 1, _Step(WRITE0, start, min(frag, size - start)))
            else:
                continue
            run.apply(fault)
        steps = [] if chan.negotiated else [_Step(Point("negotiate"))]
        steps.append(_Step(Point("start")))
        steps += [_Step(Point("write", i), w.offset, w.length) for i, w in enumerate(writes)]
        steps.append(_Step(Point("complete")))
        return steps

    @staticmethod
    def _build(chan: Channel, step: _Step, start: dict[str, Any], data: bytes) -> bytes:
        """The step's request, from the connection (in flight from now on); ``data``:
        a WRITE's."""
        kind = step.point.kind
        if kind == "negotiate":
            return chan.conn.negotiate()
        if kind == "start":
            return chan.conn.start_copy(**start)
        if kind == "complete":
            return chan.conn.complete()
        return chan.conn.write(step.offset, data)

    # -- sending -------------------------------------------------------------------------

    async def _drive(self, chan: Channel, steps: list[_Step], start: dict[str, Any],
                     read: Callable[[int, int], Awaitable[bytes]], run: CopyRun) -> None:
        for step in steps:
            await self._before(chan, step.point, run)
            data = await read(step.offset, step.length) if step.point.kind == "write" else b""
            message = self._build(chan, step, start, data)
            for fault in run.at(step.point, Corrupt):
                assert isinstance(fault, Corrupt)
                spec = FIELDS[fault.field]
                original = int.from_bytes(message[spec.offset:spec.offset + spec.width], "little")
                new = resolve_value(fault.value, original, spec.width)
                message = (message[:spec.offset] + new.to_bytes(spec.width, "little")
                           + message[spec.offset + spec.width:])
                run.apply(fault)
            for fault in run.at(step.point, Truncate):
                assert isinstance(fault, Truncate)
                keep = len(message) // 2 if fault.keep is None else fault.keep
                run.apply(fault)
                chan.conn.withdraw_last()  # never whole: no answer is waited for
                with contextlib.suppress(Ended):
                    await self._send(chan, message[:min(keep, len(message) - 1)], run, None)
                await self._end_and_drain(chan, run)
                raise Ended("host-closed")
            sent = Sent(step.point, step.point.kind, could_commit=_is_complete(message))
            chan.conn.amend_last(tag=sent, transaction_id=message[24]
                                 if len(message) > 24 else -1)
            await self._send(chan, message, run, sent)
            await self._after(chan, step.point, run)
        await self._drain(chan, run)

    async def _before(self, chan: Channel, point: Point, run: CopyRun) -> None:
        """Run the faults acting before the message at ``point``, in plan order."""
        for fault in run.at(point, *BEFORE_KINDS):
            run.apply(fault)
            if isinstance(fault, Stall):
                with trio.move_on_after(fault.seconds):
                    while not chan.guest_closed:  # a guest that closes ends the stall
                        await chan.changed.wait()
                if chan.guest_closed:
                    await chan.close()
                    raise Ended("guest-closed")
            elif isinstance(fault, NoRead):
                run.reading = False
                run.read_scope.cancel()
            elif isinstance(fault, Cancel | CompleteEarly):
                cancel = isinstance(fault, Cancel)
                message = chan.conn.cancel() if cancel else chan.conn.complete()
                sent = Sent(point, "cancel" if cancel else "complete", could_commit=not cancel)
                chan.conn.amend_last(tag=sent)
                await self._send(chan, message, run, sent)
                await self._drain(chan, run)
                raise Ended("cancelled" if cancel else "refused")
            elif isinstance(fault, Abandon):
                await self._drain(chan, run)
                raise Ended("abandoned")
            elif isinstance(fault, Garbage):
                junk = chan.conn.raw(random.Random(fault.seed).randbytes(fault.nbytes),
                                     stamp=False)
                sent = Sent(point, "raw", could_commit=False)
                chan.conn.amend_last(tag=sent)
                # Random bytes are taken never to form a valid COMPLETE (odds ~2**-60).
                with contextlib.suppress(Ended):  # the guest may close while they go out
                    await self._send(chan, junk, run, sent)
                await self._end_and_drain(chan, run)
                raise Ended("host-closed")
            elif isinstance(fault, Disconnect):
                await chan.close()
                raise Ended("host-closed")

    async def _send(self, chan: Channel, message: bytes, run: CopyRun,
                    sent: Sent | None) -> None:
        """Send (part of) a message, honouring ``disconnect:bytes=`` / ``messages=``;
        ``sent``: the request in flight it is (None: not one)."""
        for fault in run.faults:
            if not isinstance(fault, Disconnect):
                continue
            cut = None
            if fault.after_messages is not None and run.messages_sent >= fault.after_messages:
                cut = 0
            elif (fault.after_bytes is not None
                  and run.bytes_sent + len(message) >= fault.after_bytes):
                cut = fault.after_bytes - run.bytes_sent
            if cut is not None:
                run.apply(fault)
                if not cut and sent is not None:
                    chan.conn.withdraw_last()  # not one byte of it went out
                if cut:
                    await self._send_bytes(chan, message[:cut], run)
                if sent is not None and cut == len(message):
                    sent.fully_sent = True
                    run.messages_sent += 1
                await chan.close()
                raise Ended("host-closed")
        await self._send_bytes(chan, message, run)
        if sent is not None:
            sent.fully_sent = True
            run.messages_sent += 1

    async def _send_bytes(self, chan: Channel, data: bytes, run: CopyRun) -> None:
        try:
            await chan.stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            chan.guest_closed = True
            await chan.close()
            raise Ended("guest-closed") from None
        run.bytes_sent += len(data)

    async def _after(self, chan: Channel, point: Point, run: CopyRun) -> None:
        """Wait as the host would after sending the message at ``point``."""
        if not run.reading:
            return
        if point.kind == "write":
            await self._wait(chan, run, lambda: chan.conn.in_flight < self.window)
        else:
            await self._wait(chan, run, lambda: not chan.conn.in_flight)
        if run.refused and not run.keep_going:
            await self._drain(chan, run)
            raise Ended("refused")

    async def _drain(self, chan: Channel, run: CopyRun) -> None:
        """Wait until every request sent is answered (or the guest closed)."""
        for fault in run.faults:
            if isinstance(fault, NoRead) and fault in run.applied and not run.reading:
                await trio.sleep(fault.seconds)
                run.reading = True
                run.resume.set()
        await self._wait(chan, run, lambda: not any(s.fully_sent for s in chan.sent()))

    async def _end_and_drain(self, chan: Channel, run: CopyRun) -> None:
        """End the stream, then wait until the guest has closed it."""
        if chan.dead:
            return
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            await chan.stream.send_eof()
        if not run.reading:
            run.reading = True
            run.resume.set()
        try:
            await self._wait(chan, run, lambda: False)
        except Ended as ended:
            if ended.outcome != "guest-closed":
                raise
        await chan.close()

    async def _wait(self, chan: Channel, run: CopyRun, done: Callable[[], bool]) -> None:
        """Until ``done()`` or the guest closed; Ended("timeout") after answer_timeout."""
        with trio.move_on_after(self.answer_timeout):
            while not done():
                if chan.guest_closed:
                    await chan.close()
                    raise Ended("guest-closed")
                await chan.changed.wait()
            return
        await chan.close()
        raise Ended("timeout")


class _Source:
    """The bytes to copy: given, or read from a file as the clean sender reads it (in a
    worker thread, with ``read_slots``: ``preadv``, or ``seek`` and ``readinto`` where
    there is no ``preadv``, as on Windows), a block of up to READ_BLOCK bytes at a time:
    the WRITEs go mostly in order, so most reads are served from the last block."""

    def __init__(self, source: bytes | str | os.PathLike[str]) -> None:
        self._data: bytes | None = None
        self._file: io.RawIOBase | None = None
        self._block, self._block_at = b"", 0
        if isinstance(source, bytes):
            self._data, self.size = source, len(source)
        else:
            self._file = open(source, "rb", buffering=0)  # noqa: SIM115 (closed in __exit__)
            self.size = os.fstat(self._file.fileno()).st_size

    async def read(self, offset: int, length: int) -> bytes:
        """``length`` bytes from ``offset`` (within the size)."""
        if self._data is not None:
            return self._data[offset:offset + length]
        start = offset - self._block_at
        if start < 0 or start + length > len(self._block):
            size = max(length, min(READ_BLOCK, self.size - offset))
            self._block = await trio.to_thread.run_sync(self._read_file, offset, size)
            self._block_at, start = offset, 0
        return self._block[start:start + length]

    def _read_file(self, offset: int, length: int) -> bytes:
        """Raises CopyFailed if the file shrank, OSError if it cannot be read."""
        assert self._file is not None
        slot = _Chunk(bytearray(WRITE_DATA_OFFSET + length), offset, count=1, last=length)
        self._file.seek(offset)
        read_slots(self._file, slot, len(slot.buf), length, self.size)
        return bytes(slot.buf[WRITE_DATA_OFFSET:])

    def __enter__(self) -> _Source:
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._file is not None:
            self._file.close()


def _is_complete(message: bytes) -> bool:
    return (len(message) >= ICMSG_HDR_END + 4
            and codec.peek(message)[0] == IcMsgType.FCOPY
            and codec.operation_of(message) == Operation.COMPLETE_FCOPY)


async def faulty_copy(url: str, source: bytes | str | os.PathLike[str], dest_dir: str, *,
                      plan: FaultPlan | Sequence[Fault] = (), name: str | None = None,
                      create_full_path: bool = False, force: bool = False,
                      fragment_size: int = DATA_FRAGMENT, full_write_body: bool = True,
                      window: int = 1, answer_timeout: float = 30.0,
                      native: bool | None = None) -> FaultReport:
    """One faulty copy over a fresh connection to ``url``, closed afterwards."""
    async with FaultyHost(url, fragment_size=fragment_size, full_write_body=full_write_body,
                          window=window, answer_timeout=answer_timeout,
                          native=native) as host:
        return await host.copy(source, dest_dir, name=name, plan=plan,
                               create_full_path=create_full_path, force=force)
