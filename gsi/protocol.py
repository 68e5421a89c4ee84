"""The sans-IO guest side of the fcopy protocol.

Theory of operation
-------------------
Bytes go in with :meth:`GuestConnection.receive_data` (``b""`` for end of stream), or
whole messages with :meth:`GuestConnection.receive_message` on a packet transport (the
vmbus ring: the packet length frames the message, the pipe header is not read).
:meth:`GuestConnection.next_event` frames the bytes (:mod:`gsi.framing`), validates each
request against PROTOCOL.md sections 5 and 8 and returns one event at a time, or
:data:`NEED_DATA`. Every request event must be answered with
:meth:`GuestConnection.answer` before the next event is asked for: the guest handles
requests strictly in arrival order, and whether a WRITE is valid depends on how the
START before it was answered. The answer is the request echoed byte for byte with
``status`` and ``icflags`` changed (plus the negotiate edits, or a trimmed WRITE echo).

States (every change goes through :func:`gsi.state.next_state`, the one table; the
initial state is NEGOTIATING)::

    NEGOTIATING --NEGOTIATE answered 0, or resume()--> IDLE --START answered 0--> COPYING
    COPYING --COMPLETE or CANCEL answered, WRITE answered non-zero--> IDLE
    COPYING --the core drops the copy itself (CopyAborted: e.g. a START while it is open,
              an invalid WRITE, a COMPLETE before every byte arrived)--> IDLE
    any --end of stream--> CLOSED;  any --framing error--> ERROR

A request's answer moves the state when it is given (the shell's status decides), except
that the core ends an open copy as soon as it *makes* the event that ends it: the
:class:`CopyAborted` notice comes out first, so the copy is gone before the request is
answered.

Requests the core refuses itself come out as :class:`Rejected` (answer them as
they are). Whenever an open copy must be dropped without a commit, a
:class:`CopyAborted` notice comes out first. Nothing here touches a file or socket.

A channel outlives its connections on vmbus (the host negotiates once per channel, a
receiver session may end): :attr:`GuestConnection.accepted_negotiate` is what a later
connection on the same channel resumes from (:meth:`GuestConnection.resume`), and
:func:`failure_answer` answers a request a connection ended without answering.
"""

from __future__ import annotations

from collections import deque
from typing import Final

from . import batch, bodies, codec
from .constants import (
    DATA_FRAGMENT,
    FCOPY_HDR_SIZE,
    GUEST_FCOPY_VERSIONS,
    GUEST_FRAMEWORK_VERSIONS,
    GUEST_ICFLAGS,
    ICFLAGS_OFFSET,
    ICMSG_HDR_END,
    ICMSG_HDR_SIZE,
    LINUX_STATUSES,
    MAX_FILE_OFFSET,
    STATUS_OFFSET,
    WRITE_HEADER_SIZE,
    IcMsgType,
    Operation,
    Status,
    Version,
    max_msgsize_for,
)
from .errors import FramingError, LocalProtocolError
from .events import (
    NEED_DATA,
    CancelCopy,
    CompleteCopy,
    ConnectionClosed,
    CopyAborted,
    Event,
    MessageDropped,
    NeedData,
    Negotiate,
    Rejected,
    RequestEvent,
    StartCopy,
    WriteBatch,
    WriteData,
)
from .framing import Framer
from .ranges import RangeLimitExceeded, ReceivedRanges
from .state import GuestState, Trigger, next_state

__all__ = ["GuestConnection", "GuestState", "failure_answer"]

_WRITE_DATA = codec.WRITE_DATA_OFFSET


# Enum members the per-fragment path reads, bound once: reading a member off its class
# costs about 90 ns in CPython 3.11, a module global about 15.
_COPYING: Final = GuestState.COPYING
_CLOSED: Final = GuestState.CLOSED
_FCOPY: Final = IcMsgType.FCOPY
_WRITE_TO_FILE: Final = Operation.WRITE_TO_FILE
_S_OK: Final = Status.S_OK


class GuestConnection:
    """One connection (one channel) as the guest sees it.

    Args:
        max_fragment: largest WRITE ``size`` accepted (framing maximum follows).
        framework_versions / message_versions: what the guest accepts, in
            preference order (Linux: 3.0 and 1.1 only).
        trim_write_echo: answer WRITEs with their first 52 body bytes only.
        max_file_size: START with a larger ``file_size`` gets 0x80070057.
        max_ranges: bound on disjoint received ranges per copy (memory bound).
        linux_status_codes: fold every failure the Linux daemons never send into
            0x80004005, as they would.
        receive_size: the most bytes one :meth:`receive_buffer` offers (it starts at
            16 KiB and doubles each time a receive fills it).
    """

    def __init__(
        self,
        *,
        max_fragment: int = DATA_FRAGMENT,
        framework_versions: tuple[Version, ...] = GUEST_FRAMEWORK_VERSIONS,
        message_versions: tuple[Version, ...] = GUEST_FCOPY_VERSIONS,
        trim_write_echo: bool = False,
        max_file_size: int = (1 << 64) - 1,
        max_ranges: int = 16384,
        linux_status_codes: bool = False,
        receive_size: int = 1 << 20,
    ) -> None:
        if not framework_versions or not message_versions:
            raise ValueError("the guest must accept at least one version of each kind")
        self.max_fragment = max_fragment
        self.framework_versions = framework_versions
        self.message_versions = message_versions
        self.trim_write_echo = trim_write_echo
        self.max_file_size = max_file_size
        self.max_ranges = max_ranges
        self.linux_status_codes = linux_status_codes
        self._framer = Framer(max_msgsize_for(max_fragment), max_chunk=receive_size)
        self._queue: deque[Event] = deque()
        self._messages: deque[bytes] = deque()
        self._message_error: FramingError | None = None
        # A packet holds its message padded to 8 bytes (PROTOCOL.md section 7).
        self._max_message = (8 + self._framer.max_msgsize + 7) // 8 * 8
        self.accepted_negotiate: bytes | None = None
        """The last NEGOTIATE request answered 0 (or resumed from)."""
        self._awaiting: RequestEvent | WriteBatch | None = None
        self.state = GuestState.NEGOTIATING
        self._file_size = 0
        self._ranges = ReceivedRanges(max_ranges)

    # -- input ---------------------------------------------------------------

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        """Feed received bytes; ``b""`` means the host closed the stream."""
        self._framer.feed(data)

    def receive_message(self, payload: bytes | bytearray | memoryview) -> None:
        """Feed one whole message: a packet's payload on a packet transport (the vmbus
        ring), padding included; ``b""`` means the channel closed.

        The packet's length frames the message: the pipe header's fields are not read, as
        in the Linux daemons (PROTOCOL.md section 7). The answer echoes the whole payload.
        A message above the framing maximum (padding allowed) is a framing error; one too
        short to answer comes out as :class:`MessageDropped`.

        Raises:
            LocalProtocolError: mixed with :meth:`receive_data`, or fed after the end.
        """
        if self._framer.buffered or self._framer.at_eof:
            raise LocalProtocolError("receive_message after receive_data or the end of "
                                     "the stream")
        if not payload:
            self._framer.feed(b"")
        else:
            self._messages.append(bytes(payload))

    def resume(self, negotiate_request: bytes) -> bool:
        """Take over a NEGOTIATE that an earlier connection on this channel accepted
        (:attr:`accepted_negotiate`): on vmbus the host negotiates once per channel open.
        Nothing is answered; returns whether this core accepts it too (else nothing
        changes).

        Raises:
            LocalProtocolError: not a fresh connection.
        """
        if self.state is not GuestState.NEGOTIATING or self._awaiting or self._queue:
            raise LocalProtocolError("resume() is for a fresh connection only")
        if (len(negotiate_request) < ICMSG_HDR_END
                or codec.peek(negotiate_request)[0] != IcMsgType.NEGOTIATE):
            return False
        event = self._negotiate(negotiate_request, codec.peek(negotiate_request)[1])
        if event.status != _S_OK:
            return False
        self._transition(Trigger.RESUMED)
        self.accepted_negotiate = negotiate_request
        return True

    @property
    def buffered(self) -> int:
        """Bytes received and not yet turned into events."""
        return self._framer.buffered + sum(map(len, self._messages))

    @property
    def copy_open(self) -> bool:
        return self.state is GuestState.COPYING

    @property
    def received_bytes(self) -> int:
        """Bytes of the open copy covered by accepted WRITEs."""
        return self._ranges.total

    def next_event(self) -> Event | NeedData:
        """The next event, or NEED_DATA.

        Raises:
            FramingError: the stream is unreadable; drop the connection (abort any
                open copy first: no CopyAborted comes out for this).
            LocalProtocolError: the previous request has not been answered.
        """
        if self._awaiting is not None:
            raise LocalProtocolError("answer the previous request before the next event")
        if self._queue:
            return self._take(self._queue.popleft())
        if self.state is _CLOSED:
            return ConnectionClosed()
        if self._messages or self._message_error is not None:
            self._dispatch_message()
            return self._take(self._queue.popleft())
        try:
            payload = self._framer.next_message()
        except Exception:
            self._transition(Trigger.FRAMING_ERROR)
            raise
        if payload is None:
            if not self._framer.at_eof:
                return NEED_DATA
            truncated = self._framer.buffered
            if self.copy_open:
                self._queue.append(CopyAborted(reason="connection closed mid-copy"))
            self._queue.append(ConnectionClosed(truncated=truncated))
            self._transition(Trigger.END_OF_STREAM)
            return self._queue.popleft()
        self._dispatch(payload)
        return self._take(self._queue.popleft())

    def next_batch_event(self) -> Event | WriteBatch | NeedData:
        """:meth:`next_event`, except that while a copy is open a run of consecutive valid
        WRITEs comes out as one :class:`WriteBatch` (answer it with :meth:`answer_batch`).

        The answers, the events (a batch counting as its WRITEs) and the data are the same
        as :meth:`next_event` gives for the same bytes, however they are split.
        """
        if self._awaiting is None and not self._queue and self.state is _COPYING:
            event = batch.scan_writes(self)
            if event is not None:
                self._awaiting = event
                return event
        return self.next_event()

    def receive_buffer(self) -> memoryview:
        """Room to receive into (a view of the receive buffer); then call
        :meth:`received`. Ends the validity of earlier WriteBatch views."""
        return self._framer.receive_buffer()

    def receive_spare(self) -> memoryview:
        """:meth:`receive_buffer` without moving buffered data (possibly empty)."""
        return self._framer.spare()

    def received(self, size: int) -> None:
        """``size`` bytes arrived in the last :meth:`receive_buffer` (0: end of stream)."""
        self._framer.received(size)

    def answer_batch(self, event: WriteBatch, *, failed_at: int | None = None,
                     status: int = Status.E_FAIL) -> memoryview:
        """The answers to every request of ``event``, back to back.

        Args:
            event: the batch from the latest ``next_batch_event()``.
            failed_at: None when every WRITE was written; else the index of the request
                whose data the sink failed to write: the requests before it are answered
                0, it gets ``status``, the later ones 0x80004005 (WRITE with no open
                copy, PROTOCOL.md section 8), and the copy ends.
            status: the sink's status for ``failed_at``.

        Returns:
            A view of the answers: with a full echo, the requests themselves patched in
            place (status, icflags) in the receive buffer; send it before the next receive.
        """
        if event is not self._awaiting:
            raise LocalProtocolError("answers must follow the events, one for one, in order")
        if failed_at is not None:
            if not 0 <= failed_at < event.count:
                raise LocalProtocolError(f"failed_at {failed_at} outside the batch")
            if not 0 < status <= 0xFFFFFFFF:
                raise LocalProtocolError(f"status {status} is no 32-bit failure HRESULT")
        self._awaiting = None
        if failed_at is not None:  # a failed WRITE ends the copy
            self._transition(Trigger.WRITE_ANSWERED, status)
        return batch.answer_batch(self, event, failed_at, status)

    def _take(self, event: Event) -> Event:
        if not isinstance(event, (CopyAborted, ConnectionClosed, MessageDropped)):
            self._awaiting = event
        return event

    def _dispatch_message(self) -> None:
        """The next whole message (receive_message) into the queue."""
        if self._message_error is None:
            payload = self._messages.popleft()
            if len(payload) < ICMSG_HDR_END:
                self._queue.append(MessageDropped(size=len(payload)))
                return
            if len(payload) <= self._max_message:
                self._dispatch(payload)
                return
            self._messages.clear()
            self._message_error = FramingError(
                f"a {len(payload)}-byte message exceeds the maximum {self._max_message}")
        self._transition(Trigger.FRAMING_ERROR)
        raise self._message_error

    # -- output --------------------------------------------------------------

    def answer(self, event: RequestEvent, status: int | None = None) -> bytes:
        """The answer bytes for the request event just returned.

        Args:
            event: the event from the latest ``next_event()``.
            status: the HRESULT for START, WRITE, COMPLETE and CANCEL; must be
                omitted (or equal) for Negotiate and Rejected, which carry their own.
        """
        out = bytearray()
        self.answer_into(out, event, status)
        return bytes(out)

    def answer_into(self, out: bytearray, event: RequestEvent, status: int | None = None,
                    ) -> None:
        """:meth:`answer`, appended to ``out`` (the request is copied once, straight into
        it: how a server batches the answers to one received chunk into one send)."""
        if event is not self._awaiting:
            raise LocalProtocolError("answers must follow the events, one for one, in order")
        if isinstance(event, (Negotiate, Rejected)):
            if status is not None and status != event.status:
                raise LocalProtocolError(f"{type(event).__name__} carries its own status")
            status = event.status
        elif status is None:
            raise LocalProtocolError(f"{type(event).__name__} needs a status to answer with")
        if not 0 <= status <= 0xFFFFFFFF:
            raise LocalProtocolError(f"status {status} is not a 32-bit HRESULT")
        self._awaiting = None
        if isinstance(event, WriteData):  # first: one per fragment
            if status != _S_OK:  # (a WRITE answered 0 leaves COPYING as it is)
                self._transition(Trigger.WRITE_ANSWERED, status)
        elif not isinstance(event, Rejected):
            self._answered(event, status)
        if self.linux_status_codes and status not in LINUX_STATUSES:
            status = Status.E_FAIL
        start = len(out)
        if self.trim_write_echo and isinstance(event, WriteData):
            out += event.request[:_WRITE_DATA]
            codec.U32.pack_into(out, start + codec.MSGSIZE_OFFSET,
                                ICMSG_HDR_SIZE + WRITE_HEADER_SIZE)
            codec.U16.pack_into(out, start + codec.ICMSGSIZE_OFFSET, WRITE_HEADER_SIZE)
        else:
            out += event.request
        codec.U32.pack_into(out, start + STATUS_OFFSET, status)
        out[start + ICFLAGS_OFFSET] = GUEST_ICFLAGS
        if isinstance(event, Negotiate):
            bodies.edit_negotiate_answer(out, start, event)

    def _transition(self, trigger: Trigger, status: int = 0) -> None:
        """The only place the state changes (see :func:`gsi.state.next_state`)."""
        self.state = next_state(self.state, trigger, status)

    def _answered(self, event: RequestEvent, status: int) -> None:
        if isinstance(event, Negotiate):
            self._transition(Trigger.NEGOTIATE_ANSWERED, status)
            if status == _S_OK:
                self.accepted_negotiate = event.request
        elif isinstance(event, StartCopy):
            self._transition(Trigger.START_ANSWERED, status)
            if status == _S_OK:
                self._file_size = event.file_size
                self._ranges = ReceivedRanges(self.max_ranges)
        elif isinstance(event, CompleteCopy):
            self._transition(Trigger.COMPLETE_ANSWERED, status)
        elif isinstance(event, CancelCopy):
            self._transition(Trigger.CANCEL_ANSWERED, status)

    # -- request validation ----------------------------------------------------

    def _dispatch(self, payload: bytes) -> None:
        msgtype, tid = codec.peek(payload)
        if msgtype == _FCOPY:
            self._fcopy(payload, tid)
        elif msgtype == IcMsgType.NEGOTIATE:
            self._queue.append(self._negotiate(payload, tid))
        else:
            self._reject(payload, tid, Status.NOT_SUPPORTED,
                         f"unknown IC message type {msgtype}", msgtype)

    def _reject(self, payload: bytes, tid: int, status: int, reason: str,
                msgtype: int = IcMsgType.FCOPY, operation: int | None = None,
                ends_copy: bool = False) -> None:
        if ends_copy and self.copy_open:
            self._queue.append(CopyAborted(reason=reason, status=status))
            self._transition(Trigger.COPY_ABORTED)
        self._queue.append(Rejected(transaction_id=tid, request=payload, status=status,
                                    reason=reason, icmsgtype=msgtype, operation=operation))

    def _negotiate(self, payload: bytes, tid: int) -> Negotiate:
        return bodies.negotiate(payload, tid, self.framework_versions,
                                self.message_versions)

    def _fcopy(self, payload: bytes, tid: int) -> None:
        if self.state is GuestState.NEGOTIATING:
            self._reject(payload, tid, Status.E_FAIL, "FCOPY before a successful NEGOTIATE")
            return
        if len(payload) < ICMSG_HDR_END + 4:
            self._reject(payload, tid, Status.INVALIDARG,
                         f"fcopy body of {len(payload) - ICMSG_HDR_END} bytes has no operation",
                         ends_copy=True)
            return
        op = codec.operation_of(payload)
        if op == _WRITE_TO_FILE:
            self._write(payload, tid)
        elif len(payload) < ICMSG_HDR_END + FCOPY_HDR_SIZE:
            self._reject(payload, tid, Status.INVALIDARG,
                         f"fcopy header truncated to {len(payload) - ICMSG_HDR_END} bytes",
                         operation=op, ends_copy=True)
        elif op == Operation.START_FILE_COPY:
            self._start(payload, tid)
        elif op == Operation.COMPLETE_FCOPY:
            self._complete(payload, tid)
        elif op == Operation.CANCEL_FCOPY:
            self._queue.append(CancelCopy(transaction_id=tid, request=payload,
                                          copy_open=self.copy_open))
        else:
            self._reject(payload, tid, Status.NOT_SUPPORTED, f"unknown fcopy operation {op}",
                         operation=op)

    def _write(self, payload: bytes, tid: int) -> None:
        op = _WRITE_TO_FILE
        if self.state is not _COPYING:
            self._reject(payload, tid, Status.E_FAIL, "WRITE with no open copy", operation=op)
            return
        if len(payload) < _WRITE_DATA:
            self._reject(payload, tid, Status.INVALIDARG,
                         f"WRITE body of {len(payload) - ICMSG_HDR_END} bytes is shorter than "
                         f"its {WRITE_HEADER_SIZE}-byte header", operation=op, ends_copy=True)
            return
        offset, size = codec.write_fields(payload)
        if size > self.max_fragment:
            reason = f"WRITE size {size} exceeds the maximum fragment {self.max_fragment}"
        elif len(payload) < _WRITE_DATA + size:
            reason = (f"WRITE size {size} but only {len(payload) - _WRITE_DATA} data bytes "
                      "in the message")
        elif offset + size > self._file_size:  # START allows no file_size above the
            reason = (f"WRITE of {size} bytes at offset {offset} goes beyond file_size "
                      f"{self._file_size}")  # largest file offset, so no WRITE goes there
            if offset + size > MAX_FILE_OFFSET:
                reason += f" and the largest file offset {MAX_FILE_OFFSET}"
        else:
            try:
                # Counted now: a failed answer ends the copy, so the ranges no longer matter.
                self._ranges.add(offset, offset + size)
            except RangeLimitExceeded as exc:  # only a hostile write pattern gets here
                self._reject(payload, tid, Status.INVALIDARG, f"WRITE: {exc}", operation=op,
                             ends_copy=True)
                return
            self._queue.append(WriteData._trusted(
                tid, payload, offset, memoryview(payload)[_WRITE_DATA:_WRITE_DATA + size]))
            return
        self._reject(payload, tid, Status.INVALIDARG, reason, operation=op, ends_copy=True)

    def _start(self, payload: bytes, tid: int) -> None:
        if self.copy_open:
            self._queue.append(CopyAborted(reason="a new START arrived while a copy was open"))
            self._transition(Trigger.COPY_ABORTED)
        start = bodies.parse_start(payload, self.max_file_size)
        if isinstance(start, bodies.Refusal):
            self._reject(payload, tid, start.status, start.reason,
                         operation=Operation.START_FILE_COPY)
            return
        self._queue.append(StartCopy(transaction_id=tid, request=payload,
                                     file_name=start.file_name, path_name=start.path_name,
                                     flags=start.flags, file_size=start.file_size))

    def _complete(self, payload: bytes, tid: int) -> None:
        op = Operation.COMPLETE_FCOPY
        if not self.copy_open:
            self._reject(payload, tid, Status.E_FAIL, "COMPLETE with no open copy", operation=op)
        elif not self._ranges.covers(self._file_size):
            self._reject(payload, tid, Status.E_FAIL,
                         f"COMPLETE after {self._ranges.total} of {self._file_size} bytes "
                         f"in {len(self._ranges)} range(s)", operation=op, ends_copy=True)
        else:
            self._queue.append(CompleteCopy(transaction_id=tid, request=payload,
                                            file_size=self._file_size))


def failure_answer(request: bytes) -> bytes | None:
    """The answer to a request its connection ended without answering (a vmbus session
    that ended: the host waits for every answer): the request echoed with 0x80004005 and
    icflags 0x05; None when it is too short to carry a status."""
    if len(request) < ICMSG_HDR_END:
        return None
    out = bytearray(request)
    codec.U32.pack_into(out, STATUS_OFFSET, Status.E_FAIL)
    out[ICFLAGS_OFFSET] = GUEST_ICFLAGS
    return bytes(out)
