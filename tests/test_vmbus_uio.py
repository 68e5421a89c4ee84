"""vmbus:// and vmbus-emu:// URLs, and the real channel's plumbing without Hyper-V.

UIO discovery runs against a fake sysfs tree built in tmp_path (the layout of
``/sys/bus/vmbus/devices/<instance>``); the mapping against a regular file standing in
for ``/dev/uioN``; the doorbell against a socket pair. Nothing here opens a real
``/dev/uio*`` or reads the real ``/sys``.
"""

from __future__ import annotations

import logging
import os
import socket
import struct
import uuid
from pathlib import Path

import pytest
import trio

from gsi.transports import (
    TransportError,
    VmbusAddress,
    VmbusEmuAddress,
    connect,
    format_url,
    listener_url,
    parse_url,
)
from gsi.transports.url import VMBUS_FCOPY_INSTANCE
from gsi.vmbus import (
    RING_CONTROL_SIZE,
    RingStream,
    UioDoorbell,
    find_uio_channel,
    open_uio_channel,
    open_uio_listener,
)

FCOPY = VMBUS_FCOPY_INSTANCE
FCOPY_TEXT = "eb765408-105f-49b6-b4aa-c123b64d17d4"
CLASS_ID = "{34d14be3-dee4-41c8-9ae7-6b174977c192}"


# --- URLs ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "expected", "canonical"),
    [
        ("vmbus://", VmbusAddress(), f"vmbus://{FCOPY_TEXT}"),
        (f"vmbus://{FCOPY_TEXT}", VmbusAddress(instance=FCOPY), None),
        (f"VMBUS://{{{FCOPY_TEXT.upper()}}}", VmbusAddress(), f"vmbus://{FCOPY_TEXT}"),
        ("vmbus://?ring_size=0x5000", VmbusAddress(ring_size=0x5000),
         f"vmbus://{FCOPY_TEXT}?ring_size=0x5000"),
        ("vmbus-emu:///tmp/r", VmbusEmuAddress(path="/tmp/r"), None),
        ("vmbus-emu:///tmp/a b/r?ring_size=16384",
         VmbusEmuAddress(path="/tmp/a b/r", ring_size=0x4000),
         "vmbus-emu:///tmp/a b/r?ring_size=0x4000"),
        ("vmbus-emu:///r?ring_size=0x5000", VmbusEmuAddress(path="/r", ring_size=0x5000),
         None),
    ],
)
def test_parse_vmbus_urls(url: str, expected: object, canonical: str | None) -> None:
    address = parse_url(url)
    assert address == expected
    assert format_url(address) == (canonical or url)
    assert parse_url(format_url(address)) == address


@pytest.mark.parametrize(
    ("url", "needle"),
    [
        ("vmbus://nope", "is not a GUID"),
        (f"vmbus://{FCOPY_TEXT}/x", "is not a GUID"),
        ("vmbus://?ring=1", "unknown query"),
        ("vmbus://?ring_size=0x4001", "not a multiple of 4096"),
        ("vmbus://?ring_size=0x1000", "not a multiple of 4096"),
        ("vmbus://?ring_size=big", "is not a number"),
        ("vmbus://#x", "fragment"),
        ("vmbus-emu://relative", "must be absolute"),
        ("vmbus-emu:///", "must name a file"),
        ("vmbus-emu:///tmp/dir/", "must name a file"),
        ("vmbus-emu:///tmp/r?ring_size=0x4000&x=1", "unknown query"),
        ("vmbus-emu:///tmp/r#frag", "fragment"),
    ],
)
def test_parse_vmbus_invalid(url: str, needle: str) -> None:
    with pytest.raises(TransportError) as info:
        parse_url(url)
    assert needle in str(info.value) and "e.g." in str(info.value)


def test_vmbus_address_constructors_validate() -> None:
    with pytest.raises(TransportError):
        VmbusEmuAddress(path="/a?b")
    with pytest.raises(TransportError):
        VmbusEmuAddress(path="/a", ring_size=True)
    with pytest.raises(TransportError):
        VmbusAddress(instance=FCOPY_TEXT)  # type: ignore[arg-type]


async def test_connect_to_the_real_channel_is_refused() -> None:
    with pytest.raises(TransportError, match="listen only"):
        await connect("vmbus://")


# --- UIO discovery in a fake sysfs -----------------------------------------------------


def fake_sysfs(tmp_path: Path, *, instance: str = FCOPY_TEXT, driver: str | None =
               "uio_hv_generic", uio: tuple[str, ...] = ("uio3",), ring_bytes: int | None =
               0x8000, map_size: str | None = "0x0000000000008000",
               class_id: str = CLASS_ID) -> Path:
    """``sys/bus/vmbus/devices/<instance>`` as the kernel lays it out; returns ``sys``."""
    sysfs = tmp_path / "sys"
    device = sysfs / "bus/vmbus/devices" / instance
    device.mkdir(parents=True)
    (device / "class_id").write_text(class_id + "\n")
    if driver is not None:
        drivers = sysfs / "bus/vmbus/drivers" / driver
        drivers.mkdir(parents=True)
        (device / "driver").symlink_to(os.path.relpath(drivers, device))
    for name in uio:
        maps = device / "uio" / name / "maps" / "map0"
        maps.mkdir(parents=True)
        if map_size is not None:
            (maps / "size").write_text(map_size + "\n")
    if ring_bytes is not None:
        channel = device / "channels" / "14"
        channel.mkdir(parents=True)
        with (channel / "ring").open("wb") as f:
            f.truncate(ring_bytes)
    return sysfs


def test_find_channel(tmp_path: Path) -> None:
    sysfs = fake_sysfs(tmp_path)
    info = find_uio_channel(sysfs=sysfs, dev=tmp_path / "dev")
    assert info.instance == FCOPY
    assert info.uio_name == "uio3" and info.device_node == tmp_path / "dev/uio3"
    assert info.ring_size == 0x4000 and info.map_size == 0x8000
    assert info.ring_file == sysfs / f"bus/vmbus/devices/{FCOPY_TEXT}/channels/14/ring"


def test_ring_size_0x5000_and_lowest_uio(tmp_path: Path) -> None:
    sysfs = fake_sysfs(tmp_path, uio=("uio10", "uio2"), ring_bytes=0xA000, map_size="0xa000")
    info = find_uio_channel(sysfs=sysfs)
    assert (info.uio_name, info.ring_size) == ("uio2", 0x5000)


def test_ring_file_of_an_older_kernel_loses_to_map0(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    sysfs = fake_sysfs(tmp_path, ring_bytes=0x400000, map_size="0x8000")
    with caplog.at_level(logging.WARNING, logger="gsi.vmbus"):
        assert find_uio_channel(sysfs=sysfs).ring_size == 0x4000
    assert "using map 0" in caplog.text


def test_ring_size_from_map0_or_url(tmp_path: Path) -> None:
    sysfs = fake_sysfs(tmp_path, ring_bytes=None, map_size="0xa000")
    assert find_uio_channel(sysfs=sysfs).ring_size == 0x5000
    assert find_uio_channel(sysfs=sysfs, ring_size=0x4000).ring_size == 0x4000
    with pytest.raises(TransportError, match="map 0 has 0xa000"):
        find_uio_channel(sysfs=sysfs, ring_size=0x8000)


def test_other_instance(tmp_path: Path) -> None:
    other = str(uuid.uuid4())
    sysfs = fake_sysfs(tmp_path, instance=other)
    assert find_uio_channel(uuid.UUID(other), sysfs=sysfs).instance == uuid.UUID(other)


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"instance": str(uuid.UUID(int=1))}, "Guest Service Interface"),
        ({"driver": None}, "not bound to any driver"),
        ({"driver": "hv_utils"}, "bound to hv_utils, not uio_hv_generic"),
        ({"uio": ()}, "no uio device"),
        ({"class_id": "{f8615163-df3e-46c5-913f-f2d2f965ed0e}"}, "not the file copy service"),
        ({"ring_bytes": 0x9000, "map_size": None}, "not a multiple of 4096"),
        ({"ring_bytes": None, "map_size": None}, "no channels/*/ring file"),
    ],
)
def test_discovery_errors(tmp_path: Path, kwargs: dict[str, object], needle: str) -> None:
    sysfs = fake_sysfs(tmp_path, **kwargs)  # type: ignore[arg-type]
    with pytest.raises(TransportError, match=needle.replace("*", r"\*")) as info:
        find_uio_channel(sysfs=sysfs)
    assert FCOPY_TEXT in str(info.value)


def test_binding_hint_names_new_id(tmp_path: Path) -> None:
    with pytest.raises(TransportError) as info:
        find_uio_channel(sysfs=fake_sysfs(tmp_path, driver=None))
    assert "/sys/bus/vmbus/drivers/uio_hv_generic/new_id" in str(info.value)
    assert "docs/vmbus.md" in str(info.value)


# --- the mapping, over a regular file standing in for /dev/uioN --------------------------


def fake_device(tmp_path: Path, ring_size: int) -> Path:
    node = tmp_path / "dev" / "uio3"
    node.parent.mkdir(exist_ok=True)
    image = bytearray(2 * ring_size)
    struct.pack_into("<IIII", image, ring_size, 0x18, 0x08, 1, 0)  # RX: 16 bytes, masked
    node.write_bytes(image)
    return node


@pytest.mark.parametrize("ring_size", [0x4000, 0x5000])
async def test_open_maps_tx_first_and_unmasks_rx(tmp_path: Path, ring_size: int) -> None:
    sysfs = fake_sysfs(tmp_path, ring_bytes=2 * ring_size, map_size=hex(2 * ring_size))
    node = fake_device(tmp_path, ring_size)
    channel = open_uio_channel(find_uio_channel(sysfs=sysfs, dev=tmp_path / "dev"))
    try:
        assert channel.guest and channel.name == f"vmbus://{FCOPY_TEXT}"
        assert channel.rings.rx.bytes_available_to_read() == 0x10
        assert channel.rings.tx.bytes_available_to_read() == 0
        channel.rings.tx.write_index = 0x40
    finally:
        channel.close()
    image = node.read_bytes()
    assert struct.unpack_from("<I", image, 0) == (0x40,)  # TX control page at offset 0
    assert struct.unpack_from("<III", image, ring_size) == (0x18, 0x08, 0)  # RX unmasked


async def test_open_listener_hands_out_the_channel(tmp_path: Path) -> None:
    sysfs = fake_sysfs(tmp_path)
    fake_device(tmp_path, 0x4000)
    listener = await open_uio_listener(VmbusAddress(), sysfs=sysfs, dev=tmp_path / "dev")
    assert listener_url(listener) == f"vmbus://{FCOPY_TEXT}"
    stream = await listener.accept()
    assert isinstance(stream, RingStream)
    await stream.aclose()
    await listener.aclose()
    assert listener.channel.closed


async def test_open_errors_name_the_node(tmp_path: Path) -> None:
    sysfs = fake_sysfs(tmp_path)
    with pytest.raises(TransportError, match="uio3"):
        await open_uio_listener(VmbusAddress(), sysfs=sysfs, dev=tmp_path / "dev")
    node = fake_device(tmp_path, 0x4000)
    node.write_bytes(b"short")
    with pytest.raises(TransportError, match="cannot map"):
        await open_uio_listener(VmbusAddress(), sysfs=sysfs, dev=tmp_path / "dev")


# --- the doorbell, over a socket pair --------------------------------------------------


async def test_uio_doorbell_reads_and_writes_four_bytes() -> None:
    ours, theirs = socket.socketpair()
    with theirs:
        ours.setblocking(False)
        doorbell = UioDoorbell(ours.detach(), "fake-uio")
        doorbell.ring()
        assert theirs.recv(16) == struct.pack("<i", 1)  # irqcontrol(1)
        with trio.fail_after(5):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(doorbell.wait)
                await trio.testing.wait_all_tasks_blocked()
                theirs.send(struct.pack("<i", 7))  # the interrupt count
        doorbell.close()
        doorbell.close()
        with pytest.raises(trio.ClosedResourceError):
            doorbell.ring()


async def test_uio_doorbell_close_wakes_a_waiter() -> None:
    ours, theirs = socket.socketpair()
    with theirs:
        ours.setblocking(False)
        doorbell = UioDoorbell(ours.detach(), "fake-uio")
        raised: list[BaseException] = []

        async def waiter() -> None:
            try:
                await doorbell.wait()
            except trio.ClosedResourceError as exc:
                raised.append(exc)

        with trio.fail_after(5):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(waiter)
                await trio.testing.wait_all_tasks_blocked()
                doorbell.close()
        assert len(raised) == 1


def test_ring_control_size_is_a_page() -> None:
    assert RING_CONTROL_SIZE == 4096


class _RescindedDoorbell:
    """What UioDoorbell raises once the host has rescinded the channel (read: EIO)."""

    def __init__(self) -> None:
        self.waits = 0

    async def wait(self) -> None:
        self.waits += 1
        await trio.lowlevel.checkpoint()
        raise trio.BrokenResourceError("/dev/uio3: the host rescinded the channel")

    def ring(self) -> None:
        pass

    def close(self) -> None:
        pass


async def test_a_rescinded_channel_stops_the_receiver(tmp_path: Path) -> None:
    from gsi.server import Receiver, ReceiverConfig
    from gsi.vmbus import ChannelListener, ChannelRings, RingChannel

    doorbell = _RescindedDoorbell()
    rings = ChannelRings(bytearray(0x8000), 0x4000)
    rings.init()
    channel = RingChannel(rings, doorbell, guest=True, name="vmbus://x", recheck_interval=1)
    listener = ChannelListener(channel, "vmbus://x")
    receiver = Receiver(ReceiverConfig(root=tmp_path, fsync=False))
    raised: list[BaseException] = []
    with trio.fail_after(10):
        try:
            await receiver.serve([listener])
        except BaseException as exc:  # an ExceptionGroup from the receiver's nurseries
            raised.append(exc)
    assert doorbell.waits == 1  # no second session spinning on a dead channel
    assert "rescinded" in repr(raised) and "the channel is broken" in repr(raised)
    assert channel.closed
