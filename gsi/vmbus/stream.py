"""A vmbus channel as a receiver session's packet pipe, and the channel as a listener.

Theory of operation
-------------------
On a vmbus channel each message is one ring packet. :class:`RingStream` adapts a
:class:`~gsi.vmbus.channel.RingChannel` to the trio stream API, with no protocol knowledge
of its own:

- Guest end, a packet pipe: ``receive_some`` returns one packet's whole payload (padding
  included: the packet length frames the message, the pipe header is not read, as in the
  Linux daemons), which the session hands to
  :meth:`~gsi.protocol.GuestConnection.receive_message`; ``send_all`` takes the core's
  answer to it and writes it as one in-band packet, as it is. Every packet in the RX ring
  is drained at once (``hv_fcopy_uio_daemon`` reads one per interrupt); the host is
  signalled once the answers to what was drained are written. Only an empty ring makes
  it sleep (see the channel's rules). Packets that are not in-band data, or that carry
  no payload, are skipped and logged.
- Host end (the emulator's host, ``host-sim``): a byte stream of messages, each packet's
  payload cut to its pipe header's ``8 + msgsize``; ``send_all`` frames the bytes it is
  given into messages (:class:`~gsi.framing.Framer`) and writes each as one packet.

Sessions come and go, the channel stays: a real host opens the channel once and
negotiates once, while a receiver session may end (idle timeout, an oversize message).
A :class:`ChannelListener` hands the channel out as one connection at a time. The
session attaches its core to the stream (:meth:`RingStream.attach`): the core resumes
from the NEGOTIATE the previous one accepted
(:meth:`~gsi.protocol.GuestConnection.resume`), so an FCOPY after the gap is not refused
as "before NEGOTIATE"; and a request the session leaves unanswered when its stream closes
gets the core's :func:`~gsi.protocol.failure_answer`: a real host waits for every answer.
"""

from __future__ import annotations

import logging
import struct
from collections import deque
from collections.abc import Callable
from typing import Final

import trio

from ..constants import ICMSG_HDR_SIZE, PIPE_FLAG_DATA, PIPE_HDR_SIZE, STATUS_OFFSET
from ..errors import FramingError
from ..framing import Framer
from ..protocol import GuestConnection, failure_answer
from ..transports.base import TransportError
from .channel import RingChannel
from .ring import MAX_PACKET_SIZE, VM_PKT_DATA_INBAND, VMBUS_RQST_ERROR, Packet

log = logging.getLogger("gsi.vmbus")

_PIPE: Final = struct.Struct("<II")
_U16: Final = struct.Struct("<H")
_U32: Final = struct.Struct("<I")
_MSGTYPE_OFFSET: Final = PIPE_HDR_SIZE + 4


def message_size(payload: bytes) -> int | None:
    """``8 + msgsize`` when the payload's pipe header delimits a message inside it (how
    the host end turns packets back into a byte stream)."""
    if len(payload) < PIPE_HDR_SIZE:
        return None
    flags, msgsize = _PIPE.unpack_from(payload)
    if flags != PIPE_FLAG_DATA or msgsize < ICMSG_HDR_SIZE:
        return None
    size = PIPE_HDR_SIZE + msgsize
    return size if size <= len(payload) else None


def _log_packet(name: str, direction: str, packet: Packet) -> None:
    """Everything a first run on a real host should show: descriptor and headers."""
    payload = packet.payload
    pipe = _PIPE.unpack_from(payload) if len(payload) >= PIPE_HDR_SIZE else None
    msgtype = _U16.unpack_from(payload, _MSGTYPE_OFFSET)[0] if len(payload) >= 14 else None
    status = (_U32.unpack_from(payload, STATUS_OFFSET)[0]
              if len(payload) >= STATUS_OFFSET + 4 else None)
    log.debug("%s: packet %s: type %d, flags %#x, trans_id %#x, %d payload bytes, pipe "
              "(flags, msgsize) %s, icmsgtype %s, status %s", name, direction, packet.type,
              packet.flags, packet.trans_id, len(payload), pipe, msgtype,
              None if status is None else f"{status:#010x}")


class RingStream(trio.abc.HalfCloseableStream):
    """A session's view of a :class:`RingChannel` (see the module docstring).

    ``send_eof`` only stops further sends: vmbus has no half-close. Closing a guest
    stream leaves the channel open (the listener owns it); a stream made with
    ``owns_channel`` (the emulator's host end) closes it. On the guest end
    ``receive_some`` returns one whole packet payload whatever ``max_bytes`` says: a
    message is never split.
    """

    def __init__(self, channel: RingChannel, *, owns_channel: bool = False,
                 on_close: Callable[[], None] | None = None) -> None:
        self.channel = channel
        self._owns = owns_channel
        self._on_close = on_close
        self._out = Framer(MAX_PACKET_SIZE)  # host end
        self._ready: deque[bytes] = deque()  # drained, not yet handed out
        self._unanswered: bytes | None = None  # guest end: handed out, no answer yet
        self._core: GuestConnection | None = None
        self._closed = False
        self._eof_sent = False
        self._receiving = False
        self._sending = False
        self._busy_poll = 0.0
        self._scheduled = False  # a receive took a schedule point since the last send

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def packet_pipe(self) -> bool:
        """One message per receive and one answer per send (the guest end)."""
        return self.channel.guest

    def attach(self, core: GuestConnection, *, busy_poll: float = 0.0) -> None:
        """The session's core (guest end): it resumes the channel's negotiation now, and
        when this stream closes its accepted NEGOTIATE is kept for the next session.
        ``busy_poll``: seconds to keep reading the RX ring's write index, interrupts
        still masked, before sleeping when the ring is empty (0: sleep at once)."""
        self._core = core
        self._busy_poll = busy_poll
        last = self.channel.last_negotiate
        if last is not None and core.resume(last):
            log.info("%s: a new session on the channel resumes the host's NEGOTIATE",
                     self.channel.name)

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
        # One schedule point per receive, not two: the wait for an interrupt is one when
        # the ring is empty (the usual case in stop-and-wait), else one at the end.
        await trio.lowlevel.checkpoint_if_cancelled()
        waited = False
        try:
            self._unanswered = None  # the last message had no answer (too short)
            while not self._ready:
                self._check_open()
                packets = self.channel.read_packets()
                if packets:
                    self._ingest(packets)
                    self.channel.flush_signal()
                else:
                    self.channel.flush_signal()  # before sleeping: answers written
                    if self._busy_poll and self.channel.poll_rx(self._busy_poll):
                        continue
                    if self.channel.ready_to_sleep():
                        waited = True
                        await self.channel.wait()
            if not waited:
                await trio.lowlevel.cancel_shielded_checkpoint()
            self._scheduled = True
        finally:
            self._receiving = False
        ready = self._ready
        if self.channel.guest:
            self._unanswered = ready.popleft()
            return self._unanswered
        if len(ready) == 1 and (max_bytes is None or len(ready[0]) <= max_bytes):
            return ready.popleft()  # the usual case: one message, not copied again
        data = b"".join(ready)
        ready.clear()
        if max_bytes is not None and len(data) > max_bytes:
            ready.append(data[max_bytes:])
            data = data[:max_bytes]
        return data

    def _ingest(self, packets: list[Packet]) -> None:
        guest = self.channel.guest
        debug = log.isEnabledFor(logging.DEBUG)
        for packet in packets:
            payload = packet.payload
            if debug:
                _log_packet(self.channel.name, "in", packet)
            if packet.type != VM_PKT_DATA_INBAND or not payload:
                log.warning("%s: skipped a packet of type %d (%d bytes): not in-band data "
                            "or empty", self.channel.name, packet.type, len(payload))
            elif guest:
                self._ready.append(payload)
            else:  # one message per packet, its padding cut off for the host's framer
                size = message_size(payload)
                self._ready.append(payload if size is None or size == len(payload)
                                   else payload[:size])

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if self._sending:
            raise trio.BusyResourceError("another task is already sending")
        self._sending = True
        try:
            # A cancel point always; a schedule point only when no receive took one since
            # the last send: in a request/answer loop a loop turn per send would double
            # the turns (one is several microseconds), and each receive takes one.
            if self._scheduled:
                self._scheduled = False
                await trio.lowlevel.checkpoint_if_cancelled()
            else:
                await trio.lowlevel.checkpoint()
            self._check_open()
            if self._eof_sent:
                raise trio.ClosedResourceError("send_eof() was called")
            if not data:
                return
            if self.channel.guest:
                await self._send_answer(data)
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
                await self.channel.write(message)
            self.channel.flush_signal()
        finally:
            self._sending = False

    async def _send_answer(self, answer: bytes | bytearray | memoryview) -> None:
        """The answer to the message handed out last, as one packet (copied into the
        ring as it is)."""
        if log.isEnabledFor(logging.DEBUG):
            _log_packet(self.channel.name, "out", Packet(
                type=VM_PKT_DATA_INBAND, flags=0, trans_id=VMBUS_RQST_ERROR,
                payload=bytes(answer)))
        await self.channel.write(answer)
        self._unanswered = None
        if not self._ready:  # else after the answers to the rest of what was drained
            self.channel.flush_signal()

    async def wait_send_all_might_not_block(self) -> None:
        await trio.lowlevel.checkpoint()
        self._check_open()

    async def send_eof(self) -> None:
        await trio.lowlevel.checkpoint()
        self._check_open()
        self._eof_sent = True

    def _answer_leftovers(self) -> None:
        channel = self.channel
        leftovers = [self._unanswered] if self._unanswered is not None else []
        leftovers += self._ready
        self._unanswered = None
        self._ready.clear()
        answered = dropped = 0
        for request in leftovers:
            answer = failure_answer(request)
            if answer is not None and channel.try_write(answer):
                answered += 1
            else:
                dropped += 1
        channel.flush_signal()
        if answered or dropped:
            log.warning("%s: the session ended with %d request(s) unanswered: %d answered "
                        "0x80004005, %d dropped", channel.name, answered + dropped,
                        answered, dropped)

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            channel = self.channel
            if self._core is not None and self._core.accepted_negotiate is not None:
                channel.last_negotiate = self._core.accepted_negotiate
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
    it returns the next one (whose session resumes the last NEGOTIATE accepted). Closing
    the listener stops that; the channel itself is closed once the listener and the
    stream in use both are, so a session keeps its channel through a graceful shutdown.

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
        self.sessions += 1
        self._current = RingStream(channel, on_close=self._stream_closed)
        return self._current

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            self._wakeup.set()
            if self._current is None or self._current.closed:
                self.channel.close()
        await trio.lowlevel.checkpoint()
