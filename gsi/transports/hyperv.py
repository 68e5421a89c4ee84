"""AF_HYPERV (Windows host side): connector and listener, native or thread-backed.

``socket(AF_HYPERV=34, SOCK_STREAM, HV_PROTOCOL_RAW=1)`` addressed by (VmId, ServiceId) GUID
strings; Python has it from 3.12, on Windows only. Whether trio's Windows backend can poll
these sockets is decided per socket by ``threaded.choose_stream``/``choose_listener``.
"""

from __future__ import annotations

import socket
import sys
from typing import Final

import trio

from .base import TransportError, os_reason
from .threaded import choose_listener, connect_socket
from .url import HyperVAddress, format_url

AF_HYPERV_NUMBER: Final = 34
HV_PROTOCOL_RAW_NUMBER: Final = 1


def hyperv_socket() -> socket.socket:
    """A new blocking AF_HYPERV stream socket.

    Raises:
        TransportError: "AF_HYPERV needs Python 3.12+ on Windows" where it is missing, or
            the OS refused to create the socket.
    """
    family: int | None = getattr(socket, "AF_HYPERV", None)
    proto: int = getattr(socket, "HV_PROTOCOL_RAW", HV_PROTOCOL_RAW_NUMBER)
    if family is None:
        raise TransportError(
            "AF_HYPERV needs Python 3.12+ on Windows (this is Python "
            f"{sys.version_info.major}.{sys.version_info.minor} on {sys.platform}); "
            "a Linux guest listens with vsock:// instead"
        )
    try:
        return socket.socket(family, socket.SOCK_STREAM, proto)
    except OSError as exc:
        raise TransportError(f"cannot create an AF_HYPERV socket: {os_reason(exc)}") from exc


def _sockaddr(address: HyperVAddress) -> tuple[str, str]:
    return (str(address.vm_id), str(address.service_id))


async def connect_hyperv(
    address: HyperVAddress, *, native: bool | None = None
) -> trio.abc.HalfCloseableStream:
    """Connect to a guest's (or the host's) Hyper-V socket service.

    Args:
        native: force trio's native stream (True) or the threaded one (False);
            None probes the socket (see ``threaded.trio_can_poll``).
    """
    url = format_url(address)
    sock = hyperv_socket()
    try:
        choice = await connect_socket(sock, _sockaddr(address), native=native, label=url)
    except OSError as exc:
        raise TransportError(f"cannot connect to {url}: {os_reason(exc)}") from exc
    return choice.stream


async def open_hyperv_listener(
    address: HyperVAddress, *, native: bool | None = None
) -> trio.abc.Listener[trio.abc.HalfCloseableStream]:
    """Bind and listen on (VmId, ServiceId), e.g. ``hyperv://wildcard/<service GUID>``."""
    url = format_url(address)
    sock = hyperv_socket()
    try:
        sock.bind(_sockaddr(address))
        sock.listen(socket.SOMAXCONN)
    except OSError as exc:
        sock.close()
        raise TransportError(f"cannot listen on {url}: {os_reason(exc)}") from exc
    return await choose_listener(sock, native=native, label=url)
