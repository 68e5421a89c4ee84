"""The one entry point: open listeners / connect by URL, and name what a listener bound."""

from __future__ import annotations

import logging
import os
import socket
import uuid
from typing import Any, Literal, TypeAlias

import trio

from .base import DEFAULT_SOCKET_BUFFER, TransportError
from .hyperv import connect_hyperv, open_hyperv_listener
from .tcp import connect_tcp, open_tcp_listeners
from .unix import connect_unix, open_unix_listener
from .url import (
    Address,
    HyperVAddress,
    TcpAddress,
    UnixAddress,
    VmbusAddress,
    VmbusEmuAddress,
    VsockAddress,
    format_url,
    parse_url,
)
from .vsock import connect_vsock, open_vsock_listener

log = logging.getLogger(__name__)

StreamListener: TypeAlias = trio.abc.Listener[trio.abc.HalfCloseableStream]
"""What ``open_listeners`` returns: a listener whose ``accept`` gives a half-closeable stream."""


def _size(requested: int | Literal["default"] | None, default: int | None) -> int | None:
    return default if requested == "default" else requested


def _address(url: str | Address) -> Address:
    return parse_url(url) if isinstance(url, str) else url


async def open_listeners(
    url: str | Address, *, native: bool | None = None,
    buffer_size: int | Literal["default"] | None = "default",
) -> list[StreamListener]:
    """Open the listeners for a URL (several for a TCP host name with several addresses).

    Every listener's ``accept`` returns a ``trio.abc.HalfCloseableStream``; use
    ``listener_url`` for the address it really bound (port 0 / vsock port -1 resolved).

    Args:
        url: a transport URL (see ``gsi.transports.url``) or a parsed address.
        native: hyperv:// only: force trio's native listener (True) or the threaded one
            (False); None probes. Ignored by the other families, which are always native.
        buffer_size: tcp:// and unix:// only: SO_SNDBUF/SO_RCVBUF of every accepted
            stream, best effort (``base.tune_socket``); None leaves the OS default;
            "default": ``DEFAULT_SOCKET_BUFFER`` for unix://, None for tcp:// (autotuned).

    Raises:
        TransportError: a bad URL, or the socket could not be bound.
    """
    address = _address(url)
    listeners: list[StreamListener] = []
    if isinstance(address, TcpAddress):
        listeners.extend(await open_tcp_listeners(address, buffer_size=_size(buffer_size, None)))
    elif isinstance(address, UnixAddress):
        size = _size(buffer_size, DEFAULT_SOCKET_BUFFER)
        listeners.append(await open_unix_listener(address, buffer_size=size))
    elif isinstance(address, VsockAddress):
        listeners.append(await open_vsock_listener(address))
    elif isinstance(address, VmbusAddress):
        from ..vmbus.uio import open_uio_listener  # here: gsi.vmbus imports this package

        listeners.append(await open_uio_listener(address))
    elif isinstance(address, VmbusEmuAddress):
        from ..vmbus.emu import open_emulated_listener

        listeners.append(await open_emulated_listener(address))
    else:
        listeners.append(await open_hyperv_listener(address, native=native))
    for listener in listeners:
        log.debug("listening on %s", listener_url(listener))
    return listeners


async def connect(
    url: str | Address, *, native: bool | None = None,
    buffer_size: int | Literal["default"] | None = "default",
) -> trio.abc.HalfCloseableStream:
    """Connect to a URL and return the stream.

    Args:
        url: a transport URL or a parsed address.
        native: hyperv:// only, as for ``open_listeners``.
        buffer_size: tcp:// and unix:// only, as for ``open_listeners``.

    Raises:
        TransportError: a bad URL, or the connection failed (the message names the URL).
    """
    address = _address(url)
    if isinstance(address, TcpAddress):
        return await connect_tcp(address, buffer_size=_size(buffer_size, None))
    if isinstance(address, UnixAddress):
        return await connect_unix(address, buffer_size=_size(buffer_size, DEFAULT_SOCKET_BUFFER))
    if isinstance(address, VsockAddress):
        return await connect_vsock(address)
    if isinstance(address, VmbusAddress):
        raise TransportError(f"cannot connect to {format_url(address)}: vmbus:// is the "
                             "guest's end of the real channel (listen only); a simulated "
                             "host connects to an emulated one, vmbus-emu:///path")
    if isinstance(address, VmbusEmuAddress):
        from ..vmbus.emu import connect_emulated_host

        return await connect_emulated_host(address)
    return await connect_hyperv(address, native=native)


def sockname_address(sock: trio.socket.SocketType | socket.socket) -> Address:
    """The address a bound socket reports (``getsockname``), as a transport address."""
    family = sock.family
    name: Any = sock.getsockname()
    if family in (socket.AF_INET, socket.AF_INET6):
        return TcpAddress(host=name[0], port=name[1])
    if family == getattr(socket, "AF_UNIX", None):
        path = os.fsdecode(name)
        if not path.startswith("/"):
            raise TransportError(f"Unix socket name {path!r} has no URL (not a filesystem path)")
        return UnixAddress(path=path)
    if family == getattr(socket, "AF_VSOCK", None):
        return VsockAddress(cid=name[0], port=name[1])
    if family == getattr(socket, "AF_HYPERV", None):
        return HyperVAddress(vm_id=uuid.UUID(str(name[0])), service_id=uuid.UUID(str(name[1])))
    raise TransportError(f"socket family {family!r} has no transport URL")


def listener_url(listener: trio.abc.Listener[Any]) -> str:
    """The URL a listener from ``open_listeners`` really bound (port 0 resolved)."""
    url = getattr(listener, "url", None)  # vmbus listeners: no socket, a channel URL
    if isinstance(url, str):
        return url
    sock = getattr(listener, "socket", None)
    if sock is None:
        raise TypeError(f"{listener!r} is not a socket listener from open_listeners()")
    return format_url(sockname_address(sock))
