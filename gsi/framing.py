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


class Framer:
    """Splits a byte stream into message payloads.

    Args:
        max_msgsize: the largest pipe ``msgsize`` accepted (see
            :func:`gsi.constants.max_msgsize_for`).
    """

    __slots__ = ("_buf", "_eof", "_error", "_max_msgsize", "_pos")

    def __init__(self, max_msgsize: int) -> None:
        if max_msgsize < ICMSG_HDR_SIZE:
            raise ValueError(f"max_msgsize must be at least {ICMSG_HDR_SIZE}")
        self._max_msgsize = max_msgsize
        self._buf = bytearray()
        self._pos = 0
        self._eof = False
        self._error: FramingError | None = None

    @property
    def max_msgsize(self) -> int:
        return self._max_msgsize

    @property
    def buffered(self) -> int:
        """Bytes received but not yet returned as a message."""
        return len(self._buf) - self._pos

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
        self._buf += data

    def next_message(self) -> bytes | None:
        """The next whole payload, or None until more bytes arrive.

        Raises:
            FramingError: the stream cannot be framed (and never will be again).
        """
        if self._error is not None:
            raise self._error
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
        if pos:
            del buf[:pos]
            self._pos = 0
        return None

    def _fail(self, reason: str) -> None:
        self._error = FramingError(reason)
        raise self._error

