"""Transport URLs and the vsock port <-> Hyper-V service GUID mapping (no sockets)."""

from __future__ import annotations

import socket
import uuid

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gsi.errors import GsiError
from gsi.transports import (
    HV_GUID_NAMES,
    VMADDR_CID_ANY,
    VMADDR_PORT_ANY,
    HyperVAddress,
    TcpAddress,
    TransportError,
    UnixAddress,
    VsockAddress,
    format_url,
    parse_url,
    service_guid_to_vsock_port,
    vsock_port_to_service_guid,
)

SVC = "0000138d-facb-11e6-bd58-64006a7986d3"
VM = "5c1a4b0e-2a4b-4f7e-9a61-0a2b3c4d5e6f"


@pytest.mark.parametrize(
    ("url", "expected", "canonical"),
    [
        ("tcp://127.0.0.1:5005", TcpAddress(host="127.0.0.1", port=5005), None),
        ("tcp://localhost:0", TcpAddress(host="localhost", port=0), None),
        ("tcp://[::1]:65535", TcpAddress(host="::1", port=65535), None),
        ("tcp://[fe80::1%eth0]:1", TcpAddress(host="fe80::1%eth0", port=1), None),
        ("TCP://host-1.example.org:80", TcpAddress(host="host-1.example.org", port=80),
         "tcp://host-1.example.org:80"),
        ("unix:///run/gsi.sock", UnixAddress(path="/run/gsi.sock"), None),
        ("unix:///tmp/a b/c:d.sock", UnixAddress(path="/tmp/a b/c:d.sock"), None),
        ("unix:///tmp/q?x#y", UnixAddress(path="/tmp/q?x#y"), None),
        ("vsock://-1:5005", VsockAddress(cid=VMADDR_CID_ANY, port=5005), None),
        ("vsock://any:5005", VsockAddress(cid=VMADDR_CID_ANY, port=5005), "vsock://-1:5005"),
        ("vsock://4294967295:1", VsockAddress(cid=VMADDR_CID_ANY, port=1), "vsock://-1:1"),
        ("vsock://local:0", VsockAddress(cid=1, port=0), "vsock://1:0"),
        ("vsock://HOST:22", VsockAddress(cid=2, port=22), "vsock://2:22"),
        ("vsock://hypervisor:7", VsockAddress(cid=0, port=7), "vsock://0:7"),
        ("vsock://3:-1", VsockAddress(cid=3, port=VMADDR_PORT_ANY), None),
        ("vsock://3:any", VsockAddress(cid=3, port=VMADDR_PORT_ANY), "vsock://3:-1"),
        ("vsock://3:4294967294", VsockAddress(cid=3, port=0xFFFFFFFE), None),
        (f"hyperv://{VM}/{SVC}",
         HyperVAddress(vm_id=uuid.UUID(VM), service_id=uuid.UUID(SVC)), None),
        (f"hyperv://{VM.upper()}/{{{SVC}}}",
         HyperVAddress(vm_id=uuid.UUID(VM), service_id=uuid.UUID(SVC)),
         f"hyperv://{VM}/{SVC}"),
        (f"hyperv://Parent/{SVC}",
         HyperVAddress(vm_id=uuid.UUID("a42e7cda-d03f-480c-9cc2-a4de20abb878"),
                       service_id=uuid.UUID(SVC)),
         f"hyperv://a42e7cda-d03f-480c-9cc2-a4de20abb878/{SVC}"),
    ],
)  # fmt: skip
def test_parse_valid(url: str, expected: object, canonical: str | None) -> None:
    address = parse_url(url)
    assert address == expected
    assert format_url(address) == (canonical or url)
    assert parse_url(format_url(address)) == address


@pytest.mark.parametrize(
    ("url", "needle"),
    [
        ("", "missing scheme"),
        ("127.0.0.1:5005", "missing scheme"),
        ("udp://127.0.0.1:5005", "unknown or missing scheme 'udp'"),
        ("tcp://127.0.0.1", "HOST:PORT"),
        ("tcp://:5005", "HOST:PORT"),
        ("tcp://127.0.0.1:", "HOST:PORT"),
        ("tcp://127.0.0.1:65536", "not a number in 0..65535"),
        ("tcp://127.0.0.1:-1", "not a number in 0..65535"),
        ("tcp://127.0.0.1:http", "not a number in 0..65535"),
        ("tcp://127.0.0.1:5005/path", "not a number"),
        ("tcp://127.0.0.1:5005?x=1", "query or fragment"),
        ("tcp://::1:5005", "must be in brackets"),
        ("tcp://[::1:5005", "must be in brackets"),
        ("tcp://[127.0.0.1]:5005", "only for IPv6"),
        ("tcp://[::g]:5005", "not a valid host"),
        ("tcp://user@host:5005", "not a valid host"),
        ("tcp://ho st:5005", "not a valid host"),
        ("unix://relative/path", "must be absolute"),
        ("unix://", "must be absolute"),
        ("unix:///", "must name a file"),
        ("unix:///tmp/dir/", "must name a file"),
        ("vsock://2", "HOST:PORT"),
        ("vsock://-2:5005", "vsock CID '-2'"),
        ("vsock://4294967296:5005", "vsock CID"),
        ("vsock://2:4294967296", "vsock port"),
        ("vsock://2:x", "vsock port 'x'"),
        ("vsock://guest:5005", "vsock CID 'guest'"),
        (f"hyperv://{VM}", "VMID/SERVICEID"),
        (f"hyperv://{VM}/{SVC}/x", "VMID/SERVICEID"),
        (f"hyperv://nope/{SVC}", "VmId 'nope' is not a GUID or one of"),
        (f"hyperv://{VM}/5005", "ServiceId '5005' is not a GUID"),
        (f"hyperv://{VM}/{{{SVC}", "is not a GUID"),
        (f"hyperv://{VM[:-1]}/{SVC}", "is not a GUID"),
    ],
)
def test_parse_invalid(url: str, needle: str) -> None:
    with pytest.raises(TransportError) as info:
        parse_url(url)
    message = str(info.value)
    assert needle in message
    assert repr(url) in message and "e.g." in message
    assert isinstance(info.value, GsiError)


def test_parse_non_string() -> None:
    with pytest.raises(TransportError, match="must be a string"):
        parse_url(b"tcp://127.0.0.1:1")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "make",
    [
        lambda: TcpAddress(host="127.0.0.1", port=65536),
        lambda: TcpAddress(host="127.0.0.1", port=True),
        lambda: TcpAddress(host="", port=1),
        lambda: TcpAddress(host="::1::", port=1),
        lambda: UnixAddress(path="relative"),
        lambda: VsockAddress(cid=-1, port=1),
        lambda: VsockAddress(cid=1, port=2**32),
        lambda: HyperVAddress(vm_id=VM, service_id=uuid.UUID(SVC)),  # type: ignore[arg-type]
    ],
)
def test_address_constructors_validate(make: object) -> None:
    with pytest.raises(TransportError):
        make()  # type: ignore[operator]


def test_format_rejects_non_address() -> None:
    with pytest.raises(TypeError):
        format_url("tcp://127.0.0.1:1")  # type: ignore[arg-type]


_ipv4 = st.ip_addresses(v=4).map(str)
_ipv6 = st.ip_addresses(v=6).map(str)
_addresses = st.one_of(
    st.builds(TcpAddress, host=st.one_of(_ipv4, _ipv6, st.just("localhost")),
              port=st.integers(0, 0xFFFF)),
    st.builds(UnixAddress, path=st.text(
        st.characters(exclude_characters="\0", codec="utf-8"),
        min_size=1).map(lambda s: "/" + s.rstrip("/") + "x")),
    st.builds(VsockAddress, cid=st.integers(0, 2**32 - 1), port=st.integers(0, 2**32 - 1)),
    st.builds(HyperVAddress, vm_id=st.uuids(), service_id=st.uuids()),
)  # fmt: skip


@given(_addresses)
def test_round_trip(address: TcpAddress | UnixAddress | VsockAddress | HyperVAddress) -> None:
    assert parse_url(format_url(address)) == address


@pytest.mark.parametrize(
    ("name", "guid"),
    [
        ("zero", "00000000-0000-0000-0000-000000000000"),
        ("wildcard", "00000000-0000-0000-0000-000000000000"),
        ("broadcast", "ffffffff-ffff-ffff-ffff-ffffffffffff"),
        ("children", "90db8b89-0d35-4f79-8ce9-49ea0ac8b7cd"),
        ("loopback", "e0e16197-dd56-4a10-9195-5ee7a155a838"),
        ("parent", "a42e7cda-d03f-480c-9cc2-a4de20abb878"),
        ("silohost", "36bd0c5c-7276-4223-88ba-7d03b654c568"),
    ],
)
def test_hv_guid_names(name: str, guid: str) -> None:
    assert HV_GUID_NAMES[name] == uuid.UUID(guid)
    for spelling in (name, name.upper(), name.capitalize()):
        address = parse_url(f"hyperv://{spelling}/{SVC}")
        assert isinstance(address, HyperVAddress)
        assert address.vm_id == uuid.UUID(guid)
    python_name = getattr(socket, f"HV_GUID_{name.upper()}", None)  # Windows, Python 3.12+
    if python_name is not None:
        assert uuid.UUID(python_name) == uuid.UUID(guid)


def test_hv_guid_names_complete() -> None:
    assert set(HV_GUID_NAMES) == {
        "zero", "wildcard", "broadcast", "children", "loopback", "parent", "silohost"
    }  # fmt: skip


@pytest.mark.parametrize(
    ("port", "guid"),
    [
        (5005, "0000138d-facb-11e6-bd58-64006a7986d3"),
        (0, "00000000-facb-11e6-bd58-64006a7986d3"),
        (0xFFFFFFFF, "ffffffff-facb-11e6-bd58-64006a7986d3"),
        (0x12345678, "12345678-facb-11e6-bd58-64006a7986d3"),
    ],
)
def test_vsock_port_guid(port: int, guid: str) -> None:
    assert vsock_port_to_service_guid(port) == uuid.UUID(guid)
    assert service_guid_to_vsock_port(uuid.UUID(guid)) == port
    assert service_guid_to_vsock_port(guid) == port
    assert service_guid_to_vsock_port(guid.upper()) == port


@given(st.integers(0, 2**32 - 1))
def test_vsock_port_guid_round_trip(port: int) -> None:
    assert service_guid_to_vsock_port(vsock_port_to_service_guid(port)) == port


@pytest.mark.parametrize(
    "guid",
    [
        "0000138d-facb-11e6-bd58-64006a7986d4",
        "0000138d-0000-11e6-bd58-64006a7986d3",
        "a42e7cda-d03f-480c-9cc2-a4de20abb878",
        uuid.UUID(int=0),
    ],
)
def test_non_template_guid_rejected(guid: str | uuid.UUID) -> None:
    with pytest.raises(TransportError, match=r"not a vsock port GUID.*0000138d-facb"):
        service_guid_to_vsock_port(guid)


@pytest.mark.parametrize("guid", ["not-a-guid", "", 5005])
def test_invalid_guid_rejected(guid: object) -> None:
    with pytest.raises(TransportError, match="is not a GUID"):
        service_guid_to_vsock_port(guid)  # type: ignore[arg-type]


@pytest.mark.parametrize("port", [-1, 2**32, True, "5005"])
def test_vsock_port_out_of_range(port: object) -> None:
    with pytest.raises(TransportError, match=r"not in 0\.\.4294967295"):
        vsock_port_to_service_guid(port)  # type: ignore[arg-type]
