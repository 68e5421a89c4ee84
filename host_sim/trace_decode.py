"""Traces as messages: re-framing each direction, and decoding a message into named fields.

A trace (:mod:`gsi.trace`) holds what each receive and send carried; :func:`frame_trace`
splits each direction back into messages with the stream framing of PROTOCOL.md section 2
(any ``msgsize`` is accepted here: the receiver's limit was the receiver's business), and
notes what could not be framed. :func:`describe` names every field of a message with the
construct layouts of :mod:`gsi.layouts`, like ``tshark -V``; :func:`render_trace` is the
listing ``host-sim trace show`` prints.
"""

from __future__ import annotations

import bisect
import enum
import uuid
from dataclasses import dataclass, field
from typing import Any

from construct import ConstructError

from gsi import layouts
from gsi.constants import (
    ICMSG_HDR_END,
    NEGOTIATE_FIXED_SIZE,
    PIPE_FLAG_DATA,
    PIPE_HDR_SIZE,
    WRITE_HEADER_SIZE,
    CopyFlags,
    IcFlags,
    IcMsgType,
    Operation,
    describe_status,
)
from gsi.errors import FramingError, InvalidNameError
from gsi.framing import Framer
from gsi.names import decode_name
from gsi.trace import Direction, Trace

DATA_PREVIEW = 16
"""Data bytes shown in hex (the rest is counted)."""


@dataclass(frozen=True, slots=True)
class TracedMessage:
    """One framed message of a trace.

    Attributes:
        direction: which way it went.
        index: its position among the messages of its direction (0-based).
        payload: the whole message (pipe header included).
        record: index of the record holding its first byte.
        last_record: index of the record holding its last byte.
        t_ns: time of the record holding its last byte.
    """

    direction: Direction
    index: int
    payload: bytes
    record: int
    last_record: int
    t_ns: int


@dataclass(slots=True)
class FramedDirection:
    """One direction of a trace, framed.

    Attributes:
        messages: the whole messages.
        tail: bytes after the last message that are not a whole message.
        error: why the tail cannot be framed (None: an incomplete message).
        eof: the trace records the end of this direction.
        tail_record: index of the record holding the tail's first byte (-1: no tail).
    """

    messages: list[TracedMessage] = field(default_factory=list)
    tail: bytes = b""
    error: str | None = None
    eof: bool = False
    tail_record: int = -1


def frame_direction(trace: Trace, direction: Direction) -> FramedDirection:
    """Split every byte that went ``direction`` into messages."""
    starts: list[int] = []  # stream offset where each record of this direction starts
    numbers: list[int] = []  # the record's index in the trace
    times: list[int] = []
    pos = 0
    out = FramedDirection()
    for number, record in enumerate(trace.records):
        if record.direction != direction:
            continue
        if record.is_eof:
            out.eof = True
            continue
        starts.append(pos)
        numbers.append(number)
        times.append(record.t_ns)
        pos += len(record.data)
    data = trace.stream(direction)
    framer = Framer(0xFFFFFFFF)
    framer.feed(data)
    consumed = 0
    while True:
        try:
            payload = framer.next_message()
        except FramingError as exc:
            out.error = str(exc)
            break
        if payload is None:
            break
        first = bisect.bisect_right(starts, consumed) - 1
        last = bisect.bisect_right(starts, consumed + len(payload) - 1) - 1
        out.messages.append(TracedMessage(direction, len(out.messages), payload,
                                          numbers[first], numbers[last], times[last]))
        consumed += len(payload)
    out.tail = data[consumed:]
    if out.tail:
        out.tail_record = numbers[bisect.bisect_right(starts, consumed) - 1]
    return out


# -- naming fields ----------------------------------------------------------------------

Field = tuple[int, str, str]
"""(depth, name, value); a value of "" makes the line a heading."""


def _enum_name(enum_type: type[enum.IntEnum], value: int) -> str:
    try:
        return f"{value} ({enum_type(value).name})"
    except ValueError:
        return f"{value} (unknown)"


def _flags(flag_type: type[enum.IntFlag], value: int, width: int) -> str:
    names = [f.name for f in flag_type if f.value and value & f.value and f.name]
    unknown = value & ~sum(f.value for f in flag_type)
    if unknown:
        names.append(f"unknown {unknown:#x}")
    return f"{value:#0{width + 2}x} ({'|'.join(names) or 'none'})"


def _version(v: Any) -> str:
    return f"{v.major}.{v.minor}"


def _guid(raw: bytes) -> str:
    return str(uuid.UUID(bytes_le=bytes(raw)))


def _name(raw: bytes) -> str:
    try:
        return repr(decode_name(raw))
    except InvalidNameError as exc:
        return f"invalid ({exc}); first bytes {bytes(raw[:32]).hex()}"


def _data(data: bytes) -> str:
    more = "..." if len(data) > DATA_PREVIEW else ""
    return f"{len(data)} bytes: {data[:DATA_PREVIEW].hex()}{more}"


def describe(payload: bytes) -> list[Field]:
    """Every field of one message, named as in PROTOCOL.md section 3."""
    out: list[Field] = [(0, "vmbuspipe_hdr", "")]
    if len(payload) < PIPE_HDR_SIZE:
        return [*out, (1, "truncated", _data(payload))]
    pipe = layouts.vmbuspipe_hdr.parse(payload)
    kind = "data" if pipe.flags == PIPE_FLAG_DATA else "not data"
    out += [(1, "flags", f"{pipe.flags} ({kind})"), (1, "msgsize", str(pipe.msgsize))]
    out.append((0, "icmsg_hdr", ""))
    if len(payload) < ICMSG_HDR_END:
        return [*out, (1, "truncated", _data(payload[PIPE_HDR_SIZE:]))]
    ic = layouts.icmsg_hdr.parse(payload[PIPE_HDR_SIZE:])
    out += [(1, "icverframe", _version(ic.icverframe)),
            (1, "icmsgtype", _enum_name(IcMsgType, ic.icmsgtype)),
            (1, "icvermsg", _version(ic.icvermsg)),
            (1, "icmsgsize", str(ic.icmsgsize)),
            (1, "status", describe_status(ic.status)),
            (1, "ictransaction_id", str(ic.ictransaction_id)),
            (1, "icflags", _flags(IcFlags, ic.icflags, 2)),
            (1, "reserved", bytes(ic.reserved).hex())]
    body = payload[ICMSG_HDR_END:]
    if ic.icmsgtype == IcMsgType.NEGOTIATE:
        return out + _negotiate(body)
    if ic.icmsgtype == IcMsgType.FCOPY:
        return out + _fcopy(body)
    return [*out, (0, "body", _data(body))] if body else out


def _negotiate(body: bytes) -> list[Field]:
    out: list[Field] = [(0, "icmsg_negotiate", "")]
    try:
        neg = layouts.icmsg_negotiate.parse(body)
    except ConstructError:
        return [*out, (1, "malformed", _data(body))]
    out += [(1, "icframe_vercnt", str(neg.icframe_vercnt)),
            (1, "icmsg_vercnt", str(neg.icmsg_vercnt)), (1, "reserved", str(neg.reserved))]
    for i, v in enumerate(neg.icversion_data):
        kind = "framework" if i < neg.icframe_vercnt else "message"
        out.append((1, f"icversion_data[{i}]", f"{_version(v)} ({kind})"))
    used = NEGOTIATE_FIXED_SIZE + layouts.ic_version.sizeof() * len(neg.icversion_data)
    return out + _trailing(body, used)


def _trailing(body: bytes, used: int, what: str = "trailing") -> list[Field]:
    rest = body[used:]
    if not rest:
        return []
    zero = "all zero" if not any(rest) else "not all zero"
    return [(1, what, f"{len(rest)} bytes, {zero}")]


def _fcopy(body: bytes) -> list[Field]:
    out: list[Field] = [(0, "hv_fcopy_hdr", "")]
    try:
        hdr = layouts.hv_fcopy_hdr.parse(body)
    except ConstructError:
        return [*out, (1, "malformed", _data(body))]
    out += [(1, "operation", _enum_name(Operation, hdr.operation)),
            (1, "service_id0", _guid(hdr.service_id0)),
            (1, "service_id1", _guid(hdr.service_id1))]
    if hdr.operation == Operation.START_FILE_COPY:
        return out + _start(body)
    if hdr.operation == Operation.WRITE_TO_FILE:
        return out + _write(body)
    return out + _trailing(body, layouts.hv_fcopy_hdr.sizeof())


def _start(body: bytes) -> list[Field]:
    out: list[Field] = [(0, "hv_start_fcopy", "")]
    try:
        start = layouts.hv_start_fcopy.parse(body)
    except ConstructError:
        return [*out, (1, "malformed", f"{len(body)} bytes, fewer than "
                                       f"{layouts.hv_start_fcopy.sizeof()}")]
    out += [(1, "file_name", _name(start.file_name)), (1, "path_name", _name(start.path_name)),
            (1, "copy_flags", _flags(CopyFlags, start.copy_flags, 8)),
            (1, "file_size", str(start.file_size))]
    return out + _trailing(body, layouts.hv_start_fcopy.sizeof())


def _write(body: bytes) -> list[Field]:
    out: list[Field] = [(0, "hv_do_fcopy", "")]
    if len(body) < WRITE_HEADER_SIZE:
        return [*out, (1, "malformed", f"{len(body)} bytes, fewer than {WRITE_HEADER_SIZE}")]
    # The header fields, whatever follows them (the data may be trimmed or missing).
    head = layouts.hv_do_fcopy.parse(body[:WRITE_HEADER_SIZE].ljust(
        layouts.hv_do_fcopy.sizeof(), b"\x00"))
    out += [(1, "pad", str(head.pad)), (1, "offset", str(head.offset)),
            (1, "size", str(head.size))]
    try:
        write = layouts.hv_do_fcopy_trimmed.parse(body)
    except ConstructError:
        present = body[WRITE_HEADER_SIZE:]
        shown = f": {present[:DATA_PREVIEW].hex()}" if present else ""
        return [*out, (1, "data", f"{len(present)} of {head.size} bytes present{shown}")]
    out.append((1, "data", _data(bytes(write.data))))
    return out + _trailing(body, WRITE_HEADER_SIZE + write.size, "padding")


def field_map(payload: bytes) -> dict[str, str]:
    """``{"icmsg_hdr.status": "0x00000000: success", ...}``: :func:`describe` flattened."""
    out: dict[str, str] = {}
    section = ""
    for depth, name, value in describe(payload):
        if depth == 0 and not value:
            section = name
            continue
        out[f"{section}.{name}" if depth else name] = value
    return out


# -- the listing ------------------------------------------------------------------------


def _seconds(t_ns: int) -> str:
    return f"{t_ns / 1e9:.9f} s"


def render_trace(trace: Trace, name: str = "trace") -> list[str]:
    """The readable listing of a whole trace (``host-sim trace show``)."""
    lines = [f"{name}: gsi trace format {trace.version}, {len(trace.records)} records"]
    lines += [f"  {key}: {value}" for key, value in sorted(trace.metadata.items())]
    if trace.truncated:
        lines.append(f"  truncated: {trace.truncated} bytes after the last whole record")
    framed = {d: frame_direction(trace, d) for d in Direction}
    items: list[tuple[int, int, str, list[str]]] = []
    for direction, f in framed.items():
        for m in f.messages:
            head = (f"message {direction.arrow} #{m.index} at {_seconds(m.t_ns)}, "
                    f"{len(m.payload)} bytes (record {m.record})")
            body = [f"{'  ' * (depth + 1)}{fname}" + (f": {value}" if value else "")
                    for depth, fname, value in describe(m.payload)]
            items.append((m.record, direction, head, body))
        if f.tail:
            why = f.error or "an incomplete message"
            items.append((f.tail_record, direction,
                          f"unframed {direction.arrow}: {_data(f.tail)} ({why})", []))
    for number, record in enumerate(trace.records):
        if record.is_eof:
            ending = ("the host closed its side" if record.direction == Direction.HOST_TO_GUEST
                      else "the receiver closed the connection")
            items.append((number, record.direction,
                          f"end of stream {record.direction.arrow} at "
                          f"{_seconds(record.t_ns)}: {ending}", []))
    for _, _, head, body in sorted(items, key=lambda item: (item[0], item[1])):
        lines.append(head)
        lines.extend(body)
    return lines
