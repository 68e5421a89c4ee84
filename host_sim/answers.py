"""What the host has in flight and what the guest answers: the records
:class:`~host_sim.protocol.HostConnection` hands out (and keeps)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from gsi.constants import Status, Version

__all__ = ["Answer", "Reply", "Request", "WriteRange"]


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


@dataclass(slots=True)
class Request:
    """A request in flight.

    Attributes:
        transaction_id: its id; -1 for raw bytes sent without one.
        kind: "negotiate", an :class:`Operation` name, or the kind given to ``raw``.
        size: data bytes (WRITE), else 0.
        tag: what the host attached with :meth:`HostConnection.amend_last`, else None.
    """

    transaction_id: int
    kind: str
    size: int = 0
    tag: Any = None


class WriteRange:
    """Pipelined full-size WRITEs in flight: ``count`` consecutive ids from ``first``."""

    __slots__ = ("count", "first")

    def __init__(self, first: int) -> None:
        self.first = first
        self.count = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class Reply:
    """An answer paired loosely (:meth:`HostConnection.next_reply`).

    Attributes:
        request: the request it answers; None when nothing was in flight.
        matched: its transaction id is that request's (False: none in flight has it, so
            it was paired with the oldest, or nothing was in flight).
        lost: requests older than the one it answers, given up: the guest answers in
            order, so they never will be.
        payload: the whole answer as received.
    """

    transaction_id: int
    status: int
    request: Request | None
    matched: bool
    lost: tuple[Request, ...] = ()
    payload: bytes = field(repr=False, default=b"")
