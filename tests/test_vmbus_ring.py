"""gsi.vmbus.ring: layout, wrap-around, flow control, corruption, fuzzing."""

from __future__ import annotations

import contextlib
import mmap
import struct

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from gsi.vmbus import (
    FEAT_PENDING_SEND_SZ,
    RING_CONTROL_SIZE,
    VM_PKT_DATA_INBAND,
    VMBUS_RQST_ERROR,
    ChannelRings,
    Packet,
    RingError,
    RingFull,
    RingView,
    need_signal_after_read,
    need_signal_after_write,
    packet_ring_bytes,
)

RING = 0x4000
DATA = RING - RING_CONTROL_SIZE
CTL = RING_CONTROL_SIZE


def make_ring(ring_size: int = RING) -> tuple[bytearray, RingView]:
    buf = bytearray(ring_size)
    ring = RingView(buf, 0, ring_size)
    ring.init()
    return buf, ring


def set_indices(buf: bytearray, *, write: int, read: int, base: int = 0) -> None:
    struct.pack_into("<II", buf, base, write, read)


def expected_packet(payload: bytes, *, start: int, trans_id: int, flags: int = 0) -> bytes:
    padded = (16 + len(payload) + 7) // 8 * 8
    desc = struct.pack("<HHHHQ", 6, 2, padded // 8, flags, trans_id)
    pad = bytes(padded - 16 - len(payload))
    return desc + payload + pad + struct.pack("<Q", start << 32)


def ring_bytes(buf: bytearray, start: int, n: int, data: int = DATA) -> bytes:
    area = buf[CTL : CTL + data]
    return bytes((area + area)[start : start + n])


# --- layout --------------------------------------------------------------------------


def test_exact_layout_at_index_zero() -> None:
    buf, ring = make_ring()
    payload = b"\x01\x00\x00\x00\x0d\x00\x00\x00hello world!!"  # 21 bytes -> 3 pad bytes
    assert ring.write_packet(payload, trans_id=0x1122334455667788, flags=1) is True
    expected = (
        struct.pack("<HHHHQ", 6, 2, 5, 1, 0x1122334455667788)
        + payload
        + b"\0\0\0"
        + struct.pack("<Q", 0)
    )
    assert len(expected) == 48 == packet_ring_bytes(len(payload))
    assert bytes(buf[CTL : CTL + 48]) == expected
    assert struct.unpack_from("<IIII", buf, 0) == (48, 0, 0, 0)
    assert struct.unpack_from("<I", buf, 64) == (FEAT_PENDING_SEND_SZ,)
    assert buf[CTL + 48 :] == bytes(DATA - 48)


def test_control_field_offsets() -> None:
    buf, ring = make_ring()
    ring.write_index, ring.read_index = 8, 16
    ring.interrupt_mask, ring.pending_send_sz, ring.feature_bits = 1, 0x200, 3
    assert struct.unpack_from("<IIII", buf, 0) == (8, 16, 1, 0x200)
    assert struct.unpack_from("<I", buf, 64) == (3,)
    assert buf[16:64] == bytes(48) and buf[68:CTL] == bytes(CTL - 68)
    with pytest.raises(ValueError):
        ring.write_index = 1 << 32


def test_trailer_carries_start_index() -> None:
    buf, ring = make_ring()
    set_indices(buf, write=0x100, read=0x100)
    ring.write_packet(b"x" * 8, trans_id=VMBUS_RQST_ERROR)
    assert ring_bytes(buf, 0x100, 32) == expected_packet(
        b"x" * 8, start=0x100, trans_id=VMBUS_RQST_ERROR
    )


def test_read_roundtrip_and_payload_includes_padding() -> None:
    _, ring = make_ring()
    ring.write_packet(b"abc", trans_id=7, flags=1)
    assert ring.bytes_available_to_read() == 32
    assert ring.peek_packet() == Packet(type=6, flags=1, trans_id=7, payload=b"abc" + bytes(5))
    pkt = ring.read_packet()
    assert pkt is not None and pkt.payload == b"abc\0\0\0\0\0"
    assert ring.read_index == ring.write_index == 32
    assert ring.read_packet() is None


def test_empty_ring_reads_none() -> None:
    _, ring = make_ring()
    assert ring.read_packet() is None and ring.peek_packet() is None
    assert ring.bytes_available_to_read() == 0
    assert ring.bytes_available_to_write() == DATA


def test_reader_honours_larger_offset8() -> None:
    buf, ring = make_ring()
    pkt = struct.pack("<HHHHQ", 7, 3, 4, 0, 9) + b"H" * 8 + b"P" * 8 + bytes(8)
    buf[CTL : CTL + len(pkt)] = pkt
    ring.write_index = len(pkt)
    assert ring.read_packet() == Packet(type=7, flags=0, trans_id=9, payload=b"P" * 8)


# --- wrap-around ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("start", "what"),
    [
        (DATA - 8, "descriptor split"),
        (DATA - 16, "payload starts at the wrap"),
        (DATA - 24, "payload split"),
        (DATA - 40, "payload split late"),
        (DATA - 48, "trailer starts at the wrap"),
        (DATA - 56, "packet ends at the end of the data area"),
    ],
)
def test_wrap_around(start: int, what: str) -> None:
    buf, ring = make_ring()
    set_indices(buf, write=start, read=start)
    payload = bytes(range(1, 28))  # 27 bytes -> 16 + 32 + 8 = 56 ring bytes
    ring.write_packet(payload, trans_id=5)
    assert ring.write_index == (start + 56) % DATA, what
    assert ring_bytes(buf, start, 56) == expected_packet(payload, start=start, trans_id=5)
    pkt = ring.read_packet()
    assert pkt is not None and pkt.payload[:27] == payload and pkt.trans_id == 5
    assert ring.read_index == ring.write_index


@pytest.mark.parametrize("start", [DATA - 8, DATA - 16, DATA - 24, DATA - 40, DATA - 56, 0])
def test_batch_read_across_the_wrap(start: int) -> None:
    """read_packets: descriptors parsed in place or split, payloads copied whole or in two
    pieces, read_index stored once after the last packet, and exact bytes on the way in."""
    buf, ring = make_ring()
    set_indices(buf, write=start, read=start)
    payloads = [bytes(range(1, 28)), b"", bytes(range(100, 109)), b"\xff" * 40]
    at = start
    for i, payload in enumerate(payloads):
        assert ring.append_packet(memoryview(bytearray(payload)), trans_id=i) == at
        assert ring_bytes(buf, at, packet_ring_bytes(len(payload))) == expected_packet(
            payload, start=at, trans_id=i)
        at = (at + packet_ring_bytes(len(payload))) % DATA
    assert ring.write_index == at and ring.read_index == start
    total = sum(packet_ring_bytes(len(p)) for p in payloads)
    first, taken = ring.read_packets(limit=1)
    assert [p.payload for p in first] == [payloads[0] + bytes(5)]
    assert taken == 56 and ring.read_index == (start + 56) % DATA
    rest, taken = ring.read_packets()
    assert [(p.trans_id, p.payload) for p in rest] == [
        (i, p + bytes(-len(p) % 8)) for i, p in enumerate(payloads) if i]
    assert taken == total - 56 and ring.read_index == ring.write_index
    assert ring.read_packets() == ([], 0)


def test_batch_read_consumes_nothing_on_a_bad_packet() -> None:
    buf, ring = make_ring()
    ring.write_packet(b"good", trans_id=1)
    bad_at = ring.write_index
    buf[CTL + bad_at : CTL + bad_at + 16] = struct.pack("<HHHHQ", 6, 1, 3, 0, 0)
    ring.write_index = bad_at + 24
    with pytest.raises(RingError, match="offset8 1 below 2"):
        ring.read_packets()
    assert ring.read_index == 0  # not even the good packet before it
    assert ring.read_packets(limit=1)[0][0].payload == b"good\0\0\0\0"


def test_control_snapshot() -> None:
    buf, ring = make_ring()
    struct.pack_into("<IIII", buf, 0, 0x10, 0x28, 1, 0x300)
    assert ring.control() == (0x10, 0x28, 1, 0x300)
    ring.mask_interrupts(False)
    assert ring.control() == (0x10, 0x28, 0, 0x300) and ring.interrupt_mask == 0
    ring.mask_interrupts(True)
    assert struct.unpack_from("<I", buf, 8) == (1,)


def test_trailer_never_splits() -> None:
    # Indices and lengths are multiples of 8 and so is the data size: a trailer (8 bytes,
    # 8-aligned) always lies wholly before the wrap or wholly after it.
    buf, ring = make_ring()
    set_indices(buf, write=DATA - 24, read=DATA - 24)
    ring.write_packet(b"z" * 8, trans_id=1)
    assert ring.write_index == 8  # the trailer landed at data[0:8]
    assert struct.unpack_from("<Q", buf, CTL) == ((DATA - 24) << 32,)
    assert ring.read_packet() == Packet(type=6, flags=0, trans_id=1, payload=b"z" * 8)


# --- flow control --------------------------------------------------------------------


def test_full_ring_refuses_and_is_unchanged() -> None:
    buf, ring = make_ring(0x2000)  # 4096 data bytes
    ring.write_packet(bytes(4096 - 16 - 8 - 16), trans_id=1)  # total 4080, 16 left
    assert ring.bytes_available_to_write() == 16
    before = bytes(buf)
    with pytest.raises(RingFull):
        ring.write_packet(b"", trans_id=2)  # needs 24
    with pytest.raises(RingFull):
        ring.write_packet(b"", trans_id=2)
    assert bytes(buf) == before


def test_never_fills_completely() -> None:
    buf, ring = make_ring(0x2000)
    ring.write_packet(bytes(4096 - 16 - 8 - 16), trans_id=1)
    ring.read_packet()
    # free is now 4096 == data size; a packet of exactly 4096 bytes must be refused
    with pytest.raises(ValueError):
        ring.write_packet(bytes(4096 - 24), trans_id=1)
    # free 24 exactly equal to the total is refused (free must exceed it)
    set_indices(buf, write=0, read=24)
    with pytest.raises(RingFull):
        ring.write_packet(b"", trans_id=1)
    set_indices(buf, write=0, read=32)
    ring.write_packet(b"", trans_id=1)
    assert ring.bytes_available_to_write() == 8


def test_invalid_arguments() -> None:
    _, ring = make_ring()
    for kwargs in ({"trans_id": -1}, {"trans_id": 1 << 64}, {"trans_id": 0, "flags": 1 << 16}):
        with pytest.raises(ValueError):
            ring.write_packet(b"", **kwargs)
    with pytest.raises(ValueError):
        ring.write_packet(b"", trans_id=0, type=0x10000)
    for size, off, length in ((0x2800, 0, 0x3000), (0x1000, 0, 0x1000), (0x4000, 0, 0x3FFF)):
        with pytest.raises(ValueError):
            RingView(bytearray(length), off, size)
    with pytest.raises(ValueError):
        RingView(bytes(0x4000), 0, 0x4000)  # type: ignore[arg-type]


def test_signal_rules() -> None:
    assert need_signal_after_write(old_write_index=8, read_index=8, interrupt_mask=0)
    assert not need_signal_after_write(old_write_index=8, read_index=8, interrupt_mask=1)
    assert not need_signal_after_write(old_write_index=16, read_index=8, interrupt_mask=0)
    kw = {"feature_bits": 1, "pending_send_sz": 100}
    assert need_signal_after_read(**kw, write_space=120, bytes_read=40)  # 80 -> 120
    assert not need_signal_after_read(**kw, write_space=200, bytes_read=40)  # was not blocked
    assert not need_signal_after_read(**kw, write_space=100, bytes_read=40)  # still blocked
    assert not need_signal_after_read(
        feature_bits=0, pending_send_sz=100, write_space=120, bytes_read=40
    )
    assert not need_signal_after_read(
        feature_bits=1, pending_send_sz=0, write_space=120, bytes_read=40
    )


def test_write_reports_signal_only_on_empty_to_nonempty() -> None:
    _, ring = make_ring()
    assert ring.write_packet(b"a", trans_id=1) is True
    assert ring.write_packet(b"b", trans_id=1) is False
    ring.read_packet()
    ring.read_packet()
    ring.interrupt_mask = 1
    assert ring.write_packet(b"c", trans_id=1) is False


# --- channel -------------------------------------------------------------------------


def test_channel_halves_and_host_view() -> None:
    buf = bytearray(2 * RING)
    guest = ChannelRings(buf, RING)
    host = guest.for_host()
    host.init()
    assert host.host_side and not guest.host_side
    guest.tx.write_packet(b"answer", trans_id=VMBUS_RQST_ERROR)
    assert struct.unpack_from("<I", buf, 0)[0] == 32  # TX control page is first
    assert host.rx.read_packet() == Packet(
        type=VM_PKT_DATA_INBAND, flags=0, trans_id=VMBUS_RQST_ERROR, payload=b"answer\0\0"
    )
    host.tx.write_packet(b"request!", trans_id=3, flags=1)
    assert struct.unpack_from("<I", buf, RING)[0] == 32  # RX control page is second
    assert buf[RING + CTL : RING + CTL + 2] == b"\x06\x00"
    pkt = guest.rx.read_packet()
    assert pkt is not None and pkt.payload == b"request!" and pkt.flags == 1


def test_works_over_mmap_and_releases() -> None:
    m = mmap.mmap(-1, 2 * RING)
    rings = ChannelRings(m, RING)
    rings.init()
    rings.tx.write_packet(b"x", trans_id=1)
    host = rings.for_host()
    assert host.rx.read_packet() is not None
    rings.release()
    host.release()
    m.close()  # would raise BufferError if a view were still exported


# --- corruption ----------------------------------------------------------------------

CORRUPT_CASES: list[tuple[str, int, int, bytes]] = [
    ("write_index beyond data", DATA, 0, b""),
    ("write_index huge", 0xFFFFFFF8, 0, b""),
    ("write_index misaligned", 4, 0, b""),
    ("read_index beyond data", 0, DATA + 8, b""),
    ("read_index misaligned", 32, 1, b""),
    ("too few bytes for a descriptor", 16, 0, b""),
    ("offset8 < 2", 48, 0, struct.pack("<HHHHQ", 6, 1, 5, 0, 0)),
    ("offset8 zero", 48, 0, struct.pack("<HHHHQ", 6, 0, 5, 0, 0)),
    ("offset8 > len8", 48, 0, struct.pack("<HHHHQ", 6, 6, 5, 0, 0)),
    ("len8 zero", 48, 0, struct.pack("<HHHHQ", 6, 2, 0, 0, 0)),
    ("len8 beyond available", 48, 0, struct.pack("<HHHHQ", 6, 2, 6, 0, 0)),
    ("no room for the trailer", 48, 0, struct.pack("<HHHHQ", 6, 2, 6, 0, 0)),
    ("len8 max", 48, 0, struct.pack("<HHHHQ", 6, 2, 0xFFFF, 0, 0)),
]


@pytest.mark.parametrize(("what", "write", "read", "desc"), CORRUPT_CASES)
def test_corrupt_ring_raises_ring_error(what: str, write: int, read: int, desc: bytes) -> None:
    buf, ring = make_ring()
    buf[CTL : CTL + len(desc)] = desc
    set_indices(buf, write=write, read=read)
    before = bytes(buf)
    with pytest.raises(RingError) as info:
        ring.read_packet()
    assert not isinstance(info.value, RingFull), what
    with pytest.raises(RingError):
        ring.peek_packet()
    assert bytes(buf) == before  # nothing consumed


def test_corrupt_indices_refuse_writes() -> None:
    buf, ring = make_ring()
    set_indices(buf, write=DATA, read=0)
    with pytest.raises(RingError):
        ring.write_packet(b"x", trans_id=0)
    with pytest.raises(RingError):
        ring.bytes_available_to_write()
    set_indices(buf, write=0, read=12)
    with pytest.raises(RingError):
        ring.bytes_available_to_read()


def test_descriptor_wrapping_corrupt() -> None:
    buf, ring = make_ring()
    desc = struct.pack("<HHHHQ", 6, 2, 0x100, 0, 0)  # claims 2 KiB, only 48 published
    area = DATA - 8
    buf[CTL + area : CTL + DATA] = desc[:8]
    buf[CTL : CTL + 8] = desc[8:]
    set_indices(buf, write=40, read=area)
    with pytest.raises(RingError, match="exceeds"):
        ring.read_packet()


# --- hypothesis ----------------------------------------------------------------------

RING_SIZES = st.sampled_from([0x2000 + 4096, 0x4000, 0x5000, 0x2000])


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[int, int, list[tuple[str, int]]]:
    ring_size = draw(RING_SIZES)
    start = draw(st.integers(0, (ring_size - CTL) // 8 - 1)) * 8
    max_payload = ring_size - CTL - 16 - 8 - 8
    ops = draw(
        st.lists(
            st.one_of(
                st.tuples(st.just("w"), st.integers(0, min(7000, max_payload))),
                st.tuples(st.just("r"), st.just(0)),
            ),
            min_size=10,
            max_size=80,
        )
    )
    return ring_size, start, ops


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios())
def test_fuzz_write_read_in_order(scenario: tuple[int, int, list[tuple[str, int]]]) -> None:
    ring_size, start, ops = scenario
    buf = bytearray(2 * ring_size)
    guest = ChannelRings(buf, ring_size)
    host = guest.for_host()
    host.init()
    data = ring_size - CTL
    for half in (guest.tx, guest.rx):
        half.write_index = half.read_index = start
    sent: list[bytes] = []
    counter = 0
    for op, size in ops + [("r", 0)] * 200:
        if op == "w":
            counter += 1
            payload = bytes((counter + i) & 0xFF for i in range(size))
            need = packet_ring_bytes(size)
            free = host.tx.bytes_available_to_write()
            before = host.tx.write_index
            try:
                host.tx.write_packet(payload, trans_id=counter)
            except RingFull:
                assert free <= need
                continue
            assert free > need
            if before + need > data:
                event("packet wrapped")
            sent.append(payload)
        else:
            pkt = guest.rx.read_packet()
            if pkt is None:
                assert not sent
                continue
            expected = sent.pop(0)
            assert pkt.payload[: len(expected)] == expected
            assert pkt.payload[len(expected) :] == bytes(len(pkt.payload) - len(expected))
            assert len(pkt.payload) == (len(expected) + 7) // 8 * 8
        used = guest.rx.bytes_available_to_read()
        assert used == sum(packet_ring_bytes(len(p)) for p in sent)
        assert used < data  # never over-filled: empty and full stay distinguishable
    assert not sent and guest.rx.read_packet() is None


GUARD = 4096


@settings(max_examples=500)
@given(
    ring_size=st.sampled_from([0x2000, 0x3000]),
    control=st.binary(min_size=16, max_size=16),
    data=st.binary(max_size=0x2000),
    aligned=st.booleans(),
    payload_len=st.integers(0, 0x2000 - CTL - 32),
)
def test_fuzz_random_state_only_ring_error(
    ring_size: int, control: bytes, data: bytes, aligned: bool, payload_len: int
) -> None:
    # The ring sits between two guard areas that must never change.
    buf = bytearray(b"\xee" * (GUARD + ring_size + GUARD))
    buf[GUARD : GUARD + ring_size] = bytes(ring_size)
    buf[GUARD : GUARD + len(control)] = control
    data = data[: ring_size - CTL]
    buf[GUARD + CTL : GUARD + CTL + len(data)] = data
    ring = RingView(buf, GUARD, ring_size)
    dsize = ring.data_size
    if aligned:  # steer indices into range so that descriptors get parsed too
        ring.write_index = (ring.write_index % dsize) & ~7
        ring.read_index = (ring.read_index % dsize) & ~7
    for _ in range(4):  # anything but RingError propagates and fails the test
        try:
            pkt = ring.read_packet()
        except RingError:
            break
        if pkt is None:
            break
        assert len(pkt.payload) < dsize
        assert ring.read_index < dsize and ring.read_index % 8 == 0
    with contextlib.suppress(RingError):
        ring.write_packet(b"q" * payload_len, trans_id=1)
    assert buf[:GUARD] == buf[-GUARD:] == b"\xee" * GUARD
