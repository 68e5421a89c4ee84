"""gsi.framing.Framer: whole, byte by byte, random splits, errors, end of stream."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st
from wire_helpers import bytewise, hand_message, split

from gsi.constants import max_msgsize_for
from gsi.errors import FramingError, LocalProtocolError, ProtocolError
from gsi.framing import Framer

MAX = max_msgsize_for(6144)


def _messages() -> list[bytes]:
    return [
        hand_message(icmsgtype=0, body=b"", transaction_id=0),             # minimum: 28 bytes
        hand_message(icmsgtype=7, body=bytes(range(36)), transaction_id=1),
        hand_message(icmsgtype=7, body=b"\x01" * (MAX - 20), transaction_id=2),  # maximum
        hand_message(icmsgtype=7, body=b"xyz" * 100, transaction_id=3),
    ]


MESSAGES = _messages()
STREAM = b"".join(MESSAGES)


def drain(framer: Framer) -> list[bytes]:
    out: list[bytes] = []
    while (msg := framer.next_message()) is not None:
        out.append(msg)
    return out


def frame_chunks(chunks: list[bytes], max_msgsize: int = MAX) -> list[bytes]:
    framer = Framer(max_msgsize)
    out: list[bytes] = []
    for chunk in chunks:
        framer.feed(chunk)
        out += drain(framer)
    return out


def test_whole_stream() -> None:
    assert frame_chunks([STREAM]) == MESSAGES


def test_byte_by_byte() -> None:
    assert frame_chunks(bytewise(STREAM)) == MESSAGES


def test_message_returned_exactly_when_complete() -> None:
    framer = Framer(MAX)
    msg = MESSAGES[1]
    for i, byte in enumerate(bytewise(msg)):
        framer.feed(byte)
        got = framer.next_message()
        if i < len(msg) - 1:
            assert got is None
            assert framer.buffered == i + 1
        else:
            assert got == msg
            assert framer.buffered == 0


@given(cuts=st.lists(st.integers(0, len(STREAM)), max_size=40))
def test_random_splits(cuts: list[int]) -> None:
    assert frame_chunks(split(STREAM, cuts)) == MESSAGES


@given(cuts=st.lists(st.integers(0, len(STREAM)), max_size=20),
       tail=st.integers(1, len(MESSAGES[3]) - 1))
def test_trailing_partial_data(cuts: list[int], tail: int) -> None:
    partial = MESSAGES[3][:tail]
    framer = Framer(MAX)
    out: list[bytes] = []
    for chunk in split(STREAM + partial, cuts):
        framer.feed(chunk)
        out += drain(framer)
    assert out == MESSAGES
    assert framer.buffered == tail
    framer.feed(b"")
    assert framer.at_eof
    assert framer.next_message() is None
    assert framer.buffered == tail


def test_memoryview_and_bytearray_input() -> None:
    framer = Framer(MAX)
    framer.feed(memoryview(STREAM)[:100])
    framer.feed(bytearray(STREAM[100:]))
    assert drain(framer) == MESSAGES


def test_messages_are_immutable_copies() -> None:
    framer = Framer(MAX)
    framer.feed(bytearray(MESSAGES[0] + MESSAGES[1]))
    first = framer.next_message()
    assert isinstance(first, bytes)
    assert first == MESSAGES[0]
    framer.feed(MESSAGES[2])
    assert drain(framer) == MESSAGES[1:3]
    assert first == MESSAGES[0]


# -- framing errors, decided on the 8 header bytes alone -----------------------------


def _header(flags: int, msgsize: int) -> bytes:
    return struct.pack("<II", flags, msgsize)


BAD_HEADERS = {
    "flags-0": _header(0, 100),
    "flags-2": _header(2, 100),
    "flags-high": _header(0x80000001, 100),
    "msgsize-0": _header(1, 0),
    "msgsize-19": _header(1, 19),
    "msgsize-max+1": _header(1, MAX + 1),
    "msgsize-huge": _header(1, 0xFFFFFFFF),
}


@pytest.mark.parametrize("header", list(BAD_HEADERS.values()), ids=list(BAD_HEADERS))
def test_bad_header_fails_on_eight_bytes(header: bytes) -> None:
    framer = Framer(MAX)
    for byte in bytewise(header[:7]):
        framer.feed(byte)
        assert framer.next_message() is None
    framer.feed(header[7:])
    with pytest.raises(FramingError) as info:
        framer.next_message()
    assert isinstance(info.value, ProtocolError)
    # Sticky: the stream is broken for good, even if valid bytes follow.
    framer.feed(MESSAGES[0])
    with pytest.raises(FramingError) as again:
        framer.next_message()
    assert again.value is info.value


def test_oversize_rejected_without_buffering_its_body() -> None:
    """Only the 8-byte header of a 4 GiB message is fed: the error comes at once."""
    framer = Framer(MAX)
    framer.feed(_header(1, 0xFFFFFFF0))
    with pytest.raises(FramingError, match="exceeds the maximum"):
        framer.next_message()


def test_error_after_valid_messages() -> None:
    framer = Framer(MAX)
    framer.feed(MESSAGES[0] + MESSAGES[1] + _header(1, MAX + 1))
    assert framer.next_message() == MESSAGES[0]
    assert framer.next_message() == MESSAGES[1]
    with pytest.raises(FramingError):
        framer.next_message()
    with pytest.raises(FramingError):
        framer.next_message()


def test_limits_are_inclusive() -> None:
    smallest = _header(1, 20) + bytes(20)
    largest = _header(1, MAX) + bytes(MAX)
    assert frame_chunks([smallest, largest]) == [smallest, largest]


def test_custom_maximum() -> None:
    framer = Framer(100)
    assert framer.max_msgsize == 100
    framer.feed(_header(1, 100) + bytes(100))
    assert framer.next_message() is not None
    framer.feed(_header(1, 101))
    with pytest.raises(FramingError):
        framer.next_message()
    with pytest.raises(ValueError):
        Framer(19)


# -- end of stream -----------------------------------------------------------------


def test_eof_on_boundary() -> None:
    framer = Framer(MAX)
    assert not framer.at_eof
    framer.feed(MESSAGES[0])
    framer.feed(b"")
    assert framer.at_eof
    assert framer.next_message() == MESSAGES[0]
    assert framer.next_message() is None
    assert framer.buffered == 0


def test_eof_is_idempotent_and_data_after_it_is_refused() -> None:
    framer = Framer(MAX)
    framer.feed(b"")
    framer.feed(b"")
    assert framer.at_eof
    with pytest.raises(LocalProtocolError):
        framer.feed(b"x")
    assert framer.buffered == 0


@pytest.mark.parametrize("tail", [1, 7, 8, 27, len(MESSAGES[3]) - 1])
def test_eof_with_partial_message(tail: int) -> None:
    framer = Framer(MAX)
    framer.feed(MESSAGES[0] + MESSAGES[3][:tail])
    framer.feed(b"")
    assert framer.next_message() == MESSAGES[0]
    assert framer.next_message() is None
    assert framer.buffered == tail


def test_buffered_counts_unreturned_bytes() -> None:
    framer = Framer(MAX)
    framer.feed(MESSAGES[0] + MESSAGES[1][:10])
    assert framer.buffered == len(MESSAGES[0]) + 10
    framer.next_message()
    assert framer.buffered == 10
    framer.next_message()
    assert framer.buffered == 10
