"""The receiver's accept loop follows trio's ``serve_listeners`` errno policy: back off on
EMFILE, ENFILE, ENOMEM and ENOBUFS, end ``serve`` on any other OSError (an AcceptError
naming the listener; ``gsi-receiver`` then exits 1 with one line, open copies aborted).

The listener is a real TCP ``SocketListener`` wrapped so that its first ``accept`` calls
fail with a chosen errno; the clock is trio's autojump clock, so backing off costs no
real time. The fatal case also runs for real: a TCP listening socket shut down from under
the receiver (in process, and in a ``gsi-receiver`` process through ``pidfd_getfd``) makes
its next ``accept`` fail with EINVAL.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import logging
import math
import os
import re
import socket
from pathlib import Path

import pytest
import trio
import trio.testing
from e2e_helpers import (
    ReceiverProcess,
    all_temps,
    random_bytes,
    receive_until_eof,
    short_tempdir,
    start_copy,
    temp_files,
    write_range,
)

from gsi.errors import AcceptError
from gsi.server import ACCEPT_BACKOFF, ACCEPT_CAPACITY_ERRNOS, Receiver, ReceiverConfig
from gsi.transports import listener_url
from host_sim import HostClient, open_host


class FailingListener(trio.abc.Listener[trio.abc.Stream]):
    """A real SocketListener whose first accepts raise the given errnos."""

    def __init__(self, inner: trio.SocketListener, errnos: list[int]) -> None:
        self.inner = inner
        self.errnos = list(errnos)
        self.failed_at: list[float] = []
        self.accepted = trio.Event()

    async def accept(self) -> trio.abc.Stream:
        await trio.lowlevel.checkpoint()
        if self.errnos:
            self.failed_at.append(trio.current_time())
            code = self.errnos.pop(0)
            raise OSError(code, os.strerror(code))
        stream = await self.inner.accept()
        self.accepted.set()
        return stream

    async def aclose(self) -> None:
        await self.inner.aclose()


async def _tcp_listener() -> trio.SocketListener:
    (listener,) = await trio.open_tcp_listeners(0, host="127.0.0.1")
    return listener


def _receiver(root: Path) -> Receiver:
    return Receiver(ReceiverConfig(root=root, fsync=False, grace_period=1.0))


async def test_capacity_errors_back_off_then_accept(
    tmp_path: Path, autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture,
) -> None:
    capacity = [errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS, errno.EMFILE]
    assert set(capacity) == ACCEPT_CAPACITY_ERRNOS
    listener = FailingListener(await _tcp_listener(), capacity)
    port = listener.inner.socket.getsockname()[1]
    receiver = _receiver(tmp_path)
    caplog.set_level(logging.ERROR, logger="gsi.receiver")
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            start = trio.current_time()
            # The startup sweep runs in a worker thread: no virtual time may pass meanwhile.
            autojump_clock.autojump_threshold = math.inf
            await nursery.start(receiver.serve, [listener])
            autojump_clock.autojump_threshold = 0
            async with await trio.open_tcp_stream("127.0.0.1", port):
                await listener.accepted.wait()
                await trio.testing.wait_all_tasks_blocked()
                assert receiver.stats.connections == 1
                receiver.shutdown()
    gaps = [b - a for a, b in zip([start, *listener.failed_at], listener.failed_at,
                                  strict=False)]
    assert gaps[1:] == pytest.approx([ACCEPT_BACKOFF] * 4)
    errors = [r.getMessage() for r in caplog.records if r.name == "gsi.receiver"
              and r.levelno == logging.ERROR]
    assert len(errors) == 5
    assert errors[0] == ("accept failed: EMFILE (Too many open files); "
                         f"retrying in {ACCEPT_BACKOFF} seconds")
    assert all(name in text for name, text in zip(
        ["EMFILE", "ENFILE", "ENOMEM", "ENOBUFS", "EMFILE"], errors, strict=True))


@pytest.mark.parametrize("code", [errno.ECONNABORTED, errno.EINVAL, errno.EBADF,
                                  errno.ENOTSOCK, errno.EPERM])
async def test_other_accept_errors_end_serve(
    tmp_path: Path, autojump_clock: trio.testing.MockClock, code: int,
) -> None:
    """Raised at once, without a retry; the listener is closed on the way out."""
    autojump_clock.autojump_threshold = math.inf  # virtual time must not move at all
    listener = FailingListener(await _tcp_listener(), [code])
    receiver = _receiver(tmp_path)
    start = trio.current_time()
    with trio.fail_after(5), pytest.RaisesGroup(
            pytest.RaisesExc(AcceptError, check=lambda exc: exc.errno == code
                             and exc.listener == "FailingListener"
                             and isinstance(exc.__cause__, OSError)),
            flatten_subgroups=True):
        await receiver.serve([listener])
    assert trio.current_time() == start
    assert listener.errnos == []
    assert listener.inner.socket.fileno() == -1


async def test_a_fatal_error_after_backing_off_still_ends_serve(tmp_path: Path) -> None:
    """In real time: the startup sweep's worker thread would let a virtual clock jump."""
    listener = FailingListener(await _tcp_listener(), [errno.EMFILE, errno.EMFILE,
                                                       errno.EINVAL])
    with trio.fail_after(5), pytest.RaisesGroup(
            pytest.RaisesExc(AcceptError, check=lambda exc: exc.errno == errno.EINVAL),
            flatten_subgroups=True):
        await _receiver(tmp_path).serve([listener])
    assert len(listener.failed_at) == 3
    waited = listener.failed_at[2] - listener.failed_at[0]
    assert 2 * ACCEPT_BACKOFF <= waited < 2 * ACCEPT_BACKOFF + 1.0


# -- a real listener whose accept fails ------------------------------------------------

SYS_PIDFD_GETFD = 438  # the same number on every architecture with generic syscalls


async def _open_copy(url: str, stack: contextlib.AsyncExitStack, data: bytes) -> HostClient:
    """A host over ``url`` with a copy of ``/t.bin`` (OVER_WRITE) open, half written."""
    host = await stack.enter_async_context(open_host(url))
    assert (await start_copy(host, "/", "t.bin", len(data), force=True)).ok
    assert all(a.ok for a in await write_range(host, data, 0, len(data) // 2))
    return host


async def test_a_listener_shut_down_under_serve_ends_it_and_aborts_copies(
        tmp_path: Path) -> None:
    (tmp_path / "t.bin").write_bytes(b"old")
    data = random_bytes(100_000, seed=5)
    (listener,) = await trio.open_tcp_listeners(0, host="127.0.0.1")
    url = listener_url(listener)
    receiver = _receiver(tmp_path)
    with trio.fail_after(10), pytest.RaisesGroup(
            pytest.RaisesExc(AcceptError, match=re.escape(
                f"accepting on {url} failed: EINVAL (Invalid argument)")),
            flatten_subgroups=True):
        async with trio.open_nursery() as nursery, contextlib.AsyncExitStack() as stack:
            await nursery.start(receiver.serve, [listener])
            host = await _open_copy(url, stack, data)
            assert all_temps(tmp_path) == 1
            listener.socket.shutdown(socket.SHUT_RDWR)
            assert await receive_until_eof(host.stream) == b""
    assert receiver.stats.failed == 1
    assert (tmp_path / "t.bin").read_bytes() == b"old"
    assert all_temps(tmp_path) == 0


def _shut_down_listener_of(pid: int, port: int) -> None:
    """``shutdown`` the TCP socket listening on ``port`` in process ``pid``, through a
    duplicate of its fd taken with ``pidfd_getfd``; skips where that is not allowed."""
    libc = ctypes.CDLL(None, use_errno=True)
    pidfd = os.pidfd_open(pid)
    try:
        for name in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(FileNotFoundError):
                if not os.readlink(f"/proc/{pid}/fd/{name}").startswith("socket:"):
                    continue
            fd = libc.syscall(SYS_PIDFD_GETFD, pidfd, int(name), 0)
            if fd < 0:
                pytest.skip(f"pidfd_getfd: {os.strerror(ctypes.get_errno())}")
            with socket.socket(fileno=fd) as sock:
                if (sock.family == socket.AF_INET
                        and sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
                        and sock.getsockname()[1] == port):
                    sock.shutdown(socket.SHUT_RDWR)
                    return
    finally:
        os.close(pidfd)
    raise AssertionError(f"process {pid} has no socket listening on port {port}")


async def test_gsi_receiver_exits_1_with_one_line_when_a_listener_fails(
        tmp_path: Path) -> None:
    """Two listeners; the TCP one fails while a copy is open over the Unix one."""
    (tmp_path / "t.bin").write_bytes(b"old")
    data = random_bytes(100_000, seed=6)
    with short_tempdir() as d:
        rx = ReceiverProcess(tmp_path, [f"unix://{d}/rx.sock", "tcp://127.0.0.1:0"],
                             ["--grace-period", "60"])
        try:
            unix_url, tcp_url = rx.urls
            port = int(tcp_url.rsplit(":", 1)[1])
            with trio.fail_after(20):
                async with contextlib.AsyncExitStack() as stack:
                    host = await _open_copy(unix_url, stack, data)
                    _shut_down_listener_of(rx.proc.pid, port)
                    assert await receive_until_eof(host.stream) == b""
                assert await rx.await_exit() == 1
        finally:
            rx.kill()
    lines = [line for line in rx.log.splitlines() if tcp_url in line]
    assert lines == [f"gsi-receiver: accepting on {tcp_url} failed: EINVAL (Invalid argument);"
                     " stopped (open copies aborted)"], rx.log
    assert "Traceback" not in rx.log and "ExceptionGroup" not in rx.log
    assert re.search(r"copy failed: /t\.bin \(50000/100000 bytes", rx.log), rx.log
    assert (tmp_path / "t.bin").read_bytes() == b"old"
    assert temp_files(tmp_path) == []
