"""The sans-IO host side of the fcopy protocol.

Theory of operation
-------------------
Each ``negotiate`` / ``start_copy`` / ``write`` / ``complete`` / ``cancel`` call returns
the request's bytes and records it as in flight under the next transaction id (u8,
wrapping). Received bytes go in with :meth:`HostConnection.receive_data`;
:meth:`HostConnection.next_answer` frames them and pairs each answer with the oldest
request in flight: the guest answers strictly in order, so an answer whose
transaction id is not that request's is a protocol violation. At most 255 requests
may be in flight, so in-flight ids are always distinct. Layouts come from
:mod:`gsi.codec`; nothing is re-declared here.

Pipelined WRITEs: :meth:`~HostConnection.writes_into` and :meth:`~HostConnection.write_into`
build WRITEs in place in the caller's buffer, whose data slots the caller filled (from a
template: only the transaction id, offset and size change from one to the next), and
record full-size ones as a range of consecutive transaction ids, not one record each;
:meth:`~HostConnection.write_prefixes` does the same for WRITEs whose 80-byte prefixes
it keeps, one per transaction id (:attr:`~HostConnection.prefixes`), for a sender that
sends each prefix and its data as separate pieces.
While the oldest request in flight is such a range, :meth:`~HostConnection.receive_data`
checks the answers where they lie in the received bytes (pipe header, status at payload
offset 20, transaction id at 24, flags at 25), takes the successful ones without copying
them and returns how many it took. Anything else (a failure status, a wrong id, a
malformed header) and every byte after it go to the framer, so that
:meth:`~HostConnection.next_answer` reports it exactly as it does for any request.

A host that injects faults uses the same engine with a few hooks:
:meth:`~HostConnection.amend_last` (a corrupted id, a tag), :meth:`~HostConnection.withdraw_last`
(a request built but never sent), :meth:`~HostConnection.raw` (bytes of its own) and
:meth:`~HostConnection.next_reply`, which pairs answers loosely instead of raising: by
transaction id among the requests in flight, older ones given up as lost.
"""

from __future__ import annotations

import contextlib
import struct
from collections import deque
from typing import Any

from gsi import codec
from gsi.constants import (
    DATA_FRAGMENT,
    HOST_FCOPY_VERSIONS,
    HOST_FRAMEWORK_VERSIONS,
    ICFLAGS_OFFSET,
    ICMSG_HDR_END,
    ICMSG_HDR_SIZE,
    NEGOTIATE_FIXED_SIZE,
    WRITE_HEADER_SIZE,
    CopyFlags,
    IcFlags,
    IcMsgType,
    Operation,
    Version,
    max_msgsize_for,
)
from gsi.errors import LocalProtocolError, RemoteProtocolError
from gsi.events import NEED_DATA, NeedData
from gsi.framing import Framer
from gsi.names import encode_name

from .answers import Answer, Reply, Request, WriteRange

__all__ = ["ID_SLOTS", "MAX_WINDOW", "Answer", "HostConnection", "Reply", "Request"]

MAX_WINDOW = 255
ID_SLOTS = 256
"""Transaction ids (u8): :meth:`HostConnection.write_headers` keeps a prefix per id."""
_RESPONSE = int(IcFlags.RESPONSE)  # a plain int: IntFlag arithmetic costs a microsecond
_WRITE = Operation.WRITE_TO_FILE.name
_ANSWER_HEAD = struct.Struct("<II12xIBB")
"""An answer's pipe flags and msgsize, status (payload offset 20), transaction id (24) and
icflags (25)."""
_HEAD = _ANSWER_HEAD.size
_OFFSET = struct.Struct("<Q")
_TID_OFFSET = 24


class HostConnection:
    """One channel as the host sees it.

    Args:
        fragment_size: the largest fragment this host will send, and the padded data
            length of a full-length WRITE body.
        full_write_body: send WRITE bodies of 52 + fragment_size bytes, data
            zero-padded, as the real host does (else trimmed to 52 + size).
        max_msgsize: the largest answer accepted (pipe ``msgsize``); default: the
            framing maximum for ``fragment_size``.
        max_in_flight: requests in flight at most; None: no limit, for a host that sends
            without reading answers (ids then repeat, and only :meth:`next_reply` pairs).
    """

    def __init__(self, *, fragment_size: int = DATA_FRAGMENT, full_write_body: bool = True,
                 max_msgsize: int | None = None, max_in_flight: int | None = MAX_WINDOW,
                 ) -> None:
        if fragment_size < 1:
            raise ValueError("fragment_size must be at least 1")
        self.fragment_size = fragment_size
        self.full_write_body = full_write_body
        self._framer = Framer(max_msgsize_for(fragment_size) if max_msgsize is None
                              else max_msgsize)
        self._in_flight: deque[Request | WriteRange] = deque()
        self._count = 0
        self._limit = max_in_flight if max_in_flight is not None else 1 << 62
        self._tail: WriteRange | None = None
        """The youngest entry, while it is a range the next full-size WRITE extends."""
        self._next_tid = 0
        self._padding = bytes(fragment_size)
        self._template: bytes | None = None
        self._table: memoryview | None = None
        self._prefix_views: list[memoryview] = []
        self._skip = 0
        """Bytes still to come of a pipelined WRITE's answer whose header was checked."""
        self._head = b""
        """The first bytes of an answer header cut short by the end of the received data."""
        self.framework_version: Version | None = None
        self.message_version: Version | None = None

    @property
    def in_flight(self) -> int:
        return self._count

    @property
    def write_length(self) -> int:
        """The length of a full-size WRITE request (80 + fragment_size)."""
        return codec.WRITE_DATA_OFFSET + self.fragment_size

    @property
    def closed(self) -> bool:
        """The guest closed the stream and every whole answer has been taken."""
        return self._framer.at_eof

    # -- requests --------------------------------------------------------------

    def _record(self, request: Request) -> None:
        if self._count >= self._limit:
            raise LocalProtocolError(f"at most {self._limit} requests may be in flight")
        self._in_flight.append(request)
        self._count += 1
        self._tail = None

    def _issue(self, kind: str, size: int = 0) -> int:
        tid = self._next_tid
        self._record(Request(tid, kind, size))
        self._next_tid = (tid + 1) & 0xFF
        return tid

    def negotiate(
        self,
        framework_versions: tuple[Version, ...] = HOST_FRAMEWORK_VERSIONS,
        message_versions: tuple[Version, ...] = HOST_FCOPY_VERSIONS,
    ) -> bytes:
        body = codec.build_negotiate_body(framework_versions, message_versions)
        return codec.build_message(icmsgtype=IcMsgType.NEGOTIATE, body=body,
                                   transaction_id=self._issue("negotiate"),
                                   icvermsg=(0, 0))

    def _fcopy(self, kind: Operation, body: bytes) -> bytes:
        return codec.build_message(icmsgtype=IcMsgType.FCOPY, body=body,
                                   transaction_id=self._issue(kind.name),
                                   icverframe=self.framework_version or codec.DEFAULT_FRAMEWORK,
                                   icvermsg=self.message_version or codec.DEFAULT_FCOPY_VERSION)

    def start_copy(self, *, file_name: str, path_name: str, flags: CopyFlags,
                   file_size: int) -> bytes:
        """START_FILE_COPY. Raises InvalidNameError for names that cannot be encoded."""
        body = codec.build_start_body(file_name_field=encode_name(file_name),
                                      path_name_field=encode_name(path_name),
                                      copy_flags=flags, file_size=file_size)
        return self._fcopy(Operation.START_FILE_COPY, body)

    def write(self, offset: int, data: bytes | memoryview) -> bytes:
        """WRITE_TO_FILE of ``data`` at ``offset`` (fast path, one join)."""
        return b"".join(self.write_parts(offset, data))

    def write_parts(self, offset: int, data: bytes | memoryview,
                    ) -> tuple[bytes | memoryview, ...]:
        """:meth:`write` as the buffers to send back to back, without joining them: the
        80-byte prefix, ``data`` itself (not copied) and any zero padding. A sender joins
        many small ones into one send, or sends large ones as they are."""
        size = len(data)
        prefix = self._write_prefix(offset, size)
        if self.full_write_body and size < self.fragment_size:
            return prefix, data, memoryview(self._padding)[size:]
        return prefix, data

    def _write_prefix(self, offset: int, size: int) -> bytes:
        """The 80 bytes before a WRITE's data; records the WRITE as in flight."""
        if size > self.fragment_size:
            raise LocalProtocolError(f"{size} bytes exceed the fragment size {self.fragment_size}")
        body_len = WRITE_HEADER_SIZE + (self.fragment_size if self.full_write_body else size)
        return codec.pack_write_prefix(
            transaction_id=self._issue(_WRITE, size), offset=offset, size=size,
            body_len=body_len, icverframe=self.framework_version or codec.DEFAULT_FRAMEWORK,
            icvermsg=self.message_version or codec.DEFAULT_FCOPY_VERSION)

    def write_into(self, buf: bytearray | memoryview, pos: int, offset: int, size: int) -> int:
        """:meth:`write` built in place: the WRITE of the ``size`` data bytes the caller put
        at ``buf[pos + 80:]``, for file ``offset``. Fills the 80 bytes at ``pos`` and, for
        a short fragment with full-length bodies, the zero padding after the data; returns
        where the message ends. The bytes are :meth:`write`'s."""
        if size == self.fragment_size:
            return self.writes_into(buf, pos, offset, 1)
        buf[pos:pos + codec.WRITE_DATA_OFFSET] = self._write_prefix(offset, size)
        end = pos + codec.WRITE_DATA_OFFSET + size
        if not self.full_write_body:
            return end
        full = pos + self.write_length
        buf[end:full] = memoryview(self._padding)[size:]
        return full

    def writes_into(self, buf: bytearray | memoryview, pos: int, offset: int, count: int,
                    stride: int | None = None) -> int:
        """``count`` full-size WRITEs built in place, for file offsets ``offset``,
        ``offset + fragment_size``...: the n-th at ``pos + n * stride`` (default stride:
        :attr:`write_length`, i.e. back to back), its data already in its slot. Only the
        transaction id, offset and size of a template are written per message, and the
        WRITEs are recorded as one range of ids. Returns where the last message ends."""
        length = self.write_length
        step = length if stride is None else stride
        if count < 1 or step < length:
            raise ValueError(f"bad count {count} or stride {step} (WRITEs are {length} bytes)")
        self._build_writes(buf, pos, step, offset, count)
        return pos + (count - 1) * step + length

    def write_prefixes(self, offset: int, count: int) -> int:
        """``count`` full-size WRITEs for file offsets ``offset``, ``offset +
        fragment_size``..., as their 80-byte prefixes in :attr:`prefixes` (one per
        transaction id, the template with its id written once): only the offset is
        written per message. The caller sends each prefix followed by its fragment of
        data. Recorded as one range of ids, like :meth:`writes_into`; returns the first
        id. At most 255 are in flight, so a prefix is rewritten only once its WRITE was
        answered."""
        if count < 1:
            raise ValueError(f"bad count {count}")
        table = self._table or self._make_table()
        tid = self._record_range(count)
        first, pack, at = tid, _OFFSET.pack_into, codec.WRITE_FIELDS_OFFSET
        head, frag = codec.WRITE_DATA_OFFSET, self.fragment_size
        for _ in range(count):
            pack(table, tid * head + at, offset)
            tid = (tid + 1) & 0xFF
            offset += frag
        return first

    @property
    def prefixes(self) -> list[memoryview]:
        """The prefix of the full-size WRITE with each transaction id, as
        :meth:`write_prefixes` last wrote it."""
        if self._table is None:
            self._make_table()
        return self._prefix_views

    def _make_table(self) -> memoryview:
        template, head = self._template or self._make_template(), codec.WRITE_DATA_OFFSET
        table = memoryview(bytearray(template * ID_SLOTS))
        for tid in range(ID_SLOTS):
            table[tid * head + _TID_OFFSET] = tid
        self._prefix_views = [table[i * head:(i + 1) * head] for i in range(ID_SLOTS)]
        self._table = table
        return table

    def _record_range(self, count: int) -> int:
        """``count`` full-size WRITEs from the next id on are in flight: the first id."""
        if self._count + count > min(self._limit, MAX_WINDOW):
            raise LocalProtocolError(f"at most {MAX_WINDOW} requests may be in flight")
        tid = self._next_tid
        run = self._tail
        if run is None:
            run = self._tail = WriteRange(tid)
            self._in_flight.append(run)
        run.count += count
        self._count += count
        self._next_tid = (tid + count) & 0xFF
        return tid

    def _build_writes(self, buf: bytearray | memoryview, pos: int, step: int, offset: int,
                      count: int) -> None:
        """WRITEs from the template, the n-th at ``pos + n * step``, recorded as a range."""
        template = self._template or self._make_template()
        frag, head = self.fragment_size, len(template)
        pack, fields = codec.WRITE_FIELDS.pack_into, codec.WRITE_FIELDS_OFFSET
        tid = self._record_range(count)
        for _ in range(count):
            buf[pos:pos + head] = template
            buf[pos + _TID_OFFSET] = tid
            pack(buf, pos + fields, offset, frag)
            tid = (tid + 1) & 0xFF
            offset += frag
            pos += step

    def _make_template(self) -> bytes:
        self._template = codec.pack_write_prefix(
            transaction_id=0, offset=0, size=self.fragment_size,
            body_len=WRITE_HEADER_SIZE + self.fragment_size,
            icverframe=self.framework_version or codec.DEFAULT_FRAMEWORK,
            icvermsg=self.message_version or codec.DEFAULT_FCOPY_VERSION)
        return self._template

    def complete(self) -> bytes:
        return self._fcopy(Operation.COMPLETE_FCOPY, codec.build_fcopy_header(
            Operation.COMPLETE_FCOPY))

    def cancel(self) -> bytes:
        return self._fcopy(Operation.CANCEL_FCOPY, codec.build_fcopy_header(
            Operation.CANCEL_FCOPY))

    def raw(self, payload: bytes, kind: str = "raw", *, stamp: bool = True) -> bytes:
        """Send arbitrary payload bytes as a request (fault injection): the transaction
        id at payload offset 24 is overwritten with the next one, when there is room.
        With ``stamp=False`` the bytes stay as they are and the request has no id (-1):
        no answer pairs with it strictly."""
        if not stamp:
            self._record(Request(-1, kind))
            return payload
        tid = self._issue(kind)
        if len(payload) > ICMSG_HDR_END - 4:
            out = bytearray(payload)
            out[_TID_OFFSET] = tid
            return bytes(out)
        return payload

    # -- fault injection hooks -------------------------------------------------

    def amend_last(self, *, tag: Any = None, transaction_id: int | None = None) -> Request:
        """The youngest request as it is really sent: ``tag`` attached (answers give it
        back) and, when its bytes were changed, the ``transaction_id`` they now carry
        (-1: none)."""
        entry = self._in_flight[-1] if self._in_flight else None
        if not isinstance(entry, Request):
            raise LocalProtocolError("no single request in flight to amend")
        entry.tag = tag
        if transaction_id is not None:
            entry.transaction_id = transaction_id
        return entry

    def withdraw_last(self) -> None:
        """The youngest request was never sent: it is no longer in flight (its transaction
        id stays used)."""
        if not self._in_flight:
            raise LocalProtocolError("no request in flight to withdraw")
        entry = self._in_flight[-1]
        if isinstance(entry, WriteRange) and entry.count > 1:
            entry.count -= 1
        else:
            self._in_flight.pop()
        self._count -= 1
        self._tail = None

    def requests_in_flight(self) -> list[Request]:
        """Every request in flight, oldest first."""
        out: list[Request] = []
        for entry in self._in_flight:
            if isinstance(entry, Request):
                out.append(entry)
            else:
                out += (Request((entry.first + i) & 0xFF, _WRITE, self.fragment_size)
                        for i in range(entry.count))
        return out

    def abandon_in_flight(self) -> list[Request]:
        """Give up every request in flight (late answers then pair with nothing, or
        loosely with later requests); returns them."""
        requests = self.requests_in_flight()
        self._in_flight.clear()
        self._count = 0
        self._tail = None
        return requests

    # -- answers ---------------------------------------------------------------

    def receive_data(self, data: bytes | bytearray | memoryview) -> int:
        """Feed received bytes; ``b""`` means the guest closed the stream.

        Returns:
            how many successful answers to pipelined WRITEs (:meth:`writes_into`) it took:
            those are checked in place and never come out of :meth:`next_answer`.
        """
        if self._skip or self._head or (
                self._in_flight and type(self._in_flight[0]) is WriteRange
                and not self._framer.buffered and not self._framer.at_eof):
            return self._take_range_answers(data)
        self._framer.feed(data)
        return 0

    def _take_range_answers(self, data: bytes | bytearray | memoryview) -> int:
        if not data:
            if self._head:
                self._framer.feed(self._head)
            self._head, self._skip = b"", 0
            self._framer.feed(b"")
            return 0
        if self._head:
            data, self._head = self._head + data, b""
        view = memoryview(data)
        end, pos, taken = len(view), 0, 0
        if self._skip:
            if self._skip > end:
                self._skip -= end
                return 0
            pos, self._skip = self._skip, 0
            self._advance(1)
            taken = 1
        unpack, limit = _ANSWER_HEAD.unpack_from, self._framer.max_msgsize
        while pos < end and self._in_flight:
            run = self._in_flight[0]
            if type(run) is not WriteRange:
                break
            tid, left, n = run.first, run.count, 0
            while n < left:
                if end - pos < _HEAD:
                    self._head = bytes(view[pos:])
                    pos = end
                    break
                flags, msgsize, status, got, icflags = unpack(view, pos)
                if (flags != 1 or not ICMSG_HDR_SIZE <= msgsize <= limit or got != tid
                        or not icflags & _RESPONSE or status):
                    left = -1  # not a plain success: the framer and next_answer take it
                    break
                after = pos + 8 + msgsize
                if after > end:  # taken when its last byte arrives
                    self._skip, pos = after - end, end
                    break
                pos, n, tid = after, n + 1, (tid + 1) & 0xFF
            if n:
                self._advance(n)
                taken += n
            if left < 0:
                break
        if pos < end:
            self._framer.feed(view[pos:])
        return taken

    def _advance(self, n: int) -> None:
        """``n`` answers to the range of pipelined WRITEs at the head were taken."""
        run = self._in_flight[0]
        assert isinstance(run, WriteRange)
        run.first = (run.first + n) & 0xFF
        run.count -= n
        self._count -= n
        if not run.count:
            self._in_flight.popleft()
            if self._tail is run:
                self._tail = None

    def _pop_oldest(self) -> Request:
        head = self._in_flight[0]
        if isinstance(head, Request):
            self._in_flight.popleft()
            self._count -= 1
            return head
        request = Request(head.first, _WRITE, self.fragment_size)
        self._advance(1)
        return request

    def next_answer(self) -> Answer | NeedData | None:
        """The next answer, NEED_DATA, or None once the guest closed the stream.

        Raises:
            RemoteProtocolError: an answer nobody asked for, out of order, or not an
                answer.
            FramingError: the stream is unreadable.
        """
        payload = self._framer.next_message()
        if payload is None:
            return None if self._framer.at_eof else NEED_DATA
        if not self._in_flight:
            raise RemoteProtocolError("an answer arrived with no request in flight")
        msgtype, tid = codec.peek(payload)
        head = self._in_flight[0]
        expected, kind = ((head.transaction_id, head.kind) if isinstance(head, Request)
                          else (head.first, _WRITE))
        if tid != expected:
            raise RemoteProtocolError(
                f"answer has transaction id {tid}, expected {expected} ({kind})")
        if not payload[ICFLAGS_OFFSET] & _RESPONSE:
            raise RemoteProtocolError(f"answer flags {payload[ICFLAGS_OFFSET]:#x} lack RESPONSE")
        request = self._pop_oldest()
        status = codec.status_of(payload)
        framework = message = None
        if kind == "negotiate" and msgtype == IcMsgType.NEGOTIATE and status == 0:
            framework, message = self._chosen_versions(payload)
            self._set_versions(framework, message)
        return Answer(transaction_id=tid, kind=kind, status=status, size=request.size,
                      framework_version=framework, message_version=message, payload=payload)

    def next_reply(self) -> Reply | NeedData | None:
        """:meth:`next_answer` for a host that sends corrupted or raw bytes: never raises
        for what the guest answers (FramingError aside). An answer pairs with the oldest
        request in flight that has its transaction id, the older ones given up as lost;
        with none, with the oldest request (a corrupted id), or with nothing."""
        payload = self._framer.next_message()
        if payload is None:
            return None if self._framer.at_eof else NEED_DATA
        msgtype, tid = codec.peek(payload)
        status = codec.status_of(payload)
        index = self._index_of(tid)
        if index is None and not self._count:
            return Reply(transaction_id=tid, status=status, request=None, matched=False,
                         payload=payload)
        lost = tuple(self._pop_oldest() for _ in range(index or 0))
        request = self._pop_oldest()
        if request.kind == "negotiate" and msgtype == IcMsgType.NEGOTIATE and status == 0:
            with contextlib.suppress(RemoteProtocolError):
                self._set_versions(*self._chosen_versions(payload))
        return Reply(transaction_id=tid, status=status, request=request,
                     matched=index is not None, lost=lost, payload=payload)

    def _index_of(self, tid: int) -> int | None:
        """The position among the requests in flight of the oldest with ``tid``."""
        index = 0
        for entry in self._in_flight:
            if isinstance(entry, Request):
                if entry.transaction_id == tid:
                    return index
                index += 1
            else:
                if (tid - entry.first) & 0xFF < entry.count:
                    return index + ((tid - entry.first) & 0xFF)
                index += entry.count
        return None

    def _set_versions(self, framework: Version, message: Version) -> None:
        self.framework_version, self.message_version = framework, message
        self._template = self._table = None

    @staticmethod
    def _chosen_versions(payload: bytes) -> tuple[Version, Version]:
        body = ICMSG_HDR_END
        if len(payload) < body + NEGOTIATE_FIXED_SIZE + 8:
            raise RemoteProtocolError("negotiate answer too short to hold the chosen versions")
        nframe, nmsg = codec.NEGOTIATE_VERCNT.unpack_from(payload, body)
        if (nframe, nmsg) != (1, 1):
            raise RemoteProtocolError(f"successful negotiate answer with counts {nframe}/{nmsg}")
        framework: Version = codec.IC_VERSION.unpack_from(payload, body + 8)
        message: Version = codec.IC_VERSION.unpack_from(payload, body + 12)
        return framework, message
