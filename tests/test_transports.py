"""TCP and Unix transports over real sockets: listeners, connectors, stream conformance."""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import stat
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
import trio
import trio.testing

from gsi.transports import (
    TcpAddress,
    TransportError,
    UnixAddress,
    UnixSocketListener,
    connect,
    listener_url,
    open_listeners,
    parse_url,
)

Pair = tuple[trio.abc.HalfCloseableStream, trio.abc.HalfCloseableStream]


def _ipv6_loopback_works() -> bool:
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True


needs_ipv6 = pytest.mark.skipif(not _ipv6_loopback_works(), reason="no IPv6 loopback (::1)")
TCP_HOSTS = [
    pytest.param("127.0.0.1", id="ipv4"),
    pytest.param("[::1]", id="ipv6", marks=needs_ipv6),
]


async def _pair(url: str) -> Pair:
    """(client, server) connected through open_listeners/connect; the listener is closed."""
    listeners = await open_listeners(url)
    try:
        with trio.fail_after(5):
            client = await connect(listener_url(listeners[0]))
            server = await listeners[0].accept()
    finally:
        for listener in listeners:
            await listener.aclose()
    return client, server


def _clog(stream: trio.abc.HalfCloseableStream) -> None:
    """Fill the kernel send buffer of a native stream until a send would block."""
    assert isinstance(stream, trio.SocketStream)
    fd = stream.socket.fileno()
    chunk = b"x" * 65536
    with contextlib.suppress(BlockingIOError):
        while True:
            os.write(fd, chunk)


def _makers(url_of: Callable[[], str]) -> tuple[
    Callable[[], Awaitable[Pair]], Callable[[], Awaitable[Pair]]
]:  # fmt: skip
    async def maker() -> Pair:
        return await _pair(url_of())

    async def clogged() -> Pair:
        client, server = await _pair(url_of())
        _clog(client)  # both ways: check_two_way_stream also runs the maker flipped
        _clog(server)
        return client, server

    return maker, clogged


@pytest.fixture
def unix_url(tmp_path: Path) -> Callable[[], str]:
    counter = iter(range(10**6))
    return lambda: f"unix://{tmp_path}/s{next(counter)}.sock"


@pytest.mark.parametrize("host", TCP_HOSTS)
async def test_tcp_stream_conformance(host: str) -> None:
    maker, clogged = _makers(lambda: f"tcp://{host}:0")
    with trio.fail_after(30):
        await trio.testing.check_half_closeable_stream(maker, clogged)


async def test_unix_stream_conformance(unix_url: Callable[[], str]) -> None:
    maker, clogged = _makers(unix_url)
    with trio.fail_after(30):
        await trio.testing.check_half_closeable_stream(maker, clogged)


@pytest.mark.parametrize("host", TCP_HOSTS)
async def test_tcp_nodelay_both_ends(host: str) -> None:
    client, server = await _pair(f"tcp://{host}:0")
    async with client, server:
        for stream in (client, server):
            assert isinstance(stream, trio.SocketStream)
            assert stream.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0


async def _echo_once(url: str) -> None:
    """A copy in both directions plus half-close, as the receiver and host-sim use it."""
    listeners = await open_listeners(url)
    payload = bytes(range(256)) * 1000
    async with contextlib.AsyncExitStack() as stack:
        for listener in listeners:
            stack.push_async_callback(listener.aclose)

        async def serve() -> None:
            async with await listeners[0].accept() as stream:
                got = bytearray()
                while chunk := await stream.receive_some():
                    got += chunk
                await stream.send_all(bytes(reversed(got)))

        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(serve)
                async with await connect(listener_url(listeners[0])) as client:
                    await client.send_all(payload)
                    await client.send_eof()
                    back = bytearray()
                    while chunk := await client.receive_some():
                        back += chunk
                assert bytes(back) == payload[::-1]


@pytest.mark.parametrize("host", TCP_HOSTS)
async def test_tcp_copy(host: str) -> None:
    await _echo_once(f"tcp://{host}:0")


async def test_unix_copy(unix_url: Callable[[], str]) -> None:
    await _echo_once(unix_url())


@pytest.mark.parametrize("host", TCP_HOSTS)
async def test_tcp_listener_url_resolves_port_zero(host: str) -> None:
    listeners = await open_listeners(f"tcp://{host}:0")
    try:
        assert len(listeners) == 1
        address = parse_url(listener_url(listeners[0]))
        assert isinstance(address, TcpAddress)
        assert address.host == host.strip("[]")
        assert address.port != 0
        assert address.port == listeners[0].socket.getsockname()[1]  # type: ignore[attr-defined]
    finally:
        for listener in listeners:
            await listener.aclose()


async def test_tcp_localhost_listeners_share_one_port() -> None:
    listeners = await open_listeners("tcp://localhost:0")
    try:
        urls = [parse_url(listener_url(listener)) for listener in listeners]
        ports = {u.port for u in urls if isinstance(u, TcpAddress)}
        assert len(ports) == 1 and 0 not in ports, urls
        for listener in listeners:  # every one of them accepts on that port
            with trio.fail_after(5):
                async with (
                    await connect(listener_url(listener)) as client,
                    await listener.accept() as server,
                ):
                    await client.send_all(b"x")
                    assert await server.receive_some(1) == b"x"
    finally:
        for listener in listeners:
            await listener.aclose()


@needs_ipv6
async def test_tcp_dual_stack_port_zero_gets_one_port(monkeypatch: pytest.MonkeyPatch) -> None:
    """A name resolving to 127.0.0.1 and ::1 (this machine's localhost may give only one)."""
    real = trio.open_tcp_listeners

    async def both(port: int, *, host: str | None = None) -> list[trio.SocketListener]:
        assert host == "dual.test"
        return [*await real(port, host="127.0.0.1"), *await real(port, host="::1")]

    monkeypatch.setattr(trio, "open_tcp_listeners", both)
    listeners = await open_listeners("tcp://dual.test:0")
    try:
        urls = sorted(listener_url(listener) for listener in listeners)
        port = parse_url(urls[0]).port  # type: ignore[union-attr]
        assert port != 0
        assert urls == sorted([f"tcp://127.0.0.1:{port}", f"tcp://[::1]:{port}"])
    finally:
        for listener in listeners:
            await listener.aclose()


async def test_tcp_listen_on_used_port_fails_with_url() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(TransportError, match=rf"cannot listen on tcp://127.0.0.1:{port}: "):
            await open_listeners(f"tcp://127.0.0.1:{port}")


async def test_tcp_connect_refused_names_url() -> None:
    # A bound, not listening socket keeps the port ours and refuses connections.
    with socket.socket() as bound:
        bound.bind(("127.0.0.1", 0))
        port = bound.getsockname()[1]
        url = f"tcp://127.0.0.1:{port}"
        with trio.fail_after(5), pytest.raises(TransportError) as info:
            await connect(url)
    assert f"cannot connect to {url}: " in str(info.value)
    assert isinstance(info.value.__cause__, OSError)


async def test_tcp_connect_to_port_zero_refused() -> None:
    with pytest.raises(TransportError, match="port 0 is only for listening"):
        await connect("tcp://127.0.0.1:0")


async def test_bad_url_raises_transport_error() -> None:
    with pytest.raises(TransportError, match=r"e\.g\."):
        await connect("tcp://127.0.0.1")
    with pytest.raises(TransportError, match=r"e\.g\."):
        await open_listeners("carrier-pigeon://coop:1")


async def test_address_objects_accepted(tmp_path: Path) -> None:
    path = str(tmp_path / "a.sock")
    listeners = await open_listeners(UnixAddress(path=path))
    try:
        async with (
            await connect(UnixAddress(path=path)) as client,
            await listeners[0].accept() as server,
        ):
            await client.send_all(b"hi")
            assert await server.receive_some(2) == b"hi"
    finally:
        await listeners[0].aclose()


async def test_unix_listener_url_and_unlink_on_close(tmp_path: Path) -> None:
    path = tmp_path / "gsi.sock"
    (listener,) = await open_listeners(f"unix://{path}")
    assert isinstance(listener, UnixSocketListener)
    assert listener_url(listener) == f"unix://{path}"
    assert stat.S_ISSOCK(path.lstat().st_mode)
    await listener.aclose()
    assert not path.exists()
    await listener.aclose()  # idempotent


async def test_unix_close_still_unlinks_when_cancelled(tmp_path: Path) -> None:
    path = tmp_path / "gsi.sock"
    (listener,) = await open_listeners(f"unix://{path}")
    with trio.CancelScope() as scope:
        scope.cancel()
        await listener.aclose()
    assert not path.exists()
    with pytest.raises(trio.ClosedResourceError):
        await listener.accept()


async def test_unix_close_leaves_a_replacement_alone(tmp_path: Path) -> None:
    path = tmp_path / "gsi.sock"
    (listener,) = await open_listeners(f"unix://{path}")
    path.unlink()
    path.write_text("someone else's file")
    await listener.aclose()
    assert path.read_text() == "someone else's file"


async def test_unix_refuses_to_clobber_regular_file(tmp_path: Path) -> None:
    path = tmp_path / "precious.txt"
    path.write_text("keep me")
    with pytest.raises(TransportError, match="exists and is not a socket; refusing"):
        await open_listeners(f"unix://{path}")
    assert path.read_text() == "keep me"


async def test_unix_refuses_directory(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    with pytest.raises(TransportError, match="is not a socket"):
        await open_listeners(f"unix://{tmp_path}/d")
    assert (tmp_path / "d").is_dir()


async def test_unix_refuses_symlink_to_socket(tmp_path: Path) -> None:
    (live,) = await open_listeners(f"unix://{tmp_path}/live.sock")
    try:
        link = tmp_path / "link.sock"
        link.symlink_to(tmp_path / "live.sock")
        with pytest.raises(TransportError, match="is not a socket"):
            await open_listeners(f"unix://{link}")
        assert link.is_symlink()
    finally:
        await live.aclose()


async def test_unix_replaces_stale_socket(tmp_path: Path) -> None:
    path = tmp_path / "stale.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as dead:
        dead.bind(str(path))  # a socket file with nobody listening: what a crash leaves
    assert stat.S_ISSOCK(path.lstat().st_mode)
    (listener,) = await open_listeners(f"unix://{path}")
    try:
        with trio.fail_after(5):
            async with (
                await connect(f"unix://{path}") as client,
                await listener.accept() as server,
            ):
                await client.send_all(b"ok")
                assert await server.receive_some(2) == b"ok"
    finally:
        await listener.aclose()


async def test_unix_refuses_live_socket(tmp_path: Path) -> None:
    path = tmp_path / "live.sock"
    (first,) = await open_listeners(f"unix://{path}")
    try:
        with pytest.raises(TransportError, match="another process is listening there"):
            await open_listeners(f"unix://{path}")
        assert stat.S_ISSOCK(path.lstat().st_mode)
        assert listener_url(first) == f"unix://{path}"
    finally:
        await first.aclose()


async def test_unix_listen_in_missing_directory(tmp_path: Path) -> None:
    url = f"unix://{tmp_path}/no/such/dir/s.sock"
    with pytest.raises(TransportError, match=f"cannot listen on {url}: "):
        await open_listeners(url)


async def test_unix_connect_missing_path_names_url(tmp_path: Path) -> None:
    url = f"unix://{tmp_path}/nobody.sock"
    with pytest.raises(TransportError) as info:
        await connect(url)
    assert str(info.value) == f"cannot connect to {url}: No such file or directory"
    assert isinstance(info.value.__cause__, OSError)
    assert info.value.__cause__.errno == errno.ENOENT


async def test_listener_url_rejects_foreign_listener() -> None:
    class NotASocket(trio.abc.Listener[trio.abc.Stream]):
        async def accept(self) -> trio.abc.Stream:
            raise NotImplementedError

        async def aclose(self) -> None:
            pass

    with pytest.raises(TypeError, match="not a socket listener"):
        listener_url(NotASocket())


@contextlib.asynccontextmanager
async def _serving(
    url: str,
) -> AsyncIterator[list[trio.abc.Listener[trio.abc.HalfCloseableStream]]]:
    listeners = await open_listeners(url)
    try:
        yield listeners
    finally:
        for listener in listeners:
            await listener.aclose()


async def test_accepted_streams_half_close_alike(unix_url: Callable[[], str]) -> None:
    """Every family's accepted stream supports send_eof: the peer sees EOF, then answers."""
    for url in ("tcp://127.0.0.1:0", unix_url()):
        async with _serving(url) as listeners:
            with trio.fail_after(5):
                async with (
                    await connect(listener_url(listeners[0])) as client,
                    await listeners[0].accept() as server,
                ):
                    assert isinstance(server, trio.abc.HalfCloseableStream)
                    await client.send_all(b"req")
                    await client.send_eof()
                    assert await server.receive_some(10) == b"req"
                    assert await server.receive_some(10) == b""
                    await server.send_all(b"ans")
                    await server.aclose()
                    assert await client.receive_some(10) == b"ans"
                    assert await client.receive_some(10) == b""


def _core_cap(name: str) -> int:
    with open(f"/proc/sys/net/core/{name}", encoding="ascii") as f:
        return int(f.read())


@pytest.mark.skipif(not os.path.exists("/proc/sys/net/core/wmem_max"), reason="Linux only")
@pytest.mark.parametrize("family", ["tcp", "unix"])
async def test_socket_buffer_size_on_both_ends(family: str, tmp_path: Path) -> None:
    url = "tcp://127.0.0.1:0" if family == "tcp" else f"unix://{tmp_path}/b.sock"
    size = min(1 << 20, _core_cap("wmem_max"), _core_cap("rmem_max"))
    for buffer_size in (size, None):
        listeners = await open_listeners(url, buffer_size=buffer_size)
        try:
            with trio.fail_after(5):
                client = await connect(listener_url(listeners[0]), buffer_size=buffer_size)
                server = await listeners[0].accept()
        finally:
            for listener in listeners:
                await listener.aclose()
        async with client, server:
            for stream in (client, server):
                assert isinstance(stream, trio.SocketStream)
                sndbuf = stream.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
                rcvbuf = stream.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
                if buffer_size is not None:
                    assert sndbuf >= size and rcvbuf >= size  # Linux doubles the request
                else:
                    with socket.socket(stream.socket.family, socket.SOCK_STREAM) as fresh:
                        default_rcv = fresh.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
                    if family == "unix":  # no autotuning: exactly the OS default
                        assert sndbuf == _core_cap("wmem_default") and rcvbuf == default_rcv
                    else:  # TCP autotunes from tcp_wmem/tcp_rmem, never to our 2x size
                        assert sndbuf != 2 * size or rcvbuf != 2 * size
