"""The host's pipelined sender over real sockets: SHA-256-checked copies into a real
receiver at window 64, stop-and-wait byte for byte as ``HostConnection.write`` builds it,
failure answers and lost connections, and reading the source without ``os.preadv``."""

from __future__ import annotations

import hashlib
import os
import random
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
from host_sim.client import copy_vm_file, open_host
from host_sim.protocol import Answer, HostConnection
from host_sim.sender import _Chunk, read_slots


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


async def serve(recorder: Recorder, path: Path, nursery: trio.Nursery) -> str:
    listeners = await open_listeners(f"unix://{path}")

    async def accept_one() -> None:
        stream = await listeners[0].accept()
        await recorder.serve(stream)

    nursery.start_soon(accept_one)
    return listener_url(listeners[0])


@pytest.mark.parametrize("full_body", [True, False], ids=["full", "trimmed"])
async def test_stop_and_wait_sends_what_write_builds(tmp_path: Path, full_body: bool) -> None:
    data = random.Random(7).randbytes(5 * 6144 + 77)
    source = tmp_path / "file.bin"
    source.write_bytes(data)
    recorder = Recorder()
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            url = await serve(recorder, tmp_path / "g.sock", nursery)
            async with open_host(url, full_write_body=full_body) as host:
                await host.copy_file(source, "/d", window=1)
    twin = HostConnection(full_write_body=full_body)
    expected = [twin.negotiate(),
                twin.start_copy(file_name="file.bin", path_name="/d", flags=CopyFlags.NONE,
                                file_size=len(data))]
    expected += [twin.write(off, data[off:off + 6144]) for off in range(0, len(data), 6144)]
    expected.append(twin.complete())
    assert recorder.requests == expected


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


async def test_copy_without_preadv(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Where ``os.preadv`` does not exist (Windows), the slots are read one by one."""
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
