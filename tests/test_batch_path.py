"""The batch path of the guest core against the single-message path, its reference.

The same bytes, split the same way, go to two GuestConnections: one read with
``next_event`` (one event per message), one with ``next_batch_event`` (runs of WRITEs as
one WriteBatch). Both drive the same in-memory sink; the answer bytes, the events (a batch
expanded into its WRITEs) and the committed files must be identical.
"""

from __future__ import annotations

import itertools
import struct
from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from wire_helpers import (
    OP_CANCEL,
    OP_COMPLETE,
    hand_message,
    negotiate_request,
    op_request,
    start_request,
    write_request,
)

from gsi.constants import Status
from gsi.errors import FramingError, LocalProtocolError
from gsi.events import (
    NEED_DATA,
    CancelCopy,
    CompleteCopy,
    ConnectionClosed,
    CopyAborted,
    Negotiate,
    Rejected,
    StartCopy,
    WriteBatch,
    WriteData,
)
from gsi.protocol import GuestConnection

MAX_FRAGMENT = 64
_WRITE_FIELDS = struct.Struct("<QI")


def _data(offset: int, size: int) -> bytes:
    return bytes((offset + i) * 7 % 251 for i in range(size))


@dataclass
class Run:
    """What one driver saw: answers, normalized events, committed files."""

    answers: bytearray = field(default_factory=bytearray)
    events: list[tuple[object, ...]] = field(default_factory=list)
    files: list[bytes] = field(default_factory=list)


def drive(chunks: list[bytes], *, batch: bool, fail_at: int | None = None,
          **options: object) -> Run:
    """Feed ``chunks`` then end of stream; a sink in memory, whose write starting at
    byte ``fail_at`` fails with DISK_FULL (the copy is then dropped, as a session does)."""
    conn = GuestConnection(max_fragment=MAX_FRAGMENT, **options)  # type: ignore[arg-type]
    run = Run()
    writes: list[tuple[int, bytes]] | None = None
    size = 0

    def write(offset: int, data: bytes) -> bool:
        assert writes is not None
        if offset == fail_at:
            return False
        writes.append((offset, data))
        return True

    for chunk in [*chunks, b""]:
        if batch and chunk:  # the batch driver receives into the core's buffer
            rest = memoryview(chunk)
            while rest:
                room = conn.receive_buffer()
                n = min(len(room), len(rest))
                room[:n] = rest[:n]
                del room
                conn.received(n)
                rest = rest[n:]
        else:
            conn.receive_data(chunk)
        while True:
            try:
                event = conn.next_batch_event() if batch else conn.next_event()
            except FramingError as exc:
                run.events.append(("framing error", str(exc)))
                return run
            if event is NEED_DATA:
                break
            if isinstance(event, WriteBatch):
                answer, failed = _write_batch(conn, event, writes, fail_at, run)
                run.answers += answer
                if failed:
                    writes = None
            elif isinstance(event, WriteData):
                data = bytes(event.data)
                run.events.append(("write", event.offset, data))
                ok = not data or write(event.offset, data)
                if not ok:
                    writes = None
                run.answers += conn.answer(event, Status.S_OK if ok else Status.DISK_FULL)
            elif isinstance(event, StartCopy):
                run.events.append(("start", event.file_name, event.file_size))
                writes, size = [], event.file_size
                run.answers += conn.answer(event, Status.S_OK)
            elif isinstance(event, CompleteCopy):
                assert writes is not None
                content = bytearray(size)
                for offset, data in writes:
                    content[offset:offset + len(data)] = data
                run.files.append(bytes(content))
                writes = None
                run.events.append(("complete", event.file_size))
                run.answers += conn.answer(event, Status.S_OK)
            elif isinstance(event, CancelCopy):
                writes = None
                run.events.append(("cancel", event.copy_open))
                run.answers += conn.answer(event, Status.S_OK)
            elif isinstance(event, Negotiate):
                run.events.append(("negotiate", event.status))
                run.answers += conn.answer(event)
            elif isinstance(event, Rejected):
                run.events.append(("rejected", event.status))
                run.answers += conn.answer(event)
            elif isinstance(event, CopyAborted):
                writes = None
                run.events.append(("aborted", event.status, event.reason))
            elif isinstance(event, ConnectionClosed):
                run.events.append(("closed", event.truncated))
                return run
    raise AssertionError("no ConnectionClosed after the end of the stream")


def _write_batch(conn: GuestConnection, event: WriteBatch,
                 writes: list[tuple[int, bytes]] | None, fail_at: int | None, run: Run,
                 ) -> tuple[memoryview, bool]:
    """As the session does: one write per run, the first run starting at ``fail_at``
    fails (and with it the batch's WRITEs from that run's first on)."""
    assert writes is not None
    failed_at = None
    for index, (offset, views) in enumerate(event.runs):
        if offset == fail_at:
            failed_at = event.run_first[index]
            break
        for view in views:
            writes.append((offset, bytes(view)))
            offset += len(view)
    for i, p in enumerate(event.positions):
        if failed_at is not None and i > failed_at:
            run.events.append(("rejected", Status.E_FAIL))
        else:
            offset, n = _WRITE_FIELDS.unpack_from(event.buffer, p + 68)
            run.events.append(("write", offset, bytes(event.buffer[p + 80:p + 80 + n])))
    if failed_at is None:
        return conn.answer_batch(event), False
    return conn.answer_batch(event, failed_at=failed_at, status=Status.DISK_FULL), True


# -- streams ------------------------------------------------------------------

FILE_SIZE = 8 * MAX_FRAGMENT


@st.composite
def streams(draw: st.DrawFn) -> list[bytes]:
    """NEGOTIATE, START, then a mix of WRITE runs (mostly valid, some failing a check),
    COMPLETEs, CANCELs, STARTs and other messages; sometimes a framing error at the end."""
    out = [negotiate_request(), start_request(file_size=FILE_SIZE)]
    tid = 2
    for _ in range(draw(st.integers(1, 12))):
        kind = draw(st.sampled_from(["run", "run", "run", "bad", "complete", "cancel",
                                     "start", "negotiate", "unknown"]))
        tid = (tid + 1) & 0xFF
        if kind == "run":
            offset = draw(st.integers(0, FILE_SIZE))
            for _ in range(draw(st.integers(1, 10))):
                size = draw(st.integers(0, MAX_FRAGMENT))
                size = min(size, FILE_SIZE - offset)
                out.append(write_request(offset=offset, data=_data(offset, size),
                                         transaction_id=tid, full=draw(st.booleans())))
                offset += size
                tid = (tid + 1) & 0xFF
        elif kind == "bad":
            how = draw(st.sampled_from(["beyond", "too big", "short", "huge offset"]))
            if how == "beyond":  # by one byte or more
                offset = FILE_SIZE - 8 + draw(st.sampled_from([1, 1, 6]))
                out.append(write_request(offset=offset, data=_data(0, 8)))
            elif how == "too big":
                out.append(write_request(offset=0, data=_data(0, MAX_FRAGMENT + 1)))
            elif how == "short":
                out.append(write_request(offset=0, data=_data(0, 8), size=9))
            else:
                out.append(write_request(offset=(1 << 64) - 4, data=_data(0, 8)))
        elif kind == "complete":
            out.append(op_request(OP_COMPLETE, transaction_id=tid))
        elif kind == "cancel":
            out.append(op_request(OP_CANCEL, transaction_id=tid))
        elif kind == "start":
            out.append(start_request(file_size=draw(st.sampled_from([0, FILE_SIZE, 100])),
                                     transaction_id=tid))
        elif kind == "negotiate":
            out.append(negotiate_request(transaction_id=tid))
        else:
            out.append(hand_message(icmsgtype=9, body=b"\0" * 60, transaction_id=tid))
    if draw(st.booleans()):  # the whole file, fragments in any order, then COMPLETE
        out.append(start_request(file_size=FILE_SIZE, transaction_id=1))
        offsets = draw(st.permutations(range(0, FILE_SIZE, MAX_FRAGMENT)))
        out += [write_request(offset=o, data=_data(o, MAX_FRAGMENT)) for o in offsets]
        out.append(op_request(OP_COMPLETE))
    if draw(st.integers(0, 9)) == 0:
        out.append(b"\x02\0\0\0\x40\0\0\0" + bytes(64))  # pipe flags 2: a framing error
    return out


@st.composite
def split(draw: st.DrawFn) -> list[bytes]:
    data = b"".join(draw(streams()))
    cuts = sorted(draw(st.sets(st.integers(1, max(1, len(data) - 1)), max_size=12)))
    bounds = [0, *cuts, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds) if b > a]


OPTIONS = [{}, {"trim_write_echo": True}, {"linux_status_codes": True, "max_ranges": 3},
           {"trim_write_echo": True, "max_ranges": 2}]


@pytest.mark.parametrize("options", OPTIONS)
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(chunks=split())
def test_batch_path_matches_single_path(chunks: list[bytes], options: dict[str, object],
                                        ) -> None:
    single = drive(chunks, batch=False, **options)
    batched = drive(chunks, batch=True, **options)
    assert batched.answers == single.answers
    assert batched.events == single.events
    assert batched.files == single.files


def _runs_stream() -> list[bytes]:
    """Two runs in one chunk: [0, 128) and [256, 384), then [128, 192)."""
    out = [negotiate_request(), start_request(file_size=FILE_SIZE)]
    for tid, offset in enumerate([0, 64, 256, 320, 128], start=10):
        out.append(write_request(offset=offset, data=_data(offset, 64), transaction_id=tid))
    return [b"".join(out)]


@pytest.mark.parametrize("trim", [False, True])
def test_sink_failure_mid_batch(trim: bool) -> None:
    """The run at 256 fails: WRITEs before it 0, it DISK_FULL, the later ones 0x80004005
    (no open copy), byte for byte as the single path answers."""
    chunks = _runs_stream()
    single = drive(chunks, batch=False, fail_at=256, trim_write_echo=trim)
    batched = drive(chunks, batch=True, fail_at=256, trim_write_echo=trim)
    assert batched.answers == single.answers
    assert batched.events == single.events
    statuses = []
    pos = 0
    answers = bytes(batched.answers)
    while pos < len(answers):
        statuses.append(struct.unpack_from("<I", answers, pos + 20)[0])
        pos += 8 + struct.unpack_from("<I", answers, pos + 4)[0]
    assert statuses == [0, 0, 0, 0, Status.DISK_FULL, Status.E_FAIL, Status.E_FAIL]
    assert batched.files == []


def test_one_batch_per_chunk_and_full_echo_in_place() -> None:
    conn = GuestConnection(max_fragment=MAX_FRAGMENT)
    conn.receive_data(negotiate_request() + start_request(file_size=FILE_SIZE))
    for _ in range(2):
        event = conn.next_batch_event()
        assert isinstance(event, Negotiate | StartCopy)
        conn.answer(event, Status.S_OK if isinstance(event, StartCopy) else None)
    writes = [write_request(offset=o, data=_data(o, 64), transaction_id=o // 64)
              for o in range(0, FILE_SIZE, 64)]
    buf = conn.receive_buffer()
    data = b"".join(writes)
    buf[:len(data)] = data
    del buf
    conn.received(len(data))
    event = conn.next_batch_event()
    assert isinstance(event, WriteBatch)
    assert event.count == 8 and event.nbytes == FILE_SIZE
    assert [(offset, len(views)) for offset, views in event.runs] == [(0, 8)]
    answer = conn.answer_batch(event)
    assert answer.obj is event.buffer  # the requests themselves, patched in place
    expected = bytearray(data)
    for p in event.positions:
        struct.pack_into("<I", expected, p - event.start + 20, 0)
        expected[p - event.start + 25] = 0x05
    assert bytes(answer) == bytes(expected)
    assert conn.next_batch_event() is NEED_DATA


def test_answer_batch_misuse() -> None:
    conn = GuestConnection(max_fragment=MAX_FRAGMENT)
    conn.receive_data(negotiate_request() + start_request(file_size=FILE_SIZE)
                      + write_request(offset=0, data=_data(0, 64)))
    conn.answer(conn.next_event(), None)  # type: ignore[arg-type]
    conn.answer(conn.next_event(), Status.S_OK)  # type: ignore[arg-type]
    event = conn.next_batch_event()
    assert isinstance(event, WriteBatch)
    with pytest.raises(LocalProtocolError):
        conn.answer_batch(event, failed_at=1, status=Status.DISK_FULL)
    with pytest.raises(LocalProtocolError):
        conn.answer_batch(event, failed_at=0, status=0)
    with pytest.raises(LocalProtocolError):
        conn.next_batch_event()  # not answered yet
    conn.answer_batch(event)
    with pytest.raises(LocalProtocolError):
        conn.answer_batch(event)  # twice


def test_idle_connection_with_open_copy_holds_a_small_buffer() -> None:
    """No 1 MiB buffer before data flows: the receive buffer starts at 16 KiB."""
    conn = GuestConnection()
    for message in (negotiate_request(), start_request(file_size=1 << 30)):
        buf = conn.receive_buffer()
        buf[:len(message)] = message
        del buf
        conn.received(len(message))
        event = conn.next_batch_event()
        conn.answer(event, Status.S_OK if isinstance(event, StartCopy) else None)  # type: ignore[arg-type]
    assert conn.copy_open
    assert conn._framer.capacity <= 16 * 1024
