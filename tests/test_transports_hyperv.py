"""AF_HYPERV plumbing and the thread-backed stream, with Unix sockets standing in.

Linux has no AF_HYPERV, so the Hyper-V code paths run over ``socket.socketpair()`` and Unix
listening sockets: the threaded stream/listener, the native-or-threaded chooser and the
connect/listen wiring of ``gsi.transports.hyperv``. Only the ``socket(AF_HYPERV, ...)`` call
itself is untested here.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import socket
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
import trio
import trio.testing

from gsi.transports import (
    HyperVAddress,
    ThreadedListener,
    ThreadedSocketStream,
    TransportError,
    choose_listener,
    choose_stream,
    connect,
    connect_socket,
    hyperv,
    open_listeners,
    transport_kind,
    trio_can_poll,
)

HAS_AF_HYPERV = hasattr(socket, "AF_HYPERV")
SVC = "0000138d-facb-11e6-bd58-64006a7986d3"
Pair = tuple[trio.abc.HalfCloseableStream, trio.abc.HalfCloseableStream]


async def threaded_pair() -> Pair:
    a, b = socket.socketpair()
    return ThreadedSocketStream(a), ThreadedSocketStream(b)


async def test_threaded_stream_conformance() -> None:
    # clogged_stream_maker is None: without polling, wait_send_all_might_not_block cannot
    # wait for buffer space, which is the one thing the clogged checks measure.
    with trio.fail_after(30):
        await trio.testing.check_half_closeable_stream(threaded_pair, None)


async def test_threaded_stream_conformance_over_tcp() -> None:
    async def maker() -> Pair:
        with socket.create_server(("127.0.0.1", 0)) as server:
            client = socket.create_connection(server.getsockname())
            accepted, _ = server.accept()
        return ThreadedSocketStream(client), ThreadedSocketStream(accepted)

    with trio.fail_after(30):
        await trio.testing.check_half_closeable_stream(maker, None)


async def test_threaded_talks_to_native() -> None:
    async def maker() -> Pair:
        a, b = socket.socketpair()
        return ThreadedSocketStream(a), (await choose_stream(b, native=True)).stream

    with trio.fail_after(30):
        await trio.testing.check_half_closeable_stream(maker, None)


async def test_cancelled_receive_keeps_its_data() -> None:
    left, right = await threaded_pair()
    async with left, right:
        with trio.fail_after(5):
            with trio.CancelScope() as scope:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(right.receive_some, 10)
                    await trio.testing.wait_all_tasks_blocked()
                    scope.cancel()
            await left.send_all(b"0123456789")
            # the cancelled call's thread read up to 10 bytes; nothing is lost
            assert await right.receive_some(3) == b"012"
            assert await right.receive_some(100) == b"3456789"


async def test_cancelled_send_still_sends_everything_in_order() -> None:
    a, b = socket.socketpair()
    sender = ThreadedSocketStream(a)
    big = bytes(range(256)) * 40_000  # far more than the socket buffers hold
    async with sender, ThreadedSocketStream(b) as receiver:
        with trio.fail_after(10):
            with trio.CancelScope() as scope:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(sender.send_all, big)
                    await trio.testing.wait_all_tasks_blocked()
                    scope.cancel()

            async def tail_then_eof() -> None:
                await sender.send_all(b"tail")  # waits for the cancelled send first
                await sender.send_eof()

            got = bytearray()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(tail_then_eof)
                while chunk := await receiver.receive_some():
                    got += chunk
            assert got == big + b"tail"


async def test_close_wakes_receiver_and_releases_the_socket() -> None:
    a, b = socket.socketpair()
    stream = ThreadedSocketStream(a)
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:

            async def receive() -> None:
                with pytest.raises(trio.ClosedResourceError):
                    await stream.receive_some(10)

            nursery.start_soon(receive)
            await trio.testing.wait_all_tasks_blocked()
            await stream.aclose()
        assert b.recv(10) == b""  # the peer sees the shutdown
        while a.fileno() != -1:  # the worker thread closes the socket when it returns
            await trio.lowlevel.checkpoint()
    b.close()


def _clogged_socketpair() -> tuple[socket.socket, socket.socket]:
    a, b = socket.socketpair()
    a.setblocking(False)
    with contextlib.suppress(BlockingIOError):
        while True:
            a.send(b"x" * 65536)
    return a, b


async def test_close_wakes_a_blocked_sender() -> None:
    a, b = _clogged_socketpair()
    stream = ThreadedSocketStream(a)
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:

            async def send() -> None:
                with pytest.raises(trio.ClosedResourceError):
                    await stream.send_all(b"blocked")

            nursery.start_soon(send)
            await trio.testing.wait_all_tasks_blocked()
            await stream.aclose()
    b.close()


async def test_same_direction_twice_is_busy() -> None:
    a, b = _clogged_socketpair()
    async with ThreadedSocketStream(a) as stream, ThreadedSocketStream(b):
        seconds = (
            functools.partial(stream.send_all, b"2"),
            stream.send_eof,
            stream.wait_send_all_might_not_block,
        )
        for second in seconds:
            with trio.fail_after(5), pytest.RaisesGroup(trio.BusyResourceError):
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(stream.send_all, b"1")
                    await trio.testing.wait_all_tasks_blocked()
                    nursery.start_soon(second)


async def test_threaded_send_errors_become_broken_resource() -> None:
    a, b = socket.socketpair()
    stream = ThreadedSocketStream(a)
    b.close()
    async with stream:
        with trio.fail_after(5), pytest.raises(trio.BrokenResourceError):
            await stream.send_all(b"x" * 100)


def test_threaded_requires_stream_socket() -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as dgram:
        with pytest.raises(ValueError, match="SOCK_STREAM"):
            ThreadedSocketStream(dgram)
        with pytest.raises(ValueError, match="SOCK_STREAM"):
            ThreadedListener(dgram)


def _listening_unix(tmp_path: Path) -> tuple[socket.socket, str]:
    path = str(tmp_path / "hv.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(path)
    sock.listen()
    return sock, path


async def test_threaded_listener_accepts(tmp_path: Path) -> None:
    sock, path = _listening_unix(tmp_path)
    async with ThreadedListener(sock) as listener:
        assert transport_kind(listener) == "threaded"
        with trio.fail_after(5):
            async with (
                await connect(f"unix://{path}") as client,
                await listener.accept() as server,
            ):
                assert transport_kind(server) == "threaded"
                await client.send_all(b"ping")
                assert await server.receive_some(4) == b"ping"


async def test_threaded_listener_cancelled_accept_keeps_the_connection(tmp_path: Path) -> None:
    sock, path = _listening_unix(tmp_path)
    async with ThreadedListener(sock) as listener:
        with trio.fail_after(5):
            with trio.CancelScope() as scope:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(listener.accept)
                    await trio.testing.wait_all_tasks_blocked()
                    scope.cancel()
            async with (
                await connect(f"unix://{path}") as client,
                await listener.accept() as server,
            ):
                await server.send_all(b"hello")
                assert await client.receive_some(5) == b"hello"


async def test_threaded_listener_close_wakes_accept(tmp_path: Path) -> None:
    sock, _ = _listening_unix(tmp_path)
    listener = ThreadedListener(sock)
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:

            async def accept() -> None:
                with pytest.raises(trio.ClosedResourceError):
                    await listener.accept()

            nursery.start_soon(accept)
            await trio.testing.wait_all_tasks_blocked()
            await listener.aclose()
        with pytest.raises(trio.ClosedResourceError):
            await listener.accept()


async def test_trio_can_poll() -> None:
    a, b = socket.socketpair()
    with a, b:
        assert await trio_can_poll(a) is True
    with tempfile.TemporaryFile() as regular_file:  # epoll refuses regular files
        assert await trio_can_poll(regular_file) is False  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("native", "kind", "cls"),
    [
        (None, "native", trio.SocketStream),  # Linux: trio can poll any socket
        (True, "native", trio.SocketStream),
        (False, "threaded", ThreadedSocketStream),
    ],
)
async def test_choose_stream(
    native: bool | None, kind: str, cls: type, caplog: pytest.LogCaptureFixture
) -> None:
    a, b = socket.socketpair()
    with caplog.at_level(logging.INFO, logger="gsi.transports"):
        choice = await choose_stream(a, native=native, label="hyperv://test")
    async with choice.stream, ThreadedSocketStream(b) as peer:
        assert choice.kind == kind == transport_kind(choice.stream)
        assert isinstance(choice.stream, cls)
        assert f"hyperv://test: using the {kind} stream" in caplog.text
        with trio.fail_after(5):
            await choice.stream.send_all(b"abc")
            assert await peer.receive_some(3) == b"abc"


async def test_chooser_falls_back_when_trio_cannot_poll(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A backend that refuses the socket (as trio's Windows AFD poll may for AF_HYPERV)."""

    async def refuse(sock: object) -> None:
        raise OSError(10038, "An operation was attempted on something that is not a socket")

    monkeypatch.setattr(trio.lowlevel, "wait_writable", refuse)
    a, b = socket.socketpair()
    with caplog.at_level(logging.INFO, logger="gsi.transports"):
        choice = await choose_stream(a, label="hyperv://x")
    monkeypatch.undo()
    async with choice.stream, ThreadedSocketStream(b) as peer:
        assert choice.kind == "threaded"
        assert "using the threaded stream (trio cannot poll this socket)" in caplog.text
        with trio.fail_after(5):
            await peer.send_all(b"up")
            assert await choice.stream.receive_some(2) == b"up"


@pytest.mark.parametrize("native", [None, True, False])
async def test_connect_socket(tmp_path: Path, native: bool | None) -> None:
    listening, path = _listening_unix(tmp_path)
    async with ThreadedListener(listening) as listener:
        with trio.fail_after(5):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            choice = await connect_socket(sock, path, native=native)
            assert choice.kind == ("threaded" if native is False else "native")
            async with choice.stream as client, await listener.accept() as server:
                await client.send_all(b"q")
                assert await server.receive_some(1) == b"q"


@pytest.mark.parametrize("native", [True, False])
async def test_connect_socket_failure_closes_socket(tmp_path: Path, native: bool) -> None:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    with trio.fail_after(5), pytest.raises(FileNotFoundError):
        await connect_socket(sock, str(tmp_path / "missing.sock"), native=native)
    assert sock.fileno() == -1


@pytest.mark.skipif(HAS_AF_HYPERV, reason="this Python has AF_HYPERV")
async def test_missing_af_hyperv_is_a_clear_error() -> None:
    message = "AF_HYPERV needs Python 3.12\\+ on Windows"
    with pytest.raises(TransportError, match=message):
        hyperv.hyperv_socket()
    with pytest.raises(TransportError, match=message):
        await connect(f"hyperv://parent/{SVC}")
    with pytest.raises(TransportError, match=message):
        await open_listeners(f"hyperv://wildcard/{SVC}")


@pytest.fixture
def unix_as_hyperv(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Callable[[HyperVAddress], str]:
    """Make hyperv.py create Unix sockets and map each (VmId, ServiceId) to a path."""
    monkeypatch.setattr(
        hyperv, "hyperv_socket", lambda: socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    )

    def path_of(address: HyperVAddress) -> str:
        return str(tmp_path / f"{address.service_id}.sock")

    monkeypatch.setattr(hyperv, "_sockaddr", path_of)
    return path_of


@pytest.mark.parametrize(
    ("native", "kind"), [(None, "native"), (True, "native"), (False, "threaded")]
)
async def test_hyperv_wiring(
    unix_as_hyperv: Callable[[HyperVAddress], str], native: bool | None, kind: str
) -> None:
    url = f"hyperv://wildcard/{SVC}"
    (listener,) = await open_listeners(url, native=native)
    async with listener:
        assert transport_kind(listener) == kind
        with trio.fail_after(5):
            async with await connect(f"hyperv://loopback/{SVC}", native=native) as client:
                assert transport_kind(client) == kind
                async with await listener.accept() as server:
                    assert transport_kind(server) == kind
                    await client.send_all(b"fcopy")
                    await client.send_eof()
                    assert await server.receive_some(10) == b"fcopy"
                    assert await server.receive_some(10) == b""


async def test_hyperv_connect_failure_names_url(
    unix_as_hyperv: Callable[[HyperVAddress], str],
) -> None:
    url = f"hyperv://parent/{uuid.UUID(int=5)}"
    canonical = f"hyperv://a42e7cda-d03f-480c-9cc2-a4de20abb878/{uuid.UUID(int=5)}"
    for native in (True, False):
        with pytest.raises(TransportError, match=f"cannot connect to {canonical}: No such file"):
            await connect(url, native=native)


async def test_choose_listener_native(tmp_path: Path) -> None:
    sock, _ = _listening_unix(tmp_path)
    listener = await choose_listener(sock)
    async with listener:
        assert isinstance(listener, trio.SocketListener)
        assert transport_kind(listener) == "native"
