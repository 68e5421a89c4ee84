"""One connection's session: bytes -> GuestConnection -> FileSink -> answers.

The protocol decisions are the core's (:mod:`gsi.protocol`); the filesystem is the
sink's (:mod:`gsi.sink`). This module only moves events between them, batches the
answers to one received chunk into one send, enforces the idle timeout and logs
every copy once when it ends.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Final, Protocol, runtime_checkable

import trio

from .constants import Operation, Status, describe_status
from .errors import FramingError, SinkError
from .events import (
    NEED_DATA,
    CancelCopy,
    CompleteCopy,
    ConnectionClosed,
    CopyAborted,
    MessageDropped,
    Negotiate,
    Rejected,
    StartCopy,
    WriteData,
)
from .logsafe import escape
from .protocol import GuestConnection
from .sink_api import Sink, SinkCopy

log = logging.getLogger("gsi.receiver")

_S_OK: Final = Status.S_OK
"""Bound once: the per-fragment path reads it (an Enum class attribute costs ~90 ns)."""


@runtime_checkable
class PacketPipe(Protocol):
    """A stream of whole messages (the vmbus ring): every ``receive_some`` returns one
    message for :meth:`GuestConnection.receive_message`, every ``send_all`` takes one
    answer; ``attach`` gives the stream the session's core (see :mod:`gsi.vmbus.stream`)."""

    @property
    def packet_pipe(self) -> bool: ...

    def attach(self, core: GuestConnection) -> None: ...


@dataclass(frozen=True, slots=True, kw_only=True)
class CopyRecord:
    """How one copy ended, as logged."""

    peer: str
    target: str
    size: int
    received: int
    seconds: float
    outcome: str
    """"committed", "cancelled", "failed" or "aborted"."""
    status: int
    reason: str

    @property
    def mb_per_s(self) -> float:
        return self.received / self.seconds / 1e6 if self.seconds > 0 else 0.0

    def __str__(self) -> str:
        # target and reason carry guest-chosen names: escaped, so one record is one line.
        return (f"copy {self.outcome}: {escape(self.target)} ({self.received}/{self.size}"
                f" bytes, {self.seconds:.3f} s, {self.mb_per_s:.1f} MB/s) from {self.peer}"
                + (f": {describe_status(self.status)}: {escape(self.reason)}"
                   if self.reason else ""))


class Session:
    """Serves one host connection until it closes, errs, idles out or is cancelled.

    Args:
        stream: the connection.
        sink: where files go.
        connection: a fresh GuestConnection configured by the server.
        idle_timeout: seconds without a byte from the host, or with answers the host
            does not take, before the connection is dropped (any open copy aborted).
        message_timeout: seconds a message may take to arrive once its first byte has.
        receive_size: bytes asked for per receive.
        peer: a name for the log.
        on_record: called with the record of every copy that ends.
    """

    def __init__(self, stream: trio.abc.Stream, sink: Sink, connection: GuestConnection,
                 *, idle_timeout: float, message_timeout: float = math.inf,
                 receive_size: int = 256 * 1024,
                 peer: str = "host",
                 on_record: Callable[[CopyRecord], None] | None = None) -> None:
        self.stream = stream
        self.sink = sink
        self.conn = connection
        self.idle_timeout = idle_timeout
        self.message_timeout = message_timeout
        self._message_since: float | None = None  # when the pending message began
        self.last_active = trio.current_time()
        self.heard = False  # has sent a byte: not a bare connect
        self.answered = False  # has been answered: a host that completes requests
        self.evicted = False
        self.receive_size = receive_size
        self.peer = peer
        self.on_record = on_record
        self.copy: SinkCopy | None = None
        self._feed: Callable[[bytes | bytearray | memoryview], None] = connection.receive_data
        if isinstance(stream, PacketPipe) and stream.packet_pipe:  # one receive, one message
            stream.attach(connection)
            self._feed = connection.receive_message
        self._started = 0.0
        self._stopping = False
        self._receiving = True  # not serving yet counts as waiting: stop or evict at once
        # One cancel scope for the whole connection: its deadline is pushed forward as the
        # host makes progress, lazily (see _touch), instead of a fresh deadline scope
        # around every receive and send (about 6 us each in trio: a large part of a
        # stop-and-wait round trip).
        self._scope = trio.CancelScope()
        self._slack = idle_timeout / 16

    @property
    def copy_open(self) -> bool:
        return self.copy is not None

    @property
    def evictable(self) -> bool:
        """Waiting for a request with no open copy: the server may evict it."""
        return self._receiving and self.copy is None and not self.evicted

    def evict(self) -> None:
        """Close now (only while :attr:`evictable`): the server needs the slot."""
        self.evicted = True
        self._scope.cancel()

    def request_stop(self) -> None:
        """Leave as soon as no copy is open (now, if none is): graceful shutdown."""
        self._stopping = True
        if self.copy is None and self._receiving:
            self._scope.cancel()

    async def run(self) -> None:
        """Serve the connection; always leaves no temp file behind and closes the stream."""
        try:
            await self._serve()
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            log.warning("%s: connection lost: %s", self.peer, exc or type(exc).__name__)
            self._drop_copy("aborted", Status.E_FAIL, "connection lost")
        finally:
            self._drop_copy("failed", Status.E_FAIL, "the session ended with the copy open")
            with trio.CancelScope(shield=True):
                await trio.aclose_forcefully(self.stream)

    def _touch(self) -> None:
        """The host made progress: the idle deadline is at least idle_timeout away.

        The deadline moves only when less than idle_timeout is left, and then by an extra
        1/16 of it, so a connection is dropped after idle_timeout to 17/16 of it without
        progress, and the deadline changes at most 16 times per idle_timeout.
        """
        now = self.last_active = trio.current_time()
        self.heard = True
        deadline = now + self.idle_timeout
        if self._scope.deadline < deadline:
            self._scope.deadline = deadline + self._slack

    def _bound_message(self, received: int) -> None:
        """Part of a message is buffered: it must be complete message_timeout after its
        first byte arrived (all of it came in this chunk if no more than this chunk is
        buffered: the message began here)."""
        since = self._message_since
        if since is None or self.conn.buffered <= received:
            since = self._message_since = trio.current_time()
        self._scope.deadline = min(self._scope.deadline, since + self.message_timeout)

    async def _serve(self) -> None:
        # The scope can only fire while waiting to receive (no byte from the host), while
        # sending (a host that stops reading must not hold the connection and its open
        # copy forever), or on request_stop while waiting to receive: START and COMPLETE
        # lift the deadline while their worker thread runs (see _unbounded).
        scope = self._scope
        sending = False
        scope.deadline = trio.current_time() + self.idle_timeout + self._slack
        with scope:
            while not (self._stopping and self.copy is None):
                self._receiving = True
                data = await self.stream.receive_some(self.receive_size)
                self._receiving = False
                self._touch()
                self._feed(data)
                answers, closed = await self._handle_events()
                if self.conn.buffered:
                    self._bound_message(len(data))
                else:
                    self._message_since = None
                if answers:
                    sending = self.answered = True
                    await self.stream.send_all(answers)
                    sending = False
                    self._touch()
                if closed:
                    return
            return
        if self.evicted:
            self._drop_copy("aborted", Status.E_FAIL, "evicted")
        elif self._message_since is not None and (
                trio.current_time() >= self._message_since + self.message_timeout):
            log.warning("%s: a message not complete %.1f s after its first byte, closing",
                        self.peer, self.message_timeout)
            self._drop_copy("aborted", Status.E_FAIL, "message timeout")
        elif sending:
            log.warning("%s: host not reading answers for %.1f s, closing", self.peer,
                        self.idle_timeout)
            self._drop_copy("aborted", Status.E_FAIL, "host not reading answers")
        elif not (self._stopping and self.copy is None):
            log.warning("%s: idle for %.1f s, closing", self.peer, self.idle_timeout)
            self._drop_copy("aborted", Status.E_FAIL, "idle timeout")

    async def _handle_events(self) -> tuple[bytearray, bool]:
        """Handle every event in what was received; the answers go out as one batch.

        Returns the answers and whether the connection is to be closed (the host
        closed it, or the stream cannot be framed: the answers to the requests before
        the bad bytes still go out).
        """
        out = bytearray()
        conn = self.conn
        while True:
            try:
                event = conn.next_event()
            except FramingError as exc:
                log.warning("%s: framing error, closing: %s", self.peer, escape(str(exc)))
                self._drop_copy("aborted", exc.status_hint, f"framing error: {exc}")
                return out, True
            if event is NEED_DATA:
                return out, False
            if isinstance(event, WriteData):
                conn.answer_into(out, event, self._write(event))
            elif isinstance(event, StartCopy):
                conn.answer_into(out, event, await self._start(event))
            elif isinstance(event, CompleteCopy):
                conn.answer_into(out, event, await self._complete())
            elif isinstance(event, CancelCopy):
                self._drop_copy("cancelled", Status.S_OK, "the host cancelled")
                conn.answer_into(out, event, Status.S_OK)
            elif isinstance(event, Negotiate):
                if event.status != Status.S_OK:
                    log.warning("%s: negotiation failed: %s", self.peer, event.reason)
                conn.answer_into(out, event)
            elif isinstance(event, Rejected):
                if event.operation == Operation.START_FILE_COPY:
                    # A copy that ends before it began: logged once, as every copy is.
                    self._started = time.perf_counter()
                    self._record("(refused START)", 0, 0, "failed", event.status,
                                 event.reason)
                else:
                    log.warning("%s: refused request: %s: %s", self.peer,
                                describe_status(event.status), escape(event.reason))
                conn.answer_into(out, event)
            elif isinstance(event, CopyAborted):
                self._drop_copy("aborted", event.status, event.reason)
            elif isinstance(event, MessageDropped):
                log.warning("%s: dropped a %d-byte message: too short to answer", self.peer,
                            event.size)
            elif isinstance(event, ConnectionClosed):
                if event.truncated:
                    log.warning("%s: closed mid-message (%d bytes lost)", self.peer,
                                event.truncated)
                return out, True

    async def _start(self, event: StartCopy) -> int:
        self._started = time.perf_counter()
        try:
            # Shielded: a cancellation must not lose the OpenCopy (and its temp file).
            with trio.CancelScope(shield=True), self._unbounded():
                self.copy = await trio.to_thread.run_sync(
                    self.sink.begin, event.path_name, event.file_name, event.flags,
                    event.file_size)
        except SinkError as exc:
            self._record(event.guest_path, event.file_size, 0, "failed", exc.status, exc.reason)
            return exc.status
        return Status.S_OK

    @contextmanager
    def _unbounded(self) -> Iterator[None]:
        """No idle deadline while the receiver itself works (a slow fsync is no idle host)."""
        self._scope.deadline = math.inf
        try:
            yield
        finally:
            self._scope.deadline = trio.current_time() + self.idle_timeout + self._slack

    def _write(self, event: WriteData) -> int:
        copy = self.copy
        if copy is None:  # the core only emits WriteData for an open copy
            return Status.E_FAIL
        try:
            copy.write(event.offset, event.data)
        except SinkError as exc:
            self._drop_copy("failed", exc.status, exc.reason)
            return exc.status
        return _S_OK

    async def _complete(self) -> int:
        copy = self.copy
        if copy is None:
            return Status.E_FAIL
        try:
            with trio.CancelScope(shield=True), self._unbounded():
                await trio.to_thread.run_sync(copy.commit)
        except SinkError as exc:
            self._drop_copy("failed", exc.status, exc.reason)
            return exc.status
        self.copy = None
        self._record(copy.target, copy.file_size, copy.file_size, "committed", Status.S_OK, "")
        return Status.S_OK

    def _drop_copy(self, outcome: str, status: int, reason: str) -> None:
        copy = self.copy
        if copy is None:
            return
        self.copy = None
        copy.abort()
        self._record(copy.target, copy.file_size, copy.bytes_written, outcome, status, reason)

    def _record(self, target: str, size: int, received: int, outcome: str, status: int,
                reason: str) -> None:
        record = CopyRecord(peer=self.peer, target=target, size=size, received=received,
                            seconds=time.perf_counter() - self._started, outcome=outcome,
                            status=status, reason=reason)
        if self.on_record is not None:
            self.on_record(record)
        log.log(logging.INFO if outcome == "committed" else logging.WARNING, "%s", record)
