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


@pytest.mark.parametrize("seed", range(40))
def test_any_chunking_gives_the_same_messages(seed: int) -> None:
    rng = random.Random(seed)
    messages = [_message(rng, rng.choice(SIZES)) for _ in range(rng.randint(1, 8))]
    stream = b"".join(messages)
    framer = Framer(1 << 21)
    out: list[bytes] = []
    fed = 0
    while fed < len(stream):
        piece = stream[fed:fed + rng.choice([1, 7, 100, 4096, 65536, 262144, 1 << 21])]
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
