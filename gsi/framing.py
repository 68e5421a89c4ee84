"""Stream framing (PROTOCOL.md section 2): bytes in, whole message payloads out.

A message is one payload (pipe header + IC header + body) delimited by its pipe
header: ``flags`` must be 1 and ``msgsize`` between 20 and the reader's maximum.
Both are checked as soon as the 8 header bytes are present, before any of the
body is waited for, so an oversize ``msgsize`` never makes the reader buffer it.
"""

from __future__ import annotations

from .codec import PIPE
from .constants import ICMSG_HDR_SIZE, PIPE_FLAG_DATA, PIPE_HDR_SIZE
from .errors import FramingError, LocalProtocolError

_INITIAL = 16 * 1024
"""First capacity of the buffer: an idle connection (or an open copy with no data yet)
holds no more than this."""
EXACT_FROM = 64 * 1024
"""Messages of at least this ``msgsize`` are received up to their end and no further (see
:meth:`Framer.receive_buffer`)."""
_MAX_CHUNK = 1 << 20
"""Default bound on the free space offered to one receive (see :meth:`Framer.receive_buffer`)."""


class Framer:
    """Splits a byte stream into message payloads.

    The bytes live in one buffer that grows on demand: :meth:`feed` copies received bytes
    into it, or a transport receives straight into it (:meth:`receive_buffer`, then
    :meth:`received`). :meth:`next_message` returns each payload as ``bytes``; the batch
    path of :class:`gsi.protocol.GuestConnection` reads the buffer in place instead
    (:meth:`view`, :meth:`consume`): such views stay valid, and unchanged by the framer,
    until the next :meth:`feed` or :meth:`receive_buffer`.

    Args:
        max_msgsize: the largest pipe ``msgsize`` accepted (see
            :func:`gsi.constants.max_msgsize_for`).
        max_chunk: the free space offered to one receive grows (doubling, from 16 KiB,
            each time a receive fills it) up to this many bytes.
    """

    __slots__ = ("_buf", "_chunk", "_end", "_eof", "_error", "_large", "_max_chunk",
                 "_max_msgsize", "_pos")

    def __init__(self, max_msgsize: int, *, max_chunk: int = _MAX_CHUNK) -> None:
        if max_msgsize < ICMSG_HDR_SIZE:
            raise ValueError(f"max_msgsize must be at least {ICMSG_HDR_SIZE}")
        self._max_msgsize = max_msgsize
        self._max_chunk = max(max_chunk, _INITIAL)
        self._chunk = _INITIAL
        self._buf = bytearray()
        self._pos = 0
        self._end = 0
        self._large = 0  # size of the last large message seen (see _pending)
        self._eof = False
        self._error: FramingError | None = None

    @property
    def max_msgsize(self) -> int:
        return self._max_msgsize

    @property
    def buffered(self) -> int:
        """Bytes received but not yet returned as a message."""
        return self._end - self._pos

    @property
    def capacity(self) -> int:
        """Bytes the buffer holds room for (memory it costs)."""
        return len(self._buf)

    @property
    def at_eof(self) -> bool:
        return self._eof

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Add received bytes; ``b""`` marks the end of the stream."""
        if self._eof:
            if data:
                raise LocalProtocolError("data fed after end of stream")
            return
        size = len(data)
        if not size:
            self._eof = True
            return
        self._room(size)
        end = self._end
        self._buf[end:end + size] = data
        self._end = end + size

    def receive_buffer(self) -> memoryview:
        """Free space to receive into (at least the rest of a pending message); pass the
        number of bytes received to :meth:`received`. Invalidates earlier views.

        While a large message (:data:`EXACT_FROM` bytes or more) is pending, the space
        offered ends where it ends: the receive stops at the message boundary, so once the
        message is handled nothing is left to move to the front of the buffer (a partial
        large message would be copied there before every receive that needs the room).
        """
        if self._eof:
            raise LocalProtocolError("receive after end of stream")
        rest, exact = self._pending()
        self._room(rest if exact else max(self._chunk, rest))
        view = memoryview(self._buf)[self._end:]
        return view[:rest] if exact else view

    def spare(self) -> memoryview:
        """The free space after the data, without moving anything (possibly empty; cut
        at the end of a pending large message, as :meth:`receive_buffer`); pass the
        number of bytes received into it to :meth:`received`."""
        if self._eof:
            raise LocalProtocolError("receive after end of stream")
        rest, exact = self._pending()
        view = memoryview(self._buf)[self._end:]
        return view[:rest] if exact else view

    def _pending(self) -> tuple[int, bool]:
        """How much to receive at most: (bytes still missing of the message whose header
        is buffered, True) for a large one; with nothing buffered after large messages,
        (the size of the last one, True): a host sends equal fragments, and a receive
        that runs into the next message leaves it to be moved. Else (the rest or 0,
        False): no limit."""
        pos, end = self._pos, self._end
        if end - pos >= PIPE_HDR_SIZE:
            msgsize = PIPE.unpack_from(self._buf, pos)[1]
            if msgsize <= self._max_msgsize:
                rest = pos + PIPE_HDR_SIZE + msgsize - end
                large = msgsize >= EXACT_FROM
                self._large = PIPE_HDR_SIZE + msgsize if large else 0
                return rest, rest > 0 and large
        elif pos == end and self._large:
            return self._large, True
        return 0, False

    def received(self, size: int) -> None:
        """``size`` bytes were received into the last :meth:`receive_buffer` (0: end of
        stream)."""
        free = len(self._buf) - self._end
        if not 0 <= size <= free:
            raise LocalProtocolError(f"received {size} bytes into {free} bytes of room")
        if not size:
            self._eof = True
            return
        self._end += size
        if size == free and self._chunk < self._max_chunk:
            self._chunk = min(self._chunk * 2, self._max_chunk)

    def _room(self, size: int) -> None:
        """At least ``size`` free bytes after the data; data moved to the front or to a new,
        larger buffer when needed (never resized in place: views of it may exist)."""
        buf, pos, end = self._buf, self._pos, self._end
        if pos == end:
            pos = end = self._pos = self._end = 0
        if len(buf) - end >= size:
            return
        live = end - pos
        if live + size <= len(buf):
            buf[:live] = buf[pos:end]
        else:
            new = bytearray(max(live + size, min(2 * len(buf), live + self._max_chunk)))
            new[:live] = memoryview(buf)[pos:end]
            self._buf = new
        self._pos, self._end = 0, live

    def view(self) -> tuple[bytearray, int, int]:
        """(buffer, start, end) of the unparsed bytes, for a reader that parses in place."""
        return self._buf, self._pos, self._end

    def consume(self, pos: int) -> None:
        """Messages up to buffer position ``pos`` were parsed in place."""
        if not self._pos <= pos <= self._end:
            raise LocalProtocolError(f"consume({pos}) outside {self._pos}..{self._end}")
        self._pos = pos

    def next_message(self) -> bytes | None:
        """The next whole payload, or None until more bytes arrive.

        Raises:
            FramingError: the stream cannot be framed (and never will be again).
        """
        if self._error is not None:
            raise self._error
        buf = self._buf
        pos = self._pos
        if self._end - pos >= PIPE_HDR_SIZE:
            flags, msgsize = PIPE.unpack_from(buf, pos)
            if flags != PIPE_FLAG_DATA:
                self._fail(f"pipe header flags {flags:#x}, expected {PIPE_FLAG_DATA:#x} (data)")
            if msgsize < ICMSG_HDR_SIZE:
                self._fail(f"pipe msgsize {msgsize} is below the {ICMSG_HDR_SIZE}-byte IC header")
            if msgsize > self._max_msgsize:
                self._fail(f"pipe msgsize {msgsize} exceeds the maximum {self._max_msgsize}")
            end = pos + PIPE_HDR_SIZE + msgsize
            if end <= self._end:
                self._pos = end
                with memoryview(buf) as view:
                    return bytes(view[pos:end])  # one copy, no intermediate bytearray
        return None

    def _fail(self, reason: str) -> None:
        self._error = FramingError(reason)
        raise self._error
