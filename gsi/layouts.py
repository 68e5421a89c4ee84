"""Every wire layout of PROTOCOL.md section 3, declared once with construct.

These declarations are the documentation and the test oracle. They are used for
everything except the WRITE hot path, where :mod:`gsi.codec` does the same with
precompiled :class:`struct.Struct` (tests prove the two agree byte for byte).
Names follow the kernel's C structs without the ``_t``.
"""

from __future__ import annotations

from typing import Any

from construct import (
    Array,
    Bytes,
    Int8ul,
    Int16ul,
    Int32ul,
    Int64ul,
    Struct,
    this,
)

from .constants import DATA_FRAGMENT, W_MAX_PATH

ic_version: Any = Struct("major" / Int16ul, "minor" / Int16ul)

vmbuspipe_hdr: Any = Struct("flags" / Int32ul, "msgsize" / Int32ul)

icmsg_hdr: Any = Struct(
    "icverframe" / ic_version,
    "icmsgtype" / Int16ul,
    "icvermsg" / ic_version,
    "icmsgsize" / Int16ul,
    "status" / Int32ul,
    "ictransaction_id" / Int8ul,
    "icflags" / Int8ul,
    "reserved" / Bytes(2),
)

icmsg_negotiate: Any = Struct(
    "icframe_vercnt" / Int16ul,
    "icmsg_vercnt" / Int16ul,
    "reserved" / Int32ul,
    "icversion_data" / Array(this.icframe_vercnt + this.icmsg_vercnt, ic_version),
)

hv_fcopy_hdr: Any = Struct(
    "operation" / Int32ul,
    "service_id0" / Bytes(16),
    "service_id1" / Bytes(16),
)

hv_start_fcopy: Any = Struct(
    "hdr" / hv_fcopy_hdr,
    "file_name" / Bytes(2 * W_MAX_PATH),
    "path_name" / Bytes(2 * W_MAX_PATH),
    "copy_flags" / Int32ul,
    "file_size" / Int64ul,
)

hv_do_fcopy: Any = Struct(
    "hdr" / hv_fcopy_hdr,
    "pad" / Int32ul,
    "offset" / Int64ul,
    "size" / Int32ul,
    "data" / Bytes(DATA_FRAGMENT),
)
"""The full-length WRITE body, exactly as the kernel declares it (6196 bytes)."""

hv_do_fcopy_trimmed: Any = Struct(
    "hdr" / hv_fcopy_hdr,
    "pad" / Int32ul,
    "offset" / Int64ul,
    "size" / Int32ul,
    "data" / Bytes(this.size),
)
"""A WRITE body trimmed to 52 + size bytes, as stream transports may send it."""

message: Any = Struct(
    "pipe" / vmbuspipe_hdr,
    "ic" / icmsg_hdr,
    "body" / Bytes(this.pipe.msgsize - icmsg_hdr.sizeof()),
)
"""One stream message: pipe header, IC header, body of ``msgsize - 20`` bytes."""
