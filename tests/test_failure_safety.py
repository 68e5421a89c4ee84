"""A --force copy over an existing target that does not finish leaves the target's old
bytes exactly and no temp file (``.gsi-*.part``), whatever ends it: CANCEL, the host
process dying mid-copy (SIGKILL), COMPLETE with bytes missing, a refused WRITE, a new
START, or the connection closing mid-message.

The receiver is a real ``gsi-receiver`` subprocess (fsync on, as deployed); the hosts are
:class:`HostClient` over real sockets, in-process or in a subprocess that is killed.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
from e2e_helpers import (
    REPO,
    ReceiverProcess,
    open_temps,
    random_bytes,
    receive_until_eof,
    running_receiver,
    short_tempdir,
    start_copy,
    temp_files,
    write_range,
)

from gsi.constants import Status
from host_sim import open_host

OLD = b"the old content, which must survive\n" * 100
NEW_SIZE = 200_000


@pytest.fixture(scope="module", params=["auto", "named"])
def receiver(tmp_path_factory: pytest.TempPathFactory,
             request: pytest.FixtureRequest) -> Iterator[ReceiverProcess]:
    """Once with unnamed temp files (O_TMPFILE: the default here), once with named ones."""
    root = tmp_path_factory.mktemp("safety-root")
    with short_tempdir() as d, running_receiver(root, [f"unix://{d}/rx.sock"],
                                                ["--temp-files", request.param]) as rx:
        yield rx


def _existing_target(rx: ReceiverProcess, name: str) -> Path:
    target = rx.root / "safety" / name
    target.parent.mkdir(exist_ok=True)
    target.write_bytes(OLD)
    return target


def _assert_untouched(rx: ReceiverProcess, target: Path) -> None:
    assert target.read_bytes() == OLD
    assert _unnamed_temps(rx, target.parent) == 0
    assert temp_files(target.parent) == [], temp_files(target.parent)
    assert not any(p.name.startswith(".gsi-") for p in target.parent.iterdir())


def _unnamed_temps(rx: ReceiverProcess, directory: Path) -> int:
    return len(open_temps(directory, rx.proc.pid))


def _assert_copy_in_progress(rx: ReceiverProcess, target: Path) -> None:
    """Mid-copy the data goes to a temp file beside the target (named, or unnamed: only
    an open file of the receiver's); the target is untouched."""
    named, unnamed = len(temp_files(target.parent)), _unnamed_temps(rx, target.parent)
    assert (named, unnamed) == ((1, 0) if "named" in rx.args else (0, 1))
    assert target.read_bytes() == OLD


async def test_cancel(receiver: ReceiverProcess) -> None:
    target = _existing_target(receiver, "cancel.bin")
    data = random_bytes(NEW_SIZE, seed=1)
    mark = receiver.mark()
    with trio.fail_after(10):
        async with open_host(receiver.url) as host:
            assert (await start_copy(host, "/safety/", target.name, NEW_SIZE, force=True)).ok
            assert all(a.ok for a in await write_range(host, data, 0, 6144 * 10))
            _assert_copy_in_progress(receiver, target)
            answer = await host.request(host.conn.cancel())
            assert answer.status == Status.S_OK
            _assert_untouched(receiver, target)
            # the copy is over: later WRITEs are refused
            late = await host.request(host.conn.write(6144 * 10, data[6144 * 10:6144 * 11]))
            assert late.status == Status.E_FAIL
    await receiver.await_log(r"copy cancelled: /safety/cancel\.bin \(61440/200000 bytes, "
                             r"[\d.]+ s, [\d.]+ MB/s\) from .*: the host cancelled", since=mark)
    _assert_untouched(receiver, target)


HOST_SCRIPT = """
import sys, trio
from gsi.constants import CopyFlags
from host_sim import open_host

async def main(url, name, size):
    async with open_host(url) as host:
        await host.negotiate()
        start = host.conn.start_copy(file_name=name, path_name="/safety/",
                                     flags=CopyFlags.OVER_WRITE, file_size=size)
        assert (await host.request(start)).ok
        for i in range(8):
            answer = await host.request(host.conn.write(i * 6144, bytes([i]) * 6144))
            assert answer.ok, answer
        print("ready", flush=True)
        await trio.sleep_forever()

trio.run(main, sys.argv[1], sys.argv[2], int(sys.argv[3]))
"""


async def test_host_process_killed_mid_copy(receiver: ReceiverProcess) -> None:
    target = _existing_target(receiver, "killed.bin")
    mark = receiver.mark()
    with trio.fail_after(20):
        proc = await trio.lowlevel.open_process(
            [sys.executable, "-c", HOST_SCRIPT, receiver.url, target.name, str(NEW_SIZE)],
            stdout=subprocess.PIPE, cwd=REPO)
        try:
            assert proc.stdout is not None
            got = b""
            while not got.endswith(b"ready\n"):
                chunk = await proc.stdout.receive_some(100)
                assert chunk, f"host script ended early: {got!r}"
                got += chunk
            _assert_copy_in_progress(receiver, target)
            proc.kill()  # SIGKILL: no CANCEL, no goodbye; the kernel closes the socket
        finally:
            if proc.returncode is None:
                proc.kill()
            await proc.wait()
            if proc.stdout is not None:
                await proc.stdout.aclose()
        assert proc.returncode == -9
        await receiver.await_log(r"copy aborted: /safety/killed\.bin \(49152/200000 bytes, "
                                 r"[\d.]+ s, [\d.]+ MB/s\) from .*: connection closed mid-copy",
                                 since=mark)
    _assert_untouched(receiver, target)


@pytest.mark.parametrize("missing", ["tail", "hole", "all"])
async def test_complete_with_missing_bytes(receiver: ReceiverProcess, missing: str) -> None:
    target = _existing_target(receiver, f"early-{missing}.bin")
    data = random_bytes(NEW_SIZE, seed=2)
    mark = receiver.mark()
    with trio.fail_after(10):
        async with open_host(receiver.url) as host:
            assert (await start_copy(host, "/safety/", target.name, NEW_SIZE, force=True)).ok
            if missing == "tail":  # everything but the last byte
                await write_range(host, data, 0, NEW_SIZE - 1)
            elif missing == "hole":  # everything but one fragment in the middle
                await write_range(host, data, 0, 6144 * 5)
                await write_range(host, data, 6144 * 6, NEW_SIZE)
            _assert_copy_in_progress(receiver, target)
            answer = await host.request(host.conn.complete())
            assert answer.status == Status.E_FAIL
            _assert_untouched(receiver, target)
            # the channel still works: a full copy of the same target now commits
            assert (await start_copy(host, "/safety/", target.name, NEW_SIZE, force=True)).ok
            await write_range(host, data, 0, NEW_SIZE)
            assert (await host.request(host.conn.complete())).ok
    line = await receiver.await_log(rf"copy aborted: /safety/early-{missing}\.bin .*COMPLETE "
                                    r"after \d+ of 200000 bytes", since=mark)
    assert "copy aborted" in line[0]
    assert target.read_bytes() == data
    assert temp_files(target.parent) == []


async def test_refused_write_ends_the_copy(receiver: ReceiverProcess) -> None:
    target = _existing_target(receiver, "beyond.bin")
    data = random_bytes(NEW_SIZE, seed=3)
    with trio.fail_after(10):
        async with open_host(receiver.url) as host:
            assert (await start_copy(host, "/safety/", target.name, NEW_SIZE, force=True)).ok
            await write_range(host, data, 0, 6144 * 3)
            beyond = await host.request(host.conn.write(NEW_SIZE - 10, b"x" * 11))
            assert beyond.status == Status.INVALIDARG
            _assert_untouched(receiver, target)
            later = await host.request(host.conn.write(6144 * 3, data[6144 * 3:6144 * 4]))
            assert later.status == Status.E_FAIL
            complete = await host.request(host.conn.complete())
            assert complete.status == Status.E_FAIL
    _assert_untouched(receiver, target)


async def test_new_start_aborts_the_open_copy(receiver: ReceiverProcess) -> None:
    target = _existing_target(receiver, "restarted.bin")
    other = receiver.root / "safety" / "other.bin"
    data = random_bytes(NEW_SIZE, seed=4)
    with trio.fail_after(10):
        async with open_host(receiver.url) as host:
            assert (await start_copy(host, "/safety/", target.name, NEW_SIZE, force=True)).ok
            await write_range(host, data, 0, 6144 * 3)
            _assert_copy_in_progress(receiver, target)
            assert (await start_copy(host, "/safety/", other.name, 5, force=True)).ok
            assert target.read_bytes() == OLD
            _assert_copy_in_progress(receiver, target)  # only the new copy's temp
            await write_range(host, b"hello", 0, 5)
            assert (await host.request(host.conn.complete())).ok
    _assert_untouched(receiver, target)
    assert other.read_bytes() == b"hello"


async def test_connection_closed_mid_message(receiver: ReceiverProcess) -> None:
    target = _existing_target(receiver, "halfmsg.bin")
    data = random_bytes(NEW_SIZE, seed=5)
    mark = receiver.mark()
    with trio.fail_after(10):
        async with open_host(receiver.url) as host:
            assert (await start_copy(host, "/safety/", target.name, NEW_SIZE, force=True)).ok
            await write_range(host, data, 0, 6144 * 2)
            message = host.conn.write(6144 * 2, data[6144 * 2:6144 * 3])
            await host.send(message[:1000])
            _assert_copy_in_progress(receiver, target)
            assert isinstance(host.stream, trio.abc.HalfCloseableStream)
            await host.stream.send_eof()
            assert await receive_until_eof(host.stream) == b""
        await receiver.await_log(r"closed mid-message \(1000 bytes lost\)", since=mark)
        await receiver.await_log(r"copy aborted: /safety/halfmsg\.bin \(12288/200000 bytes",
                                 since=mark)
    _assert_untouched(receiver, target)
