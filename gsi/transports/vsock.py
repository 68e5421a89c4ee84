"""AF_VSOCK (Linux guest side, hv_sock on Hyper-V): listener, connector, port <-> GUID.

On Hyper-V a vsock port P is the service GUID ``%08x-facb-11e6-bd58-64006a7986d3``
(PROTOCOL.md section 6); a guest listens on (VMADDR_CID_ANY, P).
"""

from __future__ import annotations

import socket
import uuid
from typing import Final

import trio

from .base import TransportError, os_reason
from .url import (
    VMADDR_CID_ANY,
    VMADDR_CID_HOST,
    VMADDR_CID_HYPERVISOR,
    VMADDR_CID_LOCAL,
    VMADDR_PORT_ANY,
    VsockAddress,
    format_url,
)

__all__ = [
    "VMADDR_CID_ANY",
    "VMADDR_CID_HOST",
    "VMADDR_CID_HYPERVISOR",
    "VMADDR_CID_LOCAL",
    "VMADDR_PORT_ANY",
    "connect_vsock",
    "open_vsock_listener",
    "service_guid_to_vsock_port",
    "vsock_family",
    "vsock_port_to_service_guid",
]

_GUID_TAIL: Final = "-facb-11e6-bd58-64006a7986d3"


def vsock_port_to_service_guid(port: int) -> uuid.UUID:
    """The Hyper-V service GUID of a vsock port (5005 -> 0000138d-facb-11e6-...)."""
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 0xFFFFFFFF:
        raise TransportError(f"vsock port {port!r} is not in 0..4294967295")
    return uuid.UUID(f"{port:08x}{_GUID_TAIL}")


def service_guid_to_vsock_port(guid: uuid.UUID | str) -> int:
    """The vsock port a Hyper-V service GUID stands for.

    Raises:
        TransportError: the GUID is not of the ``%08x-facb-11e6-bd58-64006a7986d3`` form.
    """
    try:
        value = guid if isinstance(guid, uuid.UUID) else uuid.UUID(guid)
    except (ValueError, TypeError, AttributeError):
        raise TransportError(f"{guid!r} is not a GUID") from None
    text = str(value)
    if not text.endswith(_GUID_TAIL):
        raise TransportError(
            f"service GUID {text} is not a vsock port GUID; those look like "
            f"XXXXXXXX{_GUID_TAIL} (e.g. {vsock_port_to_service_guid(5005)} for port 5005)"
        )
    return int(text[:8], 16)


def vsock_family() -> socket.AddressFamily:
    """``socket.AF_VSOCK``, or a TransportError where the platform has none."""
    family: socket.AddressFamily | None = getattr(socket, "AF_VSOCK", None)
    if family is None:
        raise TransportError(
            "AF_VSOCK is not available on this platform (vsock:// needs Linux with the "
            "vsock module); use tcp:// or unix:// instead"
        )
    return family


def _vsock_socket(url: str) -> trio.socket.SocketType:
    try:
        return trio.socket.socket(vsock_family(), socket.SOCK_STREAM)
    except OSError as exc:
        raise TransportError(
            f"cannot create an AF_VSOCK socket for {url}: {os_reason(exc)} "
            "(is the vsock kernel module loaded?)"
        ) from exc


async def open_vsock_listener(address: VsockAddress) -> trio.SocketListener:
    """Bind and listen on (cid, port); VMADDR_PORT_ANY lets the kernel pick the port."""
    url = format_url(address)
    sock = _vsock_socket(url)
    try:
        await sock.bind((address.cid, address.port))
        sock.listen(socket.SOMAXCONN)
    except OSError as exc:
        sock.close()
        raise TransportError(f"cannot listen on {url}: {os_reason(exc)}") from exc
    return trio.SocketListener(sock)


async def connect_vsock(address: VsockAddress) -> trio.SocketStream:
    """Connect to (cid, port). A CID of VMADDR_CID_ANY is refused before any socket exists."""
    url = format_url(address)
    if address.cid == VMADDR_CID_ANY:
        raise TransportError(
            f"cannot connect to {url}: CID -1 (any) is only for listening; "
            "name the peer, e.g. vsock://2:5005 for the host"
        )
    if address.port == VMADDR_PORT_ANY:
        raise TransportError(f"cannot connect to {url}: port -1 (any) is only for listening")
    sock = _vsock_socket(url)
    try:
        await sock.connect((address.cid, address.port))
    except OSError as exc:
        sock.close()
        raise TransportError(f"cannot connect to {url}: {os_reason(exc)}") from exc
    except BaseException:
        sock.close()
        raise
    return trio.SocketStream(sock)
