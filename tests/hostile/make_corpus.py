"""The hostile-input corpus: malformed frames, every field out of range, hostile names.

Each :class:`Case` is one payload sent on a fresh connection after a prelude (nothing, a
NEGOTIATE, or a NEGOTIATE and a START that opens a copy), with what the receiver must do
(PROTOCOL.md section 8): answer once with a given status, close the connection at once
(framing error), or wait for the rest and close at end of stream (a truncated message).
``tests/test_hostile_corpus.py`` replays every case against a running receiver.

A few cases are also checked in as ``tests/hostile/<name>.bin`` (the payload bytes);
``python tests/hostile/make_corpus.py`` writes them, ``--check`` verifies them.
"""

from __future__ import annotations

import argparse
import random
import struct
import sys
from dataclasses import dataclass
from pathlib import Path

from gsi import codec
from gsi.constants import (
    DATA_FRAGMENT,
    HOST_FCOPY_VERSIONS,
    HOST_FRAMEWORK_VERSIONS,
    CopyFlags,
    IcMsgType,
    Operation,
    Status,
)
from gsi.names import NAME_FIELD_SIZE, encode_name

HERE = Path(__file__).resolve().parent
TID = 0x5A
"""Transaction id of every hostile payload (the preludes use 1 and 2)."""
CLOSE = "close"
"""Expect: the receiver closes the connection at once, answering nothing."""
CLOSE_AT_EOF = "close-at-eof"
"""Expect: the receiver waits for the rest of the message, and closes at end of stream
without answering."""
OPEN_COPY = ("/hostile", "open.bin", 100)
"""The copy the "copying" prelude opens: path_name, file_name, file_size."""

OK = Status.S_OK
E_FAIL = Status.E_FAIL
INVALIDARG = Status.INVALIDARG
ACCESS_DENIED = Status.ACCESS_DENIED
PATH_NOT_FOUND = Status.PATH_NOT_FOUND
NOT_SUPPORTED = Status.NOT_SUPPORTED
EXISTS = Status.ALREADY_EXISTS
DISK_FULL = Status.DISK_FULL
CP = CopyFlags.CREATE_PATH
OW = CopyFlags.OVER_WRITE


@dataclass(frozen=True)
class Case:
    name: str
    payload: bytes
    expect: int | str
    """A status (one answer carrying it), CLOSE or CLOSE_AT_EOF."""
    prelude: str = "negotiated"
    """"none", "negotiated" or "copying"."""


# -- builders ------------------------------------------------------------------------


def message(msgtype: int, body: bytes, tid: int = TID) -> bytes:
    return codec.build_message(icmsgtype=msgtype, body=body, transaction_id=tid)


def frame(flags: int, msgsize: int, rest: bytes) -> bytes:
    """A pipe header with any fields, then ``rest``."""
    return struct.pack("<II", flags, msgsize) + rest


def negotiate_body(nframe: int, nmsg: int, versions: list[tuple[int, int]]) -> bytes:
    return struct.pack("<HHI", nframe, nmsg, 0) + b"".join(
        struct.pack("<HH", *v) for v in versions)


def negotiate(tid: int = 1) -> bytes:
    body = codec.build_negotiate_body(HOST_FRAMEWORK_VERSIONS, HOST_FCOPY_VERSIONS)
    return message(IcMsgType.NEGOTIATE, body, tid)


def name_field(text: str | bytes) -> bytes:
    """A 520-byte name field: a str is encoded (NUL-terminated), bytes are taken raw."""
    if isinstance(text, str):
        return encode_name(text)
    return text.ljust(NAME_FIELD_SIZE, b"\0")[:NAME_FIELD_SIZE]


def start(file_name: str | bytes, path_name: str | bytes, flags: int = CP | OW,
          file_size: int = 10, tid: int = TID) -> bytes:
    body = codec.build_start_body(file_name_field=name_field(file_name),
                                  path_name_field=name_field(path_name),
                                  copy_flags=flags, file_size=file_size)
    return message(IcMsgType.FCOPY, body, tid)


def fcopy(op: int, extra: bytes = b"") -> bytes:
    return message(IcMsgType.FCOPY, codec.build_fcopy_header(op) + extra)


def write(offset: int, size: int, data_len: int | None = None) -> bytes:
    """A WRITE claiming ``size`` bytes and carrying ``data_len`` (default: full body)."""
    data_len = DATA_FRAGMENT if data_len is None else data_len
    body = codec.build_fcopy_header(Operation.WRITE_TO_FILE) + struct.pack(
        "<IQI", 0, offset, size) + bytes(data_len)
    return message(IcMsgType.FCOPY, body)


def copying_prelude() -> list[bytes]:
    path, name, size = OPEN_COPY
    return [negotiate(1), start(name, path, CP | OW, size, tid=2)]


# -- the cases -----------------------------------------------------------------------


def _cases() -> list[Case]:
    rnd = random.Random(20261126)
    valid_start = start("x", "/hostile")
    header_only = valid_start[8:28]
    cases = [
        # framing: decided from the pipe header, before any body is buffered
        Case("flags_zero", frame(0, len(header_only), header_only), CLOSE, "none"),
        Case("flags_two", frame(2, len(header_only), header_only), CLOSE, "none"),
        Case("flags_max", frame(0xFFFFFFFF, len(header_only), header_only), CLOSE, "none"),
        Case("msgsize_zero", frame(1, 0, header_only), CLOSE, "none"),
        Case("msgsize_19", frame(1, 19, header_only), CLOSE, "none"),
        Case("msgsize_above_max", frame(1, 20 + 52 + DATA_FRAGMENT + 1, b""), CLOSE),
        Case("msgsize_max", frame(1, 0xFFFFFFFF, header_only), CLOSE),
        Case("zeros", bytes(64), CLOSE, "none"),
        Case("random_4k", rnd.randbytes(4096), CLOSE, "none"),
        Case("random_after_negotiate", rnd.randbytes(4096), CLOSE),
        Case("random_mid_copy", rnd.randbytes(10000), CLOSE, "copying"),
        Case("http_request", b"GET / HTTP/1.1\r\nHost: guest\r\n\r\n", CLOSE, "none"),
        Case("tls_client_hello", bytes.fromhex("160301020001000200") + bytes(100), CLOSE,
             "none"),
        # truncated: the receiver waits for the rest, then sees the end of the stream
        Case("one_byte", b"\x01", CLOSE_AT_EOF, "none"),
        Case("header_7_bytes", valid_start[:7], CLOSE_AT_EOF),
        Case("header_only", valid_start[:8], CLOSE_AT_EOF),
        Case("start_cut_mid_body", valid_start[:600], CLOSE_AT_EOF),
        Case("write_cut_mid_data", write(0, 100)[:200], CLOSE_AT_EOF, "copying"),
        # NEGOTIATE (section 5.1 and 8)
        Case("negotiate_ok", negotiate(TID), OK, "none"),
        Case("negotiate_body_4_bytes", message(IcMsgType.NEGOTIATE, b"\x01\x00\x01\x00"),
             E_FAIL, "none"),
        Case("negotiate_empty_body", message(IcMsgType.NEGOTIATE, b""), E_FAIL, "none"),
        Case("negotiate_counts_101", message(IcMsgType.NEGOTIATE, negotiate_body(
            101, 1, [(3, 0)] * 102)), E_FAIL, "none"),
        Case("negotiate_counts_max", message(IcMsgType.NEGOTIATE, negotiate_body(
            0xFFFF, 0xFFFF, [])), E_FAIL, "none"),
        Case("negotiate_counts_overrun", message(IcMsgType.NEGOTIATE, negotiate_body(
            2, 2, [(3, 0)])), E_FAIL, "none"),
        Case("negotiate_no_common_version", message(IcMsgType.NEGOTIATE, negotiate_body(
            1, 1, [(9, 9), (9, 9)])), E_FAIL, "none"),
        Case("negotiate_zero_counts", message(IcMsgType.NEGOTIATE, negotiate_body(0, 0, [])),
             E_FAIL, "none"),
        Case("negotiate_again", negotiate(TID), OK, "copying"),
        # message types and operations
        Case("fcopy_before_negotiate", valid_start, E_FAIL, "none"),
        Case("write_before_negotiate", write(0, 10), E_FAIL, "none"),
        Case("icmsgtype_heartbeat", message(IcMsgType.HEARTBEAT, bytes(16)), NOT_SUPPORTED,
             "none"),
        Case("icmsgtype_max", message(0xFFFF, bytes(16)), NOT_SUPPORTED),
        Case("fcopy_empty_body", message(IcMsgType.FCOPY, b""), INVALIDARG),
        Case("fcopy_operation_only", message(IcMsgType.FCOPY, struct.pack("<I", 0)),
             INVALIDARG),
        Case("fcopy_header_cut", message(IcMsgType.FCOPY, bytes(20)), INVALIDARG),
        Case("operation_4", fcopy(4), NOT_SUPPORTED),
        Case("operation_max", fcopy(0xFFFFFFFF), NOT_SUPPORTED),
        Case("write_no_copy", write(0, 10), E_FAIL),
        Case("complete_no_copy", fcopy(Operation.COMPLETE_FCOPY), E_FAIL),
        Case("cancel_no_copy", fcopy(Operation.CANCEL_FCOPY), OK),
        # START fields
        Case("start_body_short", message(IcMsgType.FCOPY, valid_start[28:28 + 1000]),
             INVALIDARG),
        Case("start_file_size_max", start("big", "/hostile", file_size=(1 << 64) - 1),
             INVALIDARG),
        Case("start_unknown_flag_bits", start("flags", "/hostile", flags=0xFFFFFFFF), OK),
        # names: encoding
        Case("name_without_nul", start(b"a\0" * 260, "/hostile"), INVALIDARG),
        Case("path_without_nul", start("x", b"b\0" * 260), INVALIDARG),
        Case("name_unpaired_high_surrogate", start(b"a\0\x00\xd8b\0", "/hostile"),
             INVALIDARG),
        Case("name_unpaired_low_surrogate", start(b"\x00\xdcb\0", "/hostile"), INVALIDARG),
        Case("path_unpaired_surrogate", start("x", b"/\0\x00\xd8"), INVALIDARG),
        Case("name_surrogate_pair", start("\U0001d11e clef", "/hostile"), OK),
        Case("name_empty", start("", "/hostile"), INVALIDARG),
        Case("name_with_slash", start("a/b", "/hostile"), INVALIDARG),
        Case("name_nul_inside", start(b"a\0\0\0/\0.\0.\0", "/hostile"), OK),
        Case("path_nul_inside", start("x", b"/\0h\0o\0s\0t\0i\0l\0e\0\0\0/\0.\0.\0"), OK),
        Case("name_overlong_component", start("n" * 259, "/hostile"), INVALIDARG),
        Case("path_overlong_component", start("x", "/" + "p" * 258), INVALIDARG),
        # names: escapes (the root is prepared by the test: see ROOT_LAYOUT)
        Case("name_dotdot", start("..", "/hostile"), ACCESS_DENIED),
        Case("name_dot", start(".", "/hostile"), ACCESS_DENIED),
        Case("path_dotdot", start("passwd", "/../../../../etc"), ACCESS_DENIED),
        Case("path_dotdot_inside", start("x", "/hostile/../hostile"), ACCESS_DENIED),
        Case("path_dotdot_relative", start("x", "../outside"), ACCESS_DENIED),
        Case("path_absolute", start("passwd", "/etc", flags=OW), PATH_NOT_FOUND),
        Case("path_absolute_double_slash", start("passwd", "//etc", flags=OW), PATH_NOT_FOUND),
        Case("path_absolute_created_inside", start("x", "/var/spool/cron"), OK),
        Case("path_backslashes", start("x", "..\\..\\etc", flags=OW), PATH_NOT_FOUND),
        Case("path_windows_drive", start("x", "C:\\Windows\\System32", flags=OW),
             PATH_NOT_FOUND),
        Case("path_symlink_outside", start("x", "/out"), ACCESS_DENIED),
        Case("path_symlink_outside_deeper", start("x", "/out/sub/deeper"), ACCESS_DENIED),
        Case("path_symlink_up", start("x", "/up"), ACCESS_DENIED),
        Case("path_symlink_to_slash", start("passwd", "/rootlink/etc"), ACCESS_DENIED),
        Case("path_symlink_inside", start("x", "/in"), OK),
        Case("path_through_a_file", start("x", "/exists.txt", flags=OW), PATH_NOT_FOUND),
        Case("target_symlink_no_force", start("outlink", "/", flags=CP), EXISTS),
        Case("target_symlink_force", start("outlink", "/"), OK),
        Case("target_directory", start("adir", "/", flags=CP), EXISTS),
        Case("target_directory_force", start("adir", "/"), ACCESS_DENIED),
        Case("target_exists_no_force", start("exists.txt", "/", flags=CP), EXISTS),
        # WRITE and COMPLETE against an open copy of 100 bytes
        Case("write_size_above_fragment", write(0, DATA_FRAGMENT + 1), INVALIDARG, "copying"),
        Case("write_size_max", write(0, 0xFFFFFFFF), INVALIDARG, "copying"),
        Case("write_beyond_file_size", write(100, 1), INVALIDARG, "copying"),
        Case("write_offset_max", write((1 << 64) - 1, 1), INVALIDARG, "copying"),
        Case("write_body_short", write(0, 100, data_len=50), INVALIDARG, "copying"),
        Case("write_header_cut", message(IcMsgType.FCOPY, codec.build_fcopy_header(
            Operation.WRITE_TO_FILE) + bytes(4)), INVALIDARG, "copying"),
        Case("write_zero_bytes_at_end", write(100, 0), OK, "copying"),
        Case("complete_incomplete", fcopy(Operation.COMPLETE_FCOPY), E_FAIL, "copying"),
        Case("start_while_copying", start("other", "/hostile"), OK, "copying"),
        Case("cancel_while_copying", fcopy(Operation.CANCEL_FCOPY), OK, "copying"),
    ]
    names = [c.name for c in cases]
    assert len(names) == len(set(names)), "duplicate case names"
    return cases


CASES: list[Case] = _cases()

CHECKED_IN = ["random_4k", "msgsize_max", "negotiate_counts_overrun", "path_dotdot",
              "name_unpaired_high_surrogate", "write_size_max"]
"""Cases also stored as ``<name>.bin`` (the payload only; the table gives the rest)."""

ROOT_LAYOUT = """\
The receiver's root for the corpus (``outside`` is a sibling of the root):
  hostile/       a directory          adir/        a directory
  exists.txt     a file               in  -> hostile      (stays inside)
  out -> ../outside (a directory outside the root)
  up  -> ..           rootlink -> /     outlink -> ../outside/secret.txt
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write (or --check) the .bin corpus files.")
    parser.add_argument("--check", action="store_true",
                        help="verify the checked-in files instead of writing them")
    args = parser.parse_args(argv)
    by_name = {case.name: case for case in CASES}
    stale = []
    for name in CHECKED_IN:
        path = HERE / f"{name}.bin"
        if args.check:
            if not path.is_file() or path.read_bytes() != by_name[name].payload:
                stale.append(path.name)
        else:
            path.write_bytes(by_name[name].payload)
    if stale:
        print(f"stale corpus files: {', '.join(stale)}; run {Path(__file__).name}",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
