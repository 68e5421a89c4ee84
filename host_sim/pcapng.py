"""Export a trace to pcapng, as one TCP/IPv4 connection over loopback.

Wireshark and tshark know no fcopy dissector, but they follow TCP streams. So the trace
becomes what a capture of the same connection over TCP would show: link type
LINKTYPE_RAW (101, each packet an IPv4 packet), the host at 127.0.0.1:49152, the
receiver at 127.0.0.2:5005, a synthesized three-way handshake at the trace's start, then
one segment per record (records above 65495 bytes split into several), with sequence
and acknowledgment numbers counting the bytes each side sent, and a FIN for each end of
stream the trace records. IP and TCP checksums are correct. Timestamps are the start
time plus each record's offset, in nanoseconds (``if_tsresol`` 9). Each data packet
carries a comment naming its direction and record.

Blocks written (pcapng, little-endian): one Section Header Block (with the trace's
metadata as a comment), one Interface Description Block, Enhanced Packet Blocks.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from typing import Final

from gsi.trace import Direction, Trace

LINKTYPE_RAW: Final = 101
HOST_ADDR: Final = bytes([127, 0, 0, 1])
GUEST_ADDR: Final = bytes([127, 0, 0, 2])
HOST_PORT: Final = 49152
GUEST_PORT: Final = 5005
MAX_SEGMENT: Final = 65535 - 20 - 20
"""Payload bytes per packet: the IPv4 total length is a u16."""
HOST_ISN: Final = 1000
GUEST_ISN: Final = 2000

SHB_TYPE: Final = 0x0A0D0D0A
IDB_TYPE: Final = 0x00000001
EPB_TYPE: Final = 0x00000006
BYTE_ORDER_MAGIC: Final = 0x1A2B3C4D
OPT_END: Final = 0
OPT_COMMENT: Final = 1
SHB_USERAPPL: Final = 4
IF_NAME: Final = 2
IF_TSRESOL: Final = 9

FIN: Final = 0x01
SYN: Final = 0x02
PSH: Final = 0x08
ACK: Final = 0x10


def _pad4(data: bytes) -> bytes:
    return data + bytes(-len(data) % 4)


def _options(options: list[tuple[int, bytes]]) -> bytes:
    out = b"".join(struct.pack("<HH", code, len(value)) + _pad4(value)
                   for code, value in options)
    return out + struct.pack("<HH", OPT_END, 0) if options else b""


def _block(block_type: int, body: bytes) -> bytes:
    length = 12 + len(body)
    return struct.pack("<II", block_type, length) + body + struct.pack("<I", length)


def section_header(comment: str) -> bytes:
    body = struct.pack("<IHHq", BYTE_ORDER_MAGIC, 1, 0, -1) + _options(
        [(OPT_COMMENT, comment.encode()), (SHB_USERAPPL, b"gsi host-sim trace export")])
    return _block(SHB_TYPE, body)


def interface_description() -> bytes:
    body = struct.pack("<HHI", LINKTYPE_RAW, 0, 0) + _options(
        [(IF_NAME, b"gsi-trace"), (IF_TSRESOL, bytes([9]))])
    return _block(IDB_TYPE, body)


def enhanced_packet(t_ns: int, packet: bytes, comment: str = "") -> bytes:
    body = struct.pack("<IIIII", 0, t_ns >> 32, t_ns & 0xFFFFFFFF, len(packet),
                       len(packet)) + _pad4(packet)
    if comment:
        body += _options([(OPT_COMMENT, comment.encode())])
    return _block(EPB_TYPE, body)


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\x00"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def tcp_packet(from_host: bool, seq: int, ack: int, flags: int, payload: bytes,
               ident: int) -> bytes:
    """One IPv4 packet holding one TCP segment, checksums filled in."""
    src, dst = (HOST_ADDR, GUEST_ADDR) if from_host else (GUEST_ADDR, HOST_ADDR)
    sport, dport = (HOST_PORT, GUEST_PORT) if from_host else (GUEST_PORT, HOST_PORT)
    tcp = struct.pack("!HHIIBBHHH", sport, dport, seq & 0xFFFFFFFF, ack & 0xFFFFFFFF,
                      5 << 4, flags, 65535, 0, 0) + payload
    pseudo = src + dst + struct.pack("!BBH", 0, 6, len(tcp))
    tcp = tcp[:16] + struct.pack("!H", _checksum(pseudo + tcp)) + tcp[18:]
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), ident & 0xFFFF, 0x4000, 64, 6,
                     0, src, dst)
    ip = ip[:10] + struct.pack("!H", _checksum(ip)) + ip[12:]
    return ip + tcp


def _packets(trace: Trace) -> Iterator[tuple[int, bytes, str]]:
    """(t_ns since start, IPv4 packet, comment) for the whole connection."""
    seq = {True: HOST_ISN, False: GUEST_ISN}
    ident = 0

    def packet(from_host: bool, flags: int, payload: bytes = b"") -> bytes:
        nonlocal ident
        ident += 1
        return tcp_packet(from_host, seq[from_host], seq[not from_host], flags, payload, ident)

    yield 0, packet(True, SYN), "handshake (synthesized)"
    seq[True] += 1
    out = packet(False, SYN | ACK)
    seq[False] += 1
    yield 0, out, "handshake (synthesized)"
    yield 0, packet(True, ACK), "handshake (synthesized)"
    for number, record in enumerate(trace.records):
        from_host = record.direction == Direction.HOST_TO_GUEST
        comment = f"record {number}: {record.direction.arrow}"
        if record.is_eof:
            out = packet(from_host, FIN | ACK)
            seq[from_host] += 1
            yield record.t_ns, out, comment + ", end of stream"
            continue
        for at in range(0, len(record.data), MAX_SEGMENT):
            segment = record.data[at:at + MAX_SEGMENT]
            out = packet(from_host, PSH | ACK, segment)
            seq[from_host] += len(segment)
            yield record.t_ns, out, comment


def export_pcapng(trace: Trace) -> bytes:
    """The whole pcapng file for ``trace``."""
    start = int(trace.metadata.get("start_unix_ns", 0))
    meta = json.dumps(trace.metadata, ensure_ascii=False, sort_keys=True)
    blocks = [section_header(f"gsi trace: {meta}"), interface_description()]
    blocks += [enhanced_packet(start + t_ns, pkt, comment)
               for t_ns, pkt, comment in _packets(trace)]
    return b"".join(blocks)
