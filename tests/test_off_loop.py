"""No filesystem call blocks the event loop: a sink stuck in a write (or an abort) on one
connection does not delay another connection's NEGOTIATE answer.

Real TCP sockets, the real Session and FileSink; the sink is wrapped so that one call
blocks (on a ``threading.Event``, up to 2 s) in the thread that runs it. The other
connection's NEGOTIATE round trip is timed while that call is known to be blocked.
"""

from __future__ import annotations

import functools
import os
import socket
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

import pytest
import trio
from e2e_helpers import all_temps

from gsi.cli import build_parser, config_from_args
from gsi.constants import CopyFlags, Status
from gsi.protocol import GuestConnection
from gsi.session import Session
from gsi.sink import FileSink
from gsi.sink_api import Buffer, SinkCopy
from gsi.testing import open_guest
from host_sim import open_host
from host_sim.protocol import Answer, HostConnection

BLOCK_SECONDS = 2.0
BOUND_SECONDS = 0.05


class GatedCopy:
    """A real OpenCopy whose ``writev`` or ``abort`` blocks until the gate opens."""

    def __init__(self, inner: SinkCopy, gated: str, entered: threading.Event,
                 gate: threading.Event) -> None:
        self.inner, self.gated, self.entered, self.gate = inner, gated, entered, gate
        self.target, self.file_size = inner.target, inner.file_size

    @property
    def bytes_written(self) -> int:
        return self.inner.bytes_written

    def _block(self, what: str) -> None:
        if what == self.gated:
            self.entered.set()
            self.gate.wait(BLOCK_SECONDS)

    def write(self, offset: int, data: Buffer) -> None:
        self._block("write")
        self.inner.write(offset, data)

    def writev(self, offset: int, buffers: Sequence[Buffer]) -> None:
        self._block("write")
        self.inner.writev(offset, buffers)

    def commit(self) -> None:
        self.inner.commit()

    def abort(self) -> None:
        self._block("abort")
        self.inner.abort()


class GatedSink:
    def __init__(self, root: Path, gated: str) -> None:
        self.inner = FileSink(root, fsync=False)
        self.gated = gated
        self.entered = threading.Event()
        self.gate = threading.Event()

    def begin(self, path_name: str, file_name: str, flags: CopyFlags,
              file_size: int) -> SinkCopy:
        copy = self.inner.begin(path_name, file_name, flags, file_size)
        return GatedCopy(copy, self.gated, self.entered, self.gate)


def _negotiate_round_trip(port: int, entered: threading.Event) -> tuple[float, int]:
    """In a thread of its own (so that a blocked event loop cannot hold the clock): once
    the sink call is blocked, NEGOTIATE over a fresh connection; (seconds, status)."""
    host = HostConnection()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        request = host.negotiate()
        if not entered.wait(10):
            raise AssertionError("the sink call never started")
        began = time.perf_counter()
        sock.sendall(request)
        while not isinstance(answer := host.next_answer(), Answer):
            host.receive_data(sock.recv(65536))
        return time.perf_counter() - began, answer.status


def _serve_tcp(handler: Callable[[trio.SocketStream], Awaitable[None]],
               ) -> Callable[..., Awaitable[None]]:
    return functools.partial(trio.serve_tcp, handler, 0, host="127.0.0.1")


async def _wait_entered(event: threading.Event) -> None:
    with trio.fail_after(5):
        await trio.to_thread.run_sync(event.wait, abandon_on_cancel=True)


@pytest.mark.parametrize("gated", ["write", "abort"])
async def test_blocked_sink_does_not_delay_other_connections(tmp_path: Path,
                                                             gated: str) -> None:
    sink = GatedSink(tmp_path, gated)

    async def serve(stream: trio.SocketStream) -> None:
        await Session(stream, sink, GuestConnection(), idle_timeout=30).run()

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(_serve_tcp(serve))
        port = listeners[0].socket.getsockname()[1]
        url = f"tcp://127.0.0.1:{port}"
        data = bytes(range(256)) * 96  # four fragments: the batch that ends the file is
        # written straight (not gathered), so the gated writev runs
        with trio.fail_after(10):
            async with open_host(url) as stuck:
                await stuck.negotiate()
                start = stuck.conn.start_copy(file_name="f", path_name="/",
                                              flags=CopyFlags(0), file_size=len(data))
                assert (await stuck.request(start)).ok
                # The other connection's client runs in a thread started before the sink
                # call can block: a blocked event loop cannot delay its clock.
                measured: list[tuple[float, int]] = []
                other = threading.Thread(target=lambda: measured.append(
                    _negotiate_round_trip(port, sink.entered)))
                other.start()
                for offset in range(0, len(data), 6144):  # one batch: written straight
                    await stuck.send(stuck.conn.write(offset, data[offset:offset + 6144]))
                if gated == "abort":
                    for _ in range(4):
                        assert (await stuck.next_answer()).ok
                    await stuck.send(stuck.conn.cancel())
                await trio.to_thread.run_sync(other.join)
                [(took, status)] = measured
                assert status == Status.S_OK
                assert not sink.gate.is_set()  # the sink call is still blocked
                sink.gate.set()
                assert took < BOUND_SECONDS, f"NEGOTIATE answered after {took * 1e3:.1f} ms"
                if gated == "write":
                    statuses = [(await stuck.next_answer()).status for _ in range(4)]
                    assert statuses == [Status.S_OK] * 4
                    assert (await stuck.request(stuck.conn.complete())).ok
                    assert (tmp_path / "f").read_bytes() == data
                else:
                    assert (await stuck.next_answer()).ok
                    assert not (tmp_path / "f").exists()
        nursery.cancel_scope.cancel()
    assert [p.name for p in tmp_path.iterdir()] == (["f"] if gated == "write" else [])


async def test_cancelled_session_still_removes_its_temp_file(tmp_path: Path) -> None:
    """Cancelled while a write is blocked: the write finishes, then the abort runs (in a
    worker thread, shielded) and the temp file is gone."""
    sink = GatedSink(tmp_path, "write")
    async with trio.open_nursery() as nursery:

        async def serve(stream: trio.SocketStream) -> None:
            await Session(stream, sink, GuestConnection(), idle_timeout=30).run()

        listeners = await nursery.start(_serve_tcp(serve))
        port = listeners[0].socket.getsockname()[1]
        with trio.fail_after(10):
            async with open_host(f"tcp://127.0.0.1:{port}") as host:
                await host.negotiate()
                start = host.conn.start_copy(file_name="g", path_name="/",
                                             flags=CopyFlags(0), file_size=4 * 6144)
                assert (await host.request(start)).ok
                for offset in range(0, 4 * 6144, 6144):
                    await host.send(host.conn.write(offset, bytes(6144)))
                await _wait_entered(sink.entered)
                assert all_temps(tmp_path, os.getpid()) == 1  # the temp file (maybe unnamed)
                nursery.cancel_scope.cancel()
                sink.gate.set()
    assert list(tmp_path.iterdir()) == []
    assert all_temps(tmp_path, os.getpid()) == 0


@pytest.mark.parametrize("window", [1, 64])
async def test_busy_poll_copies_byte_identical(tmp_path: Path, window: int) -> None:
    """--busy-poll only changes how the socket is waited on, never what is received."""
    source = tmp_path / "src"
    source.write_bytes(bytes(range(256)) * 1000 + b"tail")
    async with open_guest(tmp_path / "root", busy_poll=200) as guest:
        with trio.fail_after(20):
            result = await guest.copy(source, "/", window=window)
        assert result.size == source.stat().st_size
        assert guest.path("/src").read_bytes() == source.read_bytes()


def test_busy_poll_option() -> None:
    args = build_parser().parse_args(["--root", "/r", "--listen", "unix:///s",
                                      "--busy-poll", "50"])
    assert config_from_args(args).busy_poll == 50
    default = build_parser().parse_args(["--root", "/r", "--listen", "unix:///s"])
    assert config_from_args(default).busy_poll == 0
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--root", "/r", "--listen", "unix:///s",
                                   "--busy-poll", "-1"])
