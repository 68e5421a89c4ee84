"""The one exception hierarchy of gsi and host_sim."""

from __future__ import annotations

from .constants import Status


class GsiError(Exception):
    """Base of every error gsi and host_sim raise on purpose."""


class ProtocolError(GsiError):
    """Input that breaks the protocol.

    Attributes:
        status_hint: the status a guest answers with where an answer is still possible.
    """

    def __init__(self, msg: str, *, status_hint: int = Status.E_FAIL) -> None:
        super().__init__(msg)
        self.status_hint = status_hint


class FramingError(ProtocolError):
    """The byte stream cannot be split into messages any more: drop the connection."""


class RemoteProtocolError(ProtocolError):
    """The peer sent something the protocol does not allow (e.g. an unpaired answer)."""


class LocalProtocolError(GsiError):
    """This side's code used the sans-IO API wrongly (a bug, not bad input)."""


class InvalidNameError(ProtocolError):
    """A START name field that is not a valid NUL-terminated UTF-16LE name."""

    def __init__(self, msg: str) -> None:
        super().__init__(msg, status_hint=Status.INVALIDARG)


class CopyFailed(GsiError):
    """A host-side copy that the guest refused or that could not finish.

    Attributes:
        status: the guest's HRESULT, or None if the copy failed without an answer.
    """

    def __init__(self, msg: str, *, status: int | None = None) -> None:
        super().__init__(msg)
        self.status = status


class AcceptError(GsiError):
    """A listener's ``accept`` failed in a way that waiting does not cure; serving stops.

    Attributes:
        listener: the listener's URL (or its type where it has none), for the message.
        errno: the ``OSError``'s errno.
    """

    def __init__(self, msg: str, *, listener: str, errno: int | None) -> None:
        super().__init__(msg)
        self.listener = listener
        self.errno = errno


class SinkError(GsiError):
    """The destination refused an operation; ``status`` is what the guest answers.

    Attributes:
        status: the HRESULT for the host (e.g. 0x80070050 exists, 0x80070005 denied).
        reason: a sentence for the log saying what happened and where.
    """

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
