"""The emulated host of a vmbus channel (``vmbus-emu:///PATH``), packet by packet.

A receiver started with ``--listen vmbus-emu:///PATH?ring_size=0x4000`` creates the
channel (:mod:`gsi.vmbus.emu`: the ``/dev/uioN`` ring layout in a shared file, FIFOs for
interrupts). ``host-sim copy --to vmbus-emu:///PATH`` needs nothing from this module:
``gsi.transports.connect`` attaches as the host and :class:`~host_sim.client.HostClient`
runs over the resulting stream unchanged, one message per ring packet, by the same rules
as the real host's ring (flow control, interrupt masking).

:class:`EmulatedHost` is the same attachment opened up, for experiments and byte-level
tests: write any packet (payload, trans_id, flags, type, extra bytes after the message)
into the guest's RX ring, read the guest's answers with their exact ring bytes
(descriptor, payload, padding, trailer), and look at the rings' control fields. Its
:meth:`~EmulatedHost.client` runs a :class:`~host_sim.client.HostClient` over the same
channel, so the two can be mixed.
"""

from __future__ import annotations

import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Final

import trio

from gsi.constants import DATA_FRAGMENT
from gsi.transports import TransportError, VmbusEmuAddress, parse_url
from gsi.vmbus import (
    DESCRIPTOR_SIZE,
    TRAILER_SIZE,
    VM_PKT_DATA_INBAND,
    ChannelRings,
    Packet,
    RingChannel,
    RingStream,
    attach_host_channel,
)

from .client import HostClient

_LEN8: Final = struct.Struct("<HHH")


@dataclass(frozen=True, slots=True, kw_only=True)
class RawPacket:
    """A packet the guest wrote, as it lay in its TX ring.

    Attributes:
        start: offset in the TX data area where its descriptor began (its trailer
            holds ``start << 32``).
        raw: descriptor, payload, padding and trailer, exactly as in the ring.
        packet: the decoded packet (its payload includes the padding).
    """

    start: int
    raw: bytes
    packet: Packet


def _address(url_or_path: str) -> VmbusEmuAddress:
    address = parse_url(url_or_path if "://" in url_or_path else f"vmbus-emu://{url_or_path}")
    if not isinstance(address, VmbusEmuAddress):
        raise TransportError(f"{url_or_path!r} is not a vmbus-emu:// URL")
    return address


class EmulatedHost:
    """The host's end of an emulated channel (see the module docstring).

    Use :func:`attach_emulated_host`. Not for concurrent use with :meth:`client`
    reading at the same time: both consume the guest's TX ring.
    """

    def __init__(self, channel: RingChannel) -> None:
        self.channel = channel

    @property
    def url(self) -> str:
        return self.channel.name

    @property
    def rings(self) -> ChannelRings:
        """The host's view: ``tx`` is the guest's RX ring, ``rx`` the guest's TX ring."""
        return self.channel.rings

    async def send(self, payload: bytes, *, trans_id: int | None = None, flags: int = 0,
                   packet_type: int = VM_PKT_DATA_INBAND) -> int:
        """Write one packet into the guest's RX ring and signal it if the kernel's rule
        says so; returns where the packet starts in that ring's data area.

        Bytes after the message's ``8 + msgsize`` are sent as they are (the guest sees
        them as padding and echoes them).
        """
        start = self.rings.tx.write_index
        await self.channel.write(payload, trans_id=trans_id, flags=flags,
                                 packet_type=packet_type)
        self.channel.flush_signal()
        return start

    async def wait_readable(self) -> None:
        """Until the guest's TX ring holds a packet."""
        while True:
            self.channel.check_usable()
            if self.rings.rx.bytes_available_to_read():
                return
            if self.channel.ready_to_sleep():
                await self.channel.wait()

    def peek_raw(self) -> RawPacket | None:
        """The next packet in the guest's TX ring with its raw bytes, not consumed."""
        rx = self.rings.rx
        packet = rx.peek_packet()
        if packet is None:
            return None
        start = rx.read_index
        _, _, len8 = _LEN8.unpack(rx.data_bytes(start, DESCRIPTOR_SIZE)[:6])
        return RawPacket(start=start, raw=rx.data_bytes(start, len8 * 8 + TRAILER_SIZE),
                         packet=packet)

    async def receive(self) -> RawPacket:
        """Wait for the guest's next packet and consume it."""
        await self.wait_readable()
        raw = self.peek_raw()
        assert raw is not None
        self.channel.read_packets(limit=1)
        return raw

    def client(self, *, fragment_size: int = DATA_FRAGMENT,
               full_write_body: bool = True) -> HostClient:
        """A HostClient over this channel (closing it does not detach)."""
        return HostClient(RingStream(self.channel), fragment_size=fragment_size,
                          full_write_body=full_write_body)

    async def aclose(self) -> None:
        """Detach (the receiver keeps the channel)."""
        self.channel.close()
        await trio.lowlevel.checkpoint()


@asynccontextmanager
async def attach_emulated_host(url_or_path: str) -> AsyncIterator[EmulatedHost]:
    """Attach to the receiver listening on ``vmbus-emu:///PATH`` (or ``PATH``).

    Raises:
        TransportError: no receiver there, or another host is attached.
    """
    address = _address(url_or_path)
    host = EmulatedHost(attach_host_channel(address.path, address.ring_size))
    try:
        yield host
    finally:
        with trio.CancelScope(shield=True):
            await host.aclose()
