"""The framer's large-message path (chunks gathered and joined once): same messages,
whatever the chunking, with and without next_message between feeds."""

from __future__ import annotations

import random
import struct

import pytest

from gsi.framing import Framer

SIZES = [20, 100, 6216, 65536 - 8, 65536, 70000, 200000, 1 << 20]


def _message(rng: random.Random, msgsize: int) -> bytes:
    head = rng.randbytes(min(msgsize, 80))
    return struct.pack("<II", 1, msgsize) + head + bytes(msgsize - len(head))


def _receive(framer: Framer, stream: bytes, at: int, limit: int) -> int:
    """One receive straight into the framer, as the session does; bytes taken."""
    view = framer.receive_buffer()
    size = min(len(view), limit, len(stream) - at)
    view[:size] = stream[at:at + size]
    del view
    framer.received(size)
    return size


@pytest.mark.parametrize("way", ["feed", "receive"])
@pytest.mark.parametrize("seed", range(40))
def test_any_chunking_gives_the_same_messages(seed: int, way: str) -> None:
    """Fed, or received straight into the buffer as the session does (the space offered
    never cuts a message short of what it needs): the same messages."""
    rng = random.Random(seed)
    messages = [_message(rng, rng.choice(SIZES)) for _ in range(rng.randint(1, 8))]
    stream = b"".join(messages)
    framer = Framer(1 << 21)
    out: list[bytes] = []
    fed = 0
    while fed < len(stream):
        limit = rng.choice([1, 7, 100, 4096, 65536, 262144, 1 << 21])
        if way == "receive":
            fed += _receive(framer, stream, fed, limit)
        else:
            piece = stream[fed:fed + limit]
            framer.feed(piece if rng.random() < 0.5 else bytearray(piece))
            fed += len(piece)
        assert framer.buffered == fed - sum(map(len, out))
        if rng.random() < 0.8:
            while (message := framer.next_message()) is not None:
                out.append(message)
    while (message := framer.next_message()) is not None:
        out.append(message)
    assert out == messages
    assert framer.buffered == 0
    framer.feed(b"")
    assert framer.at_eof and framer.next_message() is None


def test_a_fed_bytearray_may_be_reused_by_the_caller() -> None:
    message = _message(random.Random(0), 1 << 20)
    framer = Framer(1 << 21)
    chunk = bytearray(message[:1000])
    framer.feed(chunk)
    assert framer.next_message() is None
    for start in range(1000, len(message), 4096):
        chunk[:] = message[start:start + 4096]
        framer.feed(chunk)
        chunk[:] = bytes(len(chunk))  # the caller reuses its buffer
    assert framer.next_message() == message


def test_large_messages_are_received_up_to_their_end() -> None:
    """While a large message is pending the space offered ends where it ends, and after
    large messages the next receive is offered the last one's size: receives stop at the
    message boundaries, so nothing is left over to move to the front of the buffer."""
    rng = random.Random(3)
    size = 200_000
    small = [_message(rng, 6216) for _ in range(400)]  # grows the buffer to 1 MiB and more
    large = [_message(rng, size) for _ in range(4)]
    tail = [_message(rng, 100)] * 3
    stream = b"".join(small + large + tail)
    framer = Framer(1 << 21)
    out: list[bytes] = []
    at = 0
    start = len(b"".join(small))
    while at < start:
        at += _receive(framer, stream, at, start - at)
        while (message := framer.next_message()) is not None:
            out.append(message)
    assert len(framer.receive_buffer()) >= 1 << 20
    at += _receive(framer, stream, at, 5000)  # a first receive that stops early
    assert len(framer.receive_buffer()) == 8 + size - 5000  # exactly the rest
    boundaries = {start + i * (8 + size) for i in range(5)}
    while at < len(stream):
        at += _receive(framer, stream, at, 1 << 22)
        if at <= start + 4 * (8 + size):
            assert at in boundaries, at  # every receive ended at a message's end
        while (message := framer.next_message()) is not None:
            out.append(message)
        if at < start + 4 * (8 + size):
            assert framer.buffered == 0
            assert len(framer.receive_buffer()) == 8 + size
    assert out == small + large + tail
