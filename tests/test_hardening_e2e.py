"""A real ``gsi-receiver`` subprocess against a hostile host and a hostile local user:
directories moved and temp files swapped by another process between START and COMPLETE,
names that would forge log lines, connections that hold every slot or trickle a message,
a Unix-socket peer running as another uid."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import trio
from e2e_helpers import (
    open_temps,
    random_bytes,
    receive_until_eof,
    running_receiver,
    short_tempdir,
    start_copy,
    temp_files,
    write_range,
)

from gsi.errors import CopyFailed
from gsi.transports import connect
from host_sim import HostConnection, copy_vm_file, open_host

ACCESS_DENIED = 0x80070005


def adversary(*argv: str) -> None:
    """Another process acts on the destination (a local user with write access)."""
    subprocess.run(argv, check=True, timeout=10)


async def test_directory_moved_out_of_the_root_between_start_and_complete(
        tmp_path: Path) -> None:
    root, outside = tmp_path / "root", tmp_path / "outside"
    outside.mkdir()
    data = random_bytes(20_000, seed=1)
    root.mkdir()
    with running_receiver(root, ["tcp://127.0.0.1:0"]) as rx, trio.fail_after(15):
        async with open_host(rx.url) as host:
            assert (await start_copy(host, "/a/b/", "f", len(data), create=True)).ok
            await write_range(host, data, 0, len(data))
            adversary("mv", str(root / "a" / "b"), str(outside / "b"))
            answer = await host.request(host.conn.complete())
            assert answer.status == ACCESS_DENIED
            assert os.listdir(outside / "b") == []  # nothing landed outside
            # The connection keeps serving.
            assert (await start_copy(host, "/a/", "g", 3)).ok
            await write_range(host, b"abc", 0, 3)
            assert (await host.request(host.conn.complete())).ok
        await rx.await_log(r"copy failed: /a/b/f .*0x80070005: access denied: the directory"
                           r" of /a/b/f is no longer inside the destination root .*;"
                           r" nothing committed")
    assert (root / "a" / "g").read_bytes() == b"abc"
    assert sorted(os.listdir(root / "a")) == ["g"]


async def test_named_temp_replaced_by_a_local_user(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "d").mkdir(parents=True)
    (root / "d" / "f").write_bytes(b"old")
    data = random_bytes(20_000, seed=2)
    with running_receiver(root, ["tcp://127.0.0.1:0"], ["--temp-files", "named"]) as rx, \
            trio.fail_after(15):
        async with open_host(rx.url) as host:
            assert (await start_copy(host, "/d/", "f", len(data), force=True)).ok
            await write_range(host, data, 0, len(data))
            (part,) = temp_files(root / "d")
            (tmp_path / "impostor").write_bytes(b"foreign content")
            adversary("mv", str(tmp_path / "impostor"), str(part))
            answer = await host.request(host.conn.complete())
            assert answer.status == ACCESS_DENIED
        await rx.await_log(r"copy failed: /d/f .*was replaced by someone else; nothing"
                           r" committed")
    assert (root / "d" / "f").read_bytes() == b"old"
    assert part.read_bytes() == b"foreign content"  # not the receiver's: left alone


async def test_unnamed_temps_by_default(tmp_path: Path) -> None:
    """Nothing in the target directory has a name until COMPLETE."""
    root = tmp_path / "root"
    root.mkdir()
    with running_receiver(root, ["tcp://127.0.0.1:0"]) as rx, trio.fail_after(15):
        async with open_host(rx.url) as host:
            assert (await start_copy(host, "/", "f", 3)).ok
            await write_range(host, b"abc", 0, 3)
            assert os.listdir(root) == []
            assert open_temps(root, rx.proc.pid) == [3]
            assert (await host.request(host.conn.complete())).ok
    assert os.listdir(root) == ["f"]


# -- logs ---------------------------------------------------------------------------------------

EVIL = "evil\n2031-01-01 00:00:00 INFO gsi.receiver: copy committed: forged\x1b[31m.txt"


async def test_guest_names_cannot_forge_log_lines(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    with running_receiver(root, ["tcp://127.0.0.1:0"]) as rx, trio.fail_after(15):
        async with open_host(rx.url) as host:
            assert (await start_copy(host, "/", EVIL, 3)).ok
            await write_range(host, b"abc", 0, 3)
            assert (await host.request(host.conn.complete())).ok
            refused = await start_copy(host, "/x\n\x1b[2J/../", "f\x1b]0;title\x07", 3)
            assert refused.status == ACCESS_DENIED
            await rx.await_log("copy failed")
    assert (root / EVIL).read_bytes() == b"abc"
    log = rx.log
    assert "\x1b" not in log and "\x07" not in log
    lines = rx.log_lines()
    assert [line for line in lines if "forged" in line] == [
        line for line in lines if "copy committed" in line]
    (committed,) = [line for line in lines if "copy committed" in line]
    assert "evil\\x0a2031-01-01" in committed and "\\x1b[31m" in committed
    assert not any(line.startswith("2031") for line in lines)


# -- no lock-out --------------------------------------------------------------------------------


async def _idle_attacker(url: str, stop: trio.Event, *,
                        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """Connects and sends nothing; reconnects whenever it is closed."""
    while not stop.is_set():
        stream = await connect(url)
        task_status.started()
        task_status = trio.TASK_STATUS_IGNORED
        with trio.move_on_after(30):
            await receive_until_eof(stream)
        await stream.aclose()


async def _trickling_attacker(
        url: str, stop: trio.Event, *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """Sends a NEGOTIATE one byte every 0.3 s, never finishing a message in time."""
    message = HostConnection().negotiate()
    while not stop.is_set():
        stream = await connect(url)
        task_status.started()
        task_status = trio.TASK_STATUS_IGNORED
        try:
            for byte in message:
                await stream.send_all(bytes([byte]))
                await trio.sleep(0.3)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass
        await stream.aclose()


async def test_a_host_is_served_while_every_slot_is_held(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    source = tmp_path / "source"
    source.write_bytes(random_bytes(100_000, seed=3))
    extra = ["--max-connections", "8", "--idle-timeout", "60", "--message-timeout", "2"]
    with running_receiver(root, ["tcp://127.0.0.1:0"], extra) as rx:
        stop = trio.Event()
        async with trio.open_nursery() as nursery:
            for _ in range(4):  # connected (in the accept queue) before any host
                await nursery.start(_idle_attacker, rx.url, stop)
                await nursery.start(_trickling_attacker, rx.url, stop)
            for i in range(3):  # the slots are taken before each host arrives
                with trio.fail_after(5):
                    try:
                        await copy_vm_file(rx.url, source, "/", name=f"copy{i}")
                    except CopyFailed as exc:
                        raise AssertionError(f"{exc}; receiver log:\n{rx.log}") from None
            stop.set()
            nursery.cancel_scope.cancel()
    assert all((root / f"copy{i}").read_bytes() == source.read_bytes() for i in range(3))
    assert "evicted for a new connection" in rx.log


async def test_a_trickled_message_is_dropped_after_the_message_timeout(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    extra = ["--idle-timeout", "30", "--message-timeout", "1"]
    message = HostConnection().negotiate()
    with running_receiver(root, ["tcp://127.0.0.1:0"], extra) as rx, trio.fail_after(10):
        # A message in two parts a little apart is fine.
        stream = await connect(rx.url)
        await stream.send_all(message[:10])
        await trio.sleep(0.2)
        await stream.send_all(message[10:])
        assert await stream.receive_some(4096)
        # One byte every 0.2 s: any byte used to renew the idle deadline forever.
        started = time.monotonic()

        async def trickle() -> None:
            try:
                for byte in message[:-1]:
                    await stream.send_all(bytes([byte]))
                    await trio.sleep(0.2)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                pass

        async with trio.open_nursery() as nursery:
            nursery.start_soon(trickle)
            assert await receive_until_eof(stream) == b""
            nursery.cancel_scope.cancel()
        elapsed = time.monotonic() - started
        await stream.aclose()
        assert 0.9 <= elapsed < 3, elapsed
        await rx.await_log(r"a message not complete 1\.0 s after its first byte, closing")


# -- --allow-uid --------------------------------------------------------------------------------

CLIENT = """\
import socket, sys
s = socket.socket(socket.AF_UNIX)
s.connect(sys.argv[1])
s.settimeout(10)
got = b""
try:
    s.sendall(bytes.fromhex(sys.argv[2]))  # EPIPE / ECONNRESET if already closed
    while len(got) < int(sys.argv[3]):
        chunk = s.recv(4096)
        if not chunk:
            break
        got += chunk
except OSError:
    pass
print(len(got))
"""


def _client(sock: Path, user: int | None) -> int:
    """Bytes answered to a NEGOTIATE sent by a process running as ``user``."""
    message = HostConnection().negotiate()
    python = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable
    res = subprocess.run([python, "-c", CLIENT, str(sock), message.hex(), str(len(message))],
                         user=user, capture_output=True, text=True, timeout=20, check=True)
    return int(res.stdout)


@pytest.mark.skipif(os.geteuid() != 0, reason="running a client as another uid needs root")
def test_allow_uid_closes_other_users(tmp_path: Path) -> None:
    with short_tempdir() as d:
        d.chmod(0o755)
        sock = d / "rx.sock"
        with running_receiver(tmp_path, [f"unix://{sock}"], ["--allow-uid", "0"]) as rx:
            sock.chmod(0o777)  # the socket's mode would otherwise keep uid 65534 out
            assert _client(sock, 65534) == 0  # closed at accept, nothing answered
            rx.wait_log(r"refusing a connection from uid 65534 \(pid \d+\): not an"
                        r" --allow-uid")
            assert _client(sock, None) == len(HostConnection().negotiate())
