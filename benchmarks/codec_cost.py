"""Cost per WRITE_TO_FILE message: construct layouts vs the struct fast path.

Run with ``python benchmarks/codec_cost.py``. Every figure is the best of ``--repeat``
timeit runs (each of enough iterations to last about ``--budget`` seconds), in
microseconds per message of the stock shape: a full-length 6196-byte body carrying
6144 data bytes (a 6224-byte payload).

Rows:
  parse   construct: ``layouts.message.parse`` + ``layouts.hv_do_fcopy.parse``
          fast:      ``codec.peek`` + ``codec.operation_of`` + ``codec.write_fields``
  guest   fast:      ``GuestConnection.receive_data`` + ``next_event`` (WriteData) +
                     ``answer`` + ``next_event`` (NEED_DATA), i.e. the whole guest core
                     per message, compared with construct parsing alone
  build   construct: ``codec.build_message(body=codec.build_write_body(...))``
          fast:      ``HostConnection.write`` (prefix pack + one join)
  host    fast:      ``HostConnection.write`` + pairing its (trimmed) answer with
                     ``receive_data`` + ``next_answer``, compared with construct building
  in place           ``HostConnection.writes_into`` (the pipelined sender's builder,
                     data already in the buffer), and the same with the 64 trimmed
                     answers checked in place by ``receive_data``
"""

from __future__ import annotations

import argparse
import random
import timeit
from collections.abc import Callable, Sequence

from gsi import codec, layouts
from gsi.constants import DATA_FRAGMENT, CopyFlags, IcMsgType, Status
from gsi.events import NEED_DATA, Negotiate, StartCopy, WriteData
from gsi.protocol import GuestConnection
from host_sim.protocol import Answer, HostConnection

OFFSET = 0x12345678
DATA = random.Random(0).randbytes(DATA_FRAGMENT)
HOST_BATCH = 200
"""HostConnection.write calls per timed statement (the window caps them at 255)."""


def best_us(stmt: Callable[[], object], *, per_call: int = 1, repeat: int = 5,
            budget: float = 0.2) -> float:
    """Best of ``repeat`` timeit runs, in µs per message."""
    timer = timeit.Timer(stmt)
    number, elapsed = timer.autorange()
    number = max(1, int(number * budget / max(elapsed, 1e-9)))
    best = min(timer.repeat(repeat=repeat, number=number))
    return best / number / per_call * 1e6


def write_message() -> bytes:
    return codec.build_message(
        icmsgtype=IcMsgType.FCOPY, transaction_id=7,
        body=codec.build_write_body(offset=OFFSET, data=DATA, full_length=DATA_FRAGMENT))


def construct_parse(message: bytes) -> Callable[[], object]:
    def run() -> object:
        parsed = layouts.message.parse(message)
        return layouts.hv_do_fcopy.parse(parsed.body)
    return run


def fast_parse(message: bytes) -> Callable[[], object]:
    peek, operation_of, write_fields = codec.peek, codec.operation_of, codec.write_fields

    def run() -> object:
        return peek(message), operation_of(message), write_fields(message)
    return run


def guest_step(message: bytes) -> Callable[[], object]:
    """One WRITE through a GuestConnection that has a copy open."""
    host = HostConnection()
    guest = GuestConnection()
    for request in (host.negotiate(),
                    host.start_copy(file_name="bench", path_name="/", flags=CopyFlags.NONE,
                                    file_size=(1 << 64) - 1)):
        guest.receive_data(request)
        event = guest.next_event()
        assert isinstance(event, Negotiate | StartCopy)
        guest.answer(event, None if isinstance(event, Negotiate) else Status.S_OK)
    assert guest.copy_open

    def run() -> object:
        guest.receive_data(message)
        event = guest.next_event()
        assert isinstance(event, WriteData)
        answer = guest.answer(event, Status.S_OK)
        assert guest.next_event() is NEED_DATA
        return answer
    return run


def construct_build() -> Callable[[], object]:
    def run() -> object:
        body = codec.build_write_body(offset=OFFSET, data=DATA, full_length=DATA_FRAGMENT)
        return codec.build_message(icmsgtype=IcMsgType.FCOPY, body=body, transaction_id=7)
    return run


def host_write() -> Callable[[], object]:
    """HOST_BATCH writes per call; the window (255) is emptied between batches with
    ``abandon_in_flight`` (one list of the records: negligible per write)."""
    host = HostConnection()

    def run() -> object:
        write = host.write
        for _ in range(HOST_BATCH):
            write(OFFSET, DATA)
        host.abandon_in_flight()
        return None
    return run


def host_writes_into() -> Callable[[], object]:
    """HOST_BATCH WRITEs built in place (``writes_into``, the pipelined sender's path)
    in a preallocated buffer, their data already in the slots; window emptied as above."""
    host = HostConnection()
    buf = memoryview(bytearray(HOST_BATCH * host.write_length))

    def run() -> object:
        host.writes_into(buf, 0, OFFSET, HOST_BATCH)
        host.abandon_in_flight()
        return None
    return run


def host_pipelined_round() -> Callable[[], object]:
    """64 WRITEs built in place and their 64 trimmed answers checked in place
    (``receive_data`` taking them at fixed offsets), per call."""
    host = HostConnection()
    buf = memoryview(bytearray(64 * host.write_length))
    table = _answers()
    rounds = [b"".join(table[(first + i) & 0xFF] for i in range(64))
              for first in range(0, 256, 64)]  # the ids advance by 64 per round
    turn = [0]

    def run() -> object:
        host.writes_into(buf, 0, OFFSET, 64)
        taken = host.receive_data(rounds[turn[0]])
        turn[0] = (turn[0] + 1) % len(rounds)
        assert taken == 64
        return taken
    return run


def _answers() -> dict[int, bytes]:
    """Trimmed guest echoes of a WRITE, one per transaction id."""
    out = {}
    for tid in range(256):
        echo = bytearray(codec.pack_write_prefix(transaction_id=tid, offset=OFFSET,
                                                 size=DATA_FRAGMENT, body_len=52))
        echo[25] = 0x05
        out[tid] = bytes(echo)
    return out


def host_write_and_answer() -> Callable[[], object]:
    host = HostConnection()
    answers = _answers()

    def run() -> object:
        request = host.write(OFFSET, DATA)
        host.receive_data(answers[request[24]])
        answer = host.next_answer()
        assert isinstance(answer, Answer)
        assert host.next_answer() is NEED_DATA
        return answer
    return run


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--repeat", type=int, default=5, help="timeit runs; the best counts")
    parser.add_argument("--budget", type=float, default=0.2,
                        help="seconds per timeit run (about)")
    args = parser.parse_args(argv)

    def t(stmt: Callable[[], object], per_call: int = 1) -> float:
        return best_us(stmt, per_call=per_call, repeat=args.repeat, budget=args.budget)

    message = write_message()
    assert len(message) == 8 + 20 + 52 + DATA_FRAGMENT
    assert HostConnection().write(OFFSET, DATA)[25:] == message[25:]
    c_parse = t(construct_parse(message))
    f_parse = t(fast_parse(message))
    f_guest = t(guest_step(message))
    c_build = t(construct_build())
    f_write = t(host_write(), HOST_BATCH)
    f_host = t(host_write_and_answer())
    f_into = t(host_writes_into(), HOST_BATCH)
    f_round = t(host_pipelined_round(), 64)

    rows = [
        ("parse WRITE (codec.peek + write_fields)", c_parse, f_parse),
        ("guest core per WRITE (receive+event+answer)", c_parse, f_guest),
        ("build WRITE (HostConnection.write)", c_build, f_write),
        ("host per WRITE (write + pair its answer)", c_build, f_host),
        ("build WRITE in place (writes_into)", c_build, f_into),
        ("host per WRITE, pipelined (in place + check)", c_build, f_round),
    ]
    print(f"µs per {len(message)}-byte WRITE message, best of {args.repeat}")
    print(f"{'operation':<46} {'construct':>10} {'fast':>9} {'ratio':>7}")
    for name, slow, fast in rows:
        print(f"{name:<46} {slow:>10.2f} {fast:>9.3f} {slow / fast:>6.1f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
