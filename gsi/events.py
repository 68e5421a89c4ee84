"""Events the sans-IO guest protocol hands to its user.

Request events (everything deriving from :class:`Request`) must be answered, in
order, with :meth:`gsi.protocol.GuestConnection.answer`. The others are notices.
All events are frozen, slotted, keyword-only dataclasses that validate their
fields on construction.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final, Literal

from .constants import CopyFlags, Status, Version


class _Sentinel(enum.Enum):
    NEED_DATA = "NEED_DATA"

    def __repr__(self) -> str:
        return self.value


NEED_DATA: Final = _Sentinel.NEED_DATA
"""Returned by ``next_event()`` when more bytes must be received first."""
NeedData = Literal[_Sentinel.NEED_DATA]


def _check_u32(name: str, value: int) -> None:
    if not 0 <= value <= 0xFFFFFFFF:
        raise ValueError(f"{name} must fit in 32 bits, not {value}")


@dataclass(frozen=True, slots=True, kw_only=True)
class Request:
    """A host request awaiting its answer.

    Attributes:
        transaction_id: ictransaction_id, echoed in the answer.
        request: the whole request payload as received (pipe header included).
    """

    transaction_id: int
    request: bytes = field(repr=False)

    def __post_init__(self) -> None:
        if not 0 <= self.transaction_id <= 0xFF:
            raise ValueError(f"transaction_id must be a u8, not {self.transaction_id}")
        if len(self.request) < 28:
            raise ValueError("a request payload holds at least the 28 header bytes")


@dataclass(frozen=True, slots=True, kw_only=True)
class Negotiate(Request):
    """A NEGOTIATE request, already decided by the protocol core.

    Attributes:
        status: 0 on success, else 0x80004005 (no common version or malformed).
        framework_version / message_version: the chosen versions, None on failure.
        reason: why it failed ("" on success).
        malformed: the body could not be read as a version list (as opposed to
            a well-formed list with no version in common).
    """

    status: int
    framework_version: Version | None
    message_version: Version | None
    reason: str = ""
    malformed: bool = False

    def __post_init__(self) -> None:
        Request.__post_init__(self)
        _check_u32("status", self.status)
        chosen = self.framework_version is not None and self.message_version is not None
        if chosen != (self.status == Status.S_OK):
            raise ValueError("versions are chosen exactly when the status is success")


@dataclass(frozen=True, slots=True, kw_only=True)
class StartCopy(Request):
    """START_FILE_COPY: open ``path_name + "/" + file_name`` for ``file_size`` bytes."""

    file_name: str
    path_name: str
    flags: CopyFlags
    file_size: int

    def __post_init__(self) -> None:
        Request.__post_init__(self)
        if not self.file_name or "/" in self.file_name or "\x00" in self.file_name:
            raise ValueError(f"invalid file name {self.file_name!r}")
        if not 0 <= self.file_size < 1 << 64:
            raise ValueError(f"file_size must be a u64, not {self.file_size}")

    @property
    def guest_path(self) -> str:
        """The destination as the Linux daemon forms it: path_name + "/" + file_name."""
        return f"{self.path_name}/{self.file_name}"


@dataclass(frozen=True, slots=True, kw_only=True)
class WriteData(Request):
    """WRITE_TO_FILE: ``data`` (a view into ``request``) goes at ``offset``."""

    offset: int
    data: memoryview = field(repr=False)

    def __post_init__(self) -> None:
        Request.__post_init__(self)
        if self.offset < 0:
            raise ValueError(f"offset must not be negative, not {self.offset}")

    @classmethod
    def _trusted(cls, transaction_id: int, request: bytes, offset: int,
                 data: memoryview) -> WriteData:
        """For the protocol core, which has validated every field already (once per
        fragment, so the second check in ``__post_init__`` is worth skipping)."""
        event = _new(cls)
        _set_tid(event, transaction_id)
        _set_request(event, request)
        _set_offset(event, offset)
        _set_data(event, data)
        return event

    @property
    def size(self) -> int:
        return self.data.nbytes


# The slot descriptors set the fields of a frozen instance directly (what the generated
# __init__ does through object.__setattr__, minus the lookup).
_new = object.__new__
_set_tid: Callable[[object, int], None] = vars(Request)["transaction_id"].__set__
_set_request: Callable[[object, bytes], None] = vars(Request)["request"].__set__
_set_offset: Callable[[object, int], None] = vars(WriteData)["offset"].__set__
_set_data: Callable[[object, memoryview], None] = vars(WriteData)["data"].__set__


@dataclass(frozen=True, slots=True, kw_only=True)
class WriteBatch:
    """A run of consecutive valid WRITE_TO_FILE requests for the open copy, parsed in place.

    Answer it with :meth:`gsi.protocol.GuestConnection.answer_batch` once its data is
    written. The views point into the connection's receive buffer: they stay valid, and
    unchanged, until the next ``receive_data`` / ``receive_buffer`` call.

    Attributes:
        buffer: the receive buffer holding the requests.
        start / end: where the requests lie in it (back to back).
        positions: where each request starts (``len(positions)`` requests).
        runs: the data as contiguous runs, ``(offset, [data views])`` in arrival order
            (one ``pwritev`` each); zero-size WRITEs are in no run.
        run_first: index (into ``positions``) of the first request of each run.
        nbytes: data bytes in the batch.
    """

    buffer: bytearray = field(repr=False)
    start: int
    end: int
    positions: list[int] = field(repr=False)
    runs: list[tuple[int, list[memoryview]]] = field(repr=False)
    run_first: list[int] = field(repr=False)
    nbytes: int

    def __post_init__(self) -> None:
        if not self.positions or len(self.runs) != len(self.run_first):
            raise ValueError("a batch holds at least one request and one index per run")
        if not 0 <= self.start <= self.end <= len(self.buffer):
            raise ValueError("the requests must lie in the buffer")

    @property
    def count(self) -> int:
        """Requests in the batch."""
        return len(self.positions)


@dataclass(frozen=True, slots=True, kw_only=True)
class CompleteCopy(Request):
    """COMPLETE_FCOPY with every byte of ``[0, file_size)`` received: commit now."""

    file_size: int


@dataclass(frozen=True, slots=True, kw_only=True)
class CancelCopy(Request):
    """CANCEL_FCOPY. ``copy_open`` says whether a copy was open (and must be dropped)."""

    copy_open: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class Rejected(Request):
    """A request the protocol core refuses itself; answer it with its ``status``.

    Attributes:
        status: the HRESULT the answer carries (never 0).
        reason: a sentence for the log.
        icmsgtype: the request's IC message type.
        operation: the fcopy operation, None where there was none to read.
    """

    status: int
    reason: str
    icmsgtype: int
    operation: int | None = None

    def __post_init__(self) -> None:
        Request.__post_init__(self)
        _check_u32("status", self.status)
        if self.status == Status.S_OK:
            raise ValueError("a rejection carries a failure status")


@dataclass(frozen=True, slots=True, kw_only=True)
class CopyAborted:
    """The open copy ended without a commit: drop its temp file. Needs no answer.

    Attributes:
        reason: why, for the log.
        status: the status the host is answered with for the request that ended the
            copy (0x80004005 where no request did, e.g. the connection closed).
    """

    reason: str
    status: int = Status.E_FAIL

    def __post_init__(self) -> None:
        _check_u32("status", self.status)
        if self.status == Status.S_OK:
            raise ValueError("an aborted copy carries a failure status")


@dataclass(frozen=True, slots=True, kw_only=True)
class ConnectionClosed:
    """The host closed the stream. ``truncated`` bytes of a partial message were lost."""

    truncated: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class MessageDropped:
    """A whole message (a packet, :meth:`~gsi.protocol.GuestConnection.receive_message`)
    too short to hold the 28 header bytes: it cannot be answered. Needs no answer.

    Attributes:
        size: the message's length in bytes.
    """

    size: int

    def __post_init__(self) -> None:
        if not 0 <= self.size < 28:
            raise ValueError(f"a {self.size}-byte message can be answered")


Event = Negotiate | StartCopy | WriteData | CompleteCopy | CancelCopy | Rejected | \
    CopyAborted | ConnectionClosed | MessageDropped
RequestEvent = Negotiate | StartCopy | WriteData | CompleteCopy | CancelCopy | Rejected
