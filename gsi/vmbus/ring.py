"""Sans-IO model of the shared-memory ring buffers of one vmbus channel.

Theory of operation
-------------------
A vmbus channel is a pair of single-producer/single-consumer rings in memory shared by
guest and host. Under ``uio_hv_generic`` (PROTOCOL.md section 7) ``/dev/uioN`` map 0 is
``2 * ring_size`` bytes: the guest->host (TX) ring first, the host->guest (RX) ring second
(``vmbus_uio_map`` and ``vmbus_br_setup`` in ``tools/hv/hv_fcopy_uio_daemon.c``).

Each ring is a 4096-byte control page followed by ``ring_size - 4096`` data bytes
(``struct hv_ring_buffer`` in ``include/linux/hyperv.h``, ``struct vmbus_bufring`` in
``tools/hv/vmbus_bufring.h``, both packed)::

    @0  u32 write_index       byte offset into the data area; only the producer writes it
    @4  u32 read_index        byte offset into the data area; only the consumer writes it
    @8  u32 interrupt_mask    consumer sets 1 while draining: "do not interrupt me"
    @12 u32 pending_send_sz   producer waiting for this much room (flow control)
    @16 u32 reserved1[12]
    @64 u32 feature_bits      bit 0 = feat_pending_send_sz
    @68 u8  reserved2[4028]
    @4096 data[ring_size - 4096]

A packet starts at ``write_index`` and may wrap around the end of the data area (it is then
copied in two pieces, ``vmbus_txbr_copyto``/``vmbus_rxbr_copyfrom``)::

    vmpacket_descriptor (16 B): u16 type, u16 offset8, u16 len8, u16 flags, u64 trans_id
    payload, zero-padded to a multiple of 8
    u64 trailer = (write_index at packet start) << 32

``offset8``/``len8`` count 8-byte units from the start of the descriptor: header length
(2 for a plain in-band packet) and packet length without the trailer.

Writer (``vmbus_txbr_write``): free = data_size - used; if ``free <= total`` (total includes
the trailer) the write fails with EAGAIN, so the ring is never filled completely and
``read_index == write_index`` always means empty. It copies descriptor, payload, padding and
trailer, then publishes the new ``write_index`` last.

Reader (``rte_vmbus_chan_recv_raw``/``vmbus_rxbr_read``): needs descriptor + trailer
available, rejects ``offset8 < 2`` and ``offset8 > len8``, copies ``len8 * 8`` bytes, skips
the trailer (which it ignores), then publishes the new ``read_index`` last.

Memory ordering: Python has no barriers. The writer stores the packet before it stores
``write_index`` and the reader copies the packet out before it stores ``read_index``; both
indices are loaded once per operation (one ``struct`` unpack) into a local snapshot and
every descriptor field is loaded once into a local (unpacked in place, or from a copy of
the 16 bytes when the end of the data area splits them). On x86-64 (TSO: stores are not
reordered with older stores, loads not with older loads) that program order is what the
C code's compiler barriers guarantee. The snapshots also mean a host that rewrites the
ring mid-read can only garble the payload, never make this code read out of bounds: every
index and length is checked first and a bad one raises :class:`RingError`.

Cost: a packet's payload is copied once each way (straight between the caller's buffer
and the ring, in two pieces where it wraps), and a batch read stores ``read_index`` once.

Deliberate differences from the C readers: a packet whose descriptor or trailer is not
fully available (``0 < available < len8 * 8 + 8``) is an error here, not EAGAIN, because a
writer publishes whole packets only; indices must be multiples of 8 (every writer keeps
them so); the trailer is not checked (the C readers ignore it too).
"""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass
from typing import Final, TypeAlias

from gsi.errors import GsiError

RING_CONTROL_SIZE: Final = 4096
DESCRIPTOR_SIZE: Final = 16
TRAILER_SIZE: Final = 8
#: ``len8`` is a u16 counted in 8-byte units.
MAX_PACKET_SIZE: Final = 0xFFFF * 8

VM_PKT_DATA_INBAND: Final = 6
VM_PKT_COMP: Final = 11
VMBUS_DATA_PACKET_FLAG_COMPLETION_REQUESTED: Final = 1
#: trans_id the Linux UIO daemon puts on every answer (``VMBUS_RQST_ERROR``).
VMBUS_RQST_ERROR: Final = 0xFFFF_FFFF_FFFF_FFFF
#: ``feature_bits`` bit 0: this ring's producer honours ``pending_send_sz``.
FEAT_PENDING_SEND_SZ: Final = 1

WRITE_INDEX_OFFSET: Final = 0
READ_INDEX_OFFSET: Final = 4
INTERRUPT_MASK_OFFSET: Final = 8
PENDING_SEND_SZ_OFFSET: Final = 12
FEATURE_BITS_OFFSET: Final = 64

_U32: Final = struct.Struct("<I")
#: ``write_index``, ``read_index``: one snapshot of both with one unpack.
_INDICES: Final = struct.Struct("<II")
#: ``write_index``, ``read_index``, ``interrupt_mask``, ``pending_send_sz``.
_CONTROL: Final = struct.Struct("<IIII")
_DESCRIPTOR: Final = struct.Struct("<HHHHQ")
_TRAILER: Final = struct.Struct("<Q")
_MIN_OFFSET8: Final = DESCRIPTOR_SIZE // 8
_U32_MAX: Final = 0xFFFF_FFFF
_U64_MAX: Final = 0xFFFF_FFFF_FFFF_FFFF
_PADDING: Final = bytes(8)

#: Anything this module can work over: an ``mmap`` of ``/dev/uioN``, a ``bytearray`` in
#: tests and emulators, or a writable ``memoryview`` of either.
WritableBuffer: TypeAlias = bytearray | memoryview | mmap.mmap


class RingError(GsiError):
    """The ring's shared state is corrupt: an index out of range or misaligned, a
    descriptor with impossible lengths, a packet longer than the published data.

    The channel cannot be trusted any more; drop it.
    """


class RingFull(RingError):
    """Not enough free room to write this packet now (flow control, not corruption)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Packet:
    """One packet read from a ring.

    Attributes:
        type: descriptor ``type`` (6 = ``VM_PKT_DATA_INBAND``).
        flags: descriptor ``flags`` (1 = completion requested).
        trans_id: descriptor ``trans_id``.
        payload: the ``len8 * 8 - offset8 * 8`` bytes after the header, padding included,
            exactly what ``hv_fcopy_uio_daemon.c`` hands to its protocol code; the real
            message length comes from the payload's own pipe header (8 + ``msgsize``).
    """

    type: int
    flags: int
    trans_id: int
    payload: bytes


def packet_ring_bytes(payload_len: int) -> int:
    """Bytes a packet with ``payload_len`` payload bytes occupies in a ring, trailer
    included (descriptor + payload rounded up to 8 + trailer)."""
    if payload_len < 0:
        raise ValueError("payload_len must be >= 0")
    return ((DESCRIPTOR_SIZE + payload_len + 7) & ~7) + TRAILER_SIZE


def need_signal_after_write(*, old_write_index: int, read_index: int, interrupt_mask: int) -> bool:
    """Whether a producer must interrupt the consumer after publishing a packet.

    Only when the consumer has not masked interrupts and the ring went from empty to
    non-empty, i.e. the write started where the consumer's ``read_index`` is
    (``hv_signal_on_write`` in ``drivers/hv/ring_buffer.c``; ``vmbus_txbr_need_signal`` in
    DPDK and FreeBSD). Read ``read_index`` and ``interrupt_mask`` after publishing.
    """
    return interrupt_mask == 0 and old_write_index == read_index


def need_signal_after_read(
    *, feature_bits: int, pending_send_sz: int, write_space: int, bytes_read: int
) -> bool:
    """Whether a consumer must interrupt a producer that waits for room.

    ``hv_pkt_iter_close`` (``drivers/hv/ring_buffer.c``) and ``rte_vmbus_chan_signal_read``
    (DPDK): only if the producer advertised flow control (``feature_bits`` bit 0), is
    waiting (``pending_send_sz`` != 0), was blocked before this read (``write_space -
    bytes_read <= pending_send_sz``) and can write now (``write_space > pending_send_sz``).

    Args:
        feature_bits: the ring's ``feature_bits``.
        pending_send_sz: the ring's ``pending_send_sz``, read after publishing ``read_index``.
        write_space: :meth:`RingView.bytes_available_to_write` after the read.
        bytes_read: ring bytes consumed by the read (see :func:`packet_ring_bytes`).
    """
    if not feature_bits & FEAT_PENDING_SEND_SZ or pending_send_sz == 0:
        return False
    return write_space - bytes_read <= pending_send_sz < write_space


def _check_u32(name: str, value: int) -> None:
    if not 0 <= value <= _U32_MAX:
        raise ValueError(f"{name} must fit in a u32, got {value!r}")


class RingView:
    """One ring (one direction) over a slice of a writable buffer.

    The view keeps no state of its own: every operation reads the shared indices, so a
    guest view and a host view over the same bytes stay consistent. Not thread-safe:
    one producer and one consumer per ring, as in the kernel.

    Holding a view pins the buffer (an ``mmap`` cannot be closed, a ``bytearray`` cannot
    be resized); call :meth:`release` when done.
    """

    __slots__ = ("_ctl", "_data", "_data_size", "_mv", "_ring_size")

    def __init__(self, buf: WritableBuffer, offset: int, ring_size: int) -> None:
        """Args:
            buf: the shared memory.
            offset: where this ring's control page starts in ``buf``.
            ring_size: control page + data area; a multiple of 4096, at least 8192.

        Raises:
            ValueError: bad geometry, a buffer too short or read-only.
        """
        if ring_size % RING_CONTROL_SIZE or ring_size < 2 * RING_CONTROL_SIZE:
            raise ValueError(f"ring_size must be a multiple of 4096 and >= 8192: {ring_size}")
        if ring_size - RING_CONTROL_SIZE > _U32_MAX:
            raise ValueError("ring data area too large for u32 indices")
        if offset < 0:
            raise ValueError("offset must be >= 0")
        view = memoryview(buf)
        if view.readonly:
            view.release()
            raise ValueError("ring buffer must be writable")
        flat = view.cast("B") if view.format != "B" or view.ndim != 1 else view
        if len(flat) < offset + ring_size:
            view.release()
            raise ValueError(f"buffer of {len(flat)} bytes too short for ring at {offset}")
        self._mv = flat[offset : offset + ring_size]
        self._ctl, self._data = self._mv[:RING_CONTROL_SIZE], self._mv[RING_CONTROL_SIZE:]
        self._ring_size, self._data_size = ring_size, ring_size - RING_CONTROL_SIZE

    @property
    def ring_size(self) -> int:
        """Control page + data area, in bytes."""
        return self._ring_size

    @property
    def data_size(self) -> int:
        """Size of the data area the indices point into (``ring_size - 4096``)."""
        return self._data_size

    def _get(self, off: int) -> int:
        value: int = _U32.unpack_from(self._ctl, off)[0]
        return value

    def _set(self, name: str, off: int, value: int) -> None:
        _check_u32(name, value)
        _U32.pack_into(self._ctl, off, value)

    # The setters store any u32 unchecked (emulators inject faults with them); indices
    # are validated where they are used.
    @property
    def write_index(self) -> int:
        """Raw ``write_index`` (u32 @0)."""
        return self._get(WRITE_INDEX_OFFSET)

    @write_index.setter
    def write_index(self, value: int) -> None:
        self._set("write_index", WRITE_INDEX_OFFSET, value)

    @property
    def read_index(self) -> int:
        """Raw ``read_index`` (u32 @4)."""
        return self._get(READ_INDEX_OFFSET)

    @read_index.setter
    def read_index(self, value: int) -> None:
        self._set("read_index", READ_INDEX_OFFSET, value)

    @property
    def interrupt_mask(self) -> int:
        """Raw ``interrupt_mask`` (u32 @8)."""
        return self._get(INTERRUPT_MASK_OFFSET)

    @interrupt_mask.setter
    def interrupt_mask(self, value: int) -> None:
        self._set("interrupt_mask", INTERRUPT_MASK_OFFSET, value)

    @property
    def pending_send_sz(self) -> int:
        """Raw ``pending_send_sz`` (u32 @12)."""
        return self._get(PENDING_SEND_SZ_OFFSET)

    @pending_send_sz.setter
    def pending_send_sz(self, value: int) -> None:
        self._set("pending_send_sz", PENDING_SEND_SZ_OFFSET, value)

    @property
    def feature_bits(self) -> int:
        """Raw ``feature_bits`` (u32 @64)."""
        return self._get(FEATURE_BITS_OFFSET)

    @feature_bits.setter
    def feature_bits(self, value: int) -> None:
        self._set("feature_bits", FEATURE_BITS_OFFSET, value)

    def init(self, *, feature_bits: int = FEAT_PENDING_SEND_SZ) -> None:
        """Zero the control page and set ``feature_bits`` (emulator side: the guest kernel's
        ``hv_ringbuffer_init`` sets 1). The data area is left as it is."""
        _check_u32("feature_bits", feature_bits)
        self._ctl[:] = bytes(RING_CONTROL_SIZE)
        self.feature_bits = feature_bits

    def release(self) -> None:
        """Release the buffer; the view is unusable afterwards."""
        for mv in (self._data, self._ctl, self._mv):
            mv.release()

    def mask_interrupts(self, masked: bool) -> None:
        """Store ``interrupt_mask`` 1 or 0 (the per-message path: no range check)."""
        _U32.pack_into(self._ctl, INTERRUPT_MASK_OFFSET, 1 if masked else 0)

    def control(self) -> tuple[int, int, int, int]:
        """One raw snapshot of ``(write_index, read_index, interrupt_mask,
        pending_send_sz)``, unvalidated: one load where several fields are needed."""
        w, r, mask, pending = _CONTROL.unpack_from(self._ctl)
        return w, r, mask, pending

    def _index(self, name: str, value: int) -> None:
        if value >= self._data_size or value % 8:
            raise RingError(f"{name} {value:#x} invalid for a {self._data_size:#x}-byte ring")

    def _indices(self) -> tuple[int, int]:
        """One validated snapshot of (write_index, read_index), both read at once."""
        w, r = _INDICES.unpack_from(self._ctl)
        size = self._data_size
        if w >= size or r >= size or (w | r) & 7:
            self._index("write_index", w)
            self._index("read_index", r)
        return w, r

    def bytes_available_to_read(self) -> int:
        """Published bytes not yet consumed (``vmbus_br_availread``).

        Raises:
            RingError: an index is out of range or misaligned.
        """
        w, r = self._indices()
        return (w - r) % self._data_size

    def bytes_available_to_write(self) -> int:
        """Free bytes (``vmbus_br_availwrite``): ``data_size`` when empty. A packet of
        :func:`packet_ring_bytes` ``n`` fits only if this is strictly greater than ``n``.

        Raises:
            RingError: an index is out of range or misaligned.
        """
        return self._data_size - self.bytes_available_to_read()

    def data_bytes(self, start: int, n: int) -> bytes:
        """``n`` bytes of the data area from ``start``, wrapping (raw packet bytes).

        Raises ValueError for a ``start`` outside the data area or ``n`` beyond its size.
        """
        if not 0 <= start < self._data_size or not 0 <= n <= self._data_size:
            raise ValueError(f"{n} bytes at {start:#x} do not fit a {self._data_size:#x} ring")
        return self._copy_out(start, n)

    def _copy_out(self, start: int, n: int) -> bytes:
        """``n`` bytes from data offset ``start``, wrapping: one copy either way."""
        end = start + n
        if end <= self._data_size:
            return self._data[start:end].tobytes()
        return b"".join((self._data[start:], self._data[: end - self._data_size]))

    def _copy_in(self, start: int, src: bytes | bytearray | memoryview) -> None:
        """``src`` to data offset ``start``, wrapping: one copy either way."""
        n = len(src)
        first = self._data_size - start
        if n <= first:
            self._data[start : start + n] = src
        else:
            with memoryview(src) as view:
                self._data[start:] = view[:first]
                self._data[: n - first] = view[first:]

    def _parse_at(self, r: int, avail: int) -> tuple[Packet, int]:
        """The packet at data offset ``r``, with ``avail`` > 0 bytes published from there:
        the packet (its payload copied out once) and the ring bytes it takes, trailer
        included.

        The descriptor is decoded in place (its fields loaded once, into locals) unless
        the end of the data area splits it; so is the payload, copied in two pieces only
        when it wraps.
        """
        if avail < DESCRIPTOR_SIZE + TRAILER_SIZE:
            raise RingError(f"{avail} bytes published, less than a descriptor and trailer")
        size = self._data_size
        if r + DESCRIPTOR_SIZE <= size:
            ptype, offset8, len8, flags, trans_id = _DESCRIPTOR.unpack_from(self._data, r)
        else:
            ptype, offset8, len8, flags, trans_id = _DESCRIPTOR.unpack(
                self._copy_out(r, DESCRIPTOR_SIZE)
            )
        if offset8 < _MIN_OFFSET8:
            raise RingError(f"descriptor offset8 {offset8} below {_MIN_OFFSET8}")
        if offset8 > len8:
            raise RingError(f"descriptor offset8 {offset8} beyond len8 {len8}")
        pkt_len = len8 * 8
        if pkt_len + TRAILER_SIZE > avail:
            raise RingError(
                f"packet of {pkt_len} bytes + trailer exceeds the {avail} bytes published"
            )
        start = (r + offset8 * 8) % size
        payload = self._copy_out(start, pkt_len - offset8 * 8)
        packet = Packet(type=ptype, flags=flags, trans_id=trans_id, payload=payload)
        return packet, pkt_len + TRAILER_SIZE

    def peek_packet(self) -> Packet | None:
        """The next packet, without consuming it; None when the ring is empty.

        Raises:
            RingError: corrupt indices or descriptor (see :meth:`read_packet`).
        """
        w, r = self._indices()
        avail = (w - r) % self._data_size
        return self._parse_at(r, avail)[0] if avail else None

    def read_packet(self) -> Packet | None:
        """Copy out and consume the next packet; None when the ring is empty.

        ``read_index`` is stored only after the packet has been copied out, and it skips
        the trailer. Nothing is consumed when an error is raised.

        Raises:
            RingError: an index out of range or not a multiple of 8, fewer than 24 bytes
                published, ``offset8 < 2``, ``offset8 > len8``, or ``len8 * 8 + 8`` more
                than the bytes published.
        """
        packets, _ = self.read_packets(1)
        return packets[0] if packets else None

    def read_packets(self, limit: int | None = None) -> tuple[list[Packet], int]:
        """Copy out and consume the packets published at one look at ``write_index`` (at
        most ``limit``): the packets and the ring bytes they took.

        Every packet is checked as in :meth:`read_packet`; ``read_index`` is stored once,
        after the last one has been copied out. Nothing is consumed when an error is
        raised, not even the good packets before the bad one.

        Raises:
            RingError: as :meth:`read_packet`.
        """
        w, r = self._indices()
        size = self._data_size
        avail = (w - r) % size
        packets: list[Packet] = []
        consumed = 0
        while avail > consumed and (limit is None or len(packets) < limit):
            packet, taken = self._parse_at((r + consumed) % size, avail - consumed)
            packets.append(packet)
            consumed += taken
        if consumed:
            _U32.pack_into(self._ctl, READ_INDEX_OFFSET, (r + consumed) % size)
        return packets, consumed

    def write_packet(
        self,
        payload: bytes | bytearray | memoryview,
        *,
        trans_id: int,
        type: int = VM_PKT_DATA_INBAND,
        flags: int = 0,
    ) -> bool:
        """Append one packet (``offset8`` = 2) and publish it.

        Writes descriptor, payload, zero padding and trailer, then stores ``write_index``
        last. On any exception nothing is published.

        Returns:
            whether the consumer needs an interrupt by the kernel's rule
            (:func:`need_signal_after_write`). Under ``uio_hv_generic`` the daemon
            ``write()``s 1 after every answer anyway: that also unmasks RX interrupts.

        Raises:
            RingFull: not enough free room now (free bytes must exceed the packet size).
            RingError: the ring's indices are corrupt.
            ValueError: a field out of range, or a packet this ring can never hold.
        """
        w = self.append_packet(payload, trans_id=trans_id, type=type, flags=flags)
        _, r, mask, _ = self.control()
        return need_signal_after_write(old_write_index=w, read_index=r, interrupt_mask=mask)

    def append_packet(
        self,
        payload: bytes | bytearray | memoryview,
        *,
        trans_id: int,
        type: int = VM_PKT_DATA_INBAND,
        flags: int = 0,
    ) -> int:
        """:meth:`write_packet` without the signalling rule: the ``write_index`` the packet
        starts at (what its trailer holds), for a caller that applies the rule itself.

        The packet goes straight into the ring (the payload copied once) unless it wraps
        around the end of the data area.

        Raises:
            as :meth:`write_packet`.
        """
        if not (0 <= type <= 0xFFFF and 0 <= flags <= 0xFFFF and 0 <= trans_id <= _U64_MAX):
            for name, value, limit in (
                ("type", type, 0xFFFF),
                ("flags", flags, 0xFFFF),
                ("trans_id", trans_id, _U64_MAX),
            ):
                if not 0 <= value <= limit:
                    raise ValueError(f"{name} out of range: {value!r}")
        size = self._data_size
        n = len(payload)
        total = packet_ring_bytes(n)
        pkt_len = total - TRAILER_SIZE
        if pkt_len > MAX_PACKET_SIZE or total >= size:
            raise ValueError(f"a {n}-byte payload can never fit a {size}-byte ring")
        w, r = self._indices()
        free = size - (w - r) % size
        if free <= total:
            raise RingFull(f"{total} bytes needed, {free} free (must be more than needed)")
        # Straight into the ring, each piece split in two only where the end of the data
        # area cuts it (the trailer, 8-aligned, never is).
        if w + DESCRIPTOR_SIZE <= size:
            _DESCRIPTOR.pack_into(self._data, w, type, _MIN_OFFSET8, pkt_len // 8, flags,
                                  trans_id)
        else:
            self._copy_in(w, _DESCRIPTOR.pack(type, _MIN_OFFSET8, pkt_len // 8, flags,
                                               trans_id))
        at = (w + DESCRIPTOR_SIZE) % size
        self._copy_in(at, payload)
        pad = pkt_len - DESCRIPTOR_SIZE - n
        if pad:
            self._copy_in((at + n) % size, _PADDING[:pad])
        _TRAILER.pack_into(self._data, (w + pkt_len) % size, w << 32)
        _U32.pack_into(self._ctl, WRITE_INDEX_OFFSET, (w + total) % size)
        return w


class ChannelRings:
    """The two rings of one channel over one ``2 * ring_size`` mapping.

    ``tx`` is the ring this side writes, ``rx`` the ring it reads. For the guest (the
    default) ``tx`` is the first half (guest->host) and ``rx`` the second (host->guest);
    :meth:`for_host` gives the host emulator's view of the same bytes, swapped.
    """

    __slots__ = ("_buf", "_host", "_offset", "_ring_size", "rx", "tx")

    tx: RingView
    rx: RingView

    def __init__(
        self, buf: WritableBuffer, ring_size: int, *, offset: int = 0, host_side: bool = False
    ) -> None:
        """Args:
            buf: the channel mapping (``/dev/uioN`` map 0, or a bytearray).
            ring_size: size of one ring, control page included (0x4000, 0x5000, ...).
            offset: where the mapping starts in ``buf``.
            host_side: build the host's view (tx = second half, rx = first half).

        Raises:
            ValueError: bad geometry or a buffer shorter than ``offset + 2 * ring_size``.
        """
        first = RingView(buf, offset, ring_size)
        try:
            second = RingView(buf, offset + ring_size, ring_size)
        except ValueError:
            first.release()
            raise
        self._buf, self._offset, self._ring_size, self._host = buf, offset, ring_size, host_side
        self.tx, self.rx = (second, first) if host_side else (first, second)

    @property
    def ring_size(self) -> int:
        """Size of one ring, control page included."""
        return self._ring_size

    @property
    def host_side(self) -> bool:
        """True for the host's view (writes host->guest, reads guest->host)."""
        return self._host

    def for_host(self) -> ChannelRings:
        """A host-side view of the same memory (the emulator writes RX and reads TX)."""
        return ChannelRings(self._buf, self._ring_size, offset=self._offset, host_side=True)

    def init(self, *, feature_bits: int = FEAT_PENDING_SEND_SZ) -> None:
        """Zero both control pages (emulator side), see :meth:`RingView.init`."""
        self.tx.init(feature_bits=feature_bits)
        self.rx.init(feature_bits=feature_bits)

    def release(self) -> None:
        """Release both views so the mapping can be closed."""
        self.tx.release()
        self.rx.release()
