"""Session traces: recording (gsi-receiver --trace), the file format, trace show, and the
pcapng export (checked with an independent reader here, and with tshark where installed)."""

from __future__ import annotations

import logging
import shutil
import socket
import struct
import subprocess
from datetime import datetime
from pathlib import Path

import pytest
import trio
from e2e_helpers import REPO, run_receiver_cli

from gsi import __version__
from gsi.testing import copy_file_sync, guest_process, open_guest
from gsi.trace import (
    Direction,
    TraceFormatError,
    TraceRecorder,
    TraceStream,
    encode_header,
    encode_record,
    parse_trace,
    read_trace,
)
from gsi.transports import connect
from host_sim import HostConnection
from host_sim.pcapng import export_pcapng
from host_sim.trace_decode import frame_direction, render_trace

TRACES = Path(__file__).parent / "traces"




async def test_recorded_bytes_equal_what_was_sent(tmp_path: Path) -> None:
    """Bytes sent in odd pieces (a message split across sends, several in one): the
    trace holds exactly what each side sent, in order, then both ends of stream."""
    traces = tmp_path / "traces"
    traces.mkdir()
    host = HostConnection()
    messages = [host.negotiate(),
                host.start_copy(file_name="a.bin", path_name="/", flags=0, file_size=10000),
                host.write(0, bytes(range(256)) * 24), host.write(6144, b"x" * 3856),
                host.complete()]
    sent = b"".join(messages)
    with trio.fail_after(20):
        async with open_guest(tmp_path / "root", trace=traces) as guest:
            stream = await connect(guest.url)
            received = bytearray()
            for piece in (sent[:30], sent[30:1200], sent[1200:]):
                await stream.send_all(piece)
            while len(frames := _frames(bytes(received))) < len(messages):
                data = await stream.receive_some(65536)
                assert data
                received += data
            await stream.send_eof()
            assert await stream.receive_some(10) == b""
            await stream.aclose()
            assert guest.path("/a.bin").stat().st_size == 10000
    assert len(frames) == len(messages)
    [path] = traces.glob("*.trace")
    trace = read_trace(path)
    assert trace.stream(Direction.HOST_TO_GUEST) == sent
    assert trace.stream(Direction.GUEST_TO_HOST) == bytes(received)
    assert [r.direction for r in trace.records if r.is_eof] == [Direction.HOST_TO_GUEST,
                                                               Direction.GUEST_TO_HOST]
    times = [r.t_ns for r in trace.records]
    assert times == sorted(times) and times[0] >= 0
    meta = trace.metadata
    assert meta["peer"] == "#1" and meta["listener"] == guest.url
    assert meta["receiver"] == f"gsi-receiver {__version__}"
    assert datetime.fromisoformat(meta["start_time"]).timestamp() == pytest.approx(
        meta["start_unix_ns"] / 1e9, abs=1e-3)
    assert meta["options"]["max_fragment"] == 6144
    assert trace.truncated == 0


def _frames(data: bytes) -> list[bytes]:
    out, pos = [], 0
    while pos + 8 <= len(data):
        size = 8 + struct.unpack_from("<I", data, pos + 4)[0]
        if pos + size > len(data):
            break
        out.append(data[pos:pos + size])
        pos += size
    return out


def test_one_trace_file_per_connection(tmp_path: Path) -> None:
    """A real gsi-receiver --trace: two copies, two connections, two files."""
    traces = tmp_path / "traces"
    traces.mkdir()
    src = tmp_path / "src.bin"
    src.write_bytes(b"hello" * 3000)
    with guest_process(tmp_path / "root", trace=traces) as guest:
        copy_file_sync(guest.url, src, "/one/", create_full_path=True)
        copy_file_sync(guest.url, src, "/two/", create_full_path=True)
    files = sorted(traces.glob("*.trace"))
    assert len(files) == 2
    assert [f.name.endswith(f"-00000{n}.trace") for n, f in enumerate(files, 1)] == [True] * 2
    for f in files:
        host = frame_direction(read_trace(f), Direction.HOST_TO_GUEST)
        assert len(host.messages) == 6 and host.eof and not host.tail  # NEG START 3W COMPLETE


def test_trace_option_needs_a_writable_directory(tmp_path: Path) -> None:
    result = run_receiver_cli("--root", tmp_path, "--listen", "tcp://127.0.0.1:0",
                              "--trace", tmp_path / "missing")
    assert result.returncode == 2
    assert "--trace" in result.stderr and "not a writable directory" in result.stderr


async def test_unwritable_trace_does_not_break_the_session(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The trace directory vanishes after start: the copy still works, the error is
    logged once."""
    traces = tmp_path / "traces"
    traces.mkdir()
    src = tmp_path / "src.bin"
    src.write_bytes(b"data" * 5000)
    caplog.set_level(logging.ERROR, logger="gsi.receiver")
    async with open_guest(tmp_path / "root", trace=traces) as guest:
        traces.rmdir()
        await guest.copy(src, "/")
        assert guest.path("/src.bin").read_bytes() == src.read_bytes()
    errors = [r.getMessage() for r in caplog.records if "cannot write" in r.getMessage()]
    assert len(errors) == 1


async def test_recorder_flushes_in_chunks(tmp_path: Path) -> None:
    """Past flush_bytes the records reach the file before the connection ends."""
    a, b = socket.socketpair()
    left = trio.SocketStream(trio.socket.from_stdlib_socket(a))
    right = trio.SocketStream(trio.socket.from_stdlib_socket(b))
    recorder = TraceRecorder(tmp_path, "t", {"peer": "x"}, flush_bytes=100)
    traced = TraceStream(left, recorder)
    assert isinstance(traced, trio.abc.HalfCloseableStream)
    assert not hasattr(traced, "socket")
    await right.send_all(b"a" * 10)
    assert await traced.receive_some(100) == b"a" * 10
    assert recorder.path is None  # under 100 bytes: still in memory
    await traced.send_all(b"b" * 200)
    assert await right.receive_some(1000) == b"b" * 200
    assert recorder.path is not None
    assert recorder.path.stat().st_mode & 0o777 == 0o600
    on_disk = parse_trace(recorder.path.read_bytes())
    assert [r.data for r in on_disk.records] == [b"a" * 10, b"b" * 200]
    await traced.send_eof()
    assert await right.receive_some(10) == b""
    await traced.aclose()
    await right.aclose()
    done = read_trace(recorder.path)
    assert [(r.direction, r.data) for r in done.records][-1] == (Direction.GUEST_TO_HOST, b"")


def test_format_errors(tmp_path: Path) -> None:
    good = encode_header({"a": 1}) + encode_record(Direction.HOST_TO_GUEST, 5, b"xyz")
    assert parse_trace(good).records[0].data == b"xyz"
    with pytest.raises(TraceFormatError, match="magic"):
        parse_trace(b"GSITRACX" + good[8:])
    with pytest.raises(TraceFormatError, match="version 2"):
        parse_trace(good[:8] + b"\x02\x00" + good[10:])
    with pytest.raises(TraceFormatError, match="direction 7"):
        parse_trace(good[:-16] + b"\x07" + good[-15:])
    with pytest.raises(TraceFormatError, match="JSON"):
        parse_trace(encode_header({})[:-2] + b"{x")
    cut = parse_trace(good[:-1])
    assert cut.records == [] and cut.truncated == 15


def test_show_names_every_field() -> None:
    listing = "\n".join(render_trace(read_trace(TRACES / "complete_copy.trace")))
    for text in ("flags: 1 (data)", "msgsize: 40", "icverframe: 3.0",
                 "icmsgtype: 0 (NEGOTIATE)", "icmsgtype: 7 (FCOPY)", "icmsgsize: 1088",
                 "status: 0x00000000: success", "ictransaction_id: 6",
                 "icflags: 0x03 (TRANSACTION|REQUEST)", "icflags: 0x05 (TRANSACTION|RESPONSE)",
                 "icframe_vercnt: 2", "icversion_data[2]: 1.1 (message)",
                 "operation: 0 (START_FILE_COPY)", "operation: 2 (COMPLETE_FCOPY)",
                 "service_id0: 00000000-0000-0000-0000-000000000000",
                 "file_name: 'report.bin'", "path_name: '/incoming/'",
                 "copy_flags: 0x00000002 (CREATE_PATH)", "file_size: 20000", "pad: 0",
                 "offset: 18432", "size: 1568", "padding: 4576 bytes, all zero",
                 "end of stream host->guest", "end of stream guest->host"):
        assert text in listing, text
    assert "data: 6144 bytes: " in listing
    bad = "\n".join(render_trace(read_trace(TRACES / "bad_names.trace")))
    assert "file_name: invalid (name has no NUL terminator" in bad
    assert "file_name: ''" in bad and "file_name: 'a/b'" in bad
    framing = "\n".join(render_trace(read_trace(TRACES / "framing_error.trace")))
    assert "unframed host->guest: 40 bytes" in framing and "flags 0x2" in framing
    trimmed = "\n".join(render_trace(read_trace(TRACES / "trimmed_echo.trace")))
    assert "data: 0 of 6144 bytes present" in trimmed


def test_show_cli() -> None:
    result = subprocess.run([*_host_sim(), "trace", "show", str(TRACES / "dotdot.trace")],
                            capture_output=True, text=True, cwd=REPO, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    assert "path_name: '/a/../b/'" in result.stdout
    assert "status: 0x80070005: access denied" in result.stdout


def _host_sim() -> list[str]:
    import sys

    return [sys.executable, "-m", "host_sim.cli"]


# -- pcapng ------------------------------------------------------------------------------


def _ones_sum(data: bytes) -> int:
    """One's-complement sum (a header with a right checksum sums to 0xFFFF)."""
    if len(data) % 2:
        data += b"\0"
    total = 0
    for i in range(0, len(data), 2):
        total += (data[i] << 8) | data[i + 1]
        total = (total & 0xFFFF) + (total >> 16)
    return total


def _read_pcapng(data: bytes) -> tuple[int, int, list[tuple[int, bytes]]]:
    """Independent reader: (link type, tsresol, [(timestamp, packet)])."""
    pos, linktype, tsresol, packets = 0, -1, 6, []
    while pos < len(data):
        btype, blen = struct.unpack_from("<II", data, pos)
        assert blen % 4 == 0 and struct.unpack_from("<I", data, pos + blen - 4)[0] == blen
        body = data[pos + 8:pos + blen - 4]
        if btype == 0x0A0D0D0A:
            assert struct.unpack_from("<IHH", body) == (0x1A2B3C4D, 1, 0)
        elif btype == 1:
            linktype = struct.unpack_from("<H", body)[0]
            opt = 8
            while opt < len(body):
                code, length = struct.unpack_from("<HH", body, opt)
                if code == 9:
                    tsresol = body[opt + 4]
                opt += 4 + length + (-length % 4)
        elif btype == 6:
            _, hi, lo, cap, orig = struct.unpack_from("<IIIII", body)
            assert cap == orig
            packets.append(((hi << 32) | lo, body[20:20 + cap]))
        pos += blen
    return linktype, tsresol, packets


def test_pcapng_export_reads_back(tmp_path: Path) -> None:
    trace = read_trace(TRACES / "pipelined_copy.trace")
    linktype, tsresol, packets = _read_pcapng(export_pcapng(trace))
    assert (linktype, tsresol) == (101, 9)
    streams: dict[bytes, bytearray] = {b"\x7f\x00\x00\x01": bytearray(),
                                       b"\x7f\x00\x00\x02": bytearray()}
    fins = []
    start = trace.metadata["start_unix_ns"]
    assert packets[0][0] == start
    for stamp, pkt in packets:
        assert stamp >= start
        assert pkt[0] == 0x45 and struct.unpack_from("!H", pkt, 2)[0] == len(pkt)
        assert _ones_sum(pkt[:20]) == 0xFFFF
        tcp = pkt[20:]
        pseudo = pkt[12:20] + struct.pack("!BBH", 0, 6, len(tcp))
        assert _ones_sum(pseudo + tcp) == 0xFFFF
        seq = struct.unpack_from("!I", tcp, 4)[0]
        flags = tcp[13]
        src = pkt[12:16]
        payload = tcp[20:]
        if payload:
            assert seq == (1000 if src == b"\x7f\x00\x00\x01" else 2000) + 1 + len(streams[src])
        streams[src] += payload
        if flags & 0x01:
            fins.append(src)
    assert bytes(streams[b"\x7f\x00\x00\x01"]) == trace.stream(Direction.HOST_TO_GUEST)
    assert bytes(streams[b"\x7f\x00\x00\x02"]) == trace.stream(Direction.GUEST_TO_HOST)
    assert fins == [b"\x7f\x00\x00\x01", b"\x7f\x00\x00\x02"]


def test_pcapng_splits_large_records() -> None:
    big = bytes(range(256)) * 1000  # 256000 bytes: four segments
    trace = parse_trace(encode_header({"start_unix_ns": 0})
                        + encode_record(Direction.HOST_TO_GUEST, 7, big))
    _, _, packets = _read_pcapng(export_pcapng(trace))
    data = [p[40:] for _, p in packets[3:]]
    assert [len(d) for d in data] == [65495, 65495, 65495, 59515]
    assert b"".join(data) == big


@pytest.mark.skipif(shutil.which("tshark") is None, reason="tshark is not installed")
def test_tshark_follows_the_exported_stream(tmp_path: Path) -> None:
    trace = read_trace(TRACES / "complete_copy.trace")
    out = tmp_path / "t.pcapng"
    result = subprocess.run([*_host_sim(), "trace", "export",
                             str(TRACES / "complete_copy.trace"), str(out)],
                            capture_output=True, text=True, cwd=REPO, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    follow = subprocess.run(["tshark", "-r", str(out), "-q", "-z", "follow,tcp,raw,0"],
                            capture_output=True, text=True, timeout=120, check=True).stdout
    host, guest = bytearray(), bytearray()
    for line in follow.splitlines():
        if line.startswith("\t") and line.strip():
            guest += bytes.fromhex(line.strip())
        elif line and all(c in "0123456789abcdef" for c in line):
            host += bytes.fromhex(line)
    assert bytes(host) == trace.stream(Direction.HOST_TO_GUEST)
    assert bytes(guest) == trace.stream(Direction.GUEST_TO_HOST)
