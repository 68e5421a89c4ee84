"""Transport URLs: one frozen address class per family, ``parse_url`` and ``format_url``.

Accepted forms (``format_url`` writes the first, canonical spelling of each):

- ``tcp://HOST:PORT``: a host name, IPv4 address or bracketed IPv6 address (``[::1]``);
  PORT 0..65535, 0 meaning "any free port" when listening.
- ``unix:///abs/path``: an absolute filesystem path, taken literally (no %-decoding, so
  ``?`` and ``#`` are part of the path).
- ``vsock://CID:PORT``: CID 0..0xFFFFFFFF, or ``-1``/``any`` (VMADDR_CID_ANY, listening),
  ``hypervisor`` (0), ``local`` (1), ``host`` (2); PORT 0..0xFFFFFFFF, or ``-1``/``any``
  (VMADDR_PORT_ANY: the kernel picks a free port when listening).
- ``hyperv://VMID/SERVICEID``: two GUIDs; VMID may also be one of the well-known names of
  hvsocket.h (``wildcard``, ``zero``, ``broadcast``, ``children``, ``loopback``,
  ``parent``, ``silohost``, any case).
- ``vmbus://[INSTANCE][?ring_size=N]``: the real fcopy vmbus channel under uio_hv_generic
  (listen only, on a Linux guest); INSTANCE is the device instance GUID (default: the
  fcopy channel's), ``ring_size`` overrides what sysfs says (docs/vmbus.md).
- ``vmbus-emu:///abs/path[?ring_size=N]``: an emulated channel (the same ring layout in a
  shared file, FIFOs for interrupts): a receiver listens (creating it, ring size N,
  default 0x4000), a host connects. The path may not contain ``?`` or ``#``.
"""

from __future__ import annotations

import ipaddress
import re
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import ClassVar, Final, TypeAlias

from .base import TransportError

VMADDR_CID_HYPERVISOR: Final = 0
VMADDR_CID_LOCAL: Final = 1
VMADDR_CID_HOST: Final = 2
VMADDR_CID_ANY: Final = 0xFFFFFFFF
VMADDR_PORT_ANY: Final = 0xFFFFFFFF
_U32_MAX: Final = 0xFFFFFFFF

HV_GUID_ZERO: Final = uuid.UUID("00000000-0000-0000-0000-000000000000")
HV_GUID_WILDCARD: Final = HV_GUID_ZERO
HV_GUID_BROADCAST: Final = uuid.UUID("ffffffff-ffff-ffff-ffff-ffffffffffff")
HV_GUID_CHILDREN: Final = uuid.UUID("90db8b89-0d35-4f79-8ce9-49ea0ac8b7cd")
HV_GUID_LOOPBACK: Final = uuid.UUID("e0e16197-dd56-4a10-9195-5ee7a155a838")
HV_GUID_PARENT: Final = uuid.UUID("a42e7cda-d03f-480c-9cc2-a4de20abb878")
HV_GUID_SILOHOST: Final = uuid.UUID("36bd0c5c-7276-4223-88ba-7d03b654c568")

#: Well-known Hyper-V VmId names (Microsoft's hvsocket.h, Python's ``socket.HV_GUID_*``).
HV_GUID_NAMES: Final[Mapping[str, uuid.UUID]] = MappingProxyType(
    {
        "zero": HV_GUID_ZERO,
        "wildcard": HV_GUID_WILDCARD,
        "broadcast": HV_GUID_BROADCAST,
        "children": HV_GUID_CHILDREN,
        "loopback": HV_GUID_LOOPBACK,
        "parent": HV_GUID_PARENT,
        "silohost": HV_GUID_SILOHOST,
    }
)

_CID_NAMES: Final[Mapping[str, int]] = MappingProxyType(
    {
        "any": VMADDR_CID_ANY,
        "-1": VMADDR_CID_ANY,
        "hypervisor": VMADDR_CID_HYPERVISOR,
        "local": VMADDR_CID_LOCAL,
        "host": VMADDR_CID_HOST,
    }
)
_PORT_NAMES: Final[Mapping[str, int]] = MappingProxyType(
    {"any": VMADDR_PORT_ANY, "-1": VMADDR_PORT_ANY}
)

_TCP_EXAMPLE: Final = "tcp://127.0.0.1:5005 or tcp://[::1]:5005"
_UNIX_EXAMPLE: Final = "unix:///run/gsi.sock"
_VSOCK_EXAMPLE: Final = "vsock://-1:5005 (listen) or vsock://3:5005 (connect to CID 3)"
_HYPERV_EXAMPLE: Final = "hyperv://parent/0000138d-facb-11e6-bd58-64006a7986d3"
_VMBUS_EXAMPLE: Final = "vmbus:// or vmbus://eb765408-105f-49b6-b4aa-c123b64d17d4"
_VMBUS_EMU_EXAMPLE: Final = "vmbus-emu:///tmp/gsi-ring?ring_size=0x4000"

VMBUS_FCOPY_INSTANCE: Final = uuid.UUID("eb765408-105f-49b6-b4aa-c123b64d17d4")
"""Device instance GUID of the fcopy vmbus channel (``hv_fcopy_uio_daemon.c``)."""
VMBUS_RING_SIZE_MIN: Final = 0x2000
VMBUS_RING_SIZE_MAX: Final = 0x4000_0000

_DIGITS = re.compile(r"[0-9]{1,10}")
_HOSTNAME = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_.-]*[A-Za-z0-9_.])?")
_GUID = re.compile(
    r"\{?([0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12})\}?"
)


def _bad(url: str, problem: str, example: str) -> TransportError:
    return TransportError(f"{problem} in transport URL {url!r}; expected e.g. {example}")


def _check_range(what: str, value: int, high: int, example: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= high:
        raise TransportError(f"{what} {value!r} is not in 0..{high}; expected e.g. {example}")


@dataclass(frozen=True, slots=True, kw_only=True)
class TcpAddress:
    """``tcp://HOST:PORT``; ``host`` holds an IPv6 address without its brackets."""

    scheme: ClassVar[str] = "tcp"
    host: str
    port: int

    def __post_init__(self) -> None:
        _check_range("TCP port", self.port, 0xFFFF, _TCP_EXAMPLE)
        if not isinstance(self.host, str) or not _valid_host(self.host):
            raise TransportError(
                f"TCP host {self.host!r} is not valid; expected e.g. {_TCP_EXAMPLE}"
            )


@dataclass(frozen=True, slots=True, kw_only=True)
class UnixAddress:
    """``unix:///abs/path``."""

    scheme: ClassVar[str] = "unix"
    path: str

    def __post_init__(self) -> None:
        if not isinstance(self.path, str) or not self.path.startswith("/") or "\0" in self.path:
            raise TransportError(
                f"Unix socket path {self.path!r} is not an absolute path; expected e.g. "
                f"{_UNIX_EXAMPLE}"
            )


@dataclass(frozen=True, slots=True, kw_only=True)
class VsockAddress:
    """``vsock://CID:PORT``; ``VMADDR_CID_ANY``/``VMADDR_PORT_ANY`` are 0xFFFFFFFF."""

    scheme: ClassVar[str] = "vsock"
    cid: int
    port: int

    def __post_init__(self) -> None:
        _check_range("vsock CID", self.cid, _U32_MAX, _VSOCK_EXAMPLE)
        _check_range("vsock port", self.port, _U32_MAX, _VSOCK_EXAMPLE)


@dataclass(frozen=True, slots=True, kw_only=True)
class HyperVAddress:
    """``hyperv://VMID/SERVICEID`` (AF_HYPERV, Windows host side)."""

    scheme: ClassVar[str] = "hyperv"
    vm_id: uuid.UUID
    service_id: uuid.UUID

    def __post_init__(self) -> None:
        if not isinstance(self.vm_id, uuid.UUID) or not isinstance(self.service_id, uuid.UUID):
            raise TransportError(
                f"Hyper-V VmId and ServiceId must be uuid.UUID values; expected e.g. "
                f"{_HYPERV_EXAMPLE}"
            )


def _check_ring_size(value: int | None, example: str) -> None:
    if value is None:
        return
    if (isinstance(value, bool) or not isinstance(value, int) or value % 4096
            or not VMBUS_RING_SIZE_MIN <= value <= VMBUS_RING_SIZE_MAX):
        raise TransportError(
            f"ring_size {value!r} is not a multiple of 4096 in {VMBUS_RING_SIZE_MIN:#x}.."
            f"{VMBUS_RING_SIZE_MAX:#x}; expected e.g. {example}")


@dataclass(frozen=True, slots=True, kw_only=True)
class VmbusAddress:
    """``vmbus://INSTANCE``: the fcopy channel under uio_hv_generic (guest, listen only).

    ``ring_size`` (one ring, control page included) overrides the size sysfs reports.
    """

    scheme: ClassVar[str] = "vmbus"
    instance: uuid.UUID = VMBUS_FCOPY_INSTANCE
    ring_size: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.instance, uuid.UUID):
            raise TransportError(
                f"vmbus device instance must be a uuid.UUID; expected e.g. {_VMBUS_EXAMPLE}")
        _check_ring_size(self.ring_size, _VMBUS_EXAMPLE)


@dataclass(frozen=True, slots=True, kw_only=True)
class VmbusEmuAddress:
    """``vmbus-emu:///abs/path``: an emulated channel; ``ring_size`` None = the default
    (listening) or whatever the receiver made (connecting)."""

    scheme: ClassVar[str] = "vmbus-emu"
    path: str
    ring_size: int | None = None

    def __post_init__(self) -> None:
        if (not isinstance(self.path, str) or not self.path.startswith("/")
                or self.path.endswith("/") or any(c in self.path for c in "\0?#")):
            raise TransportError(
                f"emulated channel path {self.path!r} is not an absolute file path without "
                f"'?' or '#'; expected e.g. {_VMBUS_EMU_EXAMPLE}")
        _check_ring_size(self.ring_size, _VMBUS_EMU_EXAMPLE)


Address: TypeAlias = (
    TcpAddress | UnixAddress | VsockAddress | HyperVAddress | VmbusAddress | VmbusEmuAddress
)


def _valid_host(host: str) -> bool:
    if ":" in host:
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            return False
        return True
    return _HOSTNAME.fullmatch(host) is not None


def parse_url(url: str) -> Address:
    """Parse a transport URL (see the module docstring for the forms).

    Raises:
        TransportError: the URL is malformed; the message names the problem and shows a
            correct URL of the same family.
    """
    if not isinstance(url, str):
        raise TransportError(f"transport URL must be a string, not {type(url).__name__}")
    scheme, sep, rest = url.partition("://")
    scheme = scheme.lower()
    if not sep or scheme not in _PARSERS:
        raise _bad(
            url,
            f"unknown or missing scheme {scheme!r}" if sep else "missing scheme",
            "tcp://127.0.0.1:5005, unix:///run/gsi.sock, vsock://-1:5005, "
            "hyperv://parent/0000138d-facb-11e6-bd58-64006a7986d3, vmbus:// or "
            "vmbus-emu:///tmp/gsi-ring",
        )
    if scheme not in _QUERY_SCHEMES and ("?" in rest or "#" in rest):
        raise _bad(url, "query or fragment not allowed", _EXAMPLES[scheme])
    return _PARSERS[scheme](url, rest)


def _split_port(url: str, rest: str, example: str) -> tuple[str, str]:
    host, sep, port = rest.rpartition(":")
    if not sep or not host or not port:
        raise _bad(url, "expected HOST:PORT", example)
    return host, port


def _parse_tcp(url: str, rest: str) -> TcpAddress:
    host, port_text = _split_port(url, rest, _TCP_EXAMPLE)
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        if ":" not in host:
            raise _bad(url, "brackets are only for IPv6 addresses", _TCP_EXAMPLE)
    elif ":" in host or "[" in host or "]" in host:
        raise _bad(url, "an IPv6 address must be in brackets", _TCP_EXAMPLE)
    if not _DIGITS.fullmatch(port_text) or int(port_text) > 0xFFFF:
        raise _bad(url, f"TCP port {port_text!r} is not a number in 0..65535", _TCP_EXAMPLE)
    if not _valid_host(host):
        raise _bad(url, f"host {host!r} is not a valid host name or IP address", _TCP_EXAMPLE)
    return TcpAddress(host=host, port=int(port_text))


def _parse_unix(url: str, rest: str) -> UnixAddress:
    if not rest.startswith("/"):
        raise _bad(url, "the Unix socket path must be absolute (three slashes)", _UNIX_EXAMPLE)
    if rest == "/" or rest.endswith("/") or "\0" in rest:
        raise _bad(url, "the Unix socket path must name a file", _UNIX_EXAMPLE)
    return UnixAddress(path=rest)


def _vsock_number(url: str, what: str, text: str, names: Mapping[str, int]) -> int:
    named = names.get(text.lower())
    if named is not None:
        return named
    if not _DIGITS.fullmatch(text) or int(text) > _U32_MAX:
        allowed = ", ".join(sorted(k for k in names if k != "-1"))
        raise _bad(
            url,
            f"vsock {what} {text!r} is not a number in 0..4294967295, -1 or one of {allowed}",
            _VSOCK_EXAMPLE,
        )
    return int(text)


def _parse_vsock(url: str, rest: str) -> VsockAddress:
    cid_text, port_text = _split_port(url, rest, _VSOCK_EXAMPLE)
    return VsockAddress(
        cid=_vsock_number(url, "CID", cid_text, _CID_NAMES),
        port=_vsock_number(url, "port", port_text, _PORT_NAMES),
    )


def _guid(url: str, what: str, text: str) -> uuid.UUID:
    match = _GUID.fullmatch(text)
    if match is None or (text.startswith("{") != text.endswith("}")):
        raise _bad(url, f"{what} {text!r} is not a GUID", _HYPERV_EXAMPLE)
    return uuid.UUID(match.group(1))


def _parse_hyperv(url: str, rest: str) -> HyperVAddress:
    vm_text, sep, service_text = rest.partition("/")
    if not sep or not vm_text or not service_text or "/" in service_text:
        raise _bad(url, "expected VMID/SERVICEID", _HYPERV_EXAMPLE)
    vm_id = HV_GUID_NAMES.get(vm_text.lower())
    if vm_id is None:
        if _GUID.fullmatch(vm_text) is None:
            names = ", ".join(HV_GUID_NAMES)
            raise _bad(url, f"VmId {vm_text!r} is not a GUID or one of {names}", _HYPERV_EXAMPLE)
        vm_id = _guid(url, "VmId", vm_text)
    return HyperVAddress(vm_id=vm_id, service_id=_guid(url, "ServiceId", service_text))


def _ring_size_query(url: str, query: str, example: str) -> int | None:
    """``ring_size=N`` (decimal or 0x hex), the only query a vmbus URL takes."""
    if not query:
        return None
    key, sep, value = query.partition("=")
    if key != "ring_size" or not sep or "&" in value:
        raise _bad(url, f"unknown query {query!r} (only ring_size=N)", example)
    try:
        size = int(value, 0)
    except ValueError:
        raise _bad(url, f"ring_size {value!r} is not a number", example) from None
    _check_ring_size(size, example)
    return size


def _parse_vmbus(url: str, rest: str) -> VmbusAddress:
    if "#" in rest:
        raise _bad(url, "fragment not allowed", _VMBUS_EXAMPLE)
    text, _, query = rest.partition("?")
    ring_size = _ring_size_query(url, query, _VMBUS_EXAMPLE)
    if not text:
        return VmbusAddress(ring_size=ring_size)
    match = _GUID.fullmatch(text)
    if match is None or (text.startswith("{") != text.endswith("}")):
        raise _bad(url, f"vmbus device instance {text!r} is not a GUID", _VMBUS_EXAMPLE)
    return VmbusAddress(instance=uuid.UUID(match.group(1)), ring_size=ring_size)


def _parse_vmbus_emu(url: str, rest: str) -> VmbusEmuAddress:
    if "#" in rest:
        raise _bad(url, "fragment not allowed", _VMBUS_EMU_EXAMPLE)
    path, _, query = rest.partition("?")
    if not path.startswith("/"):
        raise _bad(url, "the channel path must be absolute (three slashes)", _VMBUS_EMU_EXAMPLE)
    if path == "/" or path.endswith("/") or "\0" in path:
        raise _bad(url, "the channel path must name a file", _VMBUS_EMU_EXAMPLE)
    return VmbusEmuAddress(path=path,
                           ring_size=_ring_size_query(url, query, _VMBUS_EMU_EXAMPLE))


_PARSERS: Final[Mapping[str, Callable[[str, str], Address]]] = {
    "tcp": _parse_tcp,
    "unix": _parse_unix,
    "vsock": _parse_vsock,
    "hyperv": _parse_hyperv,
    "vmbus": _parse_vmbus,
    "vmbus-emu": _parse_vmbus_emu,
}
_EXAMPLES = {
    "tcp": _TCP_EXAMPLE,
    "unix": _UNIX_EXAMPLE,
    "vsock": _VSOCK_EXAMPLE,
    "hyperv": _HYPERV_EXAMPLE,
    "vmbus": _VMBUS_EXAMPLE,
    "vmbus-emu": _VMBUS_EMU_EXAMPLE,
}
#: Schemes whose parser handles ``?`` (and ``#``) itself.
_QUERY_SCHEMES: Final = frozenset({"unix", "vmbus", "vmbus-emu"})


def _vsock_text(value: int) -> str:
    return "-1" if value == _U32_MAX else str(value)


def format_url(address: Address) -> str:
    """The canonical URL of an address; ``parse_url(format_url(a)) == a``."""
    if isinstance(address, TcpAddress):
        host = f"[{address.host}]" if ":" in address.host else address.host
        return f"tcp://{host}:{address.port}"
    if isinstance(address, UnixAddress):
        return f"unix://{address.path}"
    if isinstance(address, VsockAddress):
        return f"vsock://{_vsock_text(address.cid)}:{_vsock_text(address.port)}"
    if isinstance(address, HyperVAddress):
        return f"hyperv://{address.vm_id}/{address.service_id}"
    if isinstance(address, VmbusAddress | VmbusEmuAddress):
        query = "" if address.ring_size is None else f"?ring_size={address.ring_size:#x}"
        if isinstance(address, VmbusAddress):
            return f"vmbus://{address.instance}{query}"
        return f"vmbus-emu://{address.path}{query}"
    raise TypeError(f"not a transport address: {address!r}")
