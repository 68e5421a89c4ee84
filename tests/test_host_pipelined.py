"""HostConnection's pipelined WRITEs: built in place from a template (byte for byte what
``write`` builds), tracked as a range of transaction ids, answers checked in place; and
the hooks a fault-injecting host uses (next_reply, amend_last, withdraw_last, raw)."""

from __future__ import annotations

import random

import pytest
from wire_helpers import GUEST_FLAGS, OFF_ICFLAGS, OFF_MSGSIZE, OFF_STATUS, OFF_TID

from gsi.constants import Status, max_msgsize_for
from gsi.errors import FramingError, LocalProtocolError, RemoteProtocolError
from gsi.events import NEED_DATA
from host_sim.protocol import MAX_WINDOW, Answer, HostConnection, Reply

HEAD = 80


def echo(request: bytes | bytearray | memoryview, status: int = 0, *, trim: bool = False,
         flags: int = GUEST_FLAGS) -> bytes:
    """A guest-style answer: the request (or its first 80 bytes, re-framed) with status
    and flags changed."""
    out = bytearray(request[:HEAD] if trim else request)
    if trim:
        out[OFF_MSGSIZE:OFF_MSGSIZE + 4] = (HEAD - 8).to_bytes(4, "little")
    out[OFF_STATUS:OFF_STATUS + 4] = status.to_bytes(4, "little")
    out[OFF_ICFLAGS] = flags
    return bytes(out)


def pipelined(host: HostConnection, data: bytes) -> tuple[bytearray, list[bytes]]:
    """``data`` as WRITEs built in place in one buffer (slots back to back, the last one
    short if it is), and each message as sent."""
    frag, length = host.fragment_size, host.write_length
    count = -(-len(data) // frag)
    buf = bytearray(b"\xaa" * (count * length))  # a dirty buffer: nothing may leak
    for i in range(count):
        piece = data[i * frag:(i + 1) * frag]
        buf[i * length + HEAD:i * length + HEAD + len(piece)] = piece
    full = len(data) // frag
    ends = []
    if full:
        host.writes_into(buf, 0, 0, full)
        ends = [(i + 1) * length for i in range(full)]
    if full < count:
        ends.append(host.write_into(buf, full * length, full * frag, len(data) - full * frag))
    starts = [i * length for i in range(count)]
    return buf, [bytes(buf[s:e]) for s, e in zip(starts, ends, strict=True)]


@pytest.mark.parametrize("frag", [1, 6144, 65536])
@pytest.mark.parametrize("full_body", [True, False], ids=["full", "trimmed"])
def test_built_in_place_is_byte_identical_to_write(frag: int, full_body: bool) -> None:
    rng = random.Random(frag)
    for size in (frag, 3 * frag, 2 * frag + 1, frag * 300 // 7 + 1):
        data = rng.randbytes(size)
        reference = HostConnection(fragment_size=frag, full_write_body=full_body)
        host = HostConnection(fragment_size=frag, full_write_body=full_body)
        for _ in range(size % 7):  # start at different transaction ids
            reference.complete(), host.complete()
        _, messages = pipelined(host, data)
        expected = [reference.write(off, data[off:off + frag]) for off in range(0, size, frag)
                    ][:len(messages)]
        assert messages == expected
        assert host.in_flight == reference.in_flight


def test_template_follows_the_negotiated_versions() -> None:
    reference, host = HostConnection(), HostConnection()
    for conn in (reference, host):
        answer = bytearray(echo(conn.negotiate()))
        answer[28:32] = b"\x01\x00\x01\x00"
        answer[36:44] = bytes([1, 0, 0, 0, 1, 0, 0, 0])  # framework 1.0, message 1.0
        conn.receive_data(bytes(answer))
        assert isinstance(conn.next_answer(), Answer)
    buf = bytearray(host.write_length)
    host.writes_into(buf, 0, 4096, 1)
    assert bytes(buf[:HEAD]) == reference.write(4096, bytes(6144))[:HEAD]
    assert buf[8:12] == b"\x01\x00\x00\x00"


@pytest.mark.parametrize("full_body", [True, False], ids=["full", "trimmed"])
def test_prefixes_by_id_with_their_data_are_what_write_builds(full_body: bool) -> None:
    """write_prefixes across the wrap of transaction ids, then after a negotiation: each
    prefix followed by its data is byte for byte ``write``; answers take the range."""
    frag, rng = 100, random.Random(4)
    data = rng.randbytes(700 * frag)
    reference = HostConnection(fragment_size=frag, full_write_body=full_body)
    host = HostConnection(fragment_size=frag, full_write_body=full_body)
    reference.complete()
    host.receive_data(echo(host.complete()))  # start at id 1
    assert isinstance(host.next_answer(), Answer)
    offset = 0
    for count in (200, 55, 1, 254, 190):
        first = host.write_prefixes(offset, count)
        sent = [bytes(host.prefixes[(first + i) & 0xFF]) + data[offset + i * frag:
                                                                offset + (i + 1) * frag]
                for i in range(count)]
        expected = [reference.write(offset + i * frag, data[offset + i * frag:
                                                            offset + (i + 1) * frag])
                    for i in range(count)]
        assert sent == expected
        assert host.receive_data(b"".join(echo(m, trim=True) for m in sent)) == count
        assert host.in_flight == 0
        offset += count * frag
        reference.abandon_in_flight()
    with pytest.raises(ValueError, match="count"):
        host.write_prefixes(0, 0)
    with pytest.raises(LocalProtocolError, match=str(MAX_WINDOW)):
        host.write_prefixes(0, MAX_WINDOW + 1)


def test_writes_into_at_a_stride_leaves_the_gaps_alone() -> None:
    host = HostConnection(fragment_size=100)
    buf = bytearray(b"\x55" * 3 * 200)
    end = host.writes_into(buf, 0, 1000, 3, stride=200)
    assert end == 400 + 180
    assert buf[180:200] == buf[380:400] == buf[580:] == b"\x55" * 20
    assert [buf[i + OFF_TID] for i in (0, 200, 400)] == [0, 1, 2]
    with pytest.raises(ValueError, match="stride"):
        host.writes_into(buf, 0, 0, 1, stride=179)
    with pytest.raises(ValueError, match="count"):
        host.writes_into(buf, 0, 0, 0)


def test_in_flight_writes_are_a_range_of_ids() -> None:
    host = HostConnection(fragment_size=10)
    host.cancel()
    buf = bytearray(300 * host.write_length)
    host.writes_into(buf, 0, 0, 200)
    host.write_into(buf, 0, 2000, 5)
    assert host.in_flight == 202
    requests = host.requests_in_flight()
    assert [r.transaction_id for r in requests] == list(range(202))
    assert [r.kind for r in requests[:2]] == ["CANCEL_FCOPY", "WRITE_TO_FILE"]
    assert {r.size for r in requests[1:201]} == {10} and requests[-1].size == 5
    with pytest.raises(LocalProtocolError, match=str(MAX_WINDOW)):
        host.writes_into(buf, 0, 0, MAX_WINDOW - 201)
    host.writes_into(buf, 0, 0, MAX_WINDOW - 202)
    with pytest.raises(LocalProtocolError):
        host.write_into(buf, 0, 0, 10)


@pytest.mark.parametrize("trim", [False, True], ids=["full-echo", "trimmed-echo"])
def test_answers_taken_in_place(trim: bool) -> None:
    host = HostConnection()
    _, messages = pipelined(host, random.Random(1).randbytes(64 * 6144))
    answers = b"".join(echo(m, trim=trim) for m in messages)
    assert host.receive_data(answers) == 64
    assert host.in_flight == 0
    assert host.next_answer() is NEED_DATA


def test_answers_taken_at_any_split() -> None:
    """Each answer counts once its last byte is in, whatever the chunks."""
    host = HostConnection(fragment_size=40)
    _, messages = pipelined(host, bytes(range(200)))
    answers = [echo(m, trim=i % 2 == 1) for i, m in enumerate(messages)]
    stream = b"".join(answers)
    ends = [sum(len(a) for a in answers[:i + 1]) for i in range(len(answers))]
    taken = 0
    for i in range(len(stream)):
        taken += host.receive_data(stream[i:i + 1])
        assert taken == sum(end <= i + 1 for end in ends)
    assert host.in_flight == 0
    rng = random.Random(2)
    for _ in range(30):
        host = HostConnection(fragment_size=40)
        _, messages = pipelined(host, bytes(200))
        stream = b"".join(echo(m, trim=rng.random() < 0.5) for m in messages)
        cuts = sorted(rng.sample(range(1, len(stream)), 6))
        pieces = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
        assert sum(host.receive_data(p) for p in pieces) == 5


def test_a_failure_answer_comes_out_of_next_answer() -> None:
    host = HostConnection(fragment_size=100)
    _, messages = pipelined(host, bytes(1000))
    answers = [echo(m, Status.DISK_FULL if i == 3 else 0) for i, m in enumerate(messages)]
    assert host.receive_data(b"".join(answers[:6])) == 3
    failed = host.next_answer()
    assert isinstance(failed, Answer)
    assert (failed.status, failed.kind, failed.size, failed.transaction_id) == (
        Status.DISK_FULL, "WRITE_TO_FILE", 100, 3)
    later = [host.next_answer(), host.next_answer()]
    assert [a.transaction_id for a in later if isinstance(a, Answer)] == [4, 5]
    assert host.next_answer() is NEED_DATA
    assert host.receive_data(b"".join(answers[6:])) == 4  # the framer is empty again
    assert host.in_flight == 0


@pytest.mark.parametrize("defect", ["tid", "flags", "pipe", "oversize", "unsolicited"])
def test_bad_answers_raise_as_for_any_request(defect: str) -> None:
    """The same error, word for word, as for WRITEs built with ``write``."""
    errors = []
    for pipeline in (True, False):
        host = HostConnection(fragment_size=100)
        if pipeline:
            _, messages = pipelined(host, bytes(300))
        else:
            messages = [host.write(off, bytes(100)) for off in (0, 100, 200)]
        bad = bytearray(echo(messages[1]))
        if defect == "tid":
            bad[OFF_TID] = 9
        elif defect == "flags":
            bad[OFF_ICFLAGS] = 0x03
        elif defect == "pipe":
            bad[0] = 2
        elif defect == "oversize":
            bad[OFF_MSGSIZE:OFF_MSGSIZE + 4] = (max_msgsize_for(100) + 1).to_bytes(4, "little")
        stream = echo(messages[0]) + bytes(bad)
        if defect == "unsolicited":
            stream = b"".join(echo(m) for m in messages) + echo(messages[0])
        taken = host.receive_data(stream)
        assert taken == (3 if defect == "unsolicited" else 1) * pipeline
        if not pipeline:
            for _ in range(3 if defect == "unsolicited" else 1):
                assert isinstance(host.next_answer(), Answer)
        with pytest.raises((RemoteProtocolError, FramingError)) as caught:
            host.next_answer()
        errors.append((type(caught.value), str(caught.value)))
    assert errors[0] == errors[1]


def test_end_of_stream_in_the_middle_of_an_answer() -> None:
    host = HostConnection(fragment_size=100)
    _, messages = pipelined(host, bytes(200))
    stream = echo(messages[0]) + echo(messages[1])
    assert host.receive_data(stream[:-1]) == 1
    assert host.receive_data(b"") == 0
    assert host.closed and host.next_answer() is None
    assert host.in_flight == 1
    with pytest.raises(LocalProtocolError):
        host.receive_data(b"x")


def test_end_of_stream_in_the_middle_of_a_header() -> None:
    host = HostConnection(fragment_size=100)
    _, messages = pipelined(host, bytes(200))
    assert host.receive_data(echo(messages[0]) + echo(messages[1])[:10]) == 1
    host.receive_data(b"")
    assert host.next_answer() is None and host.in_flight == 1


def test_framing_maximum_defaults_to_the_real_one() -> None:
    host = HostConnection(fragment_size=100)
    request = host.complete()
    big = bytearray(echo(request))
    big[OFF_MSGSIZE:OFF_MSGSIZE + 4] = (max_msgsize_for(100) + 1).to_bytes(4, "little")
    host.receive_data(bytes(big))
    with pytest.raises(FramingError, match=str(max_msgsize_for(100))):
        host.next_answer()
    host = HostConnection(fragment_size=100, max_msgsize=60)
    host.receive_data(echo(host.complete()))  # 64 bytes: msgsize 56
    assert isinstance(host.next_answer(), Answer)
    host.receive_data(echo(host.write(0, bytes(10)))[:8])
    with pytest.raises(FramingError, match="60"):
        host.next_answer()


# -- hooks for a fault-injecting host ---------------------------------------------------


def reply_of(host: HostConnection, data: bytes) -> Reply:
    host.receive_data(data)
    reply = host.next_reply()
    assert isinstance(reply, Reply)
    return reply


def test_next_reply_pairs_by_id_and_gives_up_older_requests() -> None:
    host = HostConnection()
    requests = []
    for tag in "abcd":
        requests.append(host.complete())
        host.amend_last(tag=tag)
    reply = reply_of(host, echo(requests[2], Status.DISK_FULL))
    assert reply.matched and reply.request is not None
    assert (reply.request.tag, reply.status) == ("c", Status.DISK_FULL)
    assert [r.tag for r in reply.lost] == ["a", "b"]
    corrupted = bytearray(echo(requests[0], flags=0x03))  # no RESPONSE flag: still paired
    corrupted[OFF_TID] = 200
    reply = reply_of(host, bytes(corrupted))
    assert not reply.matched and reply.request is not None and reply.request.tag == "d"
    reply = reply_of(host, echo(requests[1]))
    assert reply.request is None and not reply.matched and reply.transaction_id == 1
    assert host.next_reply() is NEED_DATA


def test_next_reply_finds_ids_inside_a_range() -> None:
    host = HostConnection(fragment_size=10)
    host.complete()
    _, messages = pipelined(host, bytes(50))
    host.receive_data(echo(messages[2]))  # the oldest is no range: all goes to the framer
    reply = host.next_reply()
    assert isinstance(reply, Reply) and reply.matched and reply.request is not None
    assert (reply.request.transaction_id, len(reply.lost)) == (3, 3)
    assert [r.transaction_id for r in host.requests_in_flight()] == [4, 5]


def test_amend_withdraw_and_raw_without_id() -> None:
    host = HostConnection()
    request = bytearray(host.complete())
    request[OFF_TID] = 77
    host.amend_last(tag="corrupted", transaction_id=77)
    host.cancel()
    host.withdraw_last()  # never sent
    junk = b"\x07" * 40
    assert host.raw(junk, stamp=False) == junk
    host.amend_last(tag="junk")
    assert [(r.transaction_id, r.tag) for r in host.requests_in_flight()] == [
        (77, "corrupted"), (-1, "junk")]
    assert host.complete()[OFF_TID] == 2  # the withdrawn id stays used, raw took none
    reply = reply_of(host, echo(bytes(request)))
    assert reply.matched and reply.request is not None and reply.request.tag == "corrupted"
    assert [r.transaction_id for r in host.abandon_in_flight()] == [-1, 2]
    assert host.in_flight == 0
    with pytest.raises(LocalProtocolError):
        host.withdraw_last()
    with pytest.raises(LocalProtocolError):
        host.amend_last(tag=1)


def test_no_window_limit_on_request() -> None:
    host = HostConnection(max_in_flight=None)
    ids = [host.complete()[OFF_TID] for _ in range(600)]
    assert host.in_flight == 600 and ids[256] == 0
    answer = bytearray(echo(HostConnection().complete()))
    answer[OFF_TID] = 1
    reply = reply_of(host, bytes(answer))
    assert reply.request is not None and reply.request.transaction_id == 1
    assert len(reply.lost) == 1 and host.in_flight == 598
