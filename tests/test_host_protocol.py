"""host_sim.protocol.HostConnection: ids, window, answer pairing, request shapes."""

from __future__ import annotations

import random

import pytest
from wire_helpers import (
    GUEST_FLAGS,
    OFF_ICFLAGS,
    OFF_STATUS,
    OFF_TID,
    bytewise,
    drive_copy,
    hand_message,
    u16,
    u32,
)

from gsi.constants import CopyFlags, Status, Version
from gsi.errors import FramingError, InvalidNameError, LocalProtocolError, RemoteProtocolError
from gsi.events import NEED_DATA, Negotiate, StartCopy
from gsi.protocol import GuestConnection
from host_sim.protocol import MAX_WINDOW, Answer, HostConnection


def echo(request: bytes, status: int = 0, flags: int = GUEST_FLAGS) -> bytes:
    """A guest-style answer: the request with status and flags changed."""
    out = bytearray(request)
    out[OFF_STATUS:OFF_STATUS + 4] = status.to_bytes(4, "little")
    out[OFF_ICFLAGS] = flags
    return bytes(out)


def answer_of(host: HostConnection, data: bytes) -> Answer:
    host.receive_data(data)
    got = host.next_answer()
    assert isinstance(got, Answer)
    return got


def negotiate_answer(request: bytes, framework: tuple[int, int],
                     message: tuple[int, int]) -> bytes:
    out = bytearray(echo(request))
    out[28:32] = b"\x01\x00\x01\x00"
    out[36:40] = framework[0].to_bytes(2, "little") + framework[1].to_bytes(2, "little")
    out[40:44] = message[0].to_bytes(2, "little") + message[1].to_bytes(2, "little")
    return bytes(out)


def versions(host: HostConnection) -> tuple[Version | None, Version | None]:
    return host.framework_version, host.message_version


def test_transaction_ids_increment_and_wrap() -> None:
    host = HostConnection()
    seen: list[int] = []
    for i in range(600):
        request = host.cancel() if i % 2 else host.write(i, b"x")
        seen.append(request[OFF_TID])
        answer = answer_of(host, echo(request))
        assert answer.transaction_id == request[OFF_TID]
    assert seen == [i % 256 for i in range(600)]
    assert host.in_flight == 0


def test_window_limit() -> None:
    host = HostConnection()
    requests = [host.write(0, b"") for _ in range(MAX_WINDOW)]
    assert MAX_WINDOW == 255
    assert host.in_flight == 255
    assert len({r[OFF_TID] for r in requests}) == 255
    with pytest.raises(LocalProtocolError):
        host.complete()
    with pytest.raises(LocalProtocolError):
        host.negotiate()
    assert host.in_flight == 255
    answer_of(host, echo(requests[0]))
    after = host.complete()
    assert after[OFF_TID] == 255
    with pytest.raises(LocalProtocolError):
        host.cancel()
    for request in [*requests[1:], after]:
        answer_of(host, echo(request))
    assert host.in_flight == 0
    assert host.cancel()[OFF_TID] == 0


def test_answers_paired_in_order() -> None:
    host = HostConnection()
    requests = [host.start_copy(file_name="a", path_name="/p", flags=CopyFlags.NONE,
                                file_size=10),
                host.write(0, b"0123456789"), host.complete(), host.cancel()]
    statuses = [0, Status.DISK_FULL, Status.E_FAIL, 0]
    host.receive_data(b"".join(echo(r, s) for r, s in zip(requests, statuses, strict=True)))
    answers = []
    while isinstance(got := host.next_answer(), Answer):
        answers.append(got)
    assert got is NEED_DATA
    assert [a.kind for a in answers] == ["START_FILE_COPY", "WRITE_TO_FILE", "COMPLETE_FCOPY",
                                         "CANCEL_FCOPY"]
    assert [a.transaction_id for a in answers] == [0, 1, 2, 3]
    assert [a.status for a in answers] == statuses
    assert [a.ok for a in answers] == [True, False, False, True]
    assert [a.size for a in answers] == [0, 10, 0, 0]
    assert answers[1].payload == echo(requests[1], Status.DISK_FULL)


def test_answers_byte_by_byte() -> None:
    host = HostConnection()
    requests = [host.write(0, b"abc"), host.complete()]
    answers = []
    for byte in bytewise(b"".join(echo(r) for r in requests)):
        host.receive_data(byte)
        while isinstance(got := host.next_answer(), Answer):
            answers.append(got)
        assert got is NEED_DATA
    assert [a.kind for a in answers] == ["WRITE_TO_FILE", "COMPLETE_FCOPY"]


def test_trimmed_answer_accepted() -> None:
    host = HostConnection()
    request = host.write(100, bytes(range(200)))
    trimmed = bytearray(echo(request, Status.DISK_FULL)[:80])
    trimmed[4:8] = (72).to_bytes(4, "little")
    trimmed[18:20] = (52).to_bytes(2, "little")
    answer = answer_of(host, bytes(trimmed))
    assert answer.status == Status.DISK_FULL
    assert answer.size == 200


def test_minimal_answer_of_28_bytes_accepted() -> None:
    host = HostConnection()
    host.complete()
    answer = answer_of(host, hand_message(icmsgtype=7, body=b"", transaction_id=0,
                                          icflags=GUEST_FLAGS, status=Status.E_FAIL))
    assert answer.status == Status.E_FAIL
    assert answer.kind == "COMPLETE_FCOPY"


def test_out_of_order_id_rejected() -> None:
    host = HostConnection()
    first, second = host.write(0, b"a"), host.write(1, b"b")
    host.receive_data(echo(second))
    with pytest.raises(RemoteProtocolError, match="expected 0"):
        host.next_answer()
    assert host.in_flight == 2
    # An unknown id is refused the same way.
    host = HostConnection()
    host.write(0, b"a")
    stray = bytearray(echo(first))
    stray[OFF_TID] = 200
    host.receive_data(bytes(stray))
    with pytest.raises(RemoteProtocolError):
        host.next_answer()


def test_unsolicited_answer_rejected() -> None:
    host = HostConnection()
    host.receive_data(hand_message(icmsgtype=7, body=bytes(36), transaction_id=0,
                                   icflags=GUEST_FLAGS))
    with pytest.raises(RemoteProtocolError):
        host.next_answer()
    # Also after every request has been answered.
    host = HostConnection()
    request = host.complete()
    answer_of(host, echo(request))
    host.receive_data(echo(request))
    with pytest.raises(RemoteProtocolError):
        host.next_answer()


@pytest.mark.parametrize("flags", [0x00, 0x01, 0x03, 0x02, 0xFB])
def test_answer_without_response_flag_rejected(flags: int) -> None:
    host = HostConnection()
    request = host.complete()
    host.receive_data(echo(request, flags=flags))
    with pytest.raises(RemoteProtocolError, match="RESPONSE"):
        host.next_answer()
    assert host.in_flight == 1


def test_unframeable_answer() -> None:
    host = HostConnection()
    host.complete()
    host.receive_data((2).to_bytes(4, "little") + (20).to_bytes(4, "little"))
    with pytest.raises(FramingError):
        host.next_answer()


def test_eof() -> None:
    host = HostConnection()
    assert host.next_answer() is NEED_DATA
    host.receive_data(b"")
    assert host.next_answer() is None


def test_negotiate_answer_records_versions() -> None:
    host = HostConnection()
    assert versions(host) == (None, None)
    request = host.negotiate(((1, 0), (3, 0), (4, 0)), ((1, 1), (1, 2)))
    assert u16(request, 28) == 3 and u16(request, 30) == 2
    answer = answer_of(host, negotiate_answer(request, (4, 0), (1, 2)))
    assert answer.kind == "negotiate"
    assert (answer.framework_version, answer.message_version) == ((4, 0), (1, 2))
    assert versions(host) == ((4, 0), (1, 2))
    # Later requests carry the negotiated versions in their IC header.
    for request in (host.write(0, b"z"), host.complete(),
                    host.start_copy(file_name="f", path_name="", flags=CopyFlags.NONE,
                                    file_size=0)):
        assert request[8:12] == b"\x04\x00\x00\x00"
        assert request[14:18] == b"\x01\x00\x02\x00"


def test_failed_negotiate_records_nothing() -> None:
    host = HostConnection()
    request = host.negotiate()
    failed = bytearray(echo(request, Status.E_FAIL))
    failed[28:32] = bytes(4)
    answer = answer_of(host, bytes(failed))
    assert not answer.ok
    assert answer.framework_version is None
    assert host.framework_version is None and host.message_version is None


def test_successful_negotiate_answer_with_bad_counts_rejected() -> None:
    host = HostConnection()
    request = host.negotiate()
    bad = bytearray(negotiate_answer(request, (3, 0), (1, 1)))
    bad[28:32] = b"\x02\x00\x01\x00"
    host.receive_data(bytes(bad))
    with pytest.raises(RemoteProtocolError):
        host.next_answer()


def test_negotiate_with_real_guest() -> None:
    host = HostConnection()
    guest = GuestConnection(framework_versions=((4, 0), (3, 0)), message_versions=((1, 1),))
    guest.receive_data(host.negotiate(((1, 0), (3, 0), (4, 0)), ((1, 0), (1, 1))))
    event = guest.next_event()
    assert isinstance(event, Negotiate)
    answer = answer_of(host, guest.answer(event))
    assert (answer.framework_version, answer.message_version) == ((4, 0), (1, 1))


@pytest.mark.parametrize("size", [0, 1, 6143, 6144])
def test_full_write_body(size: int) -> None:
    data = random.Random(size).randbytes(size)
    request = HostConnection().write(0x0102030405060708, data)
    assert len(request) == 8 + 20 + 6196
    assert u32(request, 4) == 6216
    assert u16(request, 18) == 6196
    assert request[68:76] == bytes.fromhex("0807060504030201")
    assert u32(request, 76) == size
    assert request[80:80 + size] == data
    assert request[80 + size:] == bytes(6144 - size)


@pytest.mark.parametrize("size", [0, 1, 6143, 6144])
def test_trimmed_write_body(size: int) -> None:
    data = random.Random(size).randbytes(size)
    request = HostConnection(full_write_body=False).write(5, memoryview(data))
    assert len(request) == 80 + size
    assert u32(request, 4) == 72 + size
    assert u16(request, 18) == 52 + size
    assert u32(request, 76) == size
    assert request[80:] == data


def test_write_larger_than_fragment_refused() -> None:
    host = HostConnection()
    with pytest.raises(LocalProtocolError):
        host.write(0, bytes(6145))
    assert host.in_flight == 0
    with pytest.raises(ValueError):
        HostConnection(fragment_size=0)


def test_start_copy_refuses_unencodable_names() -> None:
    host = HostConnection()
    with pytest.raises(InvalidNameError):
        host.start_copy(file_name="a" * 260, path_name="/", flags=CopyFlags.NONE, file_size=0)
    with pytest.raises(InvalidNameError):
        host.start_copy(file_name="f", path_name="\ud800", flags=CopyFlags.NONE, file_size=0)


def test_raw_overwrites_transaction_id() -> None:
    host = HostConnection()
    first = host.complete()
    payload = hand_message(icmsgtype=9, body=b"abc", transaction_id=77)
    sent = host.raw(payload, kind="weird")
    assert sent[OFF_TID] == 1
    assert sent[:OFF_TID] == payload[:OFF_TID] and sent[25:] == payload[25:]
    answer_of(host, echo(first))
    assert answer_of(host, echo(sent, Status.NOT_SUPPORTED)).kind == "weird"
    assert host.raw(b"short") == b"short"
    assert host.in_flight == 1


@pytest.mark.parametrize("full", [True, False], ids=["full", "trimmed"])
def test_large_fragments_round_trip(full: bool) -> None:
    content = random.Random(1).randbytes(150_000)
    host = HostConnection(fragment_size=65536, full_write_body=full)
    guest = GuestConnection(max_fragment=65536)
    trace, answers, assembled = drive_copy(host, guest, content)
    assert assembled == content
    assert all(a.ok for a in answers)
    assert [a.size for a in answers if a.kind == "WRITE_TO_FILE"] == [65536, 65536, 18928]
    assert trace.kinds()[-1] == "CompleteCopy"
    first_write = host.write(0, bytes(65536))
    assert u16(first_write, 18) == 0xFFFF  # icmsgsize saturates; msgsize is exact
    assert u32(first_write, 4) == 20 + 52 + 65536


def test_large_fragments_break_a_stock_guest() -> None:
    host = HostConnection(fragment_size=65536, full_write_body=False)
    guest = GuestConnection()
    for request in (host.negotiate(),
                    host.start_copy(file_name="f", path_name="/", flags=CopyFlags.NONE,
                                    file_size=65536)):
        guest.receive_data(request)
        event = guest.next_event()
        assert isinstance(event, Negotiate | StartCopy)
        guest.answer(event, None if isinstance(event, Negotiate) else 0)
    guest.receive_data(host.write(0, bytes(65536))[:8])
    with pytest.raises(FramingError):
        guest.next_event()
