"""Protocol constants (PROTOCOL.md section 4) as enums, with human-readable meanings."""

from __future__ import annotations

import enum
import uuid
from typing import Final

#: VMBus class GUID of the "Guest File Copy Service" channel.
FCOPY_CLASS_GUID: Final = uuid.UUID("34d14be3-dee4-41c8-9ae7-6b174977c192")

W_MAX_PATH: Final = 260
"""UTF-16 code units in each name field of START_FILE_COPY."""

DATA_FRAGMENT: Final = 6144
"""Stock fragment size: data bytes in one WRITE_TO_FILE."""

MAX_FILE_OFFSET: Final = (1 << 63) - 1
"""The largest file offset (``off_t``): a larger ``file_size`` or WRITE end is invalid."""

PIPE_HDR_SIZE: Final = 8
ICMSG_HDR_SIZE: Final = 20
ICMSG_HDR_END: Final = PIPE_HDR_SIZE + ICMSG_HDR_SIZE
"""Payload offset of the IC body (28)."""

FCOPY_HDR_SIZE: Final = 36
START_BODY_SIZE: Final = 1088
WRITE_HEADER_SIZE: Final = 52
"""Body bytes of WRITE_TO_FILE before the data (hdr, pad, offset, size)."""
WRITE_BODY_SIZE: Final = WRITE_HEADER_SIZE + DATA_FRAGMENT
NEGOTIATE_FIXED_SIZE: Final = 8
MAX_NEGOTIATE_COUNT: Final = 100

PIPE_FLAG_DATA: Final = 1
"""vmbuspipe_hdr.flags of a data packet, the only kind on a stream."""

STATUS_OFFSET: Final = 20
"""Payload offset of icmsg_hdr.status."""
ICFLAGS_OFFSET: Final = 25
"""Payload offset of icmsg_hdr.icflags."""


def max_msgsize_for(max_fragment: int) -> int:
    """The largest pipe ``msgsize`` a reader accepts for a given maximum fragment.

    It fits a full-length WRITE of ``max_fragment`` data bytes, a START, and the
    largest well-formed NEGOTIATE (100 + 100 versions).
    """
    if max_fragment < 1:
        raise ValueError(f"max_fragment must be at least 1, not {max_fragment}")
    return max(
        ICMSG_HDR_SIZE + WRITE_HEADER_SIZE + max_fragment,
        ICMSG_HDR_SIZE + START_BODY_SIZE,
        ICMSG_HDR_SIZE + NEGOTIATE_FIXED_SIZE + 4 * 2 * MAX_NEGOTIATE_COUNT,
    )


class IcMsgType(enum.IntEnum):
    """icmsg_hdr.icmsgtype."""

    NEGOTIATE = 0
    HEARTBEAT = 1
    KVP_EXCHANGE = 2
    SHUTDOWN = 3
    TIMESYNC = 4
    VSS = 5
    FCOPY = 7


class IcFlags(enum.IntFlag):
    """icmsg_hdr.icflags."""

    TRANSACTION = 0x01
    REQUEST = 0x02
    RESPONSE = 0x04


HOST_ICFLAGS: Final = IcFlags.TRANSACTION | IcFlags.REQUEST
GUEST_ICFLAGS: Final = IcFlags.TRANSACTION | IcFlags.RESPONSE


class Operation(enum.IntEnum):
    """hv_fcopy_hdr.operation."""

    START_FILE_COPY = 0
    WRITE_TO_FILE = 1
    COMPLETE_FCOPY = 2
    CANCEL_FCOPY = 3


class CopyFlags(enum.IntFlag):
    """hv_start_fcopy.copy_flags."""

    NONE = 0
    OVER_WRITE = 0x1
    """Copy-VMFile -Force."""
    CREATE_PATH = 0x2
    """Copy-VMFile -CreateFullPath."""


class Status(enum.IntEnum):
    """HRESULT status codes the guest answers with."""

    S_OK = 0x00000000
    E_FAIL = 0x80004005
    PATH_NOT_FOUND = 0x80070003
    ACCESS_DENIED = 0x80070005
    NOT_SUPPORTED = 0x80070032
    ALREADY_EXISTS = 0x80070050
    INVALIDARG = 0x80070057
    DISK_FULL = 0x80070070

    @property
    def meaning(self) -> str:
        return _MEANINGS[self]


_MEANINGS: Final[dict[Status, str]] = {
    Status.S_OK: "success",
    Status.E_FAIL: "unspecified failure",
    Status.PATH_NOT_FOUND: "the path was not found",
    Status.ACCESS_DENIED: "access denied",
    Status.NOT_SUPPORTED: "the request is not supported",
    Status.ALREADY_EXISTS: "the file exists",
    Status.INVALIDARG: "invalid argument",
    Status.DISK_FULL: "not enough space on the disk",
}

LINUX_STATUSES: Final = frozenset(
    {Status.S_OK, Status.E_FAIL, Status.ALREADY_EXISTS, Status.DISK_FULL}
)
"""The only codes the Linux daemons ever answer with."""


def describe_status(status: int) -> str:
    """``0x80070050: the file exists`` for any 32-bit status, known or not."""
    try:
        meaning = Status(status).meaning
    except ValueError:
        meaning = "unknown status"
    return f"0x{status:08X}: {meaning}"


Version = tuple[int, int]
"""An ic_version as (major, minor)."""

GUEST_FRAMEWORK_VERSIONS: Final[tuple[Version, ...]] = ((3, 0),)
"""Framework versions the Linux guest accepts, in preference order."""
GUEST_FCOPY_VERSIONS: Final[tuple[Version, ...]] = ((1, 1),)
"""fcopy message versions the Linux guest accepts, in preference order."""
HOST_FRAMEWORK_VERSIONS: Final[tuple[Version, ...]] = ((1, 0), (3, 0))
"""Framework versions our host simulator offers, as a Windows host would."""
HOST_FCOPY_VERSIONS: Final[tuple[Version, ...]] = ((1, 1),)
