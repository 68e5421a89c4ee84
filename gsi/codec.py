"""Byte-level encoding of messages.

Two paths over the same layouts (:mod:`gsi.layouts`):

* general builders and parsers on construct, for every message kind;
* a fast path on precompiled :class:`struct.Struct` for what happens once per 6 KiB
  fragment (peeking at headers, WRITE fields, building WRITE requests), which never
  copies the data it points at. Tests prove the two agree byte for byte.

construct is imported by the first general builder or parser called, not with this
module: the guest (:mod:`gsi.protocol`) only uses the fast path and never loads it.

Payload offsets used here (PROTOCOL.md sections 1 and 3): pipe header 0..8, IC header
8..28 (status at 20, transaction id at 24, flags at 25), IC body from 28; in an fcopy
body the operation is at body offset 0 and WRITE's offset/size at body offsets 40/48,
its data at 52 (payload 80).
"""

from __future__ import annotations

import struct
from typing import Any, Final

from .constants import (
    HOST_ICFLAGS,
    ICMSG_HDR_END,
    ICMSG_HDR_SIZE,
    PIPE_FLAG_DATA,
    WRITE_HEADER_SIZE,
    IcMsgType,
    Operation,
    Version,
)

PIPE: Final = struct.Struct("<II")
IC_HDR: Final = struct.Struct("<HHHHHHIBB2s")
NEGOTIATE_COUNTS: Final = struct.Struct("<HHI")
NEGOTIATE_VERCNT: Final = struct.Struct("<HH")
IC_VERSION: Final = struct.Struct("<HH")
U16: Final = struct.Struct("<H")
U32: Final = struct.Struct("<I")

PEEK: Final = struct.Struct("<H10xB3x")
"""From payload offset 12: icmsgtype, then ictransaction_id (offset 24)."""
PEEK_OFFSET: Final = 12
OPERATION_OFFSET: Final = ICMSG_HDR_END
WRITE_FIELDS: Final = struct.Struct("<QI")
"""WRITE offset (u64) and size (u32), at payload offset 68."""
WRITE_FIELDS_OFFSET: Final = ICMSG_HDR_END + 40
WRITE_DATA_OFFSET: Final = ICMSG_HDR_END + WRITE_HEADER_SIZE
"""Payload offset of a WRITE's data (80)."""
WRITE_PREFIX: Final = struct.Struct("<II HHHHHH I BB2s I16s16s I Q I")
"""A whole WRITE request up to its data: pipe, IC header, fcopy header, pad, offset, size."""
ANSWER_STATUS: Final = struct.Struct("<I")
START_TAIL: Final = struct.Struct("<IQ")
"""START copy_flags (u32) and file_size (u64), at payload offset 1104."""
MSGSIZE_OFFSET: Final = 4
ICMSGSIZE_OFFSET: Final = 18

DEFAULT_FRAMEWORK: Final[Version] = (3, 0)
DEFAULT_FCOPY_VERSION: Final[Version] = (1, 1)
_ZERO_GUID: Final = bytes(16)


def icmsgsize_for(body_len: int) -> int:
    """icmsg_hdr.icmsgsize for a body: its length, saturated to the u16 field."""
    return min(body_len, 0xFFFF)


def build_message(
    *,
    icmsgtype: int,
    body: bytes,
    transaction_id: int,
    icflags: int = HOST_ICFLAGS,
    status: int = 0,
    icverframe: Version = DEFAULT_FRAMEWORK,
    icvermsg: Version = DEFAULT_FCOPY_VERSION,
    icmsgsize: int | None = None,
) -> bytes:
    """Pipe header + IC header + body, with construct."""
    from . import layouts  # here: construct loads on first use
    header = layouts.icmsg_hdr.build(
        {
            "icverframe": {"major": icverframe[0], "minor": icverframe[1]},
            "icmsgtype": icmsgtype,
            "icvermsg": {"major": icvermsg[0], "minor": icvermsg[1]},
            "icmsgsize": icmsgsize_for(len(body)) if icmsgsize is None else icmsgsize,
            "status": status,
            "ictransaction_id": transaction_id,
            "icflags": icflags,
            "reserved": b"\x00\x00",
        }
    )
    pipe = layouts.vmbuspipe_hdr.build(
        {"flags": PIPE_FLAG_DATA, "msgsize": ICMSG_HDR_SIZE + len(body)}
    )
    return bytes(pipe + header + body)


def parse_message(payload: bytes) -> Any:
    """Split a payload into a construct Container (pipe, ic, body)."""
    from . import layouts  # here: construct loads on first use
    return layouts.message.parse(payload)


def build_negotiate_body(
    framework_versions: tuple[Version, ...] | list[Version],
    message_versions: tuple[Version, ...] | list[Version],
) -> bytes:
    from . import layouts  # here: construct loads on first use
    versions = [{"major": a, "minor": b} for a, b in (*framework_versions, *message_versions)]
    return bytes(
        layouts.icmsg_negotiate.build(
            {
                "icframe_vercnt": len(framework_versions),
                "icmsg_vercnt": len(message_versions),
                "reserved": 0,
                "icversion_data": versions,
            }
        )
    )


def build_fcopy_header(operation: int, service_id0: bytes = _ZERO_GUID,
                       service_id1: bytes = _ZERO_GUID) -> bytes:
    from . import layouts  # here: construct loads on first use
    return bytes(
        layouts.hv_fcopy_hdr.build(
            {"operation": operation, "service_id0": service_id0, "service_id1": service_id1}
        )
    )


def build_start_body(
    *, file_name_field: bytes, path_name_field: bytes, copy_flags: int, file_size: int,
    service_id0: bytes = _ZERO_GUID, service_id1: bytes = _ZERO_GUID,
) -> bytes:
    """hv_start_fcopy from already-encoded 520-byte name fields."""
    from . import layouts  # here: construct loads on first use
    return bytes(
        layouts.hv_start_fcopy.build(
            {
                "hdr": {
                    "operation": Operation.START_FILE_COPY,
                    "service_id0": service_id0,
                    "service_id1": service_id1,
                },
                "file_name": file_name_field,
                "path_name": path_name_field,
                "copy_flags": copy_flags,
                "file_size": file_size,
            }
        )
    )


def build_write_body(*, offset: int, data: bytes, full_length: int | None = None) -> bytes:
    """hv_do_fcopy with construct: trimmed to 52 + len(data), or zero-padded data of
    ``full_length`` bytes (6144 gives the kernel's 6196-byte struct)."""
    from . import layouts  # here: construct loads on first use
    hdr = {"operation": Operation.WRITE_TO_FILE, "service_id0": _ZERO_GUID,
           "service_id1": _ZERO_GUID}
    trimmed = bytes(
        layouts.hv_do_fcopy_trimmed.build(
            {"hdr": hdr, "pad": 0, "offset": offset, "size": len(data), "data": data}
        )
    )
    if full_length is None:
        return trimmed
    if full_length < len(data):
        raise ValueError(f"{len(data)} data bytes do not fit a {full_length}-byte fragment")
    return trimmed + bytes(full_length - len(data))


def pack_write_prefix(
    *, transaction_id: int, offset: int, size: int, body_len: int,
    icverframe: Version = DEFAULT_FRAMEWORK, icvermsg: Version = DEFAULT_FCOPY_VERSION,
) -> bytes:
    """The first 80 bytes of a WRITE request (everything before the data), fast path."""
    return WRITE_PREFIX.pack(
        PIPE_FLAG_DATA, ICMSG_HDR_SIZE + body_len,
        icverframe[0], icverframe[1], IcMsgType.FCOPY, icvermsg[0], icvermsg[1],
        icmsgsize_for(body_len), 0, transaction_id, HOST_ICFLAGS, b"\x00\x00",
        Operation.WRITE_TO_FILE, _ZERO_GUID, _ZERO_GUID, 0, offset, size,
    )


def peek(payload: bytes) -> tuple[int, int]:
    """(icmsgtype, ictransaction_id) of a framed payload (at least 28 bytes)."""
    msgtype, tid = PEEK.unpack_from(payload, PEEK_OFFSET)
    return msgtype, tid


def operation_of(payload: bytes) -> int:
    """hv_fcopy_hdr.operation; the payload must hold at least 32 bytes."""
    op: int = U32.unpack_from(payload, OPERATION_OFFSET)[0]
    return op


def write_fields(payload: bytes) -> tuple[int, int]:
    """(offset, size) of a WRITE; the payload must hold at least 80 bytes."""
    offset, size = WRITE_FIELDS.unpack_from(payload, WRITE_FIELDS_OFFSET)
    return offset, size


def status_of(payload: bytes) -> int:
    """icmsg_hdr.status of an answer (payload offset 20)."""
    status: int = ANSWER_STATUS.unpack_from(payload, 20)[0]
    return status
