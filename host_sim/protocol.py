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
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from gsi import codec
from gsi.constants import (
    DATA_FRAGMENT,
    HOST_FCOPY_VERSIONS,
    HOST_FRAMEWORK_VERSIONS,
    ICFLAGS_OFFSET,
    ICMSG_HDR_END,
    NEGOTIATE_FIXED_SIZE,
    WRITE_HEADER_SIZE,
    CopyFlags,
    IcFlags,
    IcMsgType,
    Operation,
    Status,
    Version,
    max_msgsize_for,
)
from gsi.errors import LocalProtocolError, RemoteProtocolError
from gsi.events import NEED_DATA, NeedData
from gsi.framing import Framer
from gsi.names import encode_name

MAX_WINDOW = 255
_RESPONSE = int(IcFlags.RESPONSE)  # a plain int: IntFlag arithmetic costs a microsecond


@dataclass(frozen=True, slots=True, kw_only=True)
class Answer:
    """A guest answer paired with the request it answers.

    Attributes:
        kind: the request: "negotiate", or an :class:`Operation` name for fcopy.
        status: the guest's HRESULT.
        size: data bytes the request carried (WRITE), else 0.
        framework_version / message_version: chosen versions (NEGOTIATE success).
        payload: the whole answer as received.
    """

    transaction_id: int
    kind: str
    status: int
    size: int = 0
    framework_version: Version | None = None
    message_version: Version | None = None
    payload: bytes = field(repr=False, default=b"")

    @property
    def ok(self) -> bool:
        return self.status == Status.S_OK


@dataclass(frozen=True, slots=True)
class _InFlight:
    transaction_id: int
    kind: str
    size: int


class HostConnection:
    """One channel as the host sees it.

    Args:
        max_fragment: the largest fragment this host will send; answers up to the
            matching framing maximum are accepted.
        full_write_body: send WRITE bodies of 52 + fragment_size bytes, data
            zero-padded, as the real host does (else trimmed to 52 + size).
        fragment_size: the padded data length of a full-length WRITE body.
    """

    def __init__(self, *, fragment_size: int = DATA_FRAGMENT,
                 full_write_body: bool = True) -> None:
        if fragment_size < 1:
            raise ValueError("fragment_size must be at least 1")
        self.fragment_size = fragment_size
        self.full_write_body = full_write_body
        self._framer = Framer(max_msgsize_for(fragment_size))
        self._in_flight: deque[_InFlight] = deque()
        self._next_tid = 0
        self._padding = bytes(fragment_size)
        self.framework_version: Version | None = None
        self.message_version: Version | None = None

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)

    @property
    def closed(self) -> bool:
        """The guest closed the stream and every whole answer has been taken."""
        return self._framer.at_eof

    # -- requests --------------------------------------------------------------

    def _issue(self, kind: str, size: int = 0) -> int:
        if len(self._in_flight) >= MAX_WINDOW:
            raise LocalProtocolError(f"at most {MAX_WINDOW} requests may be in flight")
        tid = self._next_tid
        self._next_tid = (tid + 1) & 0xFF
        self._in_flight.append(_InFlight(tid, kind, size))
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
        if size > self.fragment_size:
            raise LocalProtocolError(f"{size} bytes exceed the fragment size {self.fragment_size}")
        body_len = WRITE_HEADER_SIZE + (self.fragment_size if self.full_write_body else size)
        tid = self._issue(Operation.WRITE_TO_FILE.name, size)
        prefix = codec.pack_write_prefix(
            transaction_id=tid, offset=offset, size=size, body_len=body_len,
            icverframe=self.framework_version or codec.DEFAULT_FRAMEWORK,
            icvermsg=self.message_version or codec.DEFAULT_FCOPY_VERSION)
        if self.full_write_body and size < self.fragment_size:
            return prefix, data, memoryview(self._padding)[size:]
        return prefix, data

    def complete(self) -> bytes:
        return self._fcopy(Operation.COMPLETE_FCOPY, codec.build_fcopy_header(
            Operation.COMPLETE_FCOPY))

    def cancel(self) -> bytes:
        return self._fcopy(Operation.CANCEL_FCOPY, codec.build_fcopy_header(
            Operation.CANCEL_FCOPY))

    def raw(self, payload: bytes, kind: str = "raw") -> bytes:
        """Send arbitrary payload bytes as a request (fault injection): the transaction
        id at payload offset 24 is overwritten with the next one, when there is room."""
        tid = self._issue(kind)
        if len(payload) > ICMSG_HDR_END - 4:
            out = bytearray(payload)
            out[24] = tid
            return bytes(out)
        return payload

    # -- answers ---------------------------------------------------------------

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        """Feed received bytes; ``b""`` means the guest closed the stream."""
        self._framer.feed(data)

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
        expected = self._in_flight[0]
        if tid != expected.transaction_id:
            raise RemoteProtocolError(
                f"answer has transaction id {tid}, expected {expected.transaction_id} "
                f"({expected.kind})")
        if not payload[ICFLAGS_OFFSET] & _RESPONSE:
            raise RemoteProtocolError(f"answer flags {payload[ICFLAGS_OFFSET]:#x} lack RESPONSE")
        self._in_flight.popleft()
        status = codec.status_of(payload)
        framework = message = None
        if expected.kind == "negotiate" and msgtype == IcMsgType.NEGOTIATE and status == 0:
            framework, message = self._chosen_versions(payload)
            self.framework_version, self.message_version = framework, message
        return Answer(transaction_id=tid, kind=expected.kind, status=status, size=expected.size,
                      framework_version=framework, message_version=message, payload=payload)

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
