"""The guest core's checks of NEGOTIATE and START bodies, as pure functions.

:class:`gsi.protocol.GuestConnection` decides what happens with a request; the parts that
only read a body (or edit an echoed one) live here: the version choice of a NEGOTIATE and
the edits its answer carries (PROTOCOL.md 5.1 and section 8), and the names, flags and size
of a START (PROTOCOL.md 5.2). Nothing here keeps state.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from . import codec
from .constants import (
    FCOPY_HDR_SIZE,
    ICMSG_HDR_END,
    MAX_FILE_OFFSET,
    MAX_NEGOTIATE_COUNT,
    NEGOTIATE_FIXED_SIZE,
    START_BODY_SIZE,
    CopyFlags,
    Status,
    Version,
)
from .errors import InvalidNameError
from .events import Negotiate
from .names import NAME_FIELD_SIZE, decode_name

_NAMES_OFFSET = ICMSG_HDR_END + FCOPY_HDR_SIZE
_START_TAIL = ICMSG_HDR_END + FCOPY_HDR_SIZE + 2 * NAME_FIELD_SIZE


def negotiate(payload: bytes, tid: int, framework_versions: Sequence[Version],
              message_versions: Sequence[Version]) -> Negotiate:
    """The event for a NEGOTIATE: the first of our versions (in our order of preference)
    that the host offers, for the framework and the message; status 0x80004005 with the
    reason when the body is malformed or there is no common version."""
    def failed(reason: str, malformed: bool = True) -> Negotiate:
        return Negotiate(transaction_id=tid, request=payload, status=Status.E_FAIL,
                         framework_version=None, message_version=None, reason=reason,
                         malformed=malformed)

    body = memoryview(payload)[ICMSG_HDR_END:]
    if len(body) < NEGOTIATE_FIXED_SIZE:
        return failed(f"malformed NEGOTIATE: body of {len(body)} bytes")
    nframe, nmsg, _ = codec.NEGOTIATE_COUNTS.unpack_from(body)
    if nframe > MAX_NEGOTIATE_COUNT or nmsg > MAX_NEGOTIATE_COUNT:
        return failed(f"malformed NEGOTIATE: counts {nframe}/{nmsg} above "
                      f"{MAX_NEGOTIATE_COUNT}")
    if NEGOTIATE_FIXED_SIZE + 4 * (nframe + nmsg) > len(body):
        return failed(f"malformed NEGOTIATE: {nframe}+{nmsg} versions overrun a "
                      f"{len(body)}-byte body")
    offered = [codec.IC_VERSION.unpack_from(body, NEGOTIATE_FIXED_SIZE + 4 * i)
               for i in range(nframe + nmsg)]
    host_frame, host_msg = set(offered[:nframe]), set(offered[nframe:])
    framework = next((v for v in framework_versions if v in host_frame), None)
    message = next((v for v in message_versions if v in host_msg), None)
    if framework is None or message is None:
        return failed(
            f"no common version: host offers framework {sorted(host_frame)}, "
            f"message {sorted(host_msg)}",
            malformed=False,
        )
    return Negotiate(transaction_id=tid, request=payload, status=Status.S_OK,
                     framework_version=framework, message_version=message)


def edit_negotiate_answer(out: bytearray, start: int, event: Negotiate) -> None:
    """The edits the guest makes to an echoed NEGOTIATE at ``out[start:]`` (PROTOCOL.md
    5.1 and section 8)."""
    body = start + ICMSG_HDR_END
    room = len(out) - body
    if event.framework_version is not None and event.message_version is not None:
        codec.U16.pack_into(out, start + codec.ICMSGSIZE_OFFSET, 0x10)
        codec.NEGOTIATE_VERCNT.pack_into(out, body, 1, 1)
        codec.IC_VERSION.pack_into(out, body + 8, *event.framework_version)
        codec.IC_VERSION.pack_into(out, body + 12, *event.message_version)
    elif room >= codec.NEGOTIATE_VERCNT.size:
        codec.NEGOTIATE_VERCNT.pack_into(out, body, 0, 0)
        if not event.malformed:
            codec.U16.pack_into(out, start + codec.ICMSGSIZE_OFFSET, 0x10)


@dataclass(frozen=True, slots=True)
class Start:
    """A START body that passed every check."""

    file_name: str
    path_name: str
    flags: CopyFlags
    file_size: int


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a body is refused, with the status its answer carries."""

    status: int
    reason: str


def parse_start(payload: bytes, max_file_size: int) -> Start | Refusal:
    """The START in ``payload`` (the fcopy header already checked), or why it is refused:
    a short body, a name that does not decode, an empty file name or one with '/', a
    ``file_size`` above the largest file offset or above ``max_file_size``."""
    if len(payload) < ICMSG_HDR_END + START_BODY_SIZE:
        return Refusal(Status.INVALIDARG, f"START body of {len(payload) - ICMSG_HDR_END} "
                                          f"bytes is shorter than {START_BODY_SIZE}")
    try:
        file_name = decode_name(payload[_NAMES_OFFSET:_NAMES_OFFSET + NAME_FIELD_SIZE])
        path_name = decode_name(payload[_NAMES_OFFSET + NAME_FIELD_SIZE:_START_TAIL])
    except InvalidNameError as exc:
        return Refusal(exc.status_hint, f"START: {exc}")
    flags, file_size = codec.START_TAIL.unpack_from(payload, _START_TAIL)
    if not file_name or "/" in file_name:
        return Refusal(Status.INVALIDARG,
                       f"START: file_name {file_name!r} is empty or contains '/'")
    if file_size > MAX_FILE_OFFSET:
        return Refusal(Status.INVALIDARG, f"START: file_size {file_size} exceeds the largest "
                                          f"file offset {MAX_FILE_OFFSET}")
    if file_size > max_file_size:
        return Refusal(Status.INVALIDARG,
                       f"START: file_size {file_size} exceeds the maximum {max_file_size}")
    return Start(file_name, path_name, CopyFlags(flags), file_size)
