"""The answer side of a faulty copy (:mod:`host_sim.faults` drives the sending side).

A :class:`Channel` is one connection with its :class:`~host_sim.protocol.HostConnection`,
which builds every message and pairs every answer: the fault host sends what it builds,
changed or cut short as the plan says, and tells the connection what really went out
(``amend_last``, ``withdraw_last``). :func:`read_answers` feeds it the guest's bytes and
records each answer it pairs (``next_reply``: by transaction id among the requests in
flight, older ones given up as lost, a corrupted id paired with the oldest).
:func:`make_report` turns the state of one copy into its :class:`FaultReport`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import trio

from gsi import codec
from gsi.constants import ICMSG_HDR_END, IcMsgType, Operation, Status
from gsi.errors import FramingError, GsiError

from .client import HostClient, connect_host
from .fault_plan import Fault, Idle, Point
from .fault_report import AnswerRecord, FaultReport, IdleRecord
from .protocol import HostConnection, Reply

RECEIVE_SIZE = 1 << 18


@dataclass(slots=True)
class Sent:
    """What the fault host knows of a request it sent (the tag of its in-flight record)."""

    point: Point | None
    kind: str
    could_commit: bool
    fully_sent: bool = False


class Ended(Exception):
    """The copy ended early; ``outcome`` says how."""

    def __init__(self, outcome: str) -> None:
        super().__init__(outcome)
        self.outcome = outcome


class Channel:
    """One connection (a :class:`~host_sim.client.HostClient`'s): its stream and the host
    protocol engine."""

    def __init__(self, client: HostClient) -> None:
        assert isinstance(client.stream, trio.abc.HalfCloseableStream)  # connect's always are
        self.stream: trio.abc.HalfCloseableStream = client.stream
        self.conn: HostConnection = client.conn
        self.negotiated = False
        self.dead = False
        self.guest_closed = False
        self.changed = trio.Event()

    def sent(self) -> list[Sent]:
        """The requests in flight, oldest first."""
        return [request.tag for request in self.conn.requests_in_flight()]

    def notify(self) -> None:
        self.changed.set()
        self.changed = trio.Event()

    async def close(self) -> None:
        self.dead = True
        await trio.aclose_forcefully(self.stream)
        self.notify()


@dataclass(slots=True)
class CopyRun:
    """The state of one faulty copy."""

    faults: list[Fault]
    keep_going: bool
    answers: list[AnswerRecord] = field(default_factory=list)
    applied: list[Fault] = field(default_factory=list)
    committed: bool = False
    refused: bool = False
    lost: list[Sent] = field(default_factory=list)
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


async def read_answers(chan: Channel, run: CopyRun) -> None:
    """Read and pair answers until the channel dies or the guest closes it."""
    while not chan.dead:
        if not run.reading:
            await run.resume.wait()
        with run.read_scope:
            try:
                data = await chan.stream.receive_some(RECEIVE_SIZE)
            except trio.ClosedResourceError:  # closed by this side
                return
            except (trio.BrokenResourceError, OSError):
                data = b""
            if not data:
                chan.guest_closed = True
                chan.notify()
                return
            chan.conn.receive_data(data)
            try:
                while isinstance(reply := chan.conn.next_reply(), Reply):
                    pair(chan, run, reply)
            except FramingError:
                run.unexpected += 1
                chan.guest_closed = True
                chan.notify()
                return
            chan.notify()
        run.read_scope = trio.CancelScope()


def pair(chan: Channel, run: CopyRun, reply: Reply) -> None:
    """Record one answer as the connection paired it."""
    payload, status = reply.payload, reply.status
    msgtype = codec.peek(payload)[0]
    op = codec.operation_of(payload) if len(payload) >= ICMSG_HDR_END + 4 else None
    if msgtype == IcMsgType.FCOPY and op == Operation.COMPLETE_FCOPY and status == 0:
        run.committed = True
    if not reply.matched:
        run.unexpected += 1
    if reply.request is None:
        return
    run.lost += (request.tag for request in reply.lost)
    sent: Sent = reply.request.tag
    if sent.kind == "negotiate" and status == Status.S_OK:
        chan.negotiated = True
    if status != Status.S_OK and sent.kind != "cancel":
        run.refused = True
    run.answers.append(AnswerRecord(point=sent.point, kind=sent.kind, status=status,
                                    transaction_id=reply.transaction_id, echoed_operation=op))


async def hold_idle(url: str, native: bool | None, fault: Idle, run: CopyRun) -> None:
    """One idle connection: held until the guest closes it or ``fault.seconds`` pass."""
    started = trio.current_time()
    closed = False
    try:
        stream = (await connect_host(url, native=native)).stream
    except GsiError:
        run.idle.append(IdleRecord(closed_by_guest=True, seconds=0.0))
        return
    with trio.move_on_after(fault.seconds):
        try:
            closed = not await stream.receive_some(1)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            closed = True
    await trio.aclose_forcefully(stream)
    run.idle.append(IdleRecord(closed_by_guest=closed, seconds=trio.current_time() - started))


def make_report(chan: Channel, run: CopyRun, target: str, size: int, outcome: str,
                seconds: float) -> FaultReport:
    """The report of a copy; the requests still in flight are given up."""
    in_flight: list[Sent] = [request.tag for request in chan.conn.abandon_in_flight()]
    unanswered = [s for s in [*run.lost, *in_flight] if s.fully_sent]
    committed: bool | None = run.committed
    if not run.committed and any(s.could_commit for s in unanswered):
        committed = None
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
