"""One connection's session: bytes -> GuestConnection -> FileSink -> answers.

The protocol decisions are the core's (:mod:`gsi.protocol`); the filesystem is the
sink's (:mod:`gsi.sink`). This module only moves events between them, batches the
answers to one received chunk into one send, enforces the idle timeout and logs
every copy once when it ends.

The data path: on a socket stream the bytes are received straight into the core's
reused buffer (non-blocking ``recv_into``; when nothing is there, one more try after a
turn of trio's scheduler, which often finds the host's next request without the cost of
sleeping and waking, then ``wait_readable``; once a burst's first bytes came, a few more
non-blocking receives take the rest of it, so it is handled as one chunk; other streams
go through ``receive_some``).
A run of WRITEs comes out as one :class:`~gsi.events.WriteBatch`. A small one (one WRITE
per chunk: stop-and-wait) is gathered in memory and answered at once; any other is
written in the connection's writer thread, one ``pwritev`` per contiguous run straight
from the receive buffer, and answered once written (see :mod:`gsi.writer`). A full echo
is the requests themselves, patched in place and sent from the same memory. No
filesystem call runs on the event-loop thread: begin, commit and abort go through
``trio.to_thread``, writes through the writer thread.
"""

from __future__ import annotations

import logging
import math
import socket
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
    WriteBatch,
    WriteData,
)
from .logsafe import escape
from .protocol import GuestConnection
from .sink_api import Buffer, Sink, SinkCopy
from .transports.base import raw_socket
from .writer import GATHERED, CopyWriter, WriterThread

log = logging.getLogger("gsi.receiver")

_S_OK: Final = Status.S_OK
"""Bound once: the per-fragment path reads it (an Enum class attribute costs ~90 ns)."""
_FAIRNESS: Final = 16
"""Receives that found data at once in a row before the session yields to other tasks."""
_DRAIN_TRIES: Final = 4
"""Further receives, without waiting, after one that found data (see Session._drain)."""
_DRAIN_FROM: Final = 16 * 1024
"""A receive of at least this many bytes is taken as part of a burst and followed by
further receives (a stop-and-wait request, at most 6224 bytes from a stock host, is not:
a further receive would only fail)."""


@runtime_checkable
class PacketPipe(Protocol):
    """A stream of whole messages (the vmbus ring): every ``receive_some`` returns one
    message for :meth:`GuestConnection.receive_message`, every ``send_all`` takes one
    answer; ``attach`` gives the stream the session's core and the busy-poll time (see
    :mod:`gsi.vmbus.stream`)."""

    @property
    def packet_pipe(self) -> bool: ...

    def attach(self, core: GuestConnection, *, busy_poll: float = 0.0) -> None: ...


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
        receive_size: bytes asked for per receive where the stream is no socket
            (sockets receive into the core's buffer, see GuestConnection).
        peer: a name for the log.
        on_record: called with the record of every copy that ends.
        busy_poll: seconds to keep looking for the next request after answering before
            waiting in the event loop: non-blocking receives on a socket, the ring's write
            index on a packet pipe (0: off).
        gather_bytes: small WRITE batches are gathered up to this many bytes before they
            go to the sink (see :mod:`gsi.writer`).
    """

    def __init__(self, stream: trio.abc.Stream, sink: Sink, connection: GuestConnection,
                 *, idle_timeout: float, message_timeout: float = math.inf,
                 receive_size: int = 256 * 1024,
                 peer: str = "host",
                 on_record: Callable[[CopyRecord], None] | None = None,
                 busy_poll: float = 0.0, gather_bytes: int = 1 << 20) -> None:
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
        self.busy_poll = busy_poll
        self.gather_bytes = gather_bytes
        self._writer: CopyWriter | None = None
        self._thread = WriterThread()
        self._sock = raw_socket(stream)
        self._streak = 0
        self.copy: SinkCopy | None = None
        self._feed: Callable[[bytes | bytearray | memoryview], None] = connection.receive_data
        if isinstance(stream, PacketPipe) and stream.packet_pipe:  # one receive, one message
            stream.attach(connection, busy_poll=busy_poll)
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
            await self._drop_copy("aborted", Status.E_FAIL, "connection lost")
        finally:
            await self._drop_copy("failed", Status.E_FAIL,
                                  "the session ended with the copy open")
            self._thread.stop()
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
                received = await self._receive()
                self._receiving = False
                self._touch()
                answers, closed = await self._handle_events()
                if self.conn.buffered:
                    self._bound_message(received)
                else:
                    self._message_since = None
                if answers:
                    sending = self.answered = True
                    await self._send(answers)
                    sending = False
                    self._touch()
                if closed:
                    return
            return
        if self.evicted:
            await self._drop_copy("aborted", Status.E_FAIL, "evicted")
        elif self._message_since is not None and (
                trio.current_time() >= self._message_since + self.message_timeout):
            log.warning("%s: a message not complete %.1f s after its first byte, closing",
                        self.peer, self.message_timeout)
            await self._drop_copy("aborted", Status.E_FAIL, "message timeout")
        elif sending:
            log.warning("%s: host not reading answers for %.1f s, closing", self.peer,
                        self.idle_timeout)
            await self._drop_copy("aborted", Status.E_FAIL, "host not reading answers")
        elif not (self._stopping and self.copy is None):
            log.warning("%s: idle for %.1f s, closing", self.peer, self.idle_timeout)
            await self._drop_copy("aborted", Status.E_FAIL, "idle timeout")

    async def _receive(self) -> int:
        """Receive what is there into the core (waiting for at least one byte); the size."""
        sock = self._sock
        if sock is None:
            data = await self.stream.receive_some(self.receive_size)
            self._feed(data)
            return len(data)
        buf = self.conn.receive_buffer()
        try:
            size = sock.recv_into(buf)
        except BlockingIOError:
            size = self._poll(sock, buf) if self.busy_poll else await self._retry(sock, buf)
            while size < 0:
                await trio.lowlevel.wait_readable(sock)
                try:
                    size = sock.recv_into(buf)
                except BlockingIOError:
                    continue
            self._streak = 0
        else:
            self._streak += 1
        del buf
        self.conn.received(size)
        if size >= _DRAIN_FROM:  # part of a burst (a lone request is smaller)
            size += self._drain(sock)
        if self._streak >= _FAIRNESS:  # data keeps coming: let other tasks run too
            self._streak = 0
            await trio.sleep(0)
        return size

    def _drain(self, sock: socket.socket) -> int:
        """More of what is already there, without waiting: bytes received.

        A host sends a window's WRITEs in one burst, and a receiver that woke at its
        first bytes would otherwise handle it in several small chunks, each paying a
        loop turn, a hand-off to the writer thread and a send."""
        conn = self.conn
        total = 0
        for _ in range(_DRAIN_TRIES):
            buf = conn.receive_spare()
            if not len(buf):
                break
            try:
                size = sock.recv_into(buf)
            except BlockingIOError:
                break
            finally:
                del buf
            conn.received(size)
            if not size:
                break
            total += size
        return total

    @staticmethod
    async def _retry(sock: socket.socket, buf: memoryview) -> int:
        """One more receive after a turn of the scheduler; -1 if nothing came."""
        await trio.lowlevel.cancel_shielded_checkpoint()
        try:
            return sock.recv_into(buf)
        except BlockingIOError:
            return -1

    def _poll(self, sock: socket.socket, buf: memoryview) -> int:
        """Non-blocking receives for up to ``busy_poll`` seconds; -1 if nothing came."""
        deadline = time.perf_counter() + self.busy_poll
        while time.perf_counter() < deadline:
            try:
                return sock.recv_into(buf)
            except BlockingIOError:
                continue
        return -1

    async def _send(self, answers: list[Buffer]) -> None:
        data = answers[0] if len(answers) == 1 else b"".join(answers)
        sock = self._sock
        if sock is None:
            await self.stream.send_all(data)
            return
        view = memoryview(data)
        while view:
            try:
                sent = sock.send(view)
            except BlockingIOError:
                await trio.lowlevel.wait_writable(sock)
                continue
            view = view[sent:]

    async def _handle_events(self) -> tuple[list[Buffer], bool]:
        """Handle every event in what was received; the answers go out as one batch.

        Returns the answers (buffers to send back to back) and whether the connection is
        to be closed (the host closed it, or the stream cannot be framed: the answers to
        the requests before the bad bytes still go out).
        """
        answers: list[Buffer] = []
        out = bytearray()
        conn = self.conn
        closed = False
        while True:
            try:
                event = conn.next_batch_event()
            except FramingError as exc:
                log.warning("%s: framing error, closing: %s", self.peer, escape(str(exc)))
                await self._drop_copy("aborted", exc.status_hint, f"framing error: {exc}")
                closed = True
                break
            if event is NEED_DATA:
                break
            if isinstance(event, WriteBatch):
                if out:
                    answers.append(out)
                    out = bytearray()
                answers.append(await self._write_batch(event))
            elif isinstance(event, WriteData):
                conn.answer_into(out, event, await self._write(event))
            elif isinstance(event, StartCopy):
                conn.answer_into(out, event, await self._start(event))
            elif isinstance(event, CompleteCopy):
                conn.answer_into(out, event, await self._complete())
            elif isinstance(event, CancelCopy):
                await self._drop_copy("cancelled", Status.S_OK, "the host cancelled")
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
                await self._drop_copy("aborted", event.status, event.reason)
            elif isinstance(event, MessageDropped):
                log.warning("%s: dropped a %d-byte message: too short to answer", self.peer,
                            event.size)
            elif isinstance(event, ConnectionClosed):
                if event.truncated:
                    log.warning("%s: closed mid-message (%d bytes lost)", self.peer,
                                event.truncated)
                closed = True
                break
        if out:
            answers.append(out)
        return answers, closed

    async def _start(self, event: StartCopy) -> int:
        self._started = time.perf_counter()
        try:
            # Shielded: a cancellation must not lose the OpenCopy (and its temp file).
            with trio.CancelScope(shield=True), self._unbounded():
                copy = await trio.to_thread.run_sync(
                    self.sink.begin, event.path_name, event.file_name, event.flags,
                    event.file_size)
                self.copy = copy
                self._writer = CopyWriter(copy, self.gather_bytes)
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

    async def _write_batch(self, event: WriteBatch) -> memoryview:
        """Gather the batch or write it in a worker thread; the answers to all its WRITEs
        (a failed run fails its first WRITE, a failed flush of gathered data the first)."""
        writer = self._writer
        if writer is None:  # the core only emits batches for an open copy
            return self.conn.answer_batch(event, failed_at=0, status=Status.E_FAIL)
        if not writer.gather(event):
            with self._unbounded():
                failed, error = await self._thread.run(writer.write_runs, event.runs)
            if error is not None:
                await self._drop_copy("failed", error.status, error.reason)
                first = 0 if failed == GATHERED else event.run_first[failed]
                return self.conn.answer_batch(event, failed_at=first, status=error.status)
        return self.conn.answer_batch(event)

    async def _write(self, event: WriteData) -> int:
        writer = self._writer
        if writer is None:  # the core only emits WriteData for an open copy
            return Status.E_FAIL
        if writer.gather_run(event.offset, (event.data,), len(event.data)):
            return _S_OK
        with self._unbounded():
            _, error = await self._thread.run(
                writer.write_runs, [(event.offset, [event.data])])
        if error is not None:
            await self._drop_copy("failed", error.status, error.reason)
            return error.status
        return _S_OK

    async def _complete(self) -> int:
        copy, writer = self.copy, self._writer
        if copy is None or writer is None:
            return Status.E_FAIL
        try:
            with trio.CancelScope(shield=True), self._unbounded():
                await trio.to_thread.run_sync(writer.commit)
        except SinkError as exc:
            await self._drop_copy("failed", exc.status, exc.reason)
            return exc.status
        self.copy = self._writer = None
        self._thread.stop()
        self._record(copy.target, copy.file_size, copy.file_size, "committed", Status.S_OK, "")
        return Status.S_OK

    async def _drop_copy(self, outcome: str, status: int, reason: str) -> None:
        """Abort the open copy (close, unlink) in a worker thread, shielded: a cancelled
        session still removes its temp file."""
        copy, writer = self.copy, self._writer
        if copy is None:
            return
        received = copy.bytes_written + (writer.gathered if writer is not None else 0)
        self.copy = self._writer = None
        self._thread.stop()
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(copy.abort)
        self._record(copy.target, copy.file_size, received, outcome, status, reason)

    def _record(self, target: str, size: int, received: int, outcome: str, status: int,
                reason: str) -> None:
        record = CopyRecord(peer=self.peer, target=target, size=size, received=received,
                            seconds=time.perf_counter() - self._started, outcome=outcome,
                            status=status, reason=reason)
        if self.on_record is not None:
            self.on_record(record)
        log.log(logging.INFO if outcome == "committed" else logging.WARNING, "%s", record)
