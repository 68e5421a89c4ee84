"""The host's pipelined sender over real sockets: SHA-256-checked copies into a real
receiver at window 64, stop-and-wait byte for byte as ``HostConnection.write`` builds it,
failure answers and lost connections, sends that wait for room while answers pile up, a
source that cannot be mapped (read into slots, with or without ``os.preadv``) or shrinks."""

from __future__ import annotations

import hashlib
import os
import random
import socket
from pathlib import Path

import pytest
import trio

from gsi.constants import CopyFlags, Status
from gsi.errors import CopyFailed
from gsi.events import NEED_DATA, Negotiate, Rejected, RequestEvent, WriteData
from gsi.framing import Framer
from gsi.protocol import GuestConnection
from gsi.testing import open_guest
from gsi.transports import listener_url, open_listeners
from host_sim import sender
from host_sim.client import copy_vm_file, open_host
from host_sim.protocol import Answer, HostConnection
from host_sim.sender import _Chunk, _populate, map_source, read_slots


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize(("frag", "size", "full_body"), [
    (6144, 64 * 6144 * 5 + 1000, True),
    (6144, 3 << 20, False),
    (65536, 5 * 65536 + 1, True),
    (1, 3000, True),
])
async def test_window_64_copy_arrives_whole(tmp_path: Path, frag: int, size: int,
                                            full_body: bool) -> None:
    data = random.Random(size).randbytes(size)
    source = tmp_path / "source.bin"
    source.write_bytes(data)
    seen: list[int] = []
    async with open_guest(tmp_path / "root", max_fragment=65536) as guest:
        with trio.fail_after(30):
            async with open_host(guest.url, fragment_size=frag,
                                 full_write_body=full_body) as host:
                result = await host.copy_file(source, "/in", create_full_path=True,
                                              window=64,
                                              progress=lambda done, _: seen.append(done))
                assert host.conn.in_flight == 0
        assert sha256(guest.path("/in/source.bin").read_bytes()) == sha256(data)
    assert result.size == size
    assert seen == sorted(seen) and seen[-1] == size


class Recorder:
    """A guest on a real Unix socket: the real guest core answers, every request is
    recorded as received, and WRITE number ``fail_write`` (from 0) gets ``status``."""

    def __init__(self, fail_write: int | None = None, status: int = Status.S_OK,
                 close_at_write: int | None = None) -> None:
        self.requests: list[bytes] = []
        self.fail_write, self.status, self.close_at_write = fail_write, status, close_at_write

    async def serve(self, stream: trio.abc.Stream) -> None:
        framer, guest, writes = Framer(1 << 20), GuestConnection(max_fragment=65536), 0
        async with stream:
            while data := await stream.receive_some(1 << 16):
                framer.feed(data)
                out = bytearray()
                while (message := framer.next_message()) is not None:
                    self.requests.append(message)
                    guest.receive_data(message)
                    while (event := guest.next_event()) is not NEED_DATA:
                        assert isinstance(event, RequestEvent)
                        status: int | None = Status.S_OK
                        if isinstance(event, Negotiate | Rejected):
                            status = None
                        elif isinstance(event, WriteData):
                            if writes == self.close_at_write:
                                return
                            if writes == self.fail_write:
                                status = self.status
                            writes += 1
                        out += guest.answer(event, status)
                try:
                    await stream.send_all(out)
                except trio.BrokenResourceError:  # the host gave up after a failure
                    return


async def serve(recorder: Recorder, where: Path | str, nursery: trio.Nursery, *,
                send_buffer: int | None = None) -> str:
    """Serve one connection on a Unix socket at ``where`` (or the URL ``where``), its
    SO_SNDBUF set to ``send_buffer``; returns the URL."""
    listeners = await open_listeners(where if isinstance(where, str) else f"unix://{where}")

    async def accept_one() -> None:
        stream = await listeners[0].accept()
        if send_buffer is not None:
            stream.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, send_buffer)
        await recorder.serve(stream)

    nursery.start_soon(accept_one)
    return listener_url(listeners[0])


async def recorded_copy(tmp_path: Path, data: bytes, where: Path | str, *, window: int,
                        full_body: bool = True, send_buffer: int | None = None,
                        timeout: float = 30) -> list[bytes]:
    """Copy ``data`` as /d/file.bin with host-sim into a recording guest at ``where``;
    the requests it received. ``send_buffer``: SO_SNDBUF on both ends."""
    source = tmp_path / "file.bin"
    source.write_bytes(data)
    recorder = Recorder()
    with trio.fail_after(timeout):
        async with trio.open_nursery() as nursery:
            url = await serve(recorder, where, nursery, send_buffer=send_buffer)
            async with open_host(url, full_write_body=full_body) as host:
                if send_buffer is not None:
                    host.stream.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, send_buffer)
                await host.copy_file(source, "/d", window=window)
    return recorder.requests


@pytest.mark.parametrize("full_body", [True, False], ids=["full", "trimmed"])
async def test_stop_and_wait_sends_what_write_builds(tmp_path: Path, full_body: bool) -> None:
    data = random.Random(7).randbytes(5 * 6144 + 77)
    requests = await recorded_copy(tmp_path, data, tmp_path / "g.sock", window=1,
                                   full_body=full_body, timeout=20)
    twin = HostConnection(full_write_body=full_body)
    expected = [twin.negotiate(),
                twin.start_copy(file_name="file.bin", path_name="/d", flags=CopyFlags.NONE,
                                file_size=len(data))]
    expected += [twin.write(off, data[off:off + 6144]) for off in range(0, len(data), 6144)]
    expected.append(twin.complete())
    assert requests == expected


async def test_a_failure_answer_ends_the_copy(tmp_path: Path) -> None:
    source = tmp_path / "file.bin"
    source.write_bytes(bytes(200 * 6144))
    recorder = Recorder(fail_write=70, status=Status.DISK_FULL)
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            url = await serve(recorder, tmp_path / "g.sock", nursery)
            with pytest.raises(CopyFailed, match="WRITE refused") as caught:
                await copy_vm_file(url, source, "/d", window=64)
    assert caught.value.status == Status.DISK_FULL


async def test_a_guest_that_closes_mid_copy(tmp_path: Path) -> None:
    source = tmp_path / "file.bin"
    source.write_bytes(bytes(200 * 6144))
    recorder = Recorder(close_at_write=100)
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            url = await serve(recorder, tmp_path / "g.sock", nursery)
            with pytest.raises(CopyFailed, match=r"closed the connection|connection lost"):
                await copy_vm_file(url, source, "/d", window=64)


@pytest.mark.parametrize("preadv", [True, False], ids=["preadv", "readinto"])
async def test_copy_of_a_source_that_is_not_mapped(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch,
                                                   preadv: bool) -> None:
    """Where the source cannot be mapped (not Linux) it is read into the message slots;
    where ``os.preadv`` does not exist either (Windows), slot by slot."""
    monkeypatch.setattr(sender.sys, "platform", "win32")
    if not preadv:
        monkeypatch.delattr(os, "preadv", raising=False)
    data = random.Random(3).randbytes(300 * 6144 + 5)
    source = tmp_path / "source.bin"
    source.write_bytes(data)
    async with open_guest(tmp_path / "root") as guest:
        with trio.fail_after(30):
            await copy_vm_file(guest.url, source, "/", window=64)
        assert guest.path("/source.bin").read_bytes() == data


@pytest.mark.parametrize("preadv", [True, False], ids=["preadv", "readinto"])
def test_a_source_that_shrank(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                              preadv: bool) -> None:
    if not preadv:
        monkeypatch.delattr(os, "preadv", raising=False)
    source = tmp_path / "source.bin"
    source.write_bytes(b"x" * 250)
    stride = 80 + 100
    chunk = _Chunk(bytearray(3 * stride), offset=0, count=3, last=100)
    with source.open("rb", buffering=0) as f, pytest.raises(CopyFailed, match="1050 bytes"):
        read_slots(f, chunk, stride, 100, 1300)  # the file was to hold 1300 bytes
    chunk = _Chunk(bytearray(b"\xee" * 3 * stride), offset=0, count=3, last=50)
    with source.open("rb", buffering=0) as f:
        read_slots(f, chunk, stride, 100, 250)
    assert [bytes(chunk.buf[i * stride + 80:i * stride + 180]) for i in range(2)] == [
        b"x" * 100] * 2
    assert chunk.buf[2 * stride + 80:2 * stride + 130] == b"x" * 50
    assert chunk.buf[:80] == b"\xee" * 80  # headers are not the reader's


async def test_answers_checked_in_place_count_as_answers(tmp_path: Path) -> None:
    """The client's own answer loop after the data phase sees a clean connection."""
    source = tmp_path / "a.bin"
    source.write_bytes(random.Random(9).randbytes(100 * 6144))
    async with open_guest(tmp_path / "root") as guest, open_host(guest.url) as host:
        with trio.fail_after(30):
            for name in ("a", "b", "c"):
                await host.copy_file(source, "/", name=name, window=64, force=True)
                answer = await host.request(host.conn.cancel())  # no copy open now
                assert isinstance(answer, Answer) and answer.transaction_id is not None
        assert guest.path("/c").read_bytes() == source.read_bytes()


async def test_a_source_that_shrinks_during_the_copy(tmp_path: Path) -> None:
    """At most three buffers are read ahead: cut to 1 MiB after the first answer, a
    10 MiB source ends before the reader does."""
    source = tmp_path / "source.bin"
    source.write_bytes(bytes(10 << 20))

    def shrink(done: int, size: int) -> None:
        if source.stat().st_size == size:
            os.truncate(source, 1 << 20)

    async with open_guest(tmp_path / "root") as guest:
        with trio.fail_after(30), pytest.raises(CopyFailed, match="shrank"):
            await copy_vm_file(guest.url, source, "/", window=64, progress=shrink)
        assert not guest.path("/source.bin").exists()


def test_what_can_be_mapped(tmp_path: Path) -> None:
    source = tmp_path / "source.bin"
    source.write_bytes(b"")
    with source.open("rb", buffering=0) as f:
        assert map_source(f, 0) is None  # nothing to send
    source.write_bytes(b"abc" * 5000)
    with source.open("rb", buffering=0) as f:
        assert map_source(f, 15001) is None  # shorter than its size was: the slot path says so
        mm = map_source(f, 15000)
        assert mm is not None and mm[:3] == b"abc" and len(mm) == 15000
        mm.close()


def test_populating_past_the_end_of_a_shrunk_source(tmp_path: Path) -> None:
    source = tmp_path / "source.bin"
    source.write_bytes(bytes(5 << 20))
    with source.open("rb", buffering=0) as f:
        mm = map_source(f, 5 << 20)
        assert mm is not None
        _populate(mm, f.fileno(), 5 << 20, 0, 1 << 20, 0, 0)
        os.truncate(source, 1 << 20)
        with pytest.raises(CopyFailed, match=f"shrank.*{4 << 20} bytes missing"):
            _populate(mm, f.fileno(), 5 << 20, 1 << 20, 5 << 20, 0, 1 << 20)
        mm.close()


async def test_sends_that_wait_for_room_while_answers_pile_up(tmp_path: Path) -> None:
    """Tiny socket buffers both ways and whole echoes: the host's sends wait for room
    while the guest waits to send its answers, so the host must take them meanwhile."""
    data = random.Random(5).randbytes(200 * 6144 + 99)
    requests = await recorded_copy(tmp_path, data, tmp_path / "g.sock", window=255,
                                   send_buffer=4096)
    writes = requests[2:-1]
    assert len(writes) == 201
    assert b"".join(w[80:80 + 6144] for w in writes)[:len(data)] == data


@pytest.mark.parametrize("full_body", [True, False], ids=["full", "trimmed"])
async def test_window_64_over_tcp(tmp_path: Path, full_body: bool) -> None:
    data = random.Random(11).randbytes(300 * 6144 + 1)
    requests = await recorded_copy(tmp_path, data, "tcp://127.0.0.1:0", window=64,
                                   full_body=full_body)
    writes = requests[2:-1]
    assert len(writes) == 301 and len(writes[-1]) == (80 + 6144 if full_body else 81)
    assert b"".join(w[80:80 + 6144] for w in writes)[:len(data)] == data
