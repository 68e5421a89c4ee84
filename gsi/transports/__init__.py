"""Byte-stream transports chosen by URL: tcp://, unix://, vsock://, hyperv://, and the
vmbus channel itself: vmbus:// (the real one, guest side) and vmbus-emu:// (emulated).

``open_listeners(url)`` and ``connect(url)`` give trio streams that behave the same for
every family (``send_all``, ``receive_some``, ``send_eof``, ``aclose``); ``listener_url``
names what a listener really bound. One module per family; ``threaded`` holds the
thread-backed stream for sockets trio cannot poll (AF_HYPERV on Windows, maybe).
"""

from __future__ import annotations

from .api import StreamListener, connect, listener_url, open_listeners, sockname_address
from .base import DEFAULT_SOCKET_BUFFER, TransportError, raw_socket, tune_socket
from .hyperv import connect_hyperv, hyperv_socket, open_hyperv_listener
from .tcp import connect_tcp, open_tcp_listeners
from .threaded import (
    StreamChoice,
    StreamKind,
    ThreadedListener,
    ThreadedSocketStream,
    choose_listener,
    choose_stream,
    connect_socket,
    transport_kind,
    trio_can_poll,
)
from .unix import UnixSocketListener, connect_unix, open_unix_listener
from .url import (
    HV_GUID_NAMES,
    VMADDR_CID_ANY,
    VMADDR_CID_HOST,
    VMADDR_CID_HYPERVISOR,
    VMADDR_CID_LOCAL,
    VMADDR_PORT_ANY,
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
from .vsock import (
    connect_vsock,
    open_vsock_listener,
    service_guid_to_vsock_port,
    vsock_family,
    vsock_port_to_service_guid,
)

__all__ = [
    "DEFAULT_SOCKET_BUFFER",
    "HV_GUID_NAMES",
    "VMADDR_CID_ANY",
    "VMADDR_CID_HOST",
    "VMADDR_CID_HYPERVISOR",
    "VMADDR_CID_LOCAL",
    "VMADDR_PORT_ANY",
    "Address",
    "HyperVAddress",
    "StreamChoice",
    "StreamKind",
    "StreamListener",
    "TcpAddress",
    "ThreadedListener",
    "ThreadedSocketStream",
    "TransportError",
    "UnixAddress",
    "UnixSocketListener",
    "VmbusAddress",
    "VmbusEmuAddress",
    "VsockAddress",
    "choose_listener",
    "choose_stream",
    "connect",
    "connect_hyperv",
    "connect_socket",
    "connect_tcp",
    "connect_unix",
    "connect_vsock",
    "format_url",
    "hyperv_socket",
    "listener_url",
    "open_hyperv_listener",
    "open_listeners",
    "open_tcp_listeners",
    "open_unix_listener",
    "open_vsock_listener",
    "parse_url",
    "raw_socket",
    "service_guid_to_vsock_port",
    "sockname_address",
    "transport_kind",
    "trio_can_poll",
    "tune_socket",
    "vsock_family",
    "vsock_port_to_service_guid",
]
