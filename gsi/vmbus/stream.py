"""A vmbus channel as the receiver's byte stream, and the channel as a listener.

Theory of operation
-------------------
The receiver's session reads a byte stream of message payloads (pipe header + IC header
+ body, delimited by the pipe header: :mod:`gsi.framing`). On a vmbus channel each message
is one ring packet instead. :class:`RingStream` adapts a
:class:`~gsi.vmbus.channel.RingChannel`:

- ``receive_some`` drains *every* packet in the RX ring (``hv_fcopy_uio_daemon`` reads one
  per interrupt) and returns their payloads, each trimmed to the pipe header's
  ``8 + msgsize``: the ring pads payloads to 8 bytes (the daemon hands the padding to its
  protocol code too). Only an empty ring makes it sleep (see the channel's rules).
- ``send_all`` frames the bytes it is given into messages (:class:`~gsi.framing.Framer`)
  and writes each as one in-band packet, waiting for room when the ring is full.

Guest end, as ``hv_fcopy_uio_daemon.c`` does: an answer echoes the request's whole ring
payload, so the bytes after ``8 + msgsize`` (the padding) are appended again, to a
full-length echo only (a trimmed WRITE echo goes out as it is). The rest is this
project's: a packet whose pipe header cannot delimit a message (flags not 1, msgsize below
20 or beyond the packet) is answered 0x80004005 here, in order, without reaching the
session; packets that are not in-band data are skipped and logged.

Sessions come and go, the channel stays: a real host opens the channel once and
negotiates once, while a receiver session may end (idle timeout, framing error). A
:class:`ChannelListener` hands the channel out as one connection at a time; the next one
starts by replaying the last NEGOTIATE a session accepted (its answer is swallowed), so
an FCOPY after the gap is not refused as "before NEGOTIATE". A request a session leaves
unanswered is answered 0x80004005 when its stream closes: a real host waits for every
answer.
"""

from __future__ import annotations

import logging
import struct
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

import trio

from ..constants import (
    GUEST_ICFLAGS,
    ICFLAGS_OFFSET,
    ICMSG_HDR_END,
    ICMSG_HDR_SIZE,
    PIPE_FLAG_DATA,
    PIPE_HDR_SIZE,
    STATUS_OFFSET,
    IcMsgType,
    Status,
)
from ..errors import FramingError
from ..framing import Framer
from ..transports.base import TransportError
from .channel import RingChannel
from .ring import MAX_PACKET_SIZE, VM_PKT_DATA_INBAND, VMBUS_RQST_ERROR, Packet

log = logging.getLogger("gsi.vmbus")

_PIPE: Final = struct.Struct("<II")
_U16: Final = struct.Struct("<H")
_U32: Final = struct.Struct("<I")
_MSGTYPE_OFFSET: Final = PIPE_HDR_SIZE + 4


def message_size(payload: bytes) -> int | None:
    """``8 + msgsize`` when the payload's pipe header delimits a message inside it."""
    if len(payload) < PIPE_HDR_SIZE:
        return None
    flags, msgsize = _PIPE.unpack_from(payload)
    if flags != PIPE_FLAG_DATA or msgsize < ICMSG_HDR_SIZE:
        return None
    size = PIPE_HDR_SIZE + msgsize
    return size if size <= len(payload) else None


def failure_echo(request: bytes) -> bytes | None:
    """The request echoed with status 0x80004005 and icflags 0x05, if it has room."""
    if len(request) < ICMSG_HDR_END:
        return None
    out = bytearray(request)
    _U32.pack_into(out, STATUS_OFFSET, Status.E_FAIL)
    out[ICFLAGS_OFFSET] = GUEST_ICFLAGS
    return bytes(out)


def _log_packet(name: str, direction: str, packet: Packet) -> None:
    """Everything a first run on a real host should show: descriptor and headers."""
    payload = packet.payload
    pipe = _PIPE.unpack_from(payload) if len(payload) >= PIPE_HDR_SIZE else None
    msgtype = _U16.unpack_from(payload, _MSGTYPE_OFFSET)[0] if len(payload) >= 14 else None
    log.debug("%s: packet %s: type %d, flags %#x, trans_id %#x, %d payload bytes, pipe "
              "(flags, msgsize) %s, icmsgtype %s, status %s", name, direction, packet.type,
              packet.flags, packet.trans_id, len(payload), pipe, msgtype,
              None if (status := _status(payload)) is None else f"{status:#010x}")


def _status(message: bytes) -> int | None:
    if len(message) < STATUS_OFFSET + 4:
        return None
    status: int = _U32.unpack_from(message, STATUS_OFFSET)[0]
    return status


def _is_negotiate(message: bytes) -> bool:
    return bool(_U16.unpack_from(message, _MSGTYPE_OFFSET)[0] == IcMsgType.NEGOTIATE)


@dataclass(slots=True)
class _Pending:
    """A request given to the session (or answered here) and not answered yet."""

    request: bytes
    tail: bytes = b""
    replay: bool = False
    """A replayed NEGOTIATE: its answer is not for the host."""
    ready: bytes | None = None
    """An answer made here (a packet the session never saw)."""


class RingStream(trio.abc.HalfCloseableStream):
    """A session's view of a :class:`RingChannel` (see the module docstring).

    ``send_eof`` only stops further sends: vmbus has no half-close. Closing a guest
    stream leaves the channel open (the listener owns it); a stream made with
    ``owns_channel`` (the emulator's host end) closes it.
    """

    def __init__(self, channel: RingChannel, *, owns_channel: bool = False,
                 replay: bytes | None = None,
                 on_close: Callable[[], None] | None = None) -> None:
        self.channel = channel
        self._owns = owns_channel
        self._on_close = on_close
        self._inbuf = bytearray()
        self._pending: deque[_Pending] = deque()
        self._out = Framer(MAX_PACKET_SIZE)
        self._closed = False
        self._eof_sent = False
        self._receiving = False
        self._sending = False
        if replay is not None:
            self._inbuf += replay
            self._pending.append(_Pending(request=replay, replay=True))

    @property
    def closed(self) -> bool:
        return self._closed

    def _check_open(self) -> None:
        if self._closed:
            raise trio.ClosedResourceError("the stream is closed")
        self.channel.check_usable()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if max_bytes is not None and max_bytes < 1:
            raise ValueError("max_bytes must be at least 1")
        if self._receiving:
            raise trio.BusyResourceError("another task is already receiving")
        self._receiving = True
        try:
            await trio.lowlevel.checkpoint()
            while True:
                self._check_open()
                if self._inbuf:
                    break
                packets = self.channel.read_packets()
                if packets:
                    self._ingest(packets)
                    await self._flush_ready()
                    self.channel.flush_signal()
                elif self.channel.ready_to_sleep():
                    await self.channel.wait()
        finally:
            self._receiving = False
        n = len(self._inbuf) if max_bytes is None else min(max_bytes, len(self._inbuf))
        data = bytes(self._inbuf[:n])
        del self._inbuf[:n]
        return data

    def _ingest(self, packets: list[Packet]) -> None:
        guest = self.channel.guest
        debug = log.isEnabledFor(logging.DEBUG)
        for packet in packets:
            payload = packet.payload
            if debug:
                _log_packet(self.channel.name, "in", packet)
            if packet.type != VM_PKT_DATA_INBAND:
                log.warning("%s: skipped a packet of type %d (%d bytes): not in-band data",
                            self.channel.name, packet.type, len(payload))
                continue
            size = message_size(payload)
            if size is None:
                if not guest:  # let the host's framer judge the guest's answer
                    self._inbuf += payload
                    continue
                answer = failure_echo(payload)
                log.warning("%s: a %d-byte packet whose pipe header does not delimit a "
                            "message: %s", self.channel.name, len(payload),
                            "answered 0x80004005" if answer else "dropped (too short)")
                if answer is not None:
                    self._pending.append(_Pending(request=payload, ready=answer))
                continue
            message = payload[:size]
            self._inbuf += message
            if guest:
                self._pending.append(_Pending(request=message, tail=payload[size:]))

    async def _flush_ready(self) -> None:
        """Write the answers made here that are next in line."""
        while self._pending and self._pending[0].ready is not None:
            answer = self._pending[0].ready
            assert answer is not None
            await self.channel.write(answer)
            self._pending.popleft()

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if self._sending:
            raise trio.BusyResourceError("another task is already sending")
        self._sending = True
        try:
            await trio.lowlevel.checkpoint()
            self._check_open()
            if self._eof_sent:
                raise trio.ClosedResourceError("send_eof() was called")
            if not data:
                return
            self._out.feed(data)
            while True:
                try:
                    message = self._out.next_message()
                except FramingError as exc:
                    raise TransportError(f"{self.channel.name}: bytes that are not whole "
                                         f"messages cannot go into a ring: {exc}") from exc
                if message is None:
                    break
                await self._send_message(message)
            self.channel.flush_signal()
        finally:
            self._sending = False

    async def _send_message(self, message: bytes) -> None:
        if not self.channel.guest:
            await self.channel.write(message)
            return
        await self._flush_ready()
        item = self._pending.popleft() if self._pending else None
        if item is None:
            log.warning("%s: an answer with no request pending; sent as it is",
                        self.channel.name)
            payload = message
        elif item.replay:
            return
        else:
            payload = message + item.tail if len(message) == len(item.request) else message
            if _is_negotiate(item.request) and _status(message) == Status.S_OK:
                self.channel.last_negotiate = item.request  # what a new session replays
        if log.isEnabledFor(logging.DEBUG):
            _log_packet(self.channel.name, "out", Packet(
                type=VM_PKT_DATA_INBAND, flags=0, trans_id=VMBUS_RQST_ERROR, payload=payload))
        await self.channel.write(payload)
        await self._flush_ready()

    async def wait_send_all_might_not_block(self) -> None:
        await trio.lowlevel.checkpoint()
        self._check_open()

    async def send_eof(self) -> None:
        await trio.lowlevel.checkpoint()
        self._check_open()
        self._eof_sent = True

    def _answer_leftovers(self) -> None:
        channel = self.channel
        answered = dropped = 0
        for item in self._pending:
            if item.replay:
                continue
            answer = item.ready or failure_echo(item.request + item.tail)
            if answer is not None and channel.try_write(answer):
                answered += 1
            else:
                dropped += 1
        self._pending.clear()
        channel.flush_signal()
        if answered or dropped:
            log.warning("%s: the session ended with %d request(s) unanswered: %d answered "
                        "0x80004005, %d dropped", channel.name, answered + dropped,
                        answered, dropped)

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            channel = self.channel
            try:
                if channel.guest and not channel.closed and channel.broken is None:
                    try:
                        self._answer_leftovers()
                    except (trio.BrokenResourceError, TransportError) as exc:
                        log.warning("%s: could not answer leftovers: %s", channel.name, exc)
            finally:
                if self._owns:
                    channel.close()
                if self._on_close is not None:
                    self._on_close()
        await trio.lowlevel.checkpoint()


class ChannelListener(trio.abc.Listener[RingStream]):
    """The channel as a listener: one connection at a time, for as long as it lives.

    ``accept`` returns a stream at once, then waits until that stream is closed before
    it returns the next one (primed with the last NEGOTIATE accepted). Closing the listener
    stops that; the channel itself is closed once the listener and the stream in use
    both are, so a session keeps its channel through a graceful shutdown.

    Attributes:
        url: the canonical URL of the channel (what ``listener_url`` reports).
    """

    def __init__(self, channel: RingChannel, url: str) -> None:
        self.channel = channel
        self.url = url
        self._current: RingStream | None = None
        self._closed = False
        self._wakeup = trio.Event()
        self.sessions = 0

    def _stream_closed(self) -> None:
        self._wakeup.set()
        if self._closed:
            self.channel.close()

    async def accept(self) -> RingStream:
        await trio.lowlevel.checkpoint()
        while True:
            if self._closed:
                raise trio.ClosedResourceError("the listener is closed")
            if self._current is None or self._current.closed:
                break
            self._wakeup = trio.Event()
            await self._wakeup.wait()
        channel = self.channel
        if channel.broken is not None:
            raise TransportError(f"{self.url}: the channel is broken ({channel.broken}); "
                                 "restart the receiver to reset it")
        replay = channel.last_negotiate
        if replay is not None:
            log.info("%s: a new session on the channel; replaying the host's NEGOTIATE",
                     self.url)
        self.sessions += 1
        self._current = RingStream(channel, replay=replay, on_close=self._stream_closed)
        return self._current

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            self._wakeup.set()
            if self._current is None or self._current.closed:
                self.channel.close()
        await trio.lowlevel.checkpoint()
