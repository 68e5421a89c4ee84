"""Helpers shared by the wire and protocol tests.

Two kinds of help:

* hand-packed messages, built with :mod:`struct` from the byte offsets of PROTOCOL.md
  section 3 and never with gsi's codec, so that they can serve as golden bytes;
* an in-memory driver that feeds bytes to a :class:`GuestConnection`, answers every
  request event with a chosen status, and checks every answer it gets.
"""

from __future__ import annotations

import itertools
import struct
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from gsi import layouts
from gsi.constants import LINUX_STATUSES, CopyFlags, Status
from gsi.events import (
    NEED_DATA,
    ConnectionClosed,
    CopyAborted,
    Event,
    Negotiate,
    Rejected,
    RequestEvent,
    WriteData,
)
from gsi.protocol import GuestConnection
from host_sim.protocol import Answer, HostConnection

# -- payload offsets (PROTOCOL.md sections 1 and 3) ---------------------------------
OFF_PIPE_FLAGS = 0
OFF_MSGSIZE = 4
OFF_VERFRAME = 8
OFF_MSGTYPE = 12
OFF_VERMSG = 14
OFF_ICMSGSIZE = 18
OFF_STATUS = 20
OFF_TID = 24
OFF_ICFLAGS = 25
OFF_RESERVED = 26
OFF_BODY = 28
# body offsets
BODY_OPERATION = 0
BODY_SID0 = 4
BODY_SID1 = 20
START_FILE_NAME = 36
START_PATH_NAME = 556
START_COPY_FLAGS = 1076
START_FILE_SIZE = 1080
START_SIZE = 1088
WRITE_PAD = 36
WRITE_OFFSET = 40
WRITE_SIZE = 48
WRITE_DATA = 52
FRAGMENT = 6144

MSGTYPE_NEGOTIATE = 0
MSGTYPE_FCOPY = 7
OP_START, OP_WRITE, OP_COMPLETE, OP_CANCEL = 0, 1, 2, 3
HOST_FLAGS = 0x03
GUEST_FLAGS = 0x05
STATUS_VALUES = frozenset(int(s) for s in Status)

Version = tuple[int, int]


def hand_message(
    *,
    icmsgtype: int,
    body: bytes,
    transaction_id: int,
    icflags: int = HOST_FLAGS,
    status: int = 0,
    icverframe: Version = (3, 0),
    icvermsg: Version = (1, 1),
    icmsgsize: int | None = None,
) -> bytes:
    """Pipe header + IC header + body, packed field by field at PROTOCOL.md offsets."""
    out = bytearray(OFF_BODY)
    struct.pack_into("<I", out, OFF_PIPE_FLAGS, 1)
    struct.pack_into("<I", out, OFF_MSGSIZE, 20 + len(body))
    struct.pack_into("<HH", out, OFF_VERFRAME, *icverframe)
    struct.pack_into("<H", out, OFF_MSGTYPE, icmsgtype)
    struct.pack_into("<HH", out, OFF_VERMSG, *icvermsg)
    size = min(len(body), 0xFFFF) if icmsgsize is None else icmsgsize
    struct.pack_into("<H", out, OFF_ICMSGSIZE, size)
    struct.pack_into("<I", out, OFF_STATUS, status)
    out[OFF_TID] = transaction_id
    out[OFF_ICFLAGS] = icflags
    return bytes(out) + body


def hand_fcopy_hdr(operation: int, sid0: bytes = bytes(16), sid1: bytes = bytes(16)) -> bytes:
    out = bytearray(36)
    struct.pack_into("<I", out, BODY_OPERATION, operation)
    out[BODY_SID0:BODY_SID0 + 16] = sid0
    out[BODY_SID1:BODY_SID1 + 16] = sid1
    return bytes(out)


def hand_name_field(units: bytes) -> bytes:
    """A 520-byte name field holding the given raw UTF-16LE bytes, zero-padded."""
    assert len(units) <= 520
    return units + bytes(520 - len(units))


def hand_start_body(
    *,
    file_name: str | bytes,
    path_name: str | bytes,
    copy_flags: int,
    file_size: int,
    sid0: bytes = bytes(16),
    sid1: bytes = bytes(16),
) -> bytes:
    """hv_start_fcopy; str names are encoded here, bytes are taken as the raw field."""
    out = bytearray(START_SIZE)
    out[0:36] = hand_fcopy_hdr(OP_START, sid0, sid1)
    for off, name in ((START_FILE_NAME, file_name), (START_PATH_NAME, path_name)):
        raw = name.encode("utf-16-le") if isinstance(name, str) else name
        out[off:off + 520] = hand_name_field(raw)
    struct.pack_into("<I", out, START_COPY_FLAGS, copy_flags)
    struct.pack_into("<Q", out, START_FILE_SIZE, file_size)
    return bytes(out)


def hand_write_body(
    *, offset: int, data: bytes, size: int | None = None, full_length: int | None = None,
    pad: int = 0,
) -> bytes:
    """hv_do_fcopy: trimmed (52 + len(data)) or data zero-padded to ``full_length``."""
    head = bytearray(WRITE_DATA)
    head[0:36] = hand_fcopy_hdr(OP_WRITE)
    struct.pack_into("<I", head, WRITE_PAD, pad)
    struct.pack_into("<Q", head, WRITE_OFFSET, offset)
    struct.pack_into("<I", head, WRITE_SIZE, len(data) if size is None else size)
    tail = b"" if full_length is None else bytes(full_length - len(data))
    return bytes(head) + data + tail


def hand_negotiate_body(
    framework: Sequence[Version], message: Sequence[Version], *, reserved: int = 0,
    extra: bytes = b"",
) -> bytes:
    out = struct.pack("<HHI", len(framework), len(message), reserved)
    for major, minor in (*framework, *message):
        out += struct.pack("<HH", major, minor)
    return out + extra


def negotiate_request(
    framework: Sequence[Version] = ((1, 0), (3, 0)),
    message: Sequence[Version] = ((1, 1),),
    *, transaction_id: int = 0, extra: bytes = b"",
) -> bytes:
    return hand_message(icmsgtype=MSGTYPE_NEGOTIATE,
                        body=hand_negotiate_body(framework, message, extra=extra),
                        transaction_id=transaction_id, icvermsg=(0, 0))


def fcopy_request(body: bytes, *, transaction_id: int = 1) -> bytes:
    return hand_message(icmsgtype=MSGTYPE_FCOPY, body=body, transaction_id=transaction_id)


def start_request(
    *, file_name: str | bytes = "f.bin", path_name: str | bytes = "/tmp", copy_flags: int = 0,
    file_size: int = 0, transaction_id: int = 1,
) -> bytes:
    return fcopy_request(hand_start_body(file_name=file_name, path_name=path_name,
                                         copy_flags=copy_flags, file_size=file_size),
                         transaction_id=transaction_id)


def write_request(
    *, offset: int, data: bytes, size: int | None = None, full: bool = False,
    transaction_id: int = 2,
) -> bytes:
    body = hand_write_body(offset=offset, data=data, size=size,
                           full_length=FRAGMENT if full else None)
    return fcopy_request(body, transaction_id=transaction_id)


def op_request(operation: int, *, transaction_id: int = 3) -> bytes:
    return fcopy_request(hand_fcopy_hdr(operation), transaction_id=transaction_id)


def u16(buf: bytes, off: int) -> int:
    value: int = struct.unpack_from("<H", buf, off)[0]
    return value


def u32(buf: bytes, off: int) -> int:
    value: int = struct.unpack_from("<I", buf, off)[0]
    return value


def status_of(answer: bytes) -> int:
    return u32(answer, OFF_STATUS)


# -- answer checks -----------------------------------------------------------------


def check_answer(
    answer: bytes, request: bytes, *, trimmed_write: bool = False, status: int | None = None,
) -> None:
    """An answer is well formed and echoes ``request`` (PROTOCOL.md 2 and 5.6).

    Its status must be ``status`` when given, else one of the :class:`Status` values.
    """
    assert len(answer) >= OFF_BODY
    flags, msgsize = struct.unpack_from("<II", answer, 0)
    assert flags == 1
    assert msgsize == len(answer) - 8
    parsed = layouts.message.parse(answer)
    assert len(parsed.body) == msgsize - 20
    assert answer[OFF_ICFLAGS] == GUEST_FLAGS
    assert answer[OFF_TID] == request[OFF_TID]
    if status is None:
        assert status_of(answer) in STATUS_VALUES
    else:
        assert status_of(answer) == status
    # Everything but status and flags is echoed (negotiate edits aside).
    assert answer[OFF_VERFRAME:OFF_ICMSGSIZE] == request[OFF_VERFRAME:OFF_ICMSGSIZE]
    assert answer[OFF_RESERVED:OFF_BODY] == request[OFF_RESERVED:OFF_BODY]
    if u16(request, OFF_MSGTYPE) == MSGTYPE_NEGOTIATE:
        assert len(answer) == len(request)
        return
    if trimmed_write:
        assert len(answer) == 80
        assert msgsize == 72
        assert u16(answer, OFF_ICMSGSIZE) == 52
        assert answer[OFF_BODY:80] == request[OFF_BODY:80]
    else:
        assert answer[:OFF_STATUS] == request[:OFF_STATUS]
        assert answer[OFF_BODY:] == request[OFF_BODY:]


# -- driving a GuestConnection -----------------------------------------------------

StatusPolicy = Callable[[RequestEvent], int | None]


def ok_policy(event: RequestEvent) -> int | None:
    """Negotiate/Rejected answer with their own status; everything else succeeds."""
    if isinstance(event, Negotiate | Rejected):
        return None
    return int(Status.S_OK)


@dataclass
class Trace:
    """What a GuestConnection produced: its events and, in order, its answers."""

    events: list[Event] = field(default_factory=list)
    answers: list[bytes] = field(default_factory=list)

    def kinds(self) -> list[str]:
        return [type(e).__name__ for e in self.events]

    def statuses(self) -> list[int]:
        return [status_of(a) for a in self.answers]

    def request_events(self) -> list[RequestEvent]:
        return [e for e in self.events if not isinstance(e, CopyAborted | ConnectionClosed)]


def pump(guest: GuestConnection, trace: Trace, policy: StatusPolicy = ok_policy) -> bool:
    """Pull events until NEED_DATA or ConnectionClosed (True when closed), answering
    every request with ``policy`` and checking each answer."""
    while True:
        event = guest.next_event()
        if event is NEED_DATA:
            return False
        trace.events.append(event)
        if isinstance(event, ConnectionClosed):
            return True
        if isinstance(event, CopyAborted):
            continue
        status = policy(event)
        answer = guest.answer(event, status)
        if isinstance(event, Negotiate | Rejected):
            status = event.status
        assert status is not None
        if guest.linux_status_codes and status not in LINUX_STATUSES:
            status = Status.E_FAIL
        check_answer(answer, event.request, status=status,
                     trimmed_write=guest.trim_write_echo and isinstance(event, WriteData))
        trace.answers.append(answer)


def feed(
    guest: GuestConnection, chunks: Iterable[bytes], *, policy: StatusPolicy = ok_policy,
    eof: bool = True,
) -> Trace:
    """Feed ``chunks`` one by one, pumping after each; then end the stream if ``eof``."""
    trace = Trace()
    for chunk in chunks:
        guest.receive_data(chunk)
        pump(guest, trace, policy)
    if eof:
        guest.receive_data(b"")
        assert pump(guest, trace, policy)
    return trace


def split(data: bytes, cuts: Iterable[int]) -> list[bytes]:
    """``data`` cut at the given positions (any order, duplicates allowed)."""
    points = sorted({c for c in cuts if 0 < c < len(data)})
    bounds = [0, *points, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


def bytewise(data: bytes) -> list[bytes]:
    return [data[i:i + 1] for i in range(len(data))]


def copy_requests(
    host: HostConnection, content: bytes, *, file_name: str = "file.bin",
    path_name: str = "/dst", flags: int = 0, negotiate: bool = True,
) -> list[bytes]:
    """Every request of one copy, in order, as the host builds them."""
    out = [host.negotiate()] if negotiate else []
    out.append(host.start_copy(file_name=file_name, path_name=path_name,
                               flags=CopyFlags(flags), file_size=len(content)))
    step = host.fragment_size
    out.extend(host.write(off, content[off:off + step]) for off in range(0, len(content), step))
    out.append(host.complete())
    return out


def drive_copy(
    host: HostConnection, guest: GuestConnection, content: bytes, *,
    file_name: str = "file.bin", path_name: str = "/dst", flags: int = 0,
    policy: StatusPolicy = ok_policy,
) -> tuple[Trace, list[Answer], bytes]:
    """One copy, request by request, host -> guest -> host, in memory.

    Returns the guest's trace, the host's paired answers, and the file content the
    guest's WriteData events describe (assembled at their offsets).
    """
    trace = Trace()
    answers: list[Answer] = []

    def send(request: bytes) -> None:
        guest.receive_data(request)
        before = len(trace.answers)
        pump(guest, trace, policy)
        for answer in trace.answers[before:]:
            host.receive_data(answer)
            got = host.next_answer()
            assert isinstance(got, Answer)
            answers.append(got)
        assert host.in_flight == 0

    send(host.negotiate())
    send(host.start_copy(file_name=file_name, path_name=path_name, flags=CopyFlags(flags),
                         file_size=len(content)))
    step = host.fragment_size
    for off in range(0, len(content), step):
        send(host.write(off, content[off:off + step]))
    send(host.complete())
    assembled = bytearray(len(content))
    for event in trace.events:
        if isinstance(event, WriteData):
            assembled[event.offset:event.offset + event.size] = event.data
    return trace, answers, bytes(assembled)
