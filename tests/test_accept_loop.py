"""The receiver's accept loop follows trio's ``serve_listeners`` errno policy: back off on
EMFILE, ENFILE, ENOMEM and ENOBUFS, end ``serve`` on any other OSError.

The listener is a real TCP ``SocketListener`` wrapped so that its first ``accept`` calls
fail with a chosen errno; the clock is trio's autojump clock, so backing off costs no
real time.
"""

from __future__ import annotations

import errno
import logging
import math
import os
from pathlib import Path

import pytest
import trio
import trio.testing

from gsi.server import ACCEPT_BACKOFF, ACCEPT_CAPACITY_ERRNOS, Receiver, ReceiverConfig


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
            pytest.RaisesExc(OSError, check=lambda exc: exc.errno == code),
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
            pytest.RaisesExc(OSError, check=lambda exc: exc.errno == errno.EINVAL),
            flatten_subgroups=True):
        await _receiver(tmp_path).serve([listener])
    assert len(listener.failed_at) == 3
    waited = listener.failed_at[2] - listener.failed_at[0]
    assert 2 * ACCEPT_BACKOFF <= waited < 2 * ACCEPT_BACKOFF + 1.0
