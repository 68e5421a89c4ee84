"""Replay the host side of a trace against any receiver and compare the answers.

Theory of operation
-------------------
:func:`plan_replay` re-frames the trace's host->guest bytes into messages (plus any bytes
that are not a whole message: the tail) and its guest->host bytes into the recorded
answers. Pacing follows the recording: host message *i* is sent once the replay has
received as many answers as the receiver had sent before message *i*'s first byte reached
it (``wait_for[i]``). A stop-and-wait host therefore waits for each answer, a pipelining
host's messages go out back to back as recorded, and the receiver sees the same order of
events. What it answers does not depend on timing (the receiver handles requests in
arrival order and never puts a time in an answer), so any difference is a difference in
behaviour. If the host closed its side in the recording, the replay does too and then
reads until the receiver closes, so that an extra answer is seen.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import trio

from gsi import codec
from gsi.constants import ICMSG_HDR_END, STATUS_OFFSET, describe_status
from gsi.errors import FramingError
from gsi.framing import Framer
from gsi.trace import Direction, Trace
from gsi.transports import connect

from .trace_decode import field_map, frame_direction

RECEIVE_SIZE = 256 * 1024


@dataclass(frozen=True, slots=True)
class ReplayPlan:
    """What to send, when, and what the receiver answered in the recording.

    Attributes:
        messages: the host's messages, in order.
        wait_for: answers to have received before sending each message.
        tail: host bytes after the last message that are not a whole message.
        tail_wait: answers to have received before sending the tail.
        host_eof: the host closed its side at the end of the recording.
        answers: the recorded answers.
    """

    messages: list[bytes]
    wait_for: list[int]
    tail: bytes
    tail_wait: int
    host_eof: bool
    answers: list[bytes]


def plan_replay(trace: Trace) -> ReplayPlan:
    """The replay of ``trace``'s host side."""
    host = frame_direction(trace, Direction.HOST_TO_GUEST)
    guest = frame_direction(trace, Direction.GUEST_TO_HOST)
    ends = [answer.last_record for answer in guest.messages]

    def answers_before(record: int) -> int:
        return sum(1 for end in ends if end < record)

    return ReplayPlan(messages=[m.payload for m in host.messages],
                      wait_for=[answers_before(m.record) for m in host.messages],
                      tail=host.tail,
                      tail_wait=answers_before(host.tail_record) if host.tail else 0,
                      host_eof=host.eof, answers=[a.payload for a in guest.messages])


@dataclass(frozen=True, slots=True)
class Difference:
    """One way an answer differs from the recorded one."""

    index: int
    request: str
    field: str
    recorded: str
    got: str

    def __str__(self) -> str:
        return (f"answer #{self.index} (to {self.request}): {self.field}: recorded "
                f"{self.recorded}, got {self.got}")


@dataclass(slots=True)
class ReplayReport:
    """What a replay sent and got, and every difference found."""

    sent: int = 0
    answers: list[bytes] = field(default_factory=list)
    differences: list[Difference] = field(default_factory=list)
    problem: str = ""
    """Why the replay stopped early ("" if it did not)."""

    @property
    def ok(self) -> bool:
        return not self.differences


def request_kind(payload: bytes) -> str:
    """``WRITE_TO_FILE``, ``NEGOTIATE``, ... for a host message (from its fields)."""
    fields = field_map(payload)
    op = fields.get("hv_fcopy_hdr.operation")
    text = op if op is not None else fields.get("icmsg_hdr.icmsgtype", "an unframed message")
    return text.split("(")[-1].rstrip(")") if "(" in text else text


def compare(plan: ReplayPlan, got: list[bytes], *, status_only: bool = False,
            ) -> list[Difference]:
    """Every difference between the recorded answers and ``got``."""
    out = []
    for i in range(max(len(plan.answers), len(got))):
        request = request_kind(plan.messages[i]) if i < len(plan.messages) else "nothing"
        if i >= len(got):
            out.append(Difference(i, request, "answer", f"{len(plan.answers[i])} bytes",
                                  "no answer"))
        elif i >= len(plan.answers):
            out.append(Difference(i, request, "answer", "no answer", f"{len(got[i])} bytes"))
        else:
            out.extend(_differences(i, request, plan.answers[i], got[i], status_only))
    return out


def _status(payload: bytes) -> str:
    if len(payload) < STATUS_OFFSET + 4:
        return f"none ({len(payload)}-byte answer)"
    return describe_status(codec.status_of(payload))


def _differences(i: int, request: str, recorded: bytes, got: bytes,
                 status_only: bool) -> list[Difference]:
    if status_only:
        a, b = _status(recorded), _status(got)
        return [] if a == b else [Difference(i, request, "icmsg_hdr.status", a, b)]
    if recorded == got:
        return []
    before, after = field_map(recorded), field_map(got)
    out = [Difference(i, request, name, before.get(name, "absent"), after.get(name, "absent"))
           for name in dict.fromkeys([*before, *after]) if before.get(name) != after.get(name)]
    if not out:  # same fields as shown (data is shown in part): the first differing byte
        at = next((k for k, (x, y) in enumerate(zip(recorded, got, strict=False)) if x != y),
                  min(len(recorded), len(got)))
        where = "body" if at >= ICMSG_HDR_END else "header"
        out.append(Difference(i, request, f"payload byte {at} ({where})",
                              _byte(recorded, at), _byte(got, at)))
    return out


def _byte(payload: bytes, at: int) -> str:
    return f"{payload[at]:#04x}" if at < len(payload) else f"end ({len(payload)} bytes)"


class _Answers:
    """The receiving half: frames answers as they come, wakes whoever waits for some."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.got: list[bytes] = []
        self.closed = False
        self.problem = ""
        self._framer = Framer(0xFFFFFFFF)
        self._changed = trio.Event()

    async def run(self) -> None:
        while not self.closed:
            try:
                data = await self.stream.receive_some(RECEIVE_SIZE)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                data, self.problem = b"", f"connection lost: {exc}"
            self._framer.feed(data)
            try:
                while (payload := self._framer.next_message()) is not None:
                    self.got.append(payload)
            except FramingError as exc:
                self.problem = f"the receiver's answers cannot be framed: {exc}"
                data = b""
            if not data:
                self.closed = True
            self._changed.set()
            self._changed = trio.Event()

    async def wait(self, count: float, timeout: float) -> bool:
        """Until ``count`` answers arrived (``math.inf``: until the receiver closes);
        False if the receiver closed first or ``timeout`` passed without progress."""
        while len(self.got) < count and not self.closed:
            with trio.move_on_after(timeout) as scope:
                await self._changed.wait()
            if scope.cancelled_caught:
                self.problem = (f"no answer within {timeout} s (waiting for answer "
                                f"#{len(self.got)})")
                return False
        return len(self.got) >= count


async def replay_stream(stream: trio.abc.Stream, plan: ReplayPlan, *,
                        timeout: float = 10.0) -> ReplayReport:
    """Play ``plan`` over a connected stream; the answers got (not compared yet)."""
    report = ReplayReport()
    answers = _Answers(stream)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(answers.run)
        try:
            eof_sent = await _send(stream, plan, answers, report, timeout)
            if eof_sent or answers.closed:
                await answers.wait(math.inf, timeout)
            else:
                await answers.wait(len(plan.answers), timeout)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            report.problem = f"connection lost while sending: {exc}"
        nursery.cancel_scope.cancel()
    report.answers = answers.got
    report.problem = report.problem or answers.problem
    return report


async def _send(stream: trio.abc.Stream, plan: ReplayPlan, answers: _Answers,
                report: ReplayReport, timeout: float) -> bool:
    """Send everything, paced; whether the host's end of stream was sent."""
    for message, wait_for in zip(plan.messages, plan.wait_for, strict=True):
        if not await answers.wait(wait_for, timeout):
            return False
        await stream.send_all(message)
        report.sent += 1
    if plan.tail:
        if not await answers.wait(plan.tail_wait, timeout):
            return False
        await stream.send_all(plan.tail)
    if plan.host_eof and isinstance(stream, trio.abc.HalfCloseableStream):
        if not await answers.wait(len(plan.answers), timeout):
            return False
        await stream.send_eof()
        return True
    return False


async def replay(trace: Trace, url: str, *, status_only: bool = False,
                 timeout: float = 10.0, native: bool | None = None) -> ReplayReport:
    """Replay ``trace``'s host side against the receiver at ``url`` and compare.

    Args:
        status_only: compare only each answer's status, not every byte.
        timeout: seconds to wait for an answer before giving up.
        native: hyperv:// only (see :func:`gsi.transports.connect`).

    Raises:
        gsi.transports.TransportError: nobody listens at ``url``.
    """
    plan = plan_replay(trace)
    stream = await connect(url, native=native)
    try:
        report = await replay_stream(stream, plan, timeout=timeout)
    finally:
        await trio.aclose_forcefully(stream)
    report.differences = compare(plan, report.answers, status_only=status_only)
    return report
