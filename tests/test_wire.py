"""The wire layer: golden bytes, layout round trips, fast codec vs construct, names."""

from __future__ import annotations

import random
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from wire_helpers import (
    FRAGMENT,
    hand_message,
    hand_name_field,
    hand_start_body,
    hand_write_body,
)

from gsi import codec, layouts
from gsi.constants import (
    GUEST_ICFLAGS,
    HOST_ICFLAGS,
    CopyFlags,
    IcMsgType,
    Operation,
    Status,
    describe_status,
    max_msgsize_for,
)
from gsi.errors import InvalidNameError, ProtocolError
from gsi.names import decode_name, encode_name
from host_sim.protocol import HostConnection

u8 = st.integers(0, 0xFF)
u16 = st.integers(0, 0xFFFF)
u32 = st.integers(0, 0xFFFFFFFF)
u64 = st.integers(0, (1 << 64) - 1)
guid = st.binary(min_size=16, max_size=16)
version = st.tuples(u16, u16)

SID0 = bytes(range(0x10, 0x20))
SID1 = bytes(range(0xA0, 0xB0))
FILE_NAME = "résumé-😀.txt"
PATH_NAME = "/home/ü/dir"
FILE_SIZE = 0x0102030405060708
WRITE_OFFSET = 0x1122334455667788
WRITE_DATA = b"hello, fcopy"


def _advance(host: HostConnection, to_tid: int) -> None:
    """Issue throwaway requests so the next transaction id is ``to_tid``."""
    for _ in range(to_tid):
        host.cancel()


# -- golden bytes ------------------------------------------------------------------


def golden_start(tid: int, *, sid0: bytes = bytes(16), sid1: bytes = bytes(16)) -> bytes:
    body = hand_start_body(file_name=FILE_NAME, path_name=PATH_NAME, copy_flags=0x3,
                           file_size=FILE_SIZE, sid0=sid0, sid1=sid1)
    return hand_message(icmsgtype=7, body=body, transaction_id=tid)


def golden_write(tid: int, *, full: bool) -> bytes:
    body = hand_write_body(offset=WRITE_OFFSET, data=WRITE_DATA,
                           full_length=FRAGMENT if full else None)
    return hand_message(icmsgtype=7, body=body, transaction_id=tid)


def test_golden_start_bytes_at_protocol_offsets() -> None:
    """The hand assembly itself, spot-checked against PROTOCOL.md offsets."""
    msg = golden_start(5, sid0=SID0, sid1=SID1)
    assert len(msg) == 8 + 20 + 1088
    assert msg[0:8] == b"\x01\x00\x00\x00" + struct.pack("<I", 1108)
    assert msg[8:12] == b"\x03\x00\x00\x00"
    assert msg[12:14] == b"\x07\x00"
    assert msg[14:18] == b"\x01\x00\x01\x00"
    assert msg[18:20] == struct.pack("<H", 1088)
    assert msg[24] == 5 and msg[25] == 0x03
    assert msg[28:32] == bytes(4)
    assert msg[32:48] == SID0 and msg[48:64] == SID1
    assert msg[64:66] == b"r\x00" and msg[66:68] == b"\xe9\x00"
    assert msg[28 + 1076:28 + 1080] == b"\x03\x00\x00\x00"
    assert msg[28 + 1080:] == bytes(range(8, 0, -1))


def test_golden_start_parses_with_construct() -> None:
    msg = golden_start(5, sid0=SID0, sid1=SID1)
    parsed = codec.parse_message(msg)
    assert parsed.pipe == {"flags": 1, "msgsize": 1108}
    assert parsed.ic.icmsgtype == IcMsgType.FCOPY
    assert parsed.ic.icverframe == {"major": 3, "minor": 0}
    assert parsed.ic.icvermsg == {"major": 1, "minor": 1}
    assert parsed.ic.icmsgsize == 1088
    assert parsed.ic.status == 0
    assert parsed.ic.ictransaction_id == 5
    assert parsed.ic.icflags == HOST_ICFLAGS
    start = layouts.hv_start_fcopy.parse(parsed.body)
    assert start.hdr.operation == Operation.START_FILE_COPY
    assert start.hdr.service_id0 == SID0 and start.hdr.service_id1 == SID1
    assert decode_name(start.file_name) == FILE_NAME
    assert decode_name(start.path_name) == PATH_NAME
    assert start.copy_flags == CopyFlags.OVER_WRITE | CopyFlags.CREATE_PATH
    assert start.file_size == FILE_SIZE
    assert codec.peek(msg) == (IcMsgType.FCOPY, 5)
    assert codec.operation_of(msg) == Operation.START_FILE_COPY


def test_golden_start_built_by_gsi() -> None:
    body = codec.build_start_body(file_name_field=encode_name(FILE_NAME),
                                  path_name_field=encode_name(PATH_NAME), copy_flags=3,
                                  file_size=FILE_SIZE, service_id0=SID0, service_id1=SID1)
    built = codec.build_message(icmsgtype=IcMsgType.FCOPY, body=body, transaction_id=5)
    assert built == golden_start(5, sid0=SID0, sid1=SID1)
    host = HostConnection()
    _advance(host, 5)
    assert host.start_copy(file_name=FILE_NAME, path_name=PATH_NAME,
                           flags=CopyFlags.OVER_WRITE | CopyFlags.CREATE_PATH,
                           file_size=FILE_SIZE) == golden_start(5)


@pytest.mark.parametrize("full", [True, False], ids=["full", "trimmed"])
def test_golden_write_parses(full: bool) -> None:
    msg = golden_write(7, full=full)
    body_len = 52 + (FRAGMENT if full else len(WRITE_DATA))
    assert len(msg) == 28 + body_len
    assert msg[28 + 40:28 + 48] == bytes.fromhex("8877665544332211")
    assert msg[28 + 48:28 + 52] == struct.pack("<I", len(WRITE_DATA))
    assert msg[80:80 + len(WRITE_DATA)] == WRITE_DATA
    parsed = codec.parse_message(msg)
    assert parsed.pipe.msgsize == 20 + body_len
    assert parsed.ic.icmsgsize == body_len
    assert parsed.ic.ictransaction_id == 7
    layout = layouts.hv_do_fcopy if full else layouts.hv_do_fcopy_trimmed
    write = layout.parse(parsed.body)
    assert write.hdr.operation == Operation.WRITE_TO_FILE
    assert write.pad == 0
    assert write.offset == WRITE_OFFSET
    assert write.size == len(WRITE_DATA)
    assert write.data[:write.size] == WRITE_DATA
    assert codec.peek(msg) == (IcMsgType.FCOPY, 7)
    assert codec.operation_of(msg) == Operation.WRITE_TO_FILE
    assert codec.write_fields(msg) == (WRITE_OFFSET, len(WRITE_DATA))


@pytest.mark.parametrize("full", [True, False], ids=["full", "trimmed"])
def test_golden_write_built_by_gsi(full: bool) -> None:
    golden = golden_write(7, full=full)
    body = codec.build_write_body(offset=WRITE_OFFSET, data=WRITE_DATA,
                                  full_length=FRAGMENT if full else None)
    assert codec.build_message(icmsgtype=IcMsgType.FCOPY, body=body,
                               transaction_id=7) == golden
    body_len = 52 + (FRAGMENT if full else len(WRITE_DATA))
    prefix = codec.pack_write_prefix(transaction_id=7, offset=WRITE_OFFSET,
                                     size=len(WRITE_DATA), body_len=body_len)
    assert prefix == golden[:80]
    assert prefix + WRITE_DATA + bytes(body_len - 52 - len(WRITE_DATA)) == golden
    host = HostConnection(full_write_body=full)
    _advance(host, 7)
    assert host.write(WRITE_OFFSET, WRITE_DATA) == golden


def test_golden_complete_cancel_built_by_host() -> None:
    host = HostConnection()
    for tid, op in enumerate((Operation.COMPLETE_FCOPY, Operation.CANCEL_FCOPY)):
        built = host.complete() if op == Operation.COMPLETE_FCOPY else host.cancel()
        body = struct.pack("<I", op) + bytes(32)
        assert built == hand_message(icmsgtype=7, body=body, transaction_id=tid)


def test_golden_negotiate_built_by_host() -> None:
    # host_sim offers framework 1.0 and 3.0, message 1.1, with icvermsg 0.0 in the header.
    host = HostConnection()
    body = struct.pack("<HHI", 2, 1, 0) + struct.pack("<HHHHHH", 1, 0, 3, 0, 1, 1)
    assert host.negotiate() == hand_message(icmsgtype=0, body=body, transaction_id=0,
                                            icvermsg=(0, 0))


def test_status_of_reads_offset_20() -> None:
    answer = hand_message(icmsgtype=7, body=b"", transaction_id=0, status=0x80070050,
                          icflags=GUEST_ICFLAGS)
    assert codec.status_of(answer) == 0x80070050


# -- construct round trips ---------------------------------------------------------


@given(flags=u32, msgsize=u32)
def test_roundtrip_pipe_hdr(flags: int, msgsize: int) -> None:
    value = {"flags": flags, "msgsize": msgsize}
    raw = layouts.vmbuspipe_hdr.build(value)
    assert raw == struct.pack("<II", flags, msgsize)
    assert layouts.vmbuspipe_hdr.parse(raw) == value


@given(frame=version, msgtype=u16, vermsg=version, icmsgsize=u16, status=u32, tid=u8,
       flags=u8, reserved=st.binary(min_size=2, max_size=2))
def test_roundtrip_icmsg_hdr(frame: tuple[int, int], msgtype: int, vermsg: tuple[int, int],
                             icmsgsize: int, status: int, tid: int, flags: int,
                             reserved: bytes) -> None:
    value = {
        "icverframe": {"major": frame[0], "minor": frame[1]}, "icmsgtype": msgtype,
        "icvermsg": {"major": vermsg[0], "minor": vermsg[1]}, "icmsgsize": icmsgsize,
        "status": status, "ictransaction_id": tid, "icflags": flags, "reserved": reserved,
    }
    raw = layouts.icmsg_hdr.build(value)
    assert raw == struct.pack("<HHHHHHIBB2s", *frame, msgtype, *vermsg, icmsgsize, status,
                              tid, flags, reserved)
    assert layouts.icmsg_hdr.parse(raw) == value


@given(framework=st.lists(version, max_size=100), message=st.lists(version, max_size=100))
def test_roundtrip_negotiate(framework: list[tuple[int, int]],
                             message: list[tuple[int, int]]) -> None:
    raw = codec.build_negotiate_body(framework, message)
    expected = struct.pack("<HHI", len(framework), len(message), 0) + b"".join(
        struct.pack("<HH", *v) for v in (*framework, *message))
    assert raw == expected
    parsed = layouts.icmsg_negotiate.parse(raw)
    assert parsed.icframe_vercnt == len(framework)
    assert parsed.icmsg_vercnt == len(message)
    versions = [(v.major, v.minor) for v in parsed.icversion_data]
    assert versions == [*framework, *message]


@given(op=u32, sid0=guid, sid1=guid)
def test_roundtrip_fcopy_hdr(op: int, sid0: bytes, sid1: bytes) -> None:
    raw = codec.build_fcopy_header(op, sid0, sid1)
    assert raw == struct.pack("<I16s16s", op, sid0, sid1)
    assert layouts.hv_fcopy_hdr.parse(raw) == {"operation": op, "service_id0": sid0,
                                               "service_id1": sid1}


@given(fname=st.binary(min_size=520, max_size=520), pname=st.binary(min_size=520, max_size=520),
       flags=u32, size=u64, sid0=guid, sid1=guid)
def test_roundtrip_start(fname: bytes, pname: bytes, flags: int, size: int, sid0: bytes,
                         sid1: bytes) -> None:
    raw = codec.build_start_body(file_name_field=fname, path_name_field=pname,
                                 copy_flags=flags, file_size=size, service_id0=sid0,
                                 service_id1=sid1)
    assert raw == struct.pack("<I16s16s520s520sIQ", 0, sid0, sid1, fname, pname, flags, size)
    parsed = layouts.hv_start_fcopy.parse(raw)
    assert parsed.hdr == {"operation": 0, "service_id0": sid0, "service_id1": sid1}
    assert (parsed.file_name, parsed.path_name) == (fname, pname)
    assert (parsed.copy_flags, parsed.file_size) == (flags, size)


def _data(size: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(size)


@given(offset=u64, size=st.integers(0, FRAGMENT), seed=st.integers(0, 2**32))
def test_roundtrip_full_write(offset: int, size: int, seed: int) -> None:
    data = _data(size, seed)
    raw = codec.build_write_body(offset=offset, data=data, full_length=FRAGMENT)
    assert raw == struct.pack("<I16s16sIQI6144s", 1, bytes(16), bytes(16), 0, offset, size, data)
    parsed = layouts.hv_do_fcopy.parse(raw)
    assert parsed.hdr.operation == Operation.WRITE_TO_FILE
    assert (parsed.pad, parsed.offset, parsed.size) == (0, offset, size)
    assert parsed.data == data + bytes(FRAGMENT - size)


@given(offset=u64, size=st.integers(0, FRAGMENT), seed=st.integers(0, 2**32))
def test_roundtrip_trimmed_write(offset: int, size: int, seed: int) -> None:
    data = _data(size, seed)
    raw = codec.build_write_body(offset=offset, data=data)
    assert len(raw) == 52 + size
    parsed = layouts.hv_do_fcopy_trimmed.parse(raw)
    assert (parsed.offset, parsed.size, parsed.data) == (offset, size, data)


def test_build_write_body_rejects_oversize_data() -> None:
    with pytest.raises(ValueError):
        codec.build_write_body(offset=0, data=bytes(10), full_length=9)


@given(msgtype=u16, tid=u8, flags=u8, status=u32, body=st.binary(max_size=300),
       frame=version, vermsg=version)
def test_roundtrip_message(msgtype: int, tid: int, flags: int, status: int, body: bytes,
                           frame: tuple[int, int], vermsg: tuple[int, int]) -> None:
    raw = codec.build_message(icmsgtype=msgtype, body=body, transaction_id=tid, icflags=flags,
                              status=status, icverframe=frame, icvermsg=vermsg)
    assert raw == hand_message(icmsgtype=msgtype, body=body, transaction_id=tid, icflags=flags,
                               status=status, icverframe=frame, icvermsg=vermsg)
    parsed = codec.parse_message(raw)
    assert parsed.pipe == {"flags": 1, "msgsize": 20 + len(body)}
    assert parsed.ic.icmsgtype == msgtype and parsed.ic.ictransaction_id == tid
    assert parsed.ic.icflags == flags and parsed.ic.status == status
    assert parsed.ic.icmsgsize == len(body)
    assert parsed.body == body
    assert codec.peek(raw) == (msgtype, tid)
    assert codec.status_of(raw) == status


def test_icmsgsize_saturates() -> None:
    assert codec.icmsgsize_for(0xFFFF) == 0xFFFF
    assert codec.icmsgsize_for(0x10000 + 52) == 0xFFFF
    raw = codec.build_message(icmsgtype=7, body=bytes(70000), transaction_id=0)
    assert struct.unpack_from("<H", raw, 18)[0] == 0xFFFF
    assert struct.unpack_from("<I", raw, 4)[0] == 70020


# -- fast WRITE codec == construct -------------------------------------------------


@settings(max_examples=200)
@given(offset=u64, size=st.integers(0, FRAGMENT), seed=st.integers(0, 2**32), tid=u8,
       full=st.booleans())
def test_fast_write_codec_equals_construct(offset: int, size: int, seed: int, tid: int,
                                           full: bool) -> None:
    data = _data(size, seed)
    body_len = 52 + (FRAGMENT if full else size)
    fast = codec.pack_write_prefix(transaction_id=tid, offset=offset, size=size,
                                   body_len=body_len) + data + bytes(body_len - 52 - size)
    slow = codec.build_message(
        icmsgtype=IcMsgType.FCOPY, transaction_id=tid,
        body=codec.build_write_body(offset=offset, data=data,
                                    full_length=FRAGMENT if full else None))
    assert fast == slow
    parsed = codec.parse_message(fast)
    layout = layouts.hv_do_fcopy if full else layouts.hv_do_fcopy_trimmed
    write = layout.parse(parsed.body)
    assert codec.peek(fast) == (parsed.ic.icmsgtype, parsed.ic.ictransaction_id)
    assert codec.operation_of(fast) == write.hdr.operation == Operation.WRITE_TO_FILE
    assert codec.write_fields(fast) == (write.offset, write.size) == (offset, size)
    assert fast[codec.WRITE_DATA_OFFSET:codec.WRITE_DATA_OFFSET + size] == data


@given(tid=u8, offset=u64, size=st.integers(0, 70000), frame=version, vermsg=version)
def test_fast_prefix_equals_construct_header(tid: int, offset: int, size: int,
                                             frame: tuple[int, int],
                                             vermsg: tuple[int, int]) -> None:
    """Same for any fragment size and negotiated versions (prefix only, no data)."""
    body_len = 52 + size
    fast = codec.pack_write_prefix(transaction_id=tid, offset=offset, size=size,
                                   body_len=body_len, icverframe=frame, icvermsg=vermsg)
    head = layouts.vmbuspipe_hdr.build({"flags": 1, "msgsize": 20 + body_len})
    ic = layouts.icmsg_hdr.build({
        "icverframe": {"major": frame[0], "minor": frame[1]}, "icmsgtype": 7,
        "icvermsg": {"major": vermsg[0], "minor": vermsg[1]},
        "icmsgsize": min(body_len, 0xFFFF), "status": 0, "ictransaction_id": tid,
        "icflags": HOST_ICFLAGS, "reserved": b"\0\0"})
    write = layouts.hv_do_fcopy_trimmed.build({
        "hdr": {"operation": 1, "service_id0": bytes(16), "service_id1": bytes(16)},
        "pad": 0, "offset": offset, "size": 0, "data": b""})
    assert fast[:76] == head + ic + write[:48]
    assert fast[76:80] == struct.pack("<I", size)


# -- names -------------------------------------------------------------------------

_name_char = st.one_of(
    st.characters(exclude_categories=["Cs"], exclude_characters="\x00"),
    st.characters(min_codepoint=0x10000, max_codepoint=0x10FFFF),
)


def _units(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


def _fit(text: str, limit: int = 259) -> str:
    while _units(text) > limit:
        text = text[:-1]
    return text


@settings(max_examples=300)
@given(name=st.text(_name_char, max_size=259).map(_fit))
def test_name_roundtrip(name: str) -> None:
    field = encode_name(name)
    assert len(field) == 520
    raw = name.encode("utf-16-le")
    assert field == raw + bytes(520 - len(raw))
    assert decode_name(field) == name
    assert decode_name(memoryview(field)) == name


def test_astral_name_uses_surrogate_pairs() -> None:
    field = encode_name("a😀")
    assert field[:6] == b"a\x00\x3d\xd8\x00\xde"
    assert decode_name(field) == "a😀"


@pytest.mark.parametrize("name", ["a" * 259, "a" * 257 + "😀", "😀" * 129 + "b"])
def test_name_of_exactly_259_units(name: str) -> None:
    assert _units(name) == 259
    field = encode_name(name)
    assert field[-2:] == b"\x00\x00"
    assert decode_name(field) == name


@pytest.mark.parametrize("name", ["a" * 260, "a" * 258 + "😀", "😀" * 130, "x" * 1000])
def test_encode_name_rejects_too_long(name: str) -> None:
    with pytest.raises(InvalidNameError) as info:
        encode_name(name)
    assert info.value.status_hint == Status.INVALIDARG


@pytest.mark.parametrize("name", ["a\x00b", "\x00", "\ud800", "x\udc00y", "\udfff\ud800"])
def test_encode_name_rejects_nul_and_lone_surrogates(name: str) -> None:
    with pytest.raises(InvalidNameError) as info:
        encode_name(name)
    assert isinstance(info.value, ProtocolError)
    assert info.value.status_hint == 0x80070057


def _decode_error(field: bytes) -> InvalidNameError:
    with pytest.raises(InvalidNameError) as info:
        decode_name(field)
    assert info.value.status_hint == 0x80070057
    return info.value


def test_decode_name_without_nul() -> None:
    _decode_error(b"a\x00" * 260)
    _decode_error("😀".encode("utf-16-le") * 130)


@pytest.mark.parametrize("units", [
    b"\x00\xd8",                  # lone high surrogate before the NUL
    b"\x00\xdc",                  # lone low surrogate
    b"a\x00\x00\xdcb\x00",        # low surrogate in the middle
    b"\x00\xd8a\x00",             # high surrogate followed by a non-surrogate
    b"\x00\xd8\x00\xd8\x00\xdc",  # high, then a valid pair
    b"\x00\xdc\x00\xd8",          # reversed pair
])
def test_decode_name_unpaired_surrogate(units: bytes) -> None:
    _decode_error(hand_name_field(units))


@pytest.mark.parametrize("length", [0, 518, 519, 521, 1040])
def test_decode_name_wrong_field_length(length: bytes) -> None:
    _decode_error(bytes(length))


def test_decode_name_stops_at_first_nul_and_ignores_garbage_after() -> None:
    field = hand_name_field(b"a\x00b\x00\x00\x00\x00\xd8zz")
    assert decode_name(field) == "ab"
    assert decode_name(bytes(520)) == ""


def test_decode_name_nul_must_be_unit_aligned() -> None:
    # b"\x41\x00\x00\x42" holds the units U+0041 and U+4200: no NUL unit among them,
    # though two zero bytes sit side by side at an odd offset.
    field = b"\x41\x00\x00\x42" + b"b\x00" * 258
    assert len(field) == 520
    _decode_error(field)
    assert decode_name(b"\x41\x00\x00\x42" + bytes(516)) == "A\u4200"


def test_decode_name_with_nul_at_last_unit() -> None:
    field = b"a\x00" * 259 + b"\x00\x00"
    assert decode_name(field) == "a" * 259


# -- constants -----------------------------------------------------------------------


@pytest.mark.parametrize(("status", "text"), [
    (0, "0x00000000: success"),
    (0x80004005, "0x80004005: unspecified failure"),
    (0x80070050, "0x80070050: the file exists"),
    (0x80070057, "0x80070057: invalid argument"),
    (0x80070070, "0x80070070: not enough space on the disk"),
    (0x80070003, "0x80070003: the path was not found"),
    (0x80070005, "0x80070005: access denied"),
    (0x80070032, "0x80070032: the request is not supported"),
    (0x8007000E, "0x8007000E: unknown status"),
    (1, "0x00000001: unknown status"),
])
def test_describe_status(status: int, text: str) -> None:
    assert describe_status(status) == text


def test_every_status_has_a_meaning() -> None:
    for status in Status:
        assert "unknown" not in describe_status(status)


def test_max_msgsize_for() -> None:
    assert max_msgsize_for(6144) == 6216
    assert max_msgsize_for(65536) == 65608
    # Small fragments still fit a START and the largest negotiate.
    assert max_msgsize_for(1) == 20 + 1088
    with pytest.raises(ValueError):
        max_msgsize_for(0)
