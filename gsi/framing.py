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

_LARGE = 64 * 1024
"""Messages from this size on are gathered without appending to the buffer."""


class Framer:
    """Splits a byte stream into message payloads.

    Args:
        max_msgsize: the largest pipe ``msgsize`` accepted (see
            :func:`gsi.constants.max_msgsize_for`).
    """

    __slots__ = ("_buf", "_eof", "_error", "_max_msgsize", "_need", "_parts", "_parts_len",
                 "_pos")

    def __init__(self, max_msgsize: int) -> None:
        if max_msgsize < ICMSG_HDR_SIZE:
            raise ValueError(f"max_msgsize must be at least {ICMSG_HDR_SIZE}")
        self._max_msgsize = max_msgsize
        self._buf = bytearray()
        self._pos = 0
        self._eof = False
        self._error: FramingError | None = None
        # While a large message is incomplete, received chunks are kept as they are and
        # joined once when it is whole (one copy instead of append-then-slice: two).
        self._parts: list[bytes] = []
        self._parts_len = 0
        self._need = 0

    @property
    def max_msgsize(self) -> int:
        return self._max_msgsize

    @property
    def buffered(self) -> int:
        """Bytes received but not yet returned as a message."""
        return len(self._buf) - self._pos + self._parts_len

    @property
    def at_eof(self) -> bool:
        return self._eof

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Add received bytes; ``b""`` marks the end of the stream."""
        if self._eof:
            if data:
                raise LocalProtocolError("data fed after end of stream")
            return
        if not data:
            self._eof = True
            return
        if self._need:
            self._parts.append(data if isinstance(data, bytes) else bytes(data))
            self._parts_len += len(data)
            return
        self._buf += data

    def next_message(self) -> bytes | None:
        """The next whole payload, or None until more bytes arrive.

        Raises:
            FramingError: the stream cannot be framed (and never will be again).
        """
        if self._error is not None:
            raise self._error
        if self._need:
            return self._join_large() if self._parts_len >= self._need else None
        buf = self._buf
        pos = self._pos
        avail = len(buf) - pos
        if avail >= PIPE_HDR_SIZE:
            flags, msgsize = PIPE.unpack_from(buf, pos)
            if flags != PIPE_FLAG_DATA:
                self._fail(f"pipe header flags {flags:#x}, expected {PIPE_FLAG_DATA:#x} (data)")
            if msgsize < ICMSG_HDR_SIZE:
                self._fail(f"pipe msgsize {msgsize} is below the {ICMSG_HDR_SIZE}-byte IC header")
            if msgsize > self._max_msgsize:
                self._fail(f"pipe msgsize {msgsize} exceeds the maximum {self._max_msgsize}")
            end = pos + PIPE_HDR_SIZE + msgsize
            if end <= len(buf):
                self._pos = end
                with memoryview(buf) as view:
                    return bytes(view[pos:end])  # one copy, no intermediate bytearray
            if msgsize >= _LARGE:
                self._need = end - len(buf)
        if pos:
            del buf[:pos]
            self._pos = 0
        return None

    def _join_large(self) -> bytes:
        """The pending large message: the buffer's tail, then the parts, joined once."""
        pieces: list[bytes | memoryview] = [memoryview(self._buf)[self._pos:]]
        rest = bytearray()
        need = self._need
        for part in self._parts:
            if need >= len(part):
                pieces.append(part)
                need -= len(part)
            else:  # the message ends in this part: the rest starts the next ones
                pieces.append(memoryview(part)[:need])
                rest += memoryview(part)[need:]
                need = 0
        payload = b"".join(pieces)
        del pieces
        self._buf = rest
        self._pos = 0
        self._parts = []
        self._parts_len = self._need = 0
        return payload

    def _fail(self, reason: str) -> None:
        self._error = FramingError(reason)
        raise self._error

