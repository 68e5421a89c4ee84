"""Many connections at once: copies stay byte-identical, copies to one target never
interleave, and a connection sending garbage is closed without disturbing the others."""

from __future__ import annotations

import contextlib
import functools
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
from e2e_helpers import (
    ReceiverProcess,
    all_temps,
    random_bytes,
    receive_until_eof,
    running_receiver,
    start_copy,
    temp_files,
    write_range,
)

from gsi.constants import Status
from gsi.testing import open_guest
from gsi.transports import connect
from host_sim import HostClient, copy_vm_file, open_host

N_CONNECTIONS = 16


@pytest.fixture(scope="module")
def receiver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ReceiverProcess]:
    root = tmp_path_factory.mktemp("conc-root")
    with running_receiver(root, ["tcp://127.0.0.1:0"]) as rx:
        yield rx


def _sources(tmp_path: Path, n: int) -> list[Path]:
    out = []
    for i in range(n):
        path = tmp_path / f"src{i:02d}.bin"
        # different sizes around fragment boundaries, up to ~400 KiB
        path.write_bytes(random_bytes(i * 25_000 + (i * 6144 + i) % 7, seed=100 + i))
        out.append(path)
    return out


async def _copy_all_at_once(url: str, sources: list[Path], dest: str) -> None:
    async with trio.open_nursery() as nursery:
        for i, path in enumerate(sources):
            nursery.start_soon(functools.partial(
                copy_vm_file, url, path, dest, create_full_path=True, window=(1, 4, 32)[i % 3]))


async def test_16_connections_in_process(tmp_path: Path) -> None:
    sources = _sources(tmp_path, N_CONNECTIONS)
    with trio.fail_after(30):
        async with open_guest() as guest:
            await _copy_all_at_once(guest.url, sources, "/many/")
            assert guest.stats.committed == N_CONNECTIONS
            assert guest.stats.failed == 0
            for path in sources:
                assert guest.path(f"/many/{path.name}").read_bytes() == path.read_bytes()
            assert temp_files(guest.root) == []


async def test_16_connections_to_the_receiver_process(receiver: ReceiverProcess,
                                                      tmp_path: Path) -> None:
    sources = _sources(tmp_path, N_CONNECTIONS)
    mark = receiver.mark()
    with trio.fail_after(30):
        await _copy_all_at_once(receiver.url, sources, "/many/")
    for path in sources:
        assert (receiver.root / "many" / path.name).read_bytes() == path.read_bytes()
    # (the log reaches us through a pipe: wait for the lines rather than race them)
    await receiver.await_log("copy committed: /many/", count=N_CONNECTIONS, since=mark)
    committed = [line for line in receiver.log_lines(mark) if "copy committed: /many/" in line]
    assert len(committed) == N_CONNECTIONS
    assert temp_files(receiver.root) == []


async def test_same_target_interleaved_with_force(receiver: ReceiverProcess) -> None:
    """Two connections copy different contents to one target, their WRITEs interleaved
    fragment by fragment: the target ends as exactly one of the two, never a mix."""
    size = 6144 * 20 + 17
    a, b = random_bytes(size, seed=1), random_bytes(size, seed=2)
    target = receiver.root / "same" / "target.bin"
    with trio.fail_after(15):
        async with open_host(receiver.url) as ha, open_host(receiver.url) as hb:
            for host in (ha, hb):
                answer = await start_copy(host, "/same/", "target.bin", size, force=True,
                                          create=True)
                assert answer.ok
            for offset in range(0, size, 6144):
                for host, data in ((ha, a), (hb, b)):
                    (answer,) = await write_range(host, data, offset, min(offset + 6144, size))
                    assert answer.ok
            assert all_temps(target.parent, receiver.proc.pid) == 2  # one temp per copy
            assert not target.exists()
            assert (await ha.request(ha.conn.complete())).ok
            assert target.read_bytes() == a
            assert (await hb.request(hb.conn.complete())).ok
    assert target.read_bytes() in (a, b)
    assert temp_files(target.parent) == []


async def test_same_target_racing_with_force(receiver: ReceiverProcess,
                                             tmp_path: Path) -> None:
    """The same, racing freely (whole copies with big windows), a few rounds."""
    size = 400_000
    a, b = tmp_path / "a" / "race.bin", tmp_path / "b" / "race.bin"
    for path, seed in ((a, 3), (b, 4)):
        path.parent.mkdir()
        path.write_bytes(random_bytes(size, seed))
    target = receiver.root / "race" / "race.bin"
    for _round in range(3):
        with trio.fail_after(15):
            async with trio.open_nursery() as nursery:
                for path in (a, b):
                    nursery.start_soon(functools.partial(
                        copy_vm_file, receiver.url, path, "/race/", force=True,
                        create_full_path=True, window=16))
        assert target.read_bytes() in (a.read_bytes(), b.read_bytes())
        assert temp_files(target.parent) == []


async def test_same_target_without_force_first_commit_wins(receiver: ReceiverProcess) -> None:
    """Both STARTs succeed (no target yet); the first COMPLETE commits, the second is
    refused with 0x80070050 instead of clobbering it."""
    a, b = b"A" * 10_000, b"B" * 10_000
    target = receiver.root / "nof" / "t.bin"
    with trio.fail_after(15):
        async with open_host(receiver.url) as ha, open_host(receiver.url) as hb:
            for host, data in ((ha, a), (hb, b)):
                assert (await start_copy(host, "/nof/", "t.bin", len(data),
                                         create=True)).ok
                await write_range(host, data, 0, len(data))
            assert (await hb.request(hb.conn.complete())).ok
            late = await ha.request(ha.conn.complete())
            assert late.status == Status.ALREADY_EXISTS
    assert target.read_bytes() == b
    assert temp_files(target.parent) == []


BAD_INPUTS = [
    pytest.param(struct.pack("<II", 2, 100) + bytes(100), "pipe header flags 0x2",
                 id="bad-pipe-flags"),
    pytest.param(struct.pack("<II", 1, 0xFFFFFFFF), "pipe msgsize 4294967295 exceeds",
                 id="oversize-msgsize-header-only"),
    pytest.param(struct.pack("<II", 1, 6217), "pipe msgsize 6217 exceeds the maximum 6216",
                 id="msgsize-max-plus-1-header-only"),
    pytest.param(struct.pack("<II", 1, 19) + bytes(19), "pipe msgsize 19 is below",
                 id="msgsize-below-ic-header"),
    pytest.param(b"GET / HTTP/1.1\r\nHost: guest\r\n\r\n", "pipe header flags 0x20544547",
                 id="garbage"),
]


@pytest.mark.parametrize(("bad", "reason"), BAD_INPUTS)
async def test_bad_connection_closed_while_another_copies(
        receiver: ReceiverProcess, bad: bytes, reason: str) -> None:
    size = 6144 * 30
    data = random_bytes(size, seed=9)
    mark = receiver.mark()
    target = receiver.root / "bad" / f"{bad.hex()[:40]}.bin"
    with trio.fail_after(15):
        async with open_host(receiver.url) as good:
            assert (await start_copy(good, "/bad/", target.name, size, create=True)).ok
            await write_range(good, data, 0, size // 2)
            evil = await connect(receiver.url)
            try:
                await evil.send_all(bad)
                # the receiver closes the bad connection without answering anything
                assert await receive_until_eof(evil) == b""
            finally:
                await evil.aclose()
            await receiver.await_log(rf"framing error, closing: .*{reason}", since=mark)
            # the good connection carries on
            answers = await write_range(good, data, size // 2, size)
            assert all(a.ok for a in answers)
            assert (await good.request(good.conn.complete())).ok
    assert target.read_bytes() == data
    assert temp_files(target.parent) == []


async def test_16_copies_open_at_the_same_moment(tmp_path: Path) -> None:
    """Deterministic overlap: 16 connections each START before any of them WRITEs, then
    they all write and complete concurrently."""
    datas = [random_bytes(6144 * 4 + i, seed=200 + i) for i in range(N_CONNECTIONS)]
    with trio.fail_after(30):
        async with open_guest() as guest, contextlib.AsyncExitStack() as stack:
            hosts = [await stack.enter_async_context(open_host(guest.url))
                     for _ in range(N_CONNECTIONS)]
            for i, host in enumerate(hosts):
                assert (await start_copy(host, "/open/", f"f{i}.bin", len(datas[i]),
                                         create=True)).ok
            assert guest.receiver.active_connections == N_CONNECTIONS
            assert all_temps(guest.root) == N_CONNECTIONS

            async def finish(host: HostClient, data: bytes) -> None:
                answers = await write_range(host, data, 0, len(data))
                assert all(a.ok for a in answers)
                assert (await host.request(host.conn.complete())).ok

            async with trio.open_nursery() as nursery:
                for host, data in zip(hosts, datas, strict=True):
                    nursery.start_soon(finish, host, data)
            for i, data in enumerate(datas):
                assert guest.path(f"/open/f{i}.bin").read_bytes() == data
            assert temp_files(guest.root) == []
