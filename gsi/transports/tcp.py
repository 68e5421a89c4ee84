"""TCP: listeners (one per resolved address) and a connector."""

from __future__ import annotations

import trio

from .base import TransportError, os_reason, tune_socket
from .url import TcpAddress, format_url


def _port(listener: trio.SocketListener) -> int:
    port: int = listener.socket.getsockname()[1]
    return port


async def open_tcp_listeners(
    address: TcpAddress, *, buffer_size: int | None = None
) -> list[trio.SocketListener]:
    """Listen on every address ``host`` resolves to (``localhost`` may give ::1 and 127.0.0.1).

    With port 0 the listeners share one kernel-chosen port where possible (trio alone
    would give each address its own), so one URL reaches all of them. ``buffer_size`` is
    set on the listening sockets, which accepted sockets inherit (see ``tune_socket``);
    the default None keeps TCP's autotuning (no measurable gain from fixed buffers here).
    """
    url = format_url(address)
    try:
        listeners = await trio.open_tcp_listeners(address.port, host=address.host)
        if address.port == 0 and len({_port(listener) for listener in listeners}) > 1:
            listeners = await _same_port(listeners, address.host)
    except OSError as exc:
        raise TransportError(f"cannot listen on {url}: {os_reason(exc)}") from exc
    for listener in listeners:
        tune_socket(listener.socket, buffer_size)
    return listeners


async def _same_port(listeners: list[trio.SocketListener], host: str) -> list[trio.SocketListener]:
    """Close the listeners and reopen one per address on the first one's port.

    The originals are closed first (their port must be free to bind again); if another
    process took the port in between, they are replaced by new listeners on distinct
    kernel-chosen ports, as trio would open them.
    """
    port = _port(listeners[0])
    for listener in listeners:
        listener.socket.close()
    try:
        return await trio.open_tcp_listeners(port, host=host)
    except OSError:  # someone took the port in between: distinct ports it is
        return await trio.open_tcp_listeners(0, host=host)


async def connect_tcp(
    address: TcpAddress, *, buffer_size: int | None = None
) -> trio.SocketStream:
    """Connect (happy eyeballs over every resolved address); TCP_NODELAY is on.

    ``buffer_size``: SO_SNDBUF/SO_RCVBUF of the stream (see ``tune_socket``).
    """
    if address.port == 0:
        raise TransportError(
            f"cannot connect to {format_url(address)}: port 0 is only for listening"
        )
    try:
        stream = await trio.open_tcp_stream(address.host, address.port)
    except OSError as exc:
        raise TransportError(f"cannot connect to {format_url(address)}: {os_reason(exc)}") from exc
    tune_socket(stream.socket, buffer_size)
    return stream
