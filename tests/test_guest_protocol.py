"""gsi.protocol.GuestConnection: the sans-IO guest core.

Covers a whole copy driven by HostConnection, input split any way, negotiation,
every PROTOCOL.md section 8 rule that belongs to the core, answer misuse, echo
shapes, Linux status folding, and hypothesis fuzzing of the state machine.
"""

from __future__ import annotations

import inspect
import random
import struct
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from wire_helpers import (
    FRAGMENT,
    GUEST_FLAGS,
    OFF_BODY,
    OFF_ICFLAGS,
    OFF_ICMSGSIZE,
    OFF_STATUS,
    OFF_TID,
    OP_CANCEL,
    OP_COMPLETE,
    OP_START,
    OP_WRITE,
    STATUS_VALUES,
    StatusPolicy,
    Trace,
    bytewise,
    check_answer,
    copy_requests,
    drive_copy,
    fcopy_request,
    feed,
    hand_fcopy_hdr,
    hand_message,
    hand_negotiate_body,
    negotiate_request,
    ok_policy,
    op_request,
    pump,
    split,
    start_request,
    status_of,
    u16,
    u32,
    write_request,
)

import gsi.protocol
import gsi.state
from gsi import layouts
from gsi.constants import ICMSG_HDR_END, LINUX_STATUSES, CopyFlags, Status
from gsi.errors import FramingError, LocalProtocolError, ProtocolError
from gsi.events import (
    NEED_DATA,
    CancelCopy,
    CompleteCopy,
    ConnectionClosed,
    CopyAborted,
    Event,
    Negotiate,
    Rejected,
    RequestEvent,
    StartCopy,
    WriteData,
)
from gsi.protocol import GuestConnection, GuestState
from gsi.state import Trigger, next_state
from host_sim.protocol import Answer, HostConnection

E_FAIL = int(Status.E_FAIL)
INVALIDARG = int(Status.INVALIDARG)
NOT_SUPPORTED = int(Status.NOT_SUPPORTED)


def answering(status: int) -> StatusPolicy:
    """Answer fcopy requests with ``status``; Negotiate/Rejected carry their own."""
    def policy(event: RequestEvent) -> int | None:
        return None if isinstance(event, Negotiate | Rejected) else status
    return policy


def send(guest: GuestConnection, request: bytes, policy: StatusPolicy = ok_policy) -> Trace:
    trace = Trace()
    guest.receive_data(request)
    assert not pump(guest, trace, policy)
    return trace


def negotiated(**kwargs: Any) -> GuestConnection:
    guest = GuestConnection(**kwargs)
    trace = send(guest, negotiate_request())
    assert trace.statuses() == [0]
    assert guest.state is GuestState.IDLE
    return guest


def copying(file_size: int = 100, **kwargs: Any) -> GuestConnection:
    guest = negotiated(**kwargs)
    trace = send(guest, start_request(file_size=file_size))
    assert trace.kinds() == ["StartCopy"] and trace.statuses() == [0]
    assert guest.copy_open
    return guest


def only(trace: Trace, kind: type) -> Any:
    """The single event of the trace, which must be of ``kind``."""
    assert len(trace.events) == 1, trace.kinds()
    assert isinstance(trace.events[0], kind)
    return trace.events[0]


def rejected(trace: Trace, status: int, *, aborted: bool = False) -> Rejected:
    assert trace.kinds() == (["CopyAborted", "Rejected"] if aborted else ["Rejected"])
    event = trace.events[-1]
    assert isinstance(event, Rejected)
    assert event.status == status
    assert trace.statuses() == [status]
    return event


# -- a whole copy ------------------------------------------------------------------

CONTENT = random.Random(7).randbytes(2 * FRAGMENT + 1000)


@pytest.mark.parametrize("full", [True, False], ids=["full", "trimmed"])
def test_full_copy_through_host(full: bool) -> None:
    host = HostConnection(full_write_body=full)
    guest = GuestConnection()
    trace, answers, assembled = drive_copy(host, guest, CONTENT, file_name="ä😀.bin",
                                           path_name="/x/y", flags=3)
    assert trace.kinds() == ["Negotiate", "StartCopy", "WriteData", "WriteData", "WriteData",
                             "CompleteCopy"]
    assert [a.kind for a in answers] == ["negotiate", "START_FILE_COPY", "WRITE_TO_FILE",
                                         "WRITE_TO_FILE", "WRITE_TO_FILE", "COMPLETE_FCOPY"]
    assert all(a.ok for a in answers)
    assert (host.framework_version, host.message_version) == ((3, 0), (1, 1))
    start = trace.events[1]
    assert isinstance(start, StartCopy)
    assert (start.file_name, start.path_name) == ("ä😀.bin", "/x/y")
    assert start.flags == CopyFlags.OVER_WRITE | CopyFlags.CREATE_PATH
    assert start.file_size == len(CONTENT)
    assert start.guest_path == "/x/y/ä😀.bin"
    assert assembled == CONTENT
    complete = trace.events[-1]
    assert isinstance(complete, CompleteCopy) and complete.file_size == len(CONTENT)
    assert guest.state is GuestState.IDLE and not guest.copy_open


def test_windowed_copy_answers_in_order() -> None:
    """All requests sent before any answer (a window): answered in order, paired."""
    host = HostConnection()
    guest = GuestConnection()
    stream = b"".join(copy_requests(host, CONTENT))
    trace = feed(guest, [stream])
    host.receive_data(b"".join(trace.answers))
    kinds = []
    while (answer := host.next_answer()) is not NEED_DATA:
        assert isinstance(answer, Answer)
        assert answer.ok
        kinds.append(answer.kind)
    assert kinds == ["negotiate", "START_FILE_COPY", *["WRITE_TO_FILE"] * 3, "COMPLETE_FCOPY"]


def _session_stream() -> bytes:
    """A busy session: copy, failed START, a rejected WRITE, a cancelled copy."""
    host = HostConnection(full_write_body=False)
    parts = copy_requests(host, CONTENT[:9000])
    parts.append(start_request(file_name="", transaction_id=50))
    parts.append(write_request(offset=0, data=b"x", transaction_id=51))
    parts.append(start_request(file_size=4, transaction_id=52))
    parts.append(write_request(offset=0, data=b"abcd", transaction_id=53, full=True))
    parts.append(op_request(OP_CANCEL, transaction_id=54))
    parts.append(hand_message(icmsgtype=4, body=b"time", transaction_id=55))
    return b"".join(parts)


SESSION = _session_stream()
SESSION_KINDS = ["Negotiate", "StartCopy", "WriteData", "WriteData", "CompleteCopy",
                 "Rejected", "Rejected", "StartCopy", "WriteData", "CancelCopy", "Rejected",
                 "ConnectionClosed"]


def test_session_whole() -> None:
    trace = feed(GuestConnection(), [SESSION])
    assert trace.kinds() == SESSION_KINDS
    assert trace.statuses() == [0, 0, 0, 0, 0, INVALIDARG, E_FAIL, 0, 0, 0, NOT_SUPPORTED]


def test_session_byte_by_byte_and_trailing_data() -> None:
    reference = feed(GuestConnection(), [SESSION])
    assert feed(GuestConnection(), bytewise(SESSION)) == reference
    # Trailing partial message: same events, then NEED_DATA; at EOF, truncated.
    tail = start_request()[:50]
    guest = GuestConnection()
    trace = feed(guest, [SESSION + tail], eof=False)
    assert trace.events == reference.events[:-1]
    assert trace.answers == reference.answers
    assert guest.next_event() is NEED_DATA
    assert guest.buffered == 50
    guest.receive_data(b"")
    assert guest.next_event() == ConnectionClosed(truncated=50)


@settings(max_examples=50, deadline=None)
@given(cuts=st.lists(st.integers(0, len(SESSION)), max_size=60))
def test_session_random_splits(cuts: list[int]) -> None:
    reference = feed(GuestConnection(), [SESSION])
    assert feed(GuestConnection(), split(SESSION, cuts)) == reference


# -- negotiation -------------------------------------------------------------------


def _negotiate(guest: GuestConnection, request: bytes) -> tuple[Negotiate, bytes]:
    trace = send(guest, request)
    event = only(trace, Negotiate)
    return event, trace.answers[0]


def test_negotiate_success_answer_shape() -> None:
    request = negotiate_request(((1, 0), (3, 0)), ((1, 0), (1, 1)), transaction_id=0x9C,
                                extra=b"TAIL")
    event, answer = _negotiate(GuestConnection(), request)
    assert event.status == 0 and not event.malformed and event.reason == ""
    assert (event.framework_version, event.message_version) == ((3, 0), (1, 1))
    assert event.transaction_id == 0x9C
    assert len(answer) == len(request)
    assert answer[:OFF_ICMSGSIZE] == request[:OFF_ICMSGSIZE]
    assert u16(answer, OFF_ICMSGSIZE) == 0x10
    assert status_of(answer) == 0
    assert answer[OFF_TID] == 0x9C
    assert answer[OFF_ICFLAGS] == 0x05
    assert answer[26:28] == request[26:28]
    body = answer[OFF_BODY:]
    assert struct.unpack_from("<HH", body, 0) == (1, 1)
    assert body[4:8] == request[OFF_BODY + 4:OFF_BODY + 8]
    assert struct.unpack_from("<HHHH", body, 8) == (3, 0, 1, 1)
    assert body[16:] == request[OFF_BODY + 16:]  # the rest (1.0, 1.1, "TAIL") echoed
    assert body[16:] == struct.pack("<HHHH", 1, 0, 1, 1) + b"TAIL"


@pytest.mark.parametrize(("framework", "message"), [
    (((1, 0),), ((1, 1),)),
    (((3, 0),), ((1, 0), (2, 0))),
    (((3, 1),), ((1, 1),)),
    ((), ((1, 1),)),
    (((3, 0),), ()),
    ((), ()),
    (((1, 1),), ((3, 0),)),  # right versions, wrong lists
])
def test_negotiate_no_common_version(framework: tuple[tuple[int, int], ...],
                                     message: tuple[tuple[int, int], ...]) -> None:
    guest = GuestConnection()
    request = negotiate_request(framework, message, extra=b"xy")
    event, answer = _negotiate(guest, request)
    assert event.status == E_FAIL and not event.malformed
    assert event.framework_version is None and event.message_version is None
    assert status_of(answer) == E_FAIL
    assert struct.unpack_from("<HH", answer, OFF_BODY) == (0, 0)
    assert u16(answer, OFF_ICMSGSIZE) == 0x10
    assert answer[OFF_BODY + 4:] == request[OFF_BODY + 4:]
    assert answer[:OFF_ICMSGSIZE] == request[:OFF_ICMSGSIZE]
    assert answer[OFF_ICFLAGS] == GUEST_FLAGS and answer[OFF_TID] == request[OFF_TID]
    assert guest.state is GuestState.NEGOTIATING


def _raw_negotiate(body: bytes, icmsgsize: int | None = None) -> bytes:
    return hand_message(icmsgtype=0, body=body, transaction_id=0x21, icvermsg=(0, 0),
                        icmsgsize=icmsgsize)


MALFORMED = {
    "frame-count-101": struct.pack("<HHI", 101, 1, 0) + bytes(4 * 102),
    "msg-count-101": struct.pack("<HHI", 1, 101, 0) + bytes(4 * 102),
    "counts-max": struct.pack("<HHI", 0xFFFF, 0xFFFF, 0),
    "overrun-by-one": hand_negotiate_body([(3, 0), (1, 0)], [(1, 1)])[:-1],
    "overrun-counts": struct.pack("<HHI", 2, 1, 0) + struct.pack("<HHHH", 3, 0, 1, 1),
    "body-7": struct.pack("<HHI", 1, 1, 0)[:7],
    "body-4": struct.pack("<HH", 1, 1),
}


@pytest.mark.parametrize("body", list(MALFORMED.values()), ids=list(MALFORMED))
def test_negotiate_malformed_with_room_for_counts(body: bytes) -> None:
    request = _raw_negotiate(body, icmsgsize=0x1234)
    guest = GuestConnection()
    event, answer = _negotiate(guest, request)
    assert event.malformed and event.status == E_FAIL
    assert status_of(answer) == E_FAIL
    assert struct.unpack_from("<HH", answer, OFF_BODY) == (0, 0)
    assert answer[OFF_BODY + 4:] == request[OFF_BODY + 4:]
    assert u16(answer, OFF_ICMSGSIZE) == 0x1234  # not a negotiate answer body: left alone
    assert guest.state is GuestState.NEGOTIATING


@pytest.mark.parametrize("body", [b"", b"\x01", b"\x01\x00\x01"])
def test_negotiate_malformed_without_room(body: bytes) -> None:
    request = _raw_negotiate(body)
    event, answer = _negotiate(GuestConnection(), request)
    assert event.malformed and event.status == E_FAIL
    expected = bytearray(request)
    expected[OFF_STATUS:OFF_STATUS + 4] = struct.pack("<I", E_FAIL)
    expected[OFF_ICFLAGS] = GUEST_FLAGS
    assert answer == bytes(expected)


def test_negotiate_counts_at_100_are_fine() -> None:
    framework = [(9, i) for i in range(99)] + [(3, 0)]
    message = [(1, 1)] + [(9, i) for i in range(99)]
    request = negotiate_request(framework, message)
    assert len(request) == 8 + 20 + 8 + 800
    event, answer = _negotiate(GuestConnection(), request)
    assert event.status == 0
    assert struct.unpack_from("<HHHH", answer, OFF_BODY + 8) == (3, 0, 1, 1)


@pytest.mark.parametrize(("guest_fw", "guest_msg", "host_fw", "host_msg", "chosen"), [
    (((4, 0), (3, 0)), ((1, 2), (1, 1)), ((3, 0), (4, 0)), ((1, 1),), ((4, 0), (1, 1))),
    (((3, 0), (4, 0)), ((1, 1), (1, 2)), ((4, 0), (3, 0)), ((1, 2), (1, 1)), ((3, 0), (1, 1))),
    (((2, 5),), ((7, 7),), ((1, 0), (2, 5)), ((7, 7),), ((2, 5), (7, 7))),
])
def test_negotiate_custom_guest_versions(
    guest_fw: tuple[tuple[int, int], ...], guest_msg: tuple[tuple[int, int], ...],
    host_fw: tuple[tuple[int, int], ...], host_msg: tuple[tuple[int, int], ...],
    chosen: tuple[tuple[int, int], tuple[int, int]],
) -> None:
    guest = GuestConnection(framework_versions=guest_fw, message_versions=guest_msg)
    event, answer = _negotiate(guest, negotiate_request(host_fw, host_msg))
    assert (event.framework_version, event.message_version) == chosen
    assert struct.unpack_from("<HHHH", answer, OFF_BODY + 8) == (*chosen[0], *chosen[1])


def test_default_guest_refuses_what_linux_refuses() -> None:
    event, _ = _negotiate(GuestConnection(), negotiate_request(((4, 0),), ((1, 1),)))
    assert event.status == E_FAIL


def test_guest_needs_versions() -> None:
    with pytest.raises(ValueError):
        GuestConnection(framework_versions=())
    with pytest.raises(ValueError):
        GuestConnection(message_versions=())


def test_failed_then_successful_negotiate() -> None:
    guest = GuestConnection()
    _negotiate(guest, negotiate_request(((1, 0),), ((1, 1),)))
    rejected(send(guest, start_request()), E_FAIL)
    event, _ = _negotiate(guest, negotiate_request())
    assert event.status == 0
    assert only(send(guest, start_request()), StartCopy)


def test_renegotiate_keeps_state() -> None:
    guest = copying(10)
    event, _ = _negotiate(guest, negotiate_request())
    assert event.status == 0 and guest.copy_open
    _negotiate(guest, negotiate_request(((1, 0),), ((1, 0),)))
    assert guest.copy_open  # a failed renegotiation does not undo the first
    assert only(send(guest, write_request(offset=0, data=bytes(10))), WriteData)


# -- section 8 rules ---------------------------------------------------------------


@pytest.mark.parametrize("request_bytes", [
    start_request(), write_request(offset=0, data=b"a"), op_request(OP_COMPLETE),
    op_request(OP_CANCEL), op_request(9), fcopy_request(b""),
], ids=["start", "write", "complete", "cancel", "unknown-op", "empty"])
def test_fcopy_before_negotiate(request_bytes: bytes) -> None:
    guest = GuestConnection()
    event = rejected(send(guest, request_bytes), E_FAIL)
    assert event.icmsgtype == 7
    assert guest.state is GuestState.NEGOTIATING


@pytest.mark.parametrize("op", [OP_WRITE, OP_COMPLETE])
def test_write_or_complete_without_copy(op: int) -> None:
    guest = negotiated()
    request = (write_request(offset=0, data=b"abc") if op == OP_WRITE
               else op_request(OP_COMPLETE))
    event = rejected(send(guest, request), E_FAIL)
    assert event.operation == op


def test_start_while_copy_open_aborts_it() -> None:
    guest = copying(100)
    send(guest, write_request(offset=0, data=bytes(50)))
    trace = send(guest, start_request(file_name="second", file_size=3))
    assert trace.kinds() == ["CopyAborted", "StartCopy"]
    assert trace.statuses() == [0]
    assert guest.copy_open
    assert guest.received_bytes == 0
    # The new copy's size applies: 3 bytes complete it.
    assert only(send(guest, write_request(offset=0, data=b"abc")), WriteData)
    assert only(send(guest, op_request(OP_COMPLETE)), CompleteCopy).file_size == 3


def test_failed_start_while_copy_open_still_aborts() -> None:
    guest = copying(100)
    trace = send(guest, start_request(file_name="a/b"))
    rejected(trace, INVALIDARG, aborted=True)
    assert not guest.copy_open
    rejected(send(guest, write_request(offset=0, data=b"x")), E_FAIL)


def _assert_copy_ended(guest: GuestConnection) -> None:
    assert not guest.copy_open
    assert guest.state is GuestState.IDLE
    rejected(send(guest, write_request(offset=0, data=b"x")), E_FAIL)
    rejected(send(guest, op_request(OP_COMPLETE)), E_FAIL)


INVALID_WRITES = {
    "size-above-fragment": write_request(offset=0, data=bytes(FRAGMENT), size=FRAGMENT + 1,
                                         full=False),
    "beyond-file-size": write_request(offset=90, data=bytes(11)),
    "offset-beyond": write_request(offset=101, data=b""),
    "offset-huge": write_request(offset=(1 << 64) - 1, data=b"ab"),
    "body-short-of-size": write_request(offset=0, data=bytes(9), size=10),
    "full-body-size-lies": fcopy_request(struct.pack("<I32sIQI", OP_WRITE, bytes(32), 0, 0,
                                                     FRAGMENT + 1) + bytes(FRAGMENT)),
    "body-shorter-than-header": fcopy_request(struct.pack("<I32sIQ", OP_WRITE, bytes(32), 0, 0)),
    "body-of-4": fcopy_request(struct.pack("<I", OP_WRITE)),
}


@pytest.mark.parametrize("request_bytes", list(INVALID_WRITES.values()), ids=list(INVALID_WRITES))
def test_invalid_write_ends_copy(request_bytes: bytes) -> None:
    guest = copying(100)
    rejected(send(guest, request_bytes), INVALIDARG, aborted=True)
    _assert_copy_ended(guest)


def test_write_size_above_configured_fragment() -> None:
    guest = copying(1000, max_fragment=100)
    assert only(send(guest, write_request(offset=0, data=bytes(100))), WriteData)
    rejected(send(guest, write_request(offset=100, data=bytes(101))), INVALIDARG, aborted=True)


def test_write_at_the_edges_accepted() -> None:
    guest = copying(100)
    assert only(send(guest, write_request(offset=0, data=bytes(100))), WriteData).size == 100
    assert only(send(guest, write_request(offset=100, data=b"")), WriteData).size == 0
    assert guest.received_bytes == 100


def test_longer_body_accepted_and_rest_ignored() -> None:
    guest = copying(100)
    request = write_request(offset=10, data=b"0123456789abcdef", size=5)
    event = only(send(guest, request), WriteData)
    assert (event.offset, bytes(event.data)) == (10, b"01234")
    assert guest.received_bytes == 5


@pytest.mark.parametrize("full", [True, False], ids=["full", "trimmed"])
def test_trimmed_and_full_bodies_accepted(full: bool) -> None:
    guest = copying(100)
    request = write_request(offset=3, data=b"hello", full=full)
    assert len(request) == 28 + 52 + (FRAGMENT if full else 5)
    event = only(send(guest, request), WriteData)
    assert (event.offset, event.size, bytes(event.data)) == (3, 5, b"hello")
    assert isinstance(event.data, memoryview)


def test_unknown_operation() -> None:
    guest = copying(10)
    for op in (4, 0xFF, 0xFFFFFFFF):
        event = rejected(send(guest, op_request(op)), NOT_SUPPORTED)
        assert event.operation == op


@pytest.mark.parametrize("msgtype", [1, 2, 3, 4, 5, 6, 8, 0xFFFF])
@pytest.mark.parametrize("negotiate_first", [False, True])
def test_unknown_ic_type(msgtype: int, negotiate_first: bool) -> None:
    guest = negotiated() if negotiate_first else GuestConnection()
    request = hand_message(icmsgtype=msgtype, body=b"payload", transaction_id=3)
    event = rejected(send(guest, request), NOT_SUPPORTED)
    assert event.icmsgtype == msgtype and event.operation is None


@pytest.mark.parametrize("writes", [
    [],
    [(0, 50)],
    [(1, 99)],
    [(0, 50), (51, 49)],
], ids=["nothing", "first-half", "missing-first-byte", "gap"])
def test_complete_with_incomplete_coverage(writes: list[tuple[int, int]]) -> None:
    guest = copying(100)
    for offset, size in writes:
        assert only(send(guest, write_request(offset=offset, data=bytes(size))), WriteData)
    event = rejected(send(guest, op_request(OP_COMPLETE)), E_FAIL, aborted=True)
    assert event.operation == OP_COMPLETE
    _assert_copy_ended(guest)


def test_complete_after_out_of_order_and_overlapping_writes() -> None:
    guest = copying(100)
    for offset, size in [(60, 40), (0, 30), (20, 50), (0, 10)]:
        assert only(send(guest, write_request(offset=offset, data=bytes(size))), WriteData)
    assert only(send(guest, op_request(OP_COMPLETE)), CompleteCopy).file_size == 100


def test_empty_file() -> None:
    guest = copying(0)
    assert only(send(guest, op_request(OP_COMPLETE)), CompleteCopy).file_size == 0


BAD_NAMES = {
    "file-no-nul": {"file_name": b"a\x00" * 260},
    "path-no-nul": {"path_name": b"/\x00" * 260},
    "file-lone-high": {"file_name": b"a\x00\x00\xd8"},
    "path-lone-low": {"path_name": b"\x00\xdc/\x00"},
    "file-empty": {"file_name": ""},
    "file-slash": {"file_name": "a/b"},
    "file-only-slash": {"file_name": "/"},
}


@pytest.mark.parametrize("names", list(BAD_NAMES.values()), ids=list(BAD_NAMES))
def test_invalid_names(names: dict[str, Any]) -> None:
    guest = negotiated()
    event = rejected(send(guest, start_request(**names)), INVALIDARG)
    assert event.operation == OP_START
    assert not guest.copy_open


def test_names_that_are_valid() -> None:
    guest = negotiated()
    trace = send(guest, start_request(file_name="😀" * 129 + "x", path_name=""))
    event = only(trace, StartCopy)
    assert event.file_name == "😀" * 129 + "x" and event.path_name == ""


def test_start_body_too_short() -> None:
    guest = negotiated()
    short = start_request()[:-1]
    short = struct.pack("<II", 1, len(short) - 8) + short[8:]
    rejected(send(guest, short), INVALIDARG)


@pytest.mark.parametrize("body_len", [0, 3, 4, 35])
def test_fcopy_header_truncated_ends_copy(body_len: int) -> None:
    guest = copying(10)
    body = hand_fcopy_hdr(OP_COMPLETE)[:body_len]
    rejected(send(guest, fcopy_request(body)), INVALIDARG, aborted=True)
    assert not guest.copy_open


def test_file_size_limit() -> None:
    guest = negotiated(max_file_size=1000)
    rejected(send(guest, start_request(file_size=1001)), INVALIDARG)
    assert only(send(guest, start_request(file_size=1000)), StartCopy).file_size == 1000
    big = negotiated()
    assert only(send(big, start_request(file_size=(1 << 63) - 1)), StartCopy)
    for size in (1 << 63, (1 << 64) - 1):  # above the largest file offset
        rejected(send(negotiated(), start_request(file_size=size)), INVALIDARG)


@pytest.mark.parametrize("file_size", [1 << 63, (1 << 64) - 1])
def test_file_size_above_the_largest_file_offset(file_size: int) -> None:
    """PROTOCOL.md section 8: a file_size above 2**63 - 1 is invalid, whatever the limit."""
    guest = negotiated()
    event = rejected(send(guest, start_request(file_size=file_size)), INVALIDARG)
    assert "largest file offset" in event.reason
    assert guest.state is GuestState.IDLE and not guest.copy_open


@pytest.mark.parametrize(("offset", "size"), [(1 << 63, 1), ((1 << 63) - 1, 2),
                                              ((1 << 64) - 1, 2)])
def test_write_beyond_the_largest_file_offset(offset: int, size: int) -> None:
    """A WRITE ending above 2**63 - 1 gets 0x80070057 and ends the copy (no overflow in
    the sink: the largest copy the core opens ends exactly there)."""
    guest = copying((1 << 63) - 1)
    trace = send(guest, write_request(offset=offset, data=bytes(size)))
    event = rejected(trace, INVALIDARG, aborted=True)
    assert "largest file offset" in event.reason
    _assert_copy_ended(guest)
    # The last byte below the limit is still a valid place to write.
    last = copying((1 << 63) - 1)
    assert only(send(last, write_request(offset=(1 << 63) - 2, data=b"z")), WriteData)


@pytest.mark.parametrize("status", [Status.DISK_FULL, Status.E_FAIL, 0x8007000E])
def test_failed_write_answer_ends_copy(status: int) -> None:
    guest = copying(100)
    trace = send(guest, write_request(offset=0, data=bytes(10)), answering(status))
    assert trace.kinds() == ["WriteData"] and trace.statuses() == [status]
    _assert_copy_ended(guest)


def test_failed_complete_answer_ends_copy() -> None:
    guest = copying(0)
    trace = send(guest, op_request(OP_COMPLETE), answering(Status.E_FAIL))
    assert trace.kinds() == ["CompleteCopy"]
    _assert_copy_ended(guest)


def test_failed_start_answer_opens_nothing() -> None:
    guest = negotiated()
    send(guest, start_request(file_size=10), answering(Status.ALREADY_EXISTS))
    assert not guest.copy_open
    rejected(send(guest, write_request(offset=0, data=b"x")), E_FAIL)


@pytest.mark.parametrize("open_copy", [True, False])
@pytest.mark.parametrize("status", [0, E_FAIL])
def test_cancel(open_copy: bool, status: int) -> None:
    guest = copying(10) if open_copy else negotiated()
    trace = send(guest, op_request(OP_CANCEL), answering(status))
    event = only(trace, CancelCopy)
    assert event.copy_open is open_copy
    assert trace.statuses() == [status]
    assert not guest.copy_open
    rejected(send(guest, write_request(offset=0, data=b"x")), E_FAIL)


# -- end of stream and framing errors ------------------------------------------------


def test_eof_mid_copy() -> None:
    guest = copying(100)
    guest.receive_data(b"")
    assert isinstance(guest.next_event(), CopyAborted)
    assert guest.next_event() == ConnectionClosed(truncated=0)
    assert guest.state is GuestState.CLOSED and not guest.copy_open
    assert guest.next_event() == ConnectionClosed()


@pytest.mark.parametrize("cut", [1, 8, 27, 100])
def test_eof_mid_copy_with_partial_message(cut: int) -> None:
    guest = copying(100)
    guest.receive_data(write_request(offset=0, data=bytes(100))[:cut])
    assert guest.next_event() is NEED_DATA
    guest.receive_data(b"")
    assert isinstance(guest.next_event(), CopyAborted)
    assert guest.next_event() == ConnectionClosed(truncated=cut)


def test_eof_when_idle() -> None:
    guest = negotiated()
    guest.receive_data(b"")
    assert guest.next_event() == ConnectionClosed(truncated=0)
    with pytest.raises(LocalProtocolError):
        guest.receive_data(b"more")


def test_framing_error_propagates_and_sticks() -> None:
    guest = copying(100)
    guest.receive_data(struct.pack("<II", 1, 6217))
    with pytest.raises(FramingError):
        guest.next_event()
    assert guest.state is GuestState.ERROR
    guest.receive_data(op_request(OP_COMPLETE))
    with pytest.raises(FramingError):
        guest.next_event()


@pytest.mark.parametrize("header", [struct.pack("<II", 0, 30), struct.pack("<II", 1, 19)])
def test_framing_error_before_negotiate(header: bytes) -> None:
    guest = GuestConnection()
    guest.receive_data(header)
    with pytest.raises(FramingError):
        guest.next_event()


def test_framing_limit_follows_max_fragment() -> None:
    guest = copying(100_000, max_fragment=65536)
    request = write_request(offset=0, data=bytes(65536))
    assert only(send(guest, request), WriteData).size == 65536
    stock = copying(100_000)
    stock.receive_data(request[:8])
    with pytest.raises(FramingError):
        stock.next_event()


@pytest.mark.parametrize("trim", [False, True])
@pytest.mark.parametrize("status", [0, E_FAIL])
@pytest.mark.parametrize("into", [False, True], ids=["answer", "answer_into"])
def test_write_answer_bytes(trim: bool, status: int, into: bool) -> None:
    """answer() and answer_into() give the bytes PROTOCOL.md 5.6 says, built here by hand."""
    data = b"abc"
    request = write_request(offset=0, data=data, full=True)
    guest = copying(3, trim_write_echo=trim)
    guest.receive_data(request)
    event = guest.next_event()
    assert isinstance(event, WriteData)
    assert (event.offset, event.size, bytes(event.data)) == (0, 3, data)
    assert event.transaction_id == 2 and event.request == request
    if into:
        out = bytearray(b"batched")
        guest.answer_into(out, event, status)
        assert out.startswith(b"batched")
        answer = bytes(out[7:])
    else:
        answer = guest.answer(event, status)
    assert guest.state is (GuestState.COPYING if status == 0 else GuestState.IDLE)
    body_size = 52 if trim else 6196
    expected = (struct.pack("<II", 1, 20 + body_size)
                + struct.pack("<HHHHHHIBB2s", 3, 0, 7, 1, 1, body_size, status, 2, 0x05,
                              b"\0\0")
                + struct.pack("<I16s16sIQI", 1, bytes(16), bytes(16), 0, 0, 3))
    if not trim:
        expected += data + bytes(6144 - 3)
    assert answer == expected


# -- answer misuse -----------------------------------------------------------------


def test_skipping_an_answer() -> None:
    guest = GuestConnection()
    guest.receive_data(negotiate_request() + start_request())
    event = guest.next_event()
    with pytest.raises(LocalProtocolError):
        guest.next_event()
    assert isinstance(event, Negotiate)
    guest.answer(event)
    assert isinstance(guest.next_event(), Rejected | StartCopy)


def test_answering_the_wrong_event() -> None:
    guest = negotiated()
    guest.receive_data(start_request(file_size=1) + op_request(OP_CANCEL))
    first = guest.next_event()
    assert isinstance(first, StartCopy)
    stranger = StartCopy(transaction_id=first.transaction_id, request=first.request,
                         file_name=first.file_name, path_name=first.path_name,
                         flags=first.flags, file_size=first.file_size)
    assert stranger == first
    with pytest.raises(LocalProtocolError):
        guest.answer(stranger, 0)  # equal, but not the event just returned
    guest.answer(first, 0)
    with pytest.raises(LocalProtocolError):
        guest.answer(first, 0)  # answered twice
    second = guest.next_event()
    assert isinstance(second, CancelCopy)
    with pytest.raises(LocalProtocolError):
        guest.answer(first, 0)  # an old event
    guest.answer(second, 0)


def test_missing_or_bad_status() -> None:
    guest = negotiated()
    guest.receive_data(start_request())
    event = guest.next_event()
    assert isinstance(event, StartCopy)
    with pytest.raises(LocalProtocolError):
        guest.answer(event)
    for bad in (-1, 1 << 32):
        with pytest.raises(LocalProtocolError):
            guest.answer(event, bad)
    assert not guest.copy_open
    guest.answer(event, 0)
    assert guest.copy_open


def test_negotiate_and_rejected_carry_their_own_status() -> None:
    guest = GuestConnection()
    guest.receive_data(negotiate_request() + op_request(9))
    negotiate = guest.next_event()
    assert isinstance(negotiate, Negotiate)
    with pytest.raises(LocalProtocolError):
        guest.answer(negotiate, E_FAIL)
    assert status_of(guest.answer(negotiate, 0)) == 0
    reject = guest.next_event()
    assert isinstance(reject, Rejected)
    with pytest.raises(LocalProtocolError):
        guest.answer(reject, 0)
    assert status_of(guest.answer(reject, NOT_SUPPORTED)) == NOT_SUPPORTED


def test_notices_cannot_be_answered() -> None:
    guest = copying(10)
    guest.receive_data(b"")
    aborted = guest.next_event()
    assert isinstance(aborted, CopyAborted)
    with pytest.raises(LocalProtocolError):
        guest.answer(aborted, 0)  # type: ignore[arg-type]


# -- echo shapes and status folding ----------------------------------------------------


@pytest.mark.parametrize("full", [True, False], ids=["full", "trimmed"])
@pytest.mark.parametrize("status", [0, Status.DISK_FULL])
def test_trimmed_write_echo(full: bool, status: int) -> None:
    guest = copying(100, trim_write_echo=True)
    request = write_request(offset=7, data=b"payload", full=full, transaction_id=0xEE)
    trace = send(guest, request, answering(status))
    (answer,) = trace.answers
    assert len(answer) == 80
    assert u32(answer, 4) == 72
    assert u16(answer, OFF_ICMSGSIZE) == 52
    assert status_of(answer) == status
    assert answer[OFF_ICFLAGS] == GUEST_FLAGS and answer[OFF_TID] == 0xEE
    assert answer[OFF_BODY:] == request[OFF_BODY:80]
    # Other answers are not trimmed.
    trace = send(guest, op_request(OP_CANCEL))
    assert len(trace.answers[0]) == 28 + 36


@pytest.mark.parametrize("status", [0, Status.DISK_FULL, 0x12345678])
@pytest.mark.parametrize("full", [True, False], ids=["full", "trimmed"])
def test_full_echo_is_the_request_but_status_and_flags(status: int, full: bool) -> None:
    guest = copying(100)
    request = write_request(offset=7, data=b"payload", full=full, transaction_id=0x42)
    (answer,) = send(guest, request, answering(status)).answers
    assert len(answer) == len(request)
    diff = [i for i in range(len(request)) if answer[i] != request[i]]
    assert set(diff) <= {20, 21, 22, 23, 25}
    assert u32(answer, OFF_STATUS) == status
    assert answer[OFF_ICFLAGS] == 0x05


def test_rejected_echo_is_the_request_but_status_and_flags() -> None:
    guest = negotiated()
    request = start_request(file_name="")
    (answer,) = send(guest, request).answers
    expected = bytearray(request)
    expected[20:24] = struct.pack("<I", INVALIDARG)
    expected[25] = 0x05
    assert answer == bytes(expected)


@pytest.mark.parametrize(("status", "wire"), [
    (Status.INVALIDARG, E_FAIL),
    (Status.ACCESS_DENIED, E_FAIL),
    (Status.PATH_NOT_FOUND, E_FAIL),
    (Status.NOT_SUPPORTED, E_FAIL),
    (0x12345678, E_FAIL),
    (Status.ALREADY_EXISTS, 0x80070050),
    (Status.DISK_FULL, 0x80070070),
    (Status.E_FAIL, E_FAIL),
    (0, 0),
])
def test_linux_status_codes(status: int, wire: int) -> None:
    guest = copying(100, linux_status_codes=True)
    trace = send(guest, write_request(offset=0, data=b"x"), answering(status))
    assert trace.statuses() == [wire]
    assert guest.copy_open is (status == 0)


def test_linux_status_codes_fold_rejections() -> None:
    guest = negotiated(linux_status_codes=True)
    trace = send(guest, start_request(file_name=""))
    assert only(trace, Rejected).status == INVALIDARG
    assert trace.statuses() == [E_FAIL]
    trace = send(guest, op_request(77))
    assert trace.statuses() == [E_FAIL]
    plain = negotiated()
    assert send(plain, op_request(77)).statuses() == [NOT_SUPPORTED]


def test_range_limit_aborts_the_copy() -> None:
    guest = copying(100, max_ranges=2)
    assert only(send(guest, write_request(offset=0, data=b"a")), WriteData)
    assert only(send(guest, write_request(offset=10, data=b"a")), WriteData)
    trace = send(guest, write_request(offset=20, data=b"a"))
    # The WRITE that would need a third disjoint range is refused itself, so the host
    # learns at once that the copy is over.
    assert trace.kinds() == ["CopyAborted", "Rejected"]
    assert trace.statuses() == [INVALIDARG]
    _assert_copy_ended(guest)


# -- fuzzing -------------------------------------------------------------------------


class Checker:
    """Drives a GuestConnection through arbitrary input and checks its invariants
    against a small model of the copy state."""

    def __init__(self, guest: GuestConnection, draw_status: Callable[[], int]) -> None:
        self.guest = guest
        self.draw_status = draw_status
        self.negotiated = False
        self.open = False
        self.file_size = 0
        self.accepted: list[tuple[int, int]] = []

    def run(self, chunks: list[bytes]) -> None:
        for chunk in [*chunks, b""]:
            self.guest.receive_data(chunk)
            try:
                if self.pump():
                    return
            except ProtocolError as exc:
                assert isinstance(exc, FramingError)
                assert self.guest.state is GuestState.ERROR
                with pytest.raises(FramingError):
                    self.guest.next_event()
                return
        raise AssertionError("no ConnectionClosed after end of stream")

    def pump(self) -> bool:
        while True:
            event = self.guest.next_event()
            if event is NEED_DATA:
                return False
            if isinstance(event, ConnectionClosed):
                assert not self.open, "an open copy must be aborted before closing"
                assert self.guest.state is GuestState.CLOSED and not self.guest.copy_open
                assert self.guest.next_event() == ConnectionClosed()
                return True
            self.handle(event)

    def handle(self, event: Event) -> None:
        guest = self.guest
        if isinstance(event, CopyAborted):
            assert self.open
            self.open = False
            assert not guest.copy_open
            return
        assert guest.copy_open is self.open
        assert (guest.state is GuestState.NEGOTIATING) is (not self.negotiated)
        assert isinstance(event, RequestEvent)
        status: int | None
        if isinstance(event, Negotiate):
            assert (event.status == 0) == (event.framework_version is not None)
            status = None
            expected = event.status
        elif isinstance(event, Rejected):
            assert event.status in STATUS_VALUES and event.status != 0
            if event.icmsgtype == 7 and not self.negotiated:
                assert event.status == E_FAIL
            status = None
            expected = event.status
        else:
            assert self.negotiated
            status = expected = self.draw_status()
            if isinstance(event, StartCopy):
                assert not self.open
            elif isinstance(event, WriteData):
                assert self.open
                assert event.size <= guest.max_fragment
                assert event.offset + event.size <= self.file_size
                # construct's layout is the independent oracle for where the data is
                parsed = layouts.hv_do_fcopy_trimmed.parse(event.request[ICMSG_HDR_END:])
                assert (event.offset, event.size) == (parsed.offset, parsed.size)
                assert bytes(event.data) == parsed.data
            elif isinstance(event, CompleteCopy):
                assert self.open
                assert event.file_size == self.file_size
                assert _merged(self.accepted) == ([(0, self.file_size)] if self.file_size
                                                  else [])
            elif isinstance(event, CancelCopy):
                assert event.copy_open is self.open
        answer = guest.answer(event, status)
        check_answer(answer, event.request,
                     trimmed_write=guest.trim_write_echo and isinstance(event, WriteData))
        if guest.linux_status_codes and expected not in LINUX_STATUSES:
            expected = E_FAIL
        assert status_of(answer) == expected
        self.after(event, status)

    def after(self, event: RequestEvent, status: int | None) -> None:
        if isinstance(event, Negotiate):
            if event.status == 0:
                self.negotiated = True
        elif isinstance(event, StartCopy):
            if status == 0:
                self.open, self.file_size, self.accepted = True, event.file_size, []
        elif isinstance(event, WriteData):
            if status == 0:
                self.accepted.append((event.offset, event.offset + event.size))
            else:
                self.open = False
        elif isinstance(event, CompleteCopy | CancelCopy):
            self.open = False


def _merged(pieces: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for start, end in sorted(p for p in pieces if p[1] > p[0]):
        if out and start <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], end))
        else:
            out.append((start, end))
    return out


guest_configs = st.fixed_dictionaries({
    "trim_write_echo": st.booleans(),
    "linux_status_codes": st.booleans(),
    "max_fragment": st.sampled_from([FRAGMENT, 300, 65536]),
    "max_ranges": st.sampled_from([16384, 2]),
    "max_file_size": st.sampled_from([(1 << 64) - 1, 5000]),
})
statuses = st.integers(0, 7).flatmap(
    lambda i: st.sampled_from([int(s) for s in Status]) if i == 0 else st.just(0))
"""Mostly success, so that copies get somewhere; every Status value now and then."""
versions = st.sampled_from([(3, 0), (1, 1), (1, 0), (4, 0)])
names = st.sampled_from(["f", "", "a/b", "😀", "x" * 259])


@st.composite
def sessions(draw: st.DrawFn) -> list[bytes]:
    """A plausible message sequence: mostly well-formed, in a sensible order."""
    msgs: list[bytes] = []
    tid = draw(st.integers(0, 255))
    size = draw(st.integers(0, 20000))
    offset = 0

    def nxt() -> int:
        nonlocal tid
        tid = (tid + 1) & 0xFF
        return tid

    if draw(st.integers(0, 4)):
        msgs.append(negotiate_request(transaction_id=nxt()))
        if draw(st.integers(0, 4)):
            msgs.append(start_request(file_size=size, transaction_id=nxt()))
    for _ in range(draw(st.integers(0, 8))):
        kind = draw(st.sampled_from(["copy"] * 3 + ["write"] * 3 + [
            "start", "complete", "cancel", "negotiate", "other"]))
        if kind == "copy":
            # A whole copy: START, WRITEs covering the file (maybe out of order), COMPLETE.
            size = draw(st.integers(0, 12000))
            fragment = draw(st.sampled_from([300, 1000, FRAGMENT]))
            content = random.Random(size).randbytes(size)
            offsets = list(range(0, size, fragment))
            if draw(st.booleans()):
                offsets = draw(st.permutations(offsets))
            full = draw(st.booleans())
            msgs.append(start_request(file_size=size, transaction_id=nxt()))
            msgs.extend(write_request(offset=at, data=content[at:at + fragment], full=full,
                                      transaction_id=nxt()) for at in offsets)
            if draw(st.integers(0, 3)):
                msgs.append(op_request(OP_COMPLETE, transaction_id=nxt()))
            offset = size
        elif kind == "write":
            step = draw(st.integers(0, 7000))
            at = offset if draw(st.booleans()) else draw(st.integers(0, size + 10))
            chunk = random.Random(at).randbytes(min(step, FRAGMENT))
            msgs.append(write_request(offset=at, data=chunk, full=draw(st.booleans()),
                                      transaction_id=nxt()))
            offset = at + len(chunk)
        elif kind == "start":
            size = draw(st.integers(0, 20000))
            offset = 0
            msgs.append(start_request(file_name=draw(names), path_name=draw(names),
                                      copy_flags=draw(st.integers(0, 3)), file_size=size,
                                      transaction_id=nxt()))
        elif kind == "complete":
            msgs.append(op_request(OP_COMPLETE, transaction_id=nxt()))
        elif kind == "cancel":
            msgs.append(op_request(OP_CANCEL, transaction_id=nxt()))
        elif kind == "negotiate":
            msgs.append(negotiate_request(draw(st.lists(versions, max_size=3)),
                                          draw(st.lists(versions, max_size=3)),
                                          transaction_id=nxt()))
        else:
            msgs.append(hand_message(icmsgtype=draw(st.integers(0, 9)),
                                     body=draw(st.binary(max_size=80)),
                                     transaction_id=nxt()))
    return msgs


FIELDS = [(4, 4), (12, 2), (18, 2), (24, 1), (25, 1), (28, 4), (30, 2), (36, 4), (64, 2),
          (68, 8), (76, 4), (28 + 1076, 4), (28 + 1080, 8)]


@st.composite
def mutated(draw: st.DrawFn, msg: bytes) -> bytes:
    out = bytearray(msg)
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["flip", "truncate", "insert", "delete", "field"]))
        pos = draw(st.integers(0, max(len(out) - 1, 0)))
        if kind == "flip" and out:
            out[pos] ^= 1 << draw(st.integers(0, 7))
        elif kind == "truncate":
            del out[pos:]
        elif kind == "insert":
            out[pos:pos] = draw(st.binary(min_size=1, max_size=16))
        elif kind == "delete":
            del out[pos:pos + draw(st.integers(1, 16))]
        elif kind == "field":
            off, width = draw(st.sampled_from(FIELDS))
            if off + width <= len(out):
                top = (1 << (8 * width)) - 1
                value = draw(st.one_of(st.sampled_from([0, 1, top, top >> 1]),
                                       st.integers(0, top)))
                out[off:off + width] = value.to_bytes(width, "little")
    if len(out) >= 8 and draw(st.booleans()):
        out[4:8] = (len(out) - 8).to_bytes(4, "little")  # keep it framed
    return bytes(out)


def _chunks(data: st.DataObject, stream: bytes) -> list[bytes]:
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=12), label="cuts")
    return split(stream, cuts)


def _checker(data: st.DataObject, config: dict[str, Any]) -> Checker:
    return Checker(GuestConnection(**config),
                   lambda: data.draw(statuses, label="status"))


FUZZ = settings(max_examples=150, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@FUZZ
@given(config=guest_configs, msgs=sessions(), data=st.data())
def test_fuzz_valid_sessions(config: dict[str, Any], msgs: list[bytes],
                             data: st.DataObject) -> None:
    _checker(data, config).run(_chunks(data, b"".join(msgs)))


@FUZZ
@given(config=guest_configs, msgs=sessions(), data=st.data())
def test_fuzz_mutated_sessions(config: dict[str, Any], msgs: list[bytes],
                               data: st.DataObject) -> None:
    out = []
    for msg in msgs:
        if data.draw(st.integers(0, 2), label="mutate?") == 0:
            msg = data.draw(mutated(msg), label="mutated")
        out.append(msg)
    tail = data.draw(st.binary(max_size=40), label="tail")
    _checker(data, config).run(_chunks(data, b"".join(out) + tail))


@FUZZ
@given(config=guest_configs, stream=st.binary(max_size=3000), data=st.data())
def test_fuzz_random_bytes(config: dict[str, Any], stream: bytes, data: st.DataObject) -> None:
    _checker(data, config).run(_chunks(data, stream))


@FUZZ
@given(config=guest_configs, negotiate=st.booleans(),
       bodies=st.lists(st.tuples(st.sampled_from([0, 7, 7, 7, 3]), st.binary(max_size=1200),
                                 st.integers(0, 255)), max_size=8),
       data=st.data())
def test_fuzz_framed_random_bodies(config: dict[str, Any], negotiate: bool,
                                   bodies: list[tuple[int, bytes, int]],
                                   data: st.DataObject) -> None:
    msgs = [negotiate_request()] if negotiate else []
    for msgtype, body, tid in bodies:
        if msgtype == 7 and body and data.draw(st.booleans(), label="set op"):
            op = data.draw(st.integers(0, 4), label="op")
            body = op.to_bytes(4, "little") + body[4:]
        msgs.append(hand_message(icmsgtype=msgtype, body=body, transaction_id=tid))
    _checker(data, config).run(_chunks(data, b"".join(msgs)))


def test_transition_table() -> None:
    """The table the core moves by: what the theory-of-operation comment draws."""
    n, i, c = GuestState.NEGOTIATING, GuestState.IDLE, GuestState.COPYING
    assert next_state(n, Trigger.NEGOTIATE_ANSWERED, 0) is i
    assert next_state(n, Trigger.NEGOTIATE_ANSWERED, Status.E_FAIL) is n
    assert next_state(i, Trigger.START_ANSWERED, 0) is c
    assert next_state(i, Trigger.START_ANSWERED, Status.ALREADY_EXISTS) is i
    # answer_into skips the lookup for a WRITE answered 0: the table must agree.
    assert next_state(c, Trigger.WRITE_ANSWERED, 0) is c
    assert next_state(c, Trigger.WRITE_ANSWERED, Status.DISK_FULL) is i
    for status in (0, Status.E_FAIL):
        assert next_state(c, Trigger.COMPLETE_ANSWERED, status) is i
        assert next_state(c, Trigger.CANCEL_ANSWERED, status) is i
    assert next_state(c, Trigger.COPY_ABORTED) is i
    for state in (n, i, c):
        assert next_state(state, Trigger.END_OF_STREAM) is GuestState.CLOSED
        assert next_state(state, Trigger.FRAMING_ERROR) is GuestState.ERROR
    for state, trigger in [(n, Trigger.START_ANSWERED), (i, Trigger.WRITE_ANSWERED),
                           (GuestState.CLOSED, Trigger.NEGOTIATE_ANSWERED),
                           (i, Trigger.COPY_ABORTED)]:
        with pytest.raises(LocalProtocolError, match="cannot happen"):
            next_state(state, trigger)


def test_state_assigned_in_one_place() -> None:
    """Every change of ``state`` goes through next_state (besides the initial value)."""
    source = inspect.getsource(gsi.protocol)
    assert "self.state =" not in inspect.getsource(gsi.state)
    assert source.count("self.state = ") == 2
    assert "self.state = GuestState.NEGOTIATING" in source
    assert "self.state = next_state(" in source
