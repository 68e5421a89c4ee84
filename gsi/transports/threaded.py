"""Streams over sockets that trio's I/O backend cannot poll, and the chooser.

Theory of operation: trio's Windows backend polls sockets through AFD, which may not work for
every socket provider (AF_HYPERV among the suspects). A blocking socket still works if each
``send``/``recv``/``accept`` runs in a worker thread. Two things make that correct under
trio's cancellation rules:

- A blocking call cannot be interrupted, so a cancelled waiter leaves its call running
  (a ``_PendingCall``). Its result is kept: the next ``receive_some``/``accept`` takes it, the
  next ``send_all`` waits for it first, so no byte is lost or reordered.
- ``aclose`` wakes every waiter at once (they raise ``ClosedResourceError``), shuts the socket
  down to unblock the worker threads, and the socket is closed by whoever finishes last
  (so a thread never reads from a recycled file descriptor).

``choose_stream``/``choose_listener`` use trio's native ``SocketStream``/``SocketListener``
when trio's backend accepts the socket for polling and fall back to the threaded classes
otherwise (or as forced by ``native``).
"""

from __future__ import annotations

import errno
import logging
import operator
import socket
import threading
from collections.abc import Callable
from contextlib import suppress
from types import TracebackType
from typing import TYPE_CHECKING, Any, Generic, Literal, NamedTuple, TypeVar

import trio

if TYPE_CHECKING:
    import outcome

log = logging.getLogger(__name__)

T = TypeVar("T")
StreamKind = Literal["native", "threaded"]
SockAddr = tuple[Any, ...] | str
DEFAULT_RECEIVE_SIZE = 65536

_closed_errnos = {errno.EBADF, errno.ENOTSOCK}
_ignorable_accept_errnos = {
    getattr(errno, name)
    for name in (
        "EPERM",
        "ECONNABORTED",
        "EPROTO",
        "ENETDOWN",
        "ENOPROTOOPT",
        "EHOSTDOWN",
        "ENONET",
        "EHOSTUNREACH",
        "EOPNOTSUPP",
        "ENETUNREACH",
        "ENOSR",
        "ESOCKTNOSUPPORT",
        "EPROTONOSUPPORT",
        "ETIMEDOUT",
        "ECONNRESET",
    )
    if hasattr(errno, name)
}


class _Exclusive:
    """Forbids two tasks in the same direction at once, as trio's own streams do."""

    def __init__(self, what: str) -> None:
        self._what = what
        self._busy = False

    def __enter__(self) -> None:
        if self._busy:
            raise trio.BusyResourceError(f"another task is currently {self._what}")
        self._busy = True

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._busy = False


class _PendingCall(Generic[T]):
    """One blocking call in a worker thread; its result outlives a cancelled waiter."""

    def __init__(
        self,
        fn: Callable[[], T],
        on_thread_exit: Callable[[], None],
        discard: Callable[[T], None] | None,
    ) -> None:
        self._done = trio.Event()
        self._result: outcome.Outcome[T] | None = None
        self._abandoned = False
        self._discard = discard
        token = trio.lowlevel.current_trio_token()

        def deliver(result: outcome.Outcome[T]) -> None:  # runs in the worker thread
            on_thread_exit()
            try:
                token.run_sync_soon(self._finish, result)
            except trio.RunFinishedError:
                self._abandoned = True
                self._finish(result)

        trio.lowlevel.start_thread_soon(fn, deliver)

    def _finish(self, result: outcome.Outcome[T]) -> None:
        self._result = result
        if self._abandoned:
            self._drop()
        else:
            self._done.set()

    def _drop(self) -> None:
        result, self._result = self._result, None
        if result is not None and self._discard is not None:
            with suppress(Exception):
                self._discard(result.unwrap())

    def abandon(self) -> None:
        """Wake the waiter (the owner was closed) and discard a result, now or later."""
        self._abandoned = True
        self._drop()
        self._done.set()

    async def wait(self) -> None:
        await self._done.wait()

    def unwrap(self) -> T:
        assert self._result is not None, "unwrap() before the call finished"
        return self._result.unwrap()


class _ThreadedSocket:
    """A blocking socket used from worker threads; closed once the last thread is done."""

    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(True)
        self.sock = sock
        self.closed = False
        self._lock = threading.Lock()
        self._threads = 0

    def start(
        self,
        fn: Callable[[], T],
        discard: Callable[[T], None] | None = None,
    ) -> _PendingCall[T]:
        with self._lock:
            if self.closed:
                raise trio.ClosedResourceError("this socket was already closed")
            self._threads += 1
        try:
            return _PendingCall(fn, self._thread_exit, discard)
        except BaseException:
            self._thread_exit()
            raise

    def _thread_exit(self) -> None:
        with self._lock:
            self._threads -= 1
            if self.closed and self._threads == 0:
                self.sock.close()

    def close(self) -> None:
        with self._lock:
            if self.closed:
                return
            self.closed = True
            if self._threads == 0:
                self.sock.close()
                return
            # Unblocks recv/send/accept in the worker threads on Linux; the last one closes.
            with suppress(OSError):
                self.sock.shutdown(socket.SHUT_RDWR)


def _stream_error(exc: OSError) -> trio.ClosedResourceError | trio.BrokenResourceError:
    if exc.errno in _closed_errnos:
        return trio.ClosedResourceError("this socket was already closed")
    return trio.BrokenResourceError(f"socket connection broken: {exc}")


class ThreadedSocketStream(trio.abc.HalfCloseableStream):
    """A trio stream over a *blocking* socket, each send/recv run in a worker thread.

    Behaves like ``trio.SocketStream`` (checked with ``trio.testing``) except that
    ``wait_send_all_might_not_block`` cannot poll: it only waits for an earlier, cancelled
    ``send_all`` to finish. A cancelled ``send_all`` still sends all its bytes in the
    background; a cancelled ``receive_some`` keeps what its thread reads for the next call.

    Attributes:
        kind: ``"threaded"``.
        socket: the wrapped standard-library socket (owned by this stream).
    """

    kind: StreamKind = "threaded"

    def __init__(self, sock: socket.socket) -> None:
        if sock.type != socket.SOCK_STREAM:
            raise ValueError("ThreadedSocketStream requires a SOCK_STREAM socket")
        self._owner = _ThreadedSocket(sock)
        self.socket = sock
        self._send_guard = _Exclusive("sending data on this stream")
        self._recv_guard = _Exclusive("receiving data on this stream")
        self._pending_send: _PendingCall[None] | None = None
        self._pending_recv: _PendingCall[bytes] | None = None
        self._leftover = b""
        self._eof_sent = False

    def _check_open(self) -> None:
        if self._owner.closed:
            raise trio.ClosedResourceError("this stream was already closed")

    async def _finish_send(self) -> None:
        """Wait for the in-flight send (maybe of a cancelled call); raise its error."""
        pending = self._pending_send
        if pending is None:
            return
        await pending.wait()
        self._check_open()
        self._pending_send = None
        try:
            pending.unwrap()
        except OSError as exc:
            raise _stream_error(exc) from exc

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        with self._send_guard:
            self._check_open()
            if self._eof_sent:
                raise trio.ClosedResourceError("can't send data after sending EOF")
            payload = bytes(data)  # a copy: the caller may reuse its buffer after a cancel
            if self._pending_send is None:
                await trio.lowlevel.checkpoint_if_cancelled()
            else:
                await self._finish_send()
            if not payload:
                await trio.lowlevel.checkpoint()
                return
            sock = self.socket
            self._pending_send = self._owner.start(lambda: sock.sendall(payload))
            await self._finish_send()

    async def wait_send_all_might_not_block(self) -> None:
        with self._send_guard:
            self._check_open()
            if self._pending_send is None:
                await trio.lowlevel.checkpoint()
            else:
                await self._finish_send()

    async def send_eof(self) -> None:
        with self._send_guard:
            await trio.lowlevel.checkpoint()
            self._check_open()
            await self._finish_send()
            if self._eof_sent:
                return
            self._eof_sent = True
            try:
                self.socket.shutdown(socket.SHUT_WR)
            except OSError as exc:
                raise _stream_error(exc) from exc

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        size = DEFAULT_RECEIVE_SIZE if max_bytes is None else operator.index(max_bytes)
        if size < 1:
            raise ValueError("max_bytes must be >= 1")
        with self._recv_guard:
            self._check_open()
            if self._leftover:
                await trio.lowlevel.checkpoint()
                data, self._leftover = self._leftover[:size], self._leftover[size:]
                return data
            pending = self._pending_recv
            if pending is None:
                await trio.lowlevel.checkpoint_if_cancelled()
                sock = self.socket
                pending = self._pending_recv = self._owner.start(lambda: sock.recv(size))
            await pending.wait()
            self._check_open()
            self._pending_recv = None
            try:
                data = pending.unwrap()
            except OSError as exc:
                raise _stream_error(exc) from exc
            data, self._leftover = data[:size], data[size:]
            return data

    async def aclose(self) -> None:
        self._owner.close()
        for pending in (self._pending_send, self._pending_recv):
            if pending is not None:
                pending.abandon()
        await trio.lowlevel.checkpoint()


def _close_accepted(result: tuple[socket.socket, object]) -> None:
    result[0].close()


class ThreadedListener(trio.abc.Listener[ThreadedSocketStream]):
    """A trio listener over a *blocking* listening socket, ``accept`` in a worker thread.

    A cancelled ``accept`` leaves its thread waiting; the connection it gets goes to the next
    ``accept`` (or is closed if the listener is closed first).

    Attributes:
        socket: the wrapped standard-library listening socket (owned by this listener).
    """

    kind: StreamKind = "threaded"

    def __init__(self, sock: socket.socket) -> None:
        if sock.type != socket.SOCK_STREAM:
            raise ValueError("ThreadedListener requires a SOCK_STREAM socket")
        self._owner = _ThreadedSocket(sock)
        self.socket = sock
        self._guard = _Exclusive("accepting on this listener")
        self._pending: _PendingCall[tuple[socket.socket, object]] | None = None

    async def accept(self) -> ThreadedSocketStream:
        with self._guard:
            while True:
                if self._owner.closed:
                    raise trio.ClosedResourceError("this listener was already closed")
                if self._pending is None:
                    await trio.lowlevel.checkpoint_if_cancelled()
                    self._pending = self._owner.start(self.socket.accept, _close_accepted)
                pending = self._pending
                await pending.wait()
                if self._owner.closed:
                    raise trio.ClosedResourceError("this listener was already closed")
                self._pending = None
                try:
                    conn, _ = pending.unwrap()
                except OSError as exc:
                    if exc.errno in _closed_errnos:
                        raise trio.ClosedResourceError from None
                    if exc.errno not in _ignorable_accept_errnos:
                        raise
                    continue
                return ThreadedSocketStream(conn)

    async def aclose(self) -> None:
        self._owner.close()
        if self._pending is not None:
            self._pending.abandon()
        await trio.lowlevel.checkpoint()


async def trio_can_poll(sock: socket.socket) -> bool:
    """Whether trio's I/O backend accepts this socket for readiness polling.

    Registers a wait for writability in an already-cancelled scope: the backend does its
    registration (epoll_ctl, kqueue, or Windows' AFD base-handle lookup and poll) and fails
    there if it cannot handle the socket; otherwise the wait is cancelled at once. This
    catches a backend that refuses the socket; it cannot prove that readiness events for an
    accepted socket will ever arrive, which is why callers can force ``native``.
    """
    with trio.CancelScope() as scope:
        scope.cancel()
        try:
            await trio.lowlevel.wait_writable(sock)
        except (OSError, RuntimeError) as exc:
            log.debug("trio cannot poll %r: %s", sock, exc)
            return False
    return True


async def _decide(sock: socket.socket, native: bool | None, label: str, what: str) -> bool:
    if native is None:
        use_native = await trio_can_poll(sock)
        why = "trio can poll this socket" if use_native else "trio cannot poll this socket"
    else:
        use_native = native
        why = f"forced by native={native}"
    log.info("%s: using the %s %s (%s)", label, "native" if use_native else "threaded", what, why)
    return use_native


class StreamChoice(NamedTuple):
    """What ``choose_stream`` picked: the stream and ``"native"`` or ``"threaded"``."""

    stream: trio.abc.HalfCloseableStream
    kind: StreamKind


async def choose_stream(
    sock: socket.socket, *, native: bool | None = None, label: str = "socket"
) -> StreamChoice:
    """Wrap a connected stream socket in trio's ``SocketStream`` or a ``ThreadedSocketStream``.

    Args:
        sock: a connected SOCK_STREAM socket; the returned stream owns it.
        native: True/False forces the choice; None asks ``trio_can_poll``.
        label: names the socket in the log line that reports the choice.
    """
    if await _decide(sock, native, label, "stream"):
        return StreamChoice(trio.SocketStream(trio.socket.from_stdlib_socket(sock)), "native")
    return StreamChoice(ThreadedSocketStream(sock), "threaded")


async def choose_listener(
    sock: socket.socket, *, native: bool | None = None, label: str = "socket"
) -> trio.abc.Listener[trio.abc.HalfCloseableStream]:
    """Wrap a listening socket in trio's ``SocketListener`` or a ``ThreadedListener``.

    The listener's ``kind``-equivalent is ``transport_kind(listener)``.
    """
    if await _decide(sock, native, label, "listener"):
        return trio.SocketListener(trio.socket.from_stdlib_socket(sock))
    return ThreadedListener(sock)


async def connect_socket(
    sock: socket.socket, address: SockAddr, *, native: bool | None = None, label: str = "socket"
) -> StreamChoice:
    """Connect ``sock`` to ``address`` and wrap it with ``choose_stream``'s rules.

    The threaded path connects in a worker thread that cannot be cancelled: a cancel waits
    for the connect attempt to end (Hyper-V bounds it with HVSOCKET_CONNECT_TIMEOUT).
    Closes ``sock`` on failure; raises the connect's OSError.
    """
    try:
        if await _decide(sock, native, label, "stream"):
            tsock = trio.socket.from_stdlib_socket(sock)
            await tsock.connect(address)
            return StreamChoice(trio.SocketStream(tsock), "native")
        sock.setblocking(True)
        await trio.to_thread.run_sync(lambda: sock.connect(address))
        return StreamChoice(ThreadedSocketStream(sock), "threaded")
    except BaseException:
        sock.close()
        raise


def transport_kind(obj: object) -> StreamKind:
    """``"threaded"`` for the thread-backed stream/listener, else ``"native"``."""
    return "threaded" if isinstance(obj, ThreadedSocketStream | ThreadedListener) else "native"
