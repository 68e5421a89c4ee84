"""The receiver over an emulated vmbus channel, in this process: the exact ring bytes of
its answers, the channel's rules, flow control and the emulated channel's files.

Every expected packet here is assembled by hand from PROTOCOL.md sections 3 and 7 with
``struct``, not with the project's codec.
"""

from __future__ import annotations

import math
import os
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio

from gsi.constants import CopyFlags, Status
from gsi.errors import CopyFailed, SinkError
from gsi.fake_sink import MemorySink
from gsi.protocol import GuestConnection
from gsi.server import Receiver, ReceiverConfig
from gsi.session import Session
from gsi.transports import TransportError, connect, listener_url, open_listeners
from gsi.vmbus import RingStream, attach_host_channel, create_guest_channel
from gsi.vmbus.emu import WATCHDOG_INTERVAL
from host_sim import HostClient, open_host
from host_sim.vmbus_emu import EmulatedHost, attach_emulated_host

ALL_ONES = 0xFFFF_FFFF_FFFF_FFFF
DATA_AREA = 4096  # the data area starts after the 4096-byte control page


# --- hand assembly -----------------------------------------------------------------


def message(msgtype: int, body: bytes, *, tid: int, vermsg: tuple[int, int] = (1, 1),
            icmsgsize: int | None = None) -> bytes:
    """pipe header + icmsg_hdr (host flags 0x03) + body."""
    size = len(body) if icmsgsize is None else icmsgsize
    icmsg = struct.pack("<HHHHHHIBB2s", 3, 0, msgtype, *vermsg, size, 0, tid, 0x03, b"\0\0")
    return struct.pack("<II", 1, 20 + len(body)) + icmsg + body


def answered(request: bytes | bytearray, status: int = 0) -> bytearray:
    """The request with status (offset 20) and icflags 0x05 (offset 25)."""
    out = bytearray(request)
    struct.pack_into("<I", out, 20, status)
    out[25] = 0x05
    return out


def ring_packet(payload: bytes, *, start: int) -> bytes:
    """What the Linux daemon writes for an answer: type 6, offset8 2, len8, flags 0,
    trans_id all ones, the payload zero-padded to 8, trailer ``start << 32``."""
    padded = (len(payload) + 7) // 8 * 8
    return (struct.pack("<HHHHQ", 6, 2, (16 + padded) // 8, 0, ALL_ONES) + payload
            + bytes(padded - len(payload)) + struct.pack("<Q", start << 32))


def name_field(name: str) -> bytes:
    return name.encode("utf-16-le").ljust(520, b"\0")


def start_body(file_name: str, path_name: str, flags: int, size: int) -> bytes:
    return struct.pack("<I16s16s520s520sIQ", 0, b"", b"", name_field(file_name),
                       name_field(path_name), flags, size)


def write_body(offset: int, data: bytes, *, full: int = 0) -> bytes:
    return struct.pack("<I16s16sIQI", 1, b"", b"", 0, offset, len(data)) + data.ljust(full,
                                                                                    b"\0")


COMPLETE_BODY = struct.pack("<I16s16s", 2, b"", b"")
CANCEL_BODY = struct.pack("<I16s16s", 3, b"", b"")


# --- an in-process receiver over an emulated channel ------------------------------------


@asynccontextmanager
async def emulated_guest(tmp_path: Path, ring_size: int = 0x4000,
                         **config: object) -> AsyncIterator[tuple[str, Path, Receiver]]:
    root = tmp_path / "root"
    root.mkdir(exist_ok=True)
    listeners = await open_listeners(f"vmbus-emu://{tmp_path}/ring?ring_size={ring_size:#x}")
    receiver = Receiver(ReceiverConfig(root=root, fsync=False, **config))  # type: ignore[arg-type]
    async with trio.open_nursery() as nursery:
        await nursery.start(receiver.serve, listeners)
        try:
            yield listener_url(listeners[0]), root, receiver
        finally:
            nursery.cancel_scope.cancel()


async def exchange(host: EmulatedHost, request: bytes, **send: int) -> tuple[int, bytes]:
    """Send one request, return (where the answer starts in the TX ring, its raw bytes)."""
    await host.send(request, **send)
    raw = await host.receive()
    return raw.start, raw.raw


NEGOTIATE = message(0, struct.pack("<HHI", 2, 2, 0x11223344)
                    + struct.pack("<8H", 1, 0, 3, 0, 1, 0, 1, 1), tid=7, vermsg=(0, 0))


# --- byte-level answers --------------------------------------------------------------


@pytest.mark.parametrize("busy_poll", [0, 300])
async def test_answer_bytes_match_the_linux_daemon(tmp_path: Path, busy_poll: int) -> None:
    """The same bytes whether the receiver sleeps at once or first reads the ring's
    indices for a while (--busy-poll, interrupts still masked)."""
    with trio.fail_after(20):
        async with emulated_guest(tmp_path, busy_poll=busy_poll) as (url, root, _), \
                attach_emulated_host(url) as host:
            # NEGOTIATE, 4 bytes after the message (the guest sees them as padding):
            # counts 1/1, versions[0..1] = 3.0 and 1.1, icmsgsize 0x10, the rest echoed
            # (reserved, versions[2..3], the 4 bytes), like vmbus_prep_negotiate_resp.
            tail = b"\xaa\xbb\xcc\xdd"
            start, raw = await exchange(host, NEGOTIATE + tail, trans_id=0x0123456789ABCDEF,
                                        flags=1)
            expected = answered(NEGOTIATE)
            struct.pack_into("<H", expected, 18, 0x10)
            struct.pack_into("<HH", expected, 28, 1, 1)
            struct.pack_into("<4H", expected, 36, 3, 0, 1, 1)
            assert start == 0
            assert raw == ring_packet(bytes(expected) + tail, start=0)
            assert raw[16 + 36:16 + 44] == struct.pack("<4H", 3, 0, 1, 1)

            # START: 1116-byte payload, padded to 1120 in the ring; answered 0.
            start_req = message(7, start_body("small.bin", "/", 0, 5), tid=8)
            start, raw = await exchange(host, start_req)
            assert start == 80  # 16 + 56 + 8
            assert raw == ring_packet(bytes(answered(start_req)), start=80)

            # WRITE trimmed to 52 + 5 bytes: 85 bytes, 3 padding bytes echoed.
            write_req = message(7, write_body(0, b"hello"), tid=9)
            start, raw = await exchange(host, write_req)
            assert start == 1224  # 80 + 16 + 1120 + 8
            assert len(raw) == 16 + 88 + 8
            assert raw == ring_packet(bytes(answered(write_req)), start=1224)

            complete = message(7, COMPLETE_BODY, tid=10)
            start, raw = await exchange(host, complete)
            assert (start, raw) == (1336, ring_packet(bytes(answered(complete)), start=1336))
            assert (root / "small.bin").read_bytes() == b"hello"

            # Full-length WRITEs (6224-byte payloads, 6248 ring bytes): the second answer
            # starts at 8816 and wraps around the end of the 12288-byte data area.
            start_req = message(7, start_body("big.bin", "/", 0, 12288), tid=11)
            start, _ = await exchange(host, start_req)
            assert start == 1424  # 1336 + 16 + 64 + 8
            data = bytes(range(256)) * 48
            for n, (offset, expected_start) in enumerate(((0, 2568), (6144, 8816))):
                write_req = message(7, write_body(offset, data[offset:offset + 6144]),
                                    tid=12 + n)
                assert len(write_req) == 6224
                start, raw = await exchange(host, write_req)
                assert start == expected_start
                assert raw == ring_packet(bytes(answered(write_req)), start=expected_start)
            assert host.rings.rx.read_index == (8816 + 6248) % 12288 == 2776
            # The same bytes, read straight from the shared file: the wrap is real.
            image = (tmp_path / "ring").read_bytes()
            area = image[DATA_AREA:0x4000]
            assert area[8816:] + area[:2776] == raw
            await exchange(host, message(7, COMPLETE_BODY, tid=14))
            assert (root / "big.bin").read_bytes() == data
            assert host.peek_raw() is None  # one answer each, no completion packets


async def test_a_trimmed_write_echo_is_not_padded_with_the_data(tmp_path: Path) -> None:
    with trio.fail_after(20):
        async with emulated_guest(tmp_path, trim_write_echo=True) as (url, _, _), \
                attach_emulated_host(url) as host:
            await exchange(host, NEGOTIATE)
            await exchange(host, message(7, start_body("t.bin", "/", 0, 6144), tid=50))
            write_req = message(7, write_body(0, b"z" * 6144), tid=51)
            start, raw = await exchange(host, write_req)
            expected = answered(write_req[:80])  # 8 + 20 + the 52-byte WRITE header
            struct.pack_into("<I", expected, 4, 72)  # msgsize
            struct.pack_into("<H", expected, 18, 52)  # icmsgsize
            assert raw == ring_packet(bytes(expected), start=start)


async def test_malformed_packets_get_answers_in_order(tmp_path: Path) -> None:
    with trio.fail_after(20):
        async with emulated_guest(tmp_path) as (url, _, _), attach_emulated_host(url) as host:
            await exchange(host, NEGOTIATE)
            # pipe flags 2: not a message; answered 0x80004005 with the whole payload.
            bad = bytearray(message(7, COMPLETE_BODY, tid=20))
            bad[0] = 2
            _, raw = await exchange(host, bytes(bad))
            assert raw[16:16 + 64] == answered(bad, 0x80004005)
            # msgsize beyond the packet: the same.
            bad = bytearray(message(7, COMPLETE_BODY, tid=21))
            struct.pack_into("<I", bad, 4, 500)
            _, raw = await exchange(host, bytes(bad))
            assert raw[16:16 + 64] == answered(bad, 0x80004005)
            # Too short to answer (dropped), a packet that is not in-band data
            # (skipped): the next answer is the next request's.
            await host.send(b"\x02\0\0\0\0\0\0\0")
            await host.send(message(7, COMPLETE_BODY, tid=22), packet_type=7)
            _, raw = await exchange(host, message(7, CANCEL_BODY, tid=23))
            assert raw[16 + 24] == 23 and struct.unpack_from("<I", raw, 16 + 20) == (0,)
            assert host.peek_raw() is None


async def test_the_pipe_header_is_not_relied_on(tmp_path: Path) -> None:
    """On the ring the packet frames the message (PROTOCOL.md section 7): a copy whose
    pipe headers say nothing sensible (flags 0, msgsize 3) is served all the same, and
    each answer echoes the header as it came."""
    def bogus(request: bytes) -> bytes:
        return struct.pack("<II", 0, 3) + request[8:]

    with trio.fail_after(20):
        async with emulated_guest(tmp_path) as (url, root, _), \
                attach_emulated_host(url) as host:
            for request in (NEGOTIATE, message(7, start_body("p.bin", "/", 0, 3), tid=60),
                            message(7, write_body(0, b"xyz"), tid=61),
                            message(7, COMPLETE_BODY, tid=62)):
                _, raw = await exchange(host, bogus(request))
                assert struct.unpack_from("<I", raw, 16 + 20) == (0,)
                assert raw[16:24] == struct.pack("<II", 0, 3)
            assert (root / "p.bin").read_bytes() == b"xyz"


async def test_a_new_session_replays_the_negotiation(tmp_path: Path) -> None:
    """A message above the framing maximum ends the session; its request is answered
    0x80004005, and the next session accepts FCOPY without a new NEGOTIATE from the host
    (its core resumes the one the channel accepted)."""
    with trio.fail_after(20):
        async with emulated_guest(tmp_path) as (url, root, receiver), \
                attach_emulated_host(url) as host:
            await exchange(host, NEGOTIATE)
            huge = message(7, write_body(0, b"", full=7000), tid=30)  # msgsize > maximum
            _, raw = await exchange(host, huge)
            assert raw[16:16 + 28] == answered(huge, 0x80004005)[:28]
            start_req = message(7, start_body("after.bin", "/", 0, 3), tid=31)
            _, raw = await exchange(host, start_req)
            assert struct.unpack_from("<I", raw, 16 + 20) == (0,)
            await exchange(host, message(7, write_body(0, b"abc"), tid=32))
            _, raw = await exchange(host, message(7, COMPLETE_BODY, tid=33))
            assert struct.unpack_from("<I", raw, 16 + 20) == (0,)
            assert (root / "after.bin").read_bytes() == b"abc"
            assert receiver.stats.connections == 2


async def test_idle_timeout_keeps_the_channel(tmp_path: Path,
                                              autojump_clock: trio.testing.MockClock) -> None:
    # The receiver's startup sweep runs in a worker thread, which autojump would take for
    # idleness (and jump to the fail_after deadline): no autojump until it listens.
    autojump_clock.autojump_threshold = math.inf
    with trio.fail_after(600):
        async with emulated_guest(tmp_path, idle_timeout=5) as (url, root, receiver), \
                attach_emulated_host(url) as host:
            autojump_clock.autojump_threshold = 0
            client = host.client()
            await client.negotiate()
            autojump_clock.autojump_threshold = 0
            while receiver.stats.connections < 2:  # the idle session ended, a new one began
                await trio.sleep(1)  # virtual time
            # From here on real time: the copy reads its source in a worker thread, which
            # autojump would take for idleness.
            autojump_clock.autojump_threshold = math.inf
            autojump_clock.rate = 1.0
            result = await client.copy_file(_source(tmp_path, b"x" * 10), "/")
            assert result.size == 10 and (root / "src.bin").read_bytes() == b"x" * 10


def _source(tmp_path: Path, data: bytes, name: str = "src.bin") -> Path:
    path = tmp_path / "src" / name
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(data)
    return path


async def test_graceful_shutdown_keeps_the_channel_for_an_open_copy(tmp_path: Path) -> None:
    with trio.fail_after(20):
        async with emulated_guest(tmp_path, grace_period=15) as (url, root, receiver), \
                attach_emulated_host(url) as host:
            await exchange(host, NEGOTIATE)
            await exchange(host, message(7, start_body("open.bin", "/", 0, 5), tid=40))
            receiver.shutdown()  # a copy is open: its session keeps the channel
            _, raw = await exchange(host, message(7, write_body(0, b"12345"), tid=41))
            assert struct.unpack_from("<I", raw, 16 + 20) == (0,)
            _, raw = await exchange(host, message(7, COMPLETE_BODY, tid=42))
            assert struct.unpack_from("<I", raw, 16 + 20) == (0,)
            while (tmp_path / "ring").exists():  # the session ends, the channel closes
                await trio.sleep(0.01)
    assert (root / "open.bin").read_bytes() == b"12345"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["root"]


# --- flow control: pipelined WRITEs fill both rings ------------------------------------


@pytest.mark.parametrize(("ring_size", "busy_poll"), [(0x4000, 0), (0x5000, 0),
                                                       (0x4000, 300)])
async def test_full_rings_both_ways(tmp_path: Path, ring_size: int, busy_poll: int) -> None:
    data = os.urandom((1 << 20) + 77)
    source = _source(tmp_path, data)
    with trio.fail_after(30):
        async with emulated_guest(tmp_path, ring_size, busy_poll=busy_poll) as (url, root, _):
            stream = await connect(url)
            assert isinstance(stream, RingStream)
            client = HostClient(stream)
            try:
                await client.copy_file(source, "/deep/", create_full_path=True, window=8)
                await client.copy_file(source, "/deep/", name="again.bin", window=3)
            finally:
                await stream.aclose()
    assert (root / "deep/src.bin").read_bytes() == data
    assert (root / "deep/again.bin").read_bytes() == data


async def test_a_disk_error_on_the_ring_fails_the_copy(tmp_path: Path) -> None:
    """On the ring every WRITE is its own message, gathered and answered before it
    reaches the sink (gsi.writer): a sink that fails makes a later WRITE or the COMPLETE
    fail with its status, every answer after that is 0x80004005, nothing is committed."""
    listeners = await open_listeners(f"vmbus-emu://{tmp_path}/ring")
    sink = MemorySink()
    statuses: list[int] = []
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:

            async def serve() -> None:
                stream = await listeners[0].accept()
                await Session(stream, sink, GuestConnection(), idle_timeout=30).run()

            nursery.start_soon(serve)
            async with open_host(listener_url(listeners[0])) as host:
                await host.negotiate()
                start = host.conn.start_copy(file_name="f", path_name="/",
                                             flags=CopyFlags(0), file_size=3 * 6144)
                assert (await host.request(start)).ok
                sink.fail["write"] = SinkError(Status.DISK_FULL, "disk full")
                for offset in (0, 6144, 2 * 6144):
                    statuses.append((await host.request(
                        host.conn.write(offset, bytes(6144)))).status)
                statuses.append((await host.request(host.conn.complete())).status)
            nursery.cancel_scope.cancel()
        await listeners[0].aclose()
    failures = [status for status in statuses if status != Status.S_OK]
    assert failures and failures[0] == Status.DISK_FULL
    assert failures[1:] == [Status.E_FAIL] * (len(failures) - 1)
    assert statuses[-1] != Status.S_OK
    assert not sink.open_copies and sink.files == {}


# --- the emulated channel's files ------------------------------------------------------


async def test_files_locks_and_errors(tmp_path: Path) -> None:
    path = tmp_path / "ring"
    url = f"vmbus-emu://{path}"
    with trio.fail_after(20):
        with pytest.raises(TransportError, match="no receiver listens"):
            await connect(url)
        async with emulated_guest(tmp_path, 0x5000):
            assert (path.stat().st_size, oct(path.stat().st_mode & 0o777)) == (0xA000, "0o600")
            with pytest.raises(TransportError, match="another receiver is listening"):
                await open_listeners(url)
            with pytest.raises(TransportError, match="made rings of 0x5000"):
                await connect(f"{url}?ring_size=0x4000")
            async with attach_emulated_host(url):
                with pytest.raises(TransportError, match="another host is attached"):
                    await connect(url)
            stream = await connect(url)  # the first host detached
            await stream.aclose()
        assert not path.exists()  # the receiver removed its files
        # Files of a receiver that died: a host is told, a new receiver replaces them.
        os.mkfifo(f"{path}.to-guest")
        os.mkfifo(f"{path}.to-host")
        path.write_bytes(bytes(0x8000))
        with pytest.raises(TransportError, match="left from one that is gone"):
            await connect(url)
        async with emulated_guest(tmp_path):
            assert path.stat().st_size == 0x8000
        # Anything else at the path is never replaced.
        path.write_bytes(b"precious")
        with pytest.raises(TransportError, match="refusing to replace"):
            await open_listeners(url)
        assert path.read_bytes() == b"precious"


async def test_a_host_notices_the_receiver_is_gone(tmp_path: Path) -> None:
    with trio.fail_after(20):
        async with emulated_guest(tmp_path) as (url, _, _):
            host = await connect(url)
        client = HostClient(host)  # the receiver stopped before the request
        try:
            with pytest.raises(CopyFailed, match="receiver is gone"):
                await client.negotiate()
        finally:
            await host.aclose()


async def test_a_host_wait_wakes_on_its_timer_and_checks_the_receiver(
        tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    """With no signal, the host's timer (one system task per channel, not a cancel scope
    per wait) wakes a waiting host within an interval; the watchdog runs after waking."""
    path = str(tmp_path / "ring")
    guest = create_guest_channel(path)
    host = attach_host_channel(path)
    try:
        for _ in range(3):  # nobody signals: each wait returns on the timer's kick
            with trio.fail_after(WATCHDOG_INTERVAL * 1.5):
                await host.wait()
        assert host.broken is None and host.rings.rx.bytes_available_to_read() == 0
        guest.close()  # the receiver is gone: its lock is released
        with pytest.raises(trio.BrokenResourceError, match="receiver is gone"):
            with trio.fail_after(WATCHDOG_INTERVAL * 3):
                while True:
                    await host.wait()
    finally:
        host.close()
        guest.close()


async def test_the_host_end_hands_out_messages_without_padding_in_any_sizes(
        tmp_path: Path) -> None:
    path = str(tmp_path / "ring")
    guest = create_guest_channel(path)
    stream = RingStream(attach_host_channel(path), owns_channel=True)
    first = message(0, b"abc", tid=1)  # 31 bytes: the ring pads it to 32
    second = message(0, b"0123456789abcdef", tid=2)  # 44 bytes, no padding
    try:
        with trio.fail_after(5):
            assert guest.try_write(first)
            guest.flush_signal()
            assert await stream.receive_some() == first  # one message: as it came
            assert guest.try_write(first) and guest.try_write(second + b"\xee" * 4)
            guest.flush_signal()
            assert await stream.receive_some(10) == first[:10]
            assert await stream.receive_some(100) == first[10:] + second
    finally:
        await stream.aclose()
        guest.close()


def _leaves(group: BaseExceptionGroup[TransportError]) -> list[TransportError]:
    return [e for e in group.exceptions if isinstance(e, TransportError)] + [
        leaf for e in group.exceptions if isinstance(e, BaseExceptionGroup)
        for leaf in _leaves(e)]


async def test_a_corrupt_ring_stops_the_receiver(tmp_path: Path) -> None:
    """The session ends, and the listener refuses to hand out a broken channel: the
    receiver stops (systemd restarts it, and reopening the device resets the rings)."""
    root = tmp_path / "root"
    root.mkdir()
    listeners = await open_listeners(f"vmbus-emu://{tmp_path}/ring")
    receiver = Receiver(ReceiverConfig(root=root, fsync=False))
    failures: list[TransportError] = []
    with trio.fail_after(20):
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(receiver.serve, listeners)
                async with attach_emulated_host(listener_url(listeners[0])) as host:
                    await exchange(host, NEGOTIATE)
                    host.rings.tx.write_index += 4  # misaligned: not a multiple of 8
                    host.channel.signal_peer()
        except* TransportError as group:
            failures.extend(_leaves(group))
    assert len(failures) == 1 and "the channel is broken" in str(failures[0])
    assert "corrupt RX ring" in str(failures[0])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["root"]


async def test_debug_log_shows_every_packet(tmp_path: Path,
                                            caplog: pytest.LogCaptureFixture) -> None:
    with trio.fail_after(20), caplog.at_level("DEBUG", logger="gsi.vmbus"):
        async with emulated_guest(tmp_path) as (url, _, _), attach_emulated_host(url) as host:
            await exchange(host, NEGOTIATE, trans_id=0x42, flags=1)
    lines = [r.getMessage() for r in caplog.records if "packet" in r.getMessage()]
    assert any("packet in: type 6, flags 0x1, trans_id 0x42, 56 payload bytes, pipe "
               "(flags, msgsize) (1, 44), icmsgtype 0, status 0x00000000" in m for m in lines)
    assert any("packet out: type 6, flags 0x0, trans_id 0xffffffffffffffff, 56 payload "
               "bytes" in m for m in lines)
