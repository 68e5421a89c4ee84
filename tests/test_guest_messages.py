"""GuestConnection fed whole messages (``receive_message``: a vmbus ring packet each).

The packet length frames the message; the pipe header is not read (PROTOCOL.md
section 7). Expected answers are built here with ``struct``; the section 8 rules are
checked by replaying the hostile corpus through both entry points.
"""

from __future__ import annotations

import struct

import pytest
from hostile.make_corpus import CASES, Case, copying_prelude, negotiate
from wire_helpers import Trace, feed, ok_policy, write_request

from gsi.constants import Status
from gsi.errors import FramingError, LocalProtocolError
from gsi.events import NEED_DATA, ConnectionClosed, CopyAborted, MessageDropped, Negotiate
from gsi.protocol import GuestConnection, GuestState, failure_answer

E_FAIL = Status.E_FAIL


def _pump(guest: GuestConnection, trace: Trace) -> None:
    """wire_helpers.pump without its answer checks, which read the pipe header."""
    while (event := guest.next_event()) is not NEED_DATA:
        trace.events.append(event)
        if isinstance(event, ConnectionClosed):
            return
        if not isinstance(event, CopyAborted | MessageDropped):
            trace.answers.append(guest.answer(event, ok_policy(event)))


def by_messages(guest: GuestConnection, messages: list[bytes], *, eof: bool = True) -> Trace:
    trace = Trace()
    for message in messages:
        guest.receive_message(message)
        _pump(guest, trace)
    if eof:
        guest.receive_message(b"")
        _pump(guest, trace)
        assert isinstance(trace.events[-1], ConnectionClosed)
    return trace


def answered(request: bytes, status: int) -> bytes:
    out = bytearray(request)
    struct.pack_into("<I", out, 20, status)
    out[25] = 0x05
    return bytes(out)


def negotiated() -> GuestConnection:
    guest = GuestConnection()
    assert by_messages(guest, [negotiate(1)], eof=False).statuses() == [0]
    return guest


def test_the_pipe_header_is_not_read() -> None:
    """Flags 2 and a msgsize beyond the packet: the message is handled all the same."""
    request = bytearray(negotiate(9))
    struct.pack_into("<II", request, 0, 2, 9999)
    guest = GuestConnection()
    trace = by_messages(guest, [bytes(request)], eof=False)
    assert trace.kinds() == ["Negotiate"] and trace.statuses() == [0]
    assert trace.answers[0][:8] == struct.pack("<II", 2, 9999)  # echoed as it came
    assert guest.state is GuestState.IDLE


def test_padding_is_part_of_the_message_and_echoed() -> None:
    guest = negotiated()
    padded = write_request(offset=0, data=b"x") + b"\xee\xee\xee"  # no copy open
    assert by_messages(guest, [padded]).answers == [answered(padded, E_FAIL)]


def test_too_short_to_answer_is_dropped() -> None:
    guest = negotiated()
    trace = by_messages(guest, [b"\x01" * 27, b"x", negotiate(3)])
    assert trace.kinds() == ["MessageDropped", "MessageDropped", "Negotiate",
                             "ConnectionClosed"]
    assert trace.events[0] == MessageDropped(size=27)
    assert trace.statuses() == [0]


@pytest.mark.parametrize(("max_fragment", "largest"), [(6144, 6224), (6145, 6232)])
def test_message_size_limit(max_fragment: int, largest: int) -> None:
    """The framing maximum, plus the ring's padding to 8 bytes: above it, a framing error
    (the session ends), and it stays one."""
    guest = GuestConnection(max_fragment=max_fragment)
    by_messages(guest, [negotiate(1)], eof=False)
    big = write_request(offset=0, data=b"", full=False) + bytes(largest - 80)
    assert len(big) == largest
    assert by_messages(guest, [big], eof=False).statuses() == [E_FAIL]  # no copy open
    guest.receive_message(big + b"\0")
    with pytest.raises(FramingError, match="exceeds the maximum"):
        guest.next_event()
    assert guest.state is GuestState.ERROR
    with pytest.raises(FramingError):
        guest.next_event()


def test_end_of_channel_aborts_an_open_copy() -> None:
    guest = GuestConnection()
    trace = by_messages(guest, copying_prelude())
    assert trace.kinds() == ["Negotiate", "StartCopy", "CopyAborted", "ConnectionClosed"]
    assert guest.state is GuestState.CLOSED
    with pytest.raises(LocalProtocolError):
        guest.receive_message(negotiate(2))


def test_no_mixing_bytes_and_messages() -> None:
    guest = GuestConnection()
    guest.receive_data(negotiate(1)[:10])
    with pytest.raises(LocalProtocolError):
        guest.receive_message(negotiate(1))


def test_resume_takes_over_an_accepted_negotiate() -> None:
    first = GuestConnection()
    assert first.accepted_negotiate is None
    by_messages(first, [negotiate(1)], eof=False)
    accepted = first.accepted_negotiate
    assert accepted == negotiate(1)
    later = GuestConnection()
    assert later.resume(accepted)
    assert later.state is GuestState.IDLE and later.accepted_negotiate == accepted
    # nothing was answered, and an FCOPY is now served
    trace = by_messages(later, copying_prelude()[1:], eof=False)
    assert trace.kinds() == ["StartCopy"] and trace.statuses() == [0]
    with pytest.raises(LocalProtocolError):
        later.resume(accepted)


def test_resume_refuses_what_this_core_would_refuse() -> None:
    old_versions = GuestConnection(framework_versions=((9, 9),))
    assert not old_versions.resume(negotiate(1))
    assert old_versions.state is GuestState.NEGOTIATING
    guest = GuestConnection()
    assert not guest.resume(copying_prelude()[1])  # a START is no NEGOTIATE
    assert not guest.resume(b"short")
    assert guest.state is GuestState.NEGOTIATING and guest.accepted_negotiate is None


def test_a_failed_negotiate_is_not_kept() -> None:
    guest = negotiated()
    bad = bytearray(negotiate(2))
    struct.pack_into("<HH", bad, 28, 101, 0)  # counts above 100: malformed
    guest.receive_message(bytes(bad))
    event = guest.next_event()
    assert isinstance(event, Negotiate) and event.status == E_FAIL
    guest.answer(event)
    assert guest.accepted_negotiate == negotiate(1)


def test_failure_answer() -> None:
    request = write_request(offset=5, data=b"abc")
    assert failure_answer(request) == answered(request, E_FAIL)
    assert failure_answer(request[:28]) == answered(request[:28], E_FAIL)
    assert failure_answer(request[:27]) is None


def _replay(case: Case, *, messages: bool) -> Trace:
    prelude = {"none": [], "negotiated": [negotiate(1)], "copying": copying_prelude()}
    requests = [*prelude[case.prelude], case.payload]
    guest = GuestConnection()
    return by_messages(guest, requests) if messages else feed(guest, requests)


@pytest.mark.parametrize("case", [c for c in CASES if isinstance(c.expect, int)],
                         ids=lambda c: c.name)
def test_section_8_answers_are_the_same_by_message(case: Case) -> None:
    """Every corpus case the stream can frame gets the same events and answers when it
    arrives as a whole message (the sink's part answered 0 on both paths)."""
    by_stream = _replay(case, messages=False)
    by_message = _replay(case, messages=True)
    assert by_message.kinds() == by_stream.kinds()
    assert by_message.answers == by_stream.answers
    assert isinstance(by_message.events[-1], ConnectionClosed)
    assert by_message.statuses()[-1] == by_stream.statuses()[-1]
