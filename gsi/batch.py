"""The batch path of the guest core: a run of WRITEs validated and answered in one pass.

:meth:`gsi.protocol.GuestConnection.next_batch_event` calls :func:`scan_writes` while a
copy is open: it reads the framer's buffer in place, one precompiled ``struct`` unpack per
message, and takes consecutive WRITE_TO_FILE requests as long as each passes exactly the
checks of the single-message path (``GuestConnection._write``): size within the maximum
fragment, the data inside the message, ``offset + size`` within ``file_size`` (and within
2**63-1), the range bound. It stops before the first message that is not such a WRITE, is
incomplete, or fails a check: that message takes the single-message path, which decides
(and words) what §8 says about it. Range bookkeeping is per contiguous run: the first
message of a run is added on its own (the only add that can exceed the range bound, as in
the single path), the whole run when it ends.

:func:`answer_batch` writes the answers from the requests themselves: a full echo patches
status (payload offset 20) and icflags (25) in place and returns a view of the requests;
a trimmed echo copies each request's first 80 bytes with msgsize 72 and icmsgsize 52.
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING, Final

from . import codec
from .constants import (
    GUEST_ICFLAGS,
    ICFLAGS_OFFSET,
    ICMSG_HDR_SIZE,
    LINUX_STATUSES,
    PIPE_FLAG_DATA,
    PIPE_HDR_SIZE,
    STATUS_OFFSET,
    WRITE_HEADER_SIZE,
    IcMsgType,
    Operation,
    Status,
)
from .events import WriteBatch
from .ranges import RangeLimitExceeded

if TYPE_CHECKING:
    from .protocol import GuestConnection

_HEAD: Final = struct.Struct("<II4xH14xI36xQI")
"""A WRITE up to its data: pipe flags, msgsize, icmsgtype, (transaction id skipped: only
the echo needs it), operation, offset, size."""
_DATA: Final = codec.WRITE_DATA_OFFSET  # 80
_BODY_MIN: Final = ICMSG_HDR_SIZE + WRITE_HEADER_SIZE  # msgsize of a WRITE with no data
_MAX_END: Final = (1 << 63) - 1
_FCOPY: Final = int(IcMsgType.FCOPY)
_WRITE: Final = int(Operation.WRITE_TO_FILE)
_FLAG: Final = PIPE_FLAG_DATA
_E_FAIL: Final = int(Status.E_FAIL)
_TRIMMED_MSGSIZE: Final = ICMSG_HDR_SIZE + WRITE_HEADER_SIZE


def scan_writes(conn: GuestConnection) -> WriteBatch | None:
    """The WRITEs at the head of ``conn``'s buffer that pass every check, or None."""
    framer = conn._framer
    buf, pos, end = framer.view()
    if end - pos < _DATA:
        return None
    max_msgsize = framer.max_msgsize
    max_fragment = conn.max_fragment
    file_size = min(conn._file_size, _MAX_END)
    ranges = conn._ranges
    unpack = _HEAD.unpack_from
    view = memoryview(buf)
    positions: list[int] = []
    runs: list[tuple[int, list[memoryview]]] = []
    run_first: list[int] = []
    run_views: list[memoryview] = []
    run_start = run_end = -1
    nbytes = 0
    p = pos
    while end - p >= _DATA:
        flags, msgsize, msgtype, op, offset, size = unpack(buf, p)
        stop = p + PIPE_HDR_SIZE + msgsize
        if (flags != _FLAG or msgtype != _FCOPY or op != _WRITE or msgsize > max_msgsize
                or stop > end or size > max_fragment or msgsize < _BODY_MIN + size
                or offset + size > file_size):
            break
        if size:
            data = view[p + _DATA:p + _DATA + size]
            if offset == run_end:
                run_views.append(data)
                run_end += size
            else:
                if run_views:
                    ranges.add(run_start, run_end)  # extends a range: never over the bound
                try:
                    ranges.add(offset, offset + size)
                except RangeLimitExceeded:
                    run_views = []
                    break
                run_views = [data]
                runs.append((offset, run_views))
                run_first.append(len(positions))
                run_start, run_end = offset, offset + size
            nbytes += size
        positions.append(p)
        p = stop
    if run_views:
        ranges.add(run_start, run_end)
    if not positions:
        return None
    framer.consume(p)
    return WriteBatch(buffer=buf, start=pos, end=p, positions=positions, runs=runs,
                      run_first=run_first, nbytes=nbytes)


def answer_batch(conn: GuestConnection, event: WriteBatch, failed_at: int | None,
                 status: int) -> memoryview:
    """The answers to ``event`` (see :meth:`GuestConnection.answer_batch`)."""
    count = event.count
    if failed_at is None:
        failed_at = count
    fail_status = status
    if conn.linux_status_codes and fail_status not in LINUX_STATUSES:
        fail_status = _E_FAIL
    buf, positions = event.buffer, event.positions
    pack = codec.U32.pack_into
    if not conn.trim_write_echo:
        for i, p in enumerate(positions):
            pack(buf, p + STATUS_OFFSET, 0 if i < failed_at else
                 fail_status if i == failed_at else _E_FAIL)
            buf[p + ICFLAGS_OFFSET] = GUEST_ICFLAGS
        return memoryview(buf)[event.start:event.end]
    trimmed = min(count, failed_at + 1)
    out = bytearray(_DATA * trimmed)
    view = memoryview(buf)
    for i in range(trimmed):
        p = positions[i]
        at = i * _DATA
        out[at:at + _DATA] = view[p:p + _DATA]
        pack(out, at + codec.MSGSIZE_OFFSET, _TRIMMED_MSGSIZE)
        codec.U16.pack_into(out, at + codec.ICMSGSIZE_OFFSET, WRITE_HEADER_SIZE)
        pack(out, at + STATUS_OFFSET, 0 if i < failed_at else fail_status)
        out[at + ICFLAGS_OFFSET] = GUEST_ICFLAGS
    for p in positions[trimmed:]:  # refused as "WRITE with no open copy": echoed whole
        pack(buf, p + STATUS_OFFSET, _E_FAIL)
        buf[p + ICFLAGS_OFFSET] = GUEST_ICFLAGS
    if trimmed < count:
        out += view[positions[trimmed]:event.end]
    return memoryview(out)
