"""Fault injection: a :class:`FaultPlan` applied to copies, from Python and from
``host-sim copy --fault SPEC``.

Theory of operation
-------------------
A plan is a tuple of faults, each written as a SPEC ``KIND[:KEY=VALUE[,KEY=VALUE...]]``
(``docs/faults.md`` lists every kind with what the receiver is expected to do). Most
faults act at a :class:`Point` of a copy: ``negotiate``, ``start``, ``write:N`` (the N-th
WRITE as sent, from 0; a bare ``N`` means the same) or ``complete``.

:class:`FaultyHost` drives copies over one channel with its own small loop (the clean
loop in :mod:`host_sim.client` stays free of faults), building every message with
:mod:`gsi.codec` exactly as :class:`host_sim.HostConnection` does:

1. structural faults (reorder, duplicate, overlap) reshape the list of WRITEs first, in
   plan order, so that ``write:N`` in every other fault names the N-th WRITE as sent;
2. at each step, the faults acting *before* it run in plan order (stall, noread, cancel,
   complete-early, abandon, garbage, disconnect); then the message is built, corrupted,
   maybe truncated, and sent (``disconnect:bytes=``/``messages=`` count what was sent);
3. a reader task pairs the guest's answers with the requests by transaction id, relying
   on the guest answering in order. START and COMPLETE wait for their answer; WRITEs keep
   up to ``window`` requests in flight; a failure answer ends the copy like a real host
   does, unless the plan holds ``keep-going``.

The :class:`FaultReport` says which faults ran, every answer, how the copy ended and
whether the guest committed the file: True (an answer to a COMPLETE came back with status
0), False (it cannot have), None (a request that could have committed was sent and never
answered, so either may be true).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import random
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import trio

from gsi import codec
from gsi.constants import (
    DATA_FRAGMENT,
    HOST_FCOPY_VERSIONS,
    HOST_FRAMEWORK_VERSIONS,
    ICMSG_HDR_END,
    WRITE_HEADER_SIZE,
    CopyFlags,
    IcMsgType,
    Operation,
    Status,
)
from gsi.errors import FramingError, GsiError
from gsi.framing import Framer
from gsi.names import encode_name
from gsi.transports import connect

from .fault_plan import (
    BEFORE_KINDS,
    FIELDS,
    STRUCTURAL_KINDS,
    Abandon,
    AnswerRecord,
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
    IdleRecord,
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

__all__ = ["FaultyHost", "faulty_copy"]

WRITE0 = Point("write", 0)


@dataclass(slots=True)
class _Sent:
    point: Point | None
    kind: str
    tid: int
    could_commit: bool
    fully_sent: bool = False


@dataclass(slots=True)
class _Step:
    point: Point
    offset: int = 0
    length: int = 0


class _Ended(Exception):
    """The copy ended early; ``outcome`` says how."""

    def __init__(self, outcome: str) -> None:
        super().__init__(outcome)
        self.outcome = outcome


class _Channel:
    """One connection: its stream, the answer framer and the requests in flight."""

    def __init__(self, stream: trio.abc.HalfCloseableStream) -> None:
        self.stream = stream
        self.framer = Framer(1 << 24)
        self.outstanding: deque[_Sent] = deque()
        self.negotiated = False
        self.dead = False
        self.guest_closed = False
        self.tid = 0
        self.changed = trio.Event()

    def next_tid(self) -> int:
        tid, self.tid = self.tid, (self.tid + 1) & 0xFF
        return tid

    def notify(self) -> None:
        self.changed.set()
        self.changed = trio.Event()

    async def close(self) -> None:
        self.dead = True
        await trio.aclose_forcefully(self.stream)
        self.notify()


@dataclass(slots=True)
class _Run:
    """The state of one faulty copy."""

    faults: list[Fault]
    keep_going: bool
    answers: list[AnswerRecord] = field(default_factory=list)
    applied: list[Fault] = field(default_factory=list)
    committed: bool = False
    refused: bool = False
    lost: list[_Sent] = field(default_factory=list)
    unexpected: int = 0
    bytes_sent: int = 0
    messages_sent: int = 0
    reading: bool = True
    resume: trio.Event = field(default_factory=trio.Event)
    read_scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    idle: list[IdleRecord] = field(default_factory=list)

    def apply(self, fault: Fault) -> None:
        if fault not in self.applied:
            self.applied.append(fault)

    def at(self, point: Point, *kinds: type[Fault]) -> list[Fault]:
        return [f for f in self.faults
                if isinstance(f, kinds) and getattr(f, "at", None) == point]


class FaultyHost:
    """Copies with faults over one channel to ``url`` (reconnecting when it died).

    Args:
        url: the guest.
        fragment_size: data bytes per WRITE.
        full_write_body: pad WRITE bodies to full length, as the real host does.
        window: WRITEs in flight (1: stop-and-wait).
        answer_timeout: seconds to wait for an answer (or for the guest to close after
            garbage / a truncated message) before giving up on the copy and the channel.
    """

    def __init__(self, url: str, *, fragment_size: int = DATA_FRAGMENT,
                 full_write_body: bool = True, window: int = 1,
                 answer_timeout: float = 30.0) -> None:
        if not 1 <= window <= MAX_WINDOW:
            raise ValueError(f"window must be between 1 and {MAX_WINDOW}, not {window}")
        if fragment_size < 1:
            raise ValueError("fragment_size must be at least 1")
        self.url = url
        self.fragment_size = fragment_size
        self.full_write_body = full_write_body
        self.window = window
        self.answer_timeout = answer_timeout
        self.copies = 0
        self._chan: _Channel | None = None

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
            OSError: the source cannot be read; TransportError: no connection.
        """
        plan = plan if isinstance(plan, FaultPlan) else FaultPlan(tuple(plan))
        index, self.copies = self.copies, self.copies + 1
        faults = plan.for_copy(index)
        if isinstance(source, bytes):
            if name is None:
                raise ValueError("a bytes source needs a name")
            data: bytes | None = source
            fd: int | None = None
        else:
            name = name if name is not None else os.path.basename(os.fspath(source))
            data, fd = None, os.open(source, os.O_RDONLY | os.O_CLOEXEC)
        try:
            size = len(data) if data is not None else os.fstat(fd or 0).st_size
            flags = (CopyFlags.CREATE_PATH if create_full_path else CopyFlags.NONE) | (
                CopyFlags.OVER_WRITE if force else CopyFlags.NONE)
            start_msg = codec.build_start_body(
                file_name_field=encode_name(name), path_name_field=encode_name(dest_dir),
                copy_flags=flags, file_size=size)

            def read(offset: int, length: int) -> bytes:
                if data is not None:
                    return data[offset:offset + length]
                assert fd is not None
                return os.pread(fd, length, offset)

            started = time.perf_counter()
            run = _Run(faults, keep_going=any(isinstance(f, KeepGoing) for f in faults))
            if self._chan is None or self._chan.dead:
                self._chan = _Channel(await connect(self.url))
            chan = self._chan
            steps = self._steps(chan, size, run)
            outcome = "incomplete"
            async with trio.open_nursery() as idlers:
                for fault in faults:
                    if isinstance(fault, Idle):
                        run.apply(fault)
                        for _ in range(fault.connections):
                            idlers.start_soon(self._idle, fault, run)
                for fault in faults:
                    if isinstance(fault, KeepGoing):
                        run.apply(fault)
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._read_answers, chan, run)
                    try:
                        await self._drive(chan, steps, start_msg, read, run)
                        outcome = "committed" if run.committed else (
                            "refused" if run.refused else "incomplete")
                    except _Ended as ended:
                        outcome = "committed" if run.committed else ended.outcome
                    finally:
                        nursery.cancel_scope.cancel()
        finally:
            if fd is not None:
                os.close(fd)
        return self._report(chan, run, f"{dest_dir.rstrip('/')}/{name}", size, outcome,
                            time.perf_counter() - started)

    # -- building the steps ------------------------------------------------------------

    def _steps(self, chan: _Channel, size: int, run: _Run) -> list[_Step]:
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

    def _build(self, chan: _Channel, step: _Step, start_body: bytes,
               read: Callable[[int, int], bytes]) -> bytes:
        tid = chan.next_tid()
        kind = step.point.kind
        if kind == "negotiate":
            body = codec.build_negotiate_body(HOST_FRAMEWORK_VERSIONS, HOST_FCOPY_VERSIONS)
            return codec.build_message(icmsgtype=IcMsgType.NEGOTIATE, body=body,
                                       transaction_id=tid, icvermsg=(0, 0))
        if kind == "start":
            return codec.build_message(icmsgtype=IcMsgType.FCOPY, body=start_body,
                                       transaction_id=tid)
        if kind == "complete":
            return _fcopy_only(Operation.COMPLETE_FCOPY, tid)
        data = read(step.offset, step.length)
        body_len = WRITE_HEADER_SIZE + (self.fragment_size if self.full_write_body
                                        else len(data))
        prefix = codec.pack_write_prefix(transaction_id=tid, offset=step.offset,
                                         size=len(data), body_len=body_len)
        return prefix + data + bytes(body_len - WRITE_HEADER_SIZE - len(data))

    # -- sending -------------------------------------------------------------------------

    async def _drive(self, chan: _Channel, steps: list[_Step], start_body: bytes,
                     read: Callable[[int, int], bytes], run: _Run) -> None:
        for step in steps:
            await self._before(chan, step.point, run)
            message = self._build(chan, step, start_body, read)
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
                with contextlib.suppress(_Ended):
                    await self._send(chan, message[:min(keep, len(message) - 1)], run, None)
                await self._end_and_drain(chan, run)
                raise _Ended("host-closed")
            sent = _Sent(step.point, step.point.kind, message[24] if len(message) > 24 else -1,
                         could_commit=_is_complete(message))
            await self._send(chan, message, run, sent)
            await self._after(chan, step.point, run)
        await self._drain(chan, run)

    async def _before(self, chan: _Channel, point: Point, run: _Run) -> None:
        """Run the faults acting before the message at ``point``, in plan order."""
        for fault in run.at(point, *BEFORE_KINDS):
            run.apply(fault)
            if isinstance(fault, Stall):
                with trio.move_on_after(fault.seconds):
                    while not chan.guest_closed:  # a guest that closes ends the stall
                        await chan.changed.wait()
                if chan.guest_closed:
                    await chan.close()
                    raise _Ended("guest-closed")
            elif isinstance(fault, NoRead):
                run.reading = False
                run.read_scope.cancel()
            elif isinstance(fault, Cancel | CompleteEarly):
                op = (Operation.CANCEL_FCOPY if isinstance(fault, Cancel)
                      else Operation.COMPLETE_FCOPY)
                message = _fcopy_only(op, chan.next_tid())
                kind = "cancel" if isinstance(fault, Cancel) else "complete"
                await self._send(chan, message, run, _Sent(
                    point, kind, message[24], could_commit=kind == "complete"))
                await self._drain(chan, run)
                raise _Ended("cancelled" if kind == "cancel" else "refused")
            elif isinstance(fault, Abandon):
                await self._drain(chan, run)
                raise _Ended("abandoned")
            elif isinstance(fault, Garbage):
                junk = random.Random(fault.seed).randbytes(fault.nbytes)
                # Random bytes are taken never to form a valid COMPLETE (odds ~2**-60).
                with contextlib.suppress(_Ended):  # the guest may close while they go out
                    await self._send(chan, junk, run,
                                     _Sent(point, "raw", -1, could_commit=False))
                await self._end_and_drain(chan, run)
                raise _Ended("host-closed")
            elif isinstance(fault, Disconnect):
                await chan.close()
                raise _Ended("host-closed")

    async def _send(self, chan: _Channel, message: bytes, run: _Run,
                    sent: _Sent | None) -> None:
        """Send (part of) a message, honouring ``disconnect:bytes=`` / ``messages=``."""
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
                if cut and sent is not None:
                    chan.outstanding.append(sent)
                if cut:
                    await self._send_bytes(chan, message[:cut], run)
                if sent is not None and cut == len(message):
                    sent.fully_sent = True
                    run.messages_sent += 1
                await chan.close()
                raise _Ended("host-closed")
        if sent is not None:
            chan.outstanding.append(sent)
        await self._send_bytes(chan, message, run)
        if sent is not None:
            sent.fully_sent = True
            run.messages_sent += 1

    async def _send_bytes(self, chan: _Channel, data: bytes, run: _Run) -> None:
        try:
            await chan.stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            chan.guest_closed = True
            await chan.close()
            raise _Ended("guest-closed") from None
        run.bytes_sent += len(data)

    async def _after(self, chan: _Channel, point: Point, run: _Run) -> None:
        """Wait as the host would after sending the message at ``point``."""
        if not run.reading:
            return
        if point.kind == "write":
            await self._wait(chan, run, lambda: len(chan.outstanding) < self.window)
        else:
            await self._wait(chan, run, lambda: not chan.outstanding)
        if run.refused and not run.keep_going:
            await self._drain(chan, run)
            raise _Ended("refused")

    async def _drain(self, chan: _Channel, run: _Run) -> None:
        """Wait until every request sent is answered (or the guest closed)."""
        for fault in run.faults:
            if isinstance(fault, NoRead) and fault in run.applied and not run.reading:
                await trio.sleep(fault.seconds)
                run.reading = True
                run.resume.set()
        await self._wait(chan, run, lambda: not any(s.fully_sent for s in chan.outstanding))

    async def _end_and_drain(self, chan: _Channel, run: _Run) -> None:
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
        except _Ended as ended:
            if ended.outcome != "guest-closed":
                raise
        await chan.close()

    async def _wait(self, chan: _Channel, run: _Run, done: Callable[[], bool]) -> None:
        """Until ``done()`` or the guest closed; _Ended("timeout") after answer_timeout."""
        with trio.move_on_after(self.answer_timeout):
            while not done():
                if chan.guest_closed:
                    await chan.close()
                    raise _Ended("guest-closed")
                await chan.changed.wait()
            return
        await chan.close()
        raise _Ended("timeout")

    # -- answers -------------------------------------------------------------------------

    async def _read_answers(self, chan: _Channel, run: _Run) -> None:
        while not chan.dead:
            if not run.reading:
                await run.resume.wait()
            with run.read_scope:
                try:
                    data = await chan.stream.receive_some(1 << 18)
                except trio.ClosedResourceError:  # closed by this side
                    return
                except (trio.BrokenResourceError, OSError):
                    data = b""
                if not data:
                    chan.guest_closed = True
                    chan.notify()
                    return
                chan.framer.feed(data)
                try:
                    while (payload := chan.framer.next_message()) is not None:
                        self._pair(chan, run, payload)
                except FramingError:
                    run.unexpected += 1
                    chan.guest_closed = True
                    chan.notify()
                    return
                chan.notify()
            run.read_scope = trio.CancelScope()

    def _pair(self, chan: _Channel, run: _Run, payload: bytes) -> None:
        if len(payload) < ICMSG_HDR_END:
            run.unexpected += 1
            return
        msgtype, tid = codec.peek(payload)
        status = codec.status_of(payload)
        op = codec.operation_of(payload) if len(payload) >= ICMSG_HDR_END + 4 else None
        if msgtype == IcMsgType.FCOPY and op == Operation.COMPLETE_FCOPY and status == 0:
            run.committed = True
        match = next((i for i, s in enumerate(chan.outstanding) if s.tid == tid), None)
        if match is None:
            if not chan.outstanding:
                run.unexpected += 1
                return
            run.unexpected += 1
            match = 0  # a corrupted transaction id: the guest answers in order
        for _ in range(match):
            run.lost.append(chan.outstanding.popleft())
        sent = chan.outstanding.popleft()
        if sent.kind == "negotiate" and status == Status.S_OK:
            chan.negotiated = True
        if status != Status.S_OK and sent.kind != "cancel":
            run.refused = True
        run.answers.append(AnswerRecord(point=sent.point, kind=sent.kind, status=status,
                                        transaction_id=tid, echoed_operation=op))

    async def _idle(self, fault: Idle, run: _Run) -> None:
        started = trio.current_time()
        closed = False
        try:
            stream = await connect(self.url)
        except GsiError:
            run.idle.append(IdleRecord(closed_by_guest=True, seconds=0.0))
            return
        with trio.move_on_after(fault.seconds):
            try:
                closed = not await stream.receive_some(1)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                closed = True
        await trio.aclose_forcefully(stream)
        run.idle.append(IdleRecord(closed_by_guest=closed,
                                   seconds=trio.current_time() - started))

    def _report(self, chan: _Channel, run: _Run, target: str, size: int, outcome: str,
                seconds: float) -> FaultReport:
        unanswered = [s for s in [*run.lost, *chan.outstanding] if s.fully_sent]
        committed: bool | None = run.committed
        if not run.committed and any(s.could_commit for s in unanswered):
            committed = None
        chan.outstanding.clear()
        if chan.guest_closed:
            chan.dead = True
        applied = [f.spec() for f in run.applied]
        return FaultReport(
            target=target, size=size, outcome=outcome, committed=committed,
            applied=tuple(applied),
            skipped=tuple(f.spec() for f in run.faults if f.spec() not in applied),
            answers=tuple(run.answers), lost=len(unanswered), unexpected=run.unexpected,
            guest_closed=chan.guest_closed, bytes_sent=run.bytes_sent,
            messages_sent=run.messages_sent, seconds=seconds, idle=tuple(run.idle))


def _fcopy_only(op: Operation, tid: int) -> bytes:
    return codec.build_message(icmsgtype=IcMsgType.FCOPY,
                               body=codec.build_fcopy_header(op), transaction_id=tid)


def _is_complete(message: bytes) -> bool:
    return (len(message) >= ICMSG_HDR_END + 4
            and codec.peek(message)[0] == IcMsgType.FCOPY
            and codec.operation_of(message) == Operation.COMPLETE_FCOPY)


async def faulty_copy(url: str, source: bytes | str | os.PathLike[str], dest_dir: str, *,
                      plan: FaultPlan | Sequence[Fault] = (), name: str | None = None,
                      create_full_path: bool = False, force: bool = False,
                      fragment_size: int = DATA_FRAGMENT, full_write_body: bool = True,
                      window: int = 1, answer_timeout: float = 30.0) -> FaultReport:
    """One faulty copy over a fresh connection to ``url``, closed afterwards."""
    async with FaultyHost(url, fragment_size=fragment_size, full_write_body=full_write_body,
                          window=window, answer_timeout=answer_timeout) as host:
        return await host.copy(source, dest_dir, name=name, plan=plan,
                               create_full_path=create_full_path, force=force)
