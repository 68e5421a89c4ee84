"""``gsi-receiver`` as a process: listening, usage errors, signals, grace period, idle
timeout, and the one log line every copy gets when it ends. Timing bounds are tested in
process on a virtual clock (test_session.py); here only what needs a real process."""

from __future__ import annotations

import re
import signal
import socket
import time
from pathlib import Path

import pytest
import trio
from e2e_helpers import (
    ReceiverProcess,
    all_temps,
    random_bytes,
    receive_until_eof,
    run_host_sim,
    run_receiver_cli,
    running_receiver,
    short_tempdir,
    start_copy,
    temp_files,
    write_range,
)

from gsi.transports import TransportError, connect
from host_sim import open_host

PROMPT = 5.0
"""Seconds within which "promptly" must happen (generous for a loaded CI machine)."""


# -- listening ------------------------------------------------------------------------

def test_tcp_port_0_prints_the_real_port(tmp_path: Path) -> None:
    with running_receiver(tmp_path, ["tcp://127.0.0.1:0"]) as rx:
        (url,) = rx.urls
        match = re.fullmatch(r"tcp://127\.0\.0\.1:(\d+)", url)
        assert match is not None, url
        port = int(match[1])
        assert port != 0
        with socket.create_connection(("127.0.0.1", port), timeout=PROMPT):
            pass
        assert rx.stdout.get() == [f"listening on {url}"]


def test_unix_and_two_listeners(tmp_path: Path) -> None:
    src = tmp_path / "src.bin"
    src.write_bytes(random_bytes(10_000, seed=1))
    root = tmp_path / "root"
    root.mkdir()
    with short_tempdir() as d, running_receiver(
            root, [f"unix://{d}/a.sock", "tcp://127.0.0.1:0"]) as rx:
        assert rx.urls[0] == f"unix://{d}/a.sock"
        assert (d / "a.sock").is_socket()
        assert rx.urls[1].startswith("tcp://127.0.0.1:")
        for i, url in enumerate(rx.urls):
            result = run_host_sim(url, "--name", f"via{i}.bin", src, "/")
            assert result.returncode == 0, result.stderr
            assert (root / f"via{i}.bin").read_bytes() == src.read_bytes()


# -- usage errors: exit 2 with one clear line ---------------------------------------------

def test_without_root_exits_2(tmp_path: Path) -> None:
    result = run_receiver_cli("--listen", "tcp://127.0.0.1:0")
    assert result.returncode == 2
    assert "the following arguments are required: --root" in result.stderr
    assert result.stdout == ""


def test_without_listen_exits_2(tmp_path: Path) -> None:
    result = run_receiver_cli("--root", tmp_path)
    assert result.returncode == 2
    assert "the following arguments are required: --listen" in result.stderr


@pytest.mark.parametrize("kind", ["missing", "file"])
def test_root_not_a_directory_exits_2_with_one_line(tmp_path: Path, kind: str) -> None:
    root = tmp_path / "nope"
    if kind == "file":
        root.write_bytes(b"not a dir")
    result = run_receiver_cli("--root", root, "--listen", "tcp://127.0.0.1:0")
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"gsi-receiver: --root {root} is not an existing directory"]
    assert result.stdout == ""


@pytest.mark.parametrize("url", ["ftp://127.0.0.1:1", "tcp://127.0.0.1", "unix://relative",
                                 "nonsense"])
def test_bad_url_exits_2(tmp_path: Path, url: str) -> None:
    result = run_receiver_cli("--root", tmp_path, "--listen", url)
    assert result.returncode == 2, result
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("gsi-receiver: ")
    assert result.stdout == ""


def test_address_in_use_exits_2(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_receiver_cli("--root", tmp_path, "--listen", f"tcp://127.0.0.1:{port}")
    assert result.returncode == 2
    assert result.stderr.splitlines()[-1].startswith("gsi-receiver: cannot listen: ")
    assert "Traceback" not in result.stderr


# -- signals and shutdown -------------------------------------------------------------

def test_sigterm_while_idle_exits_0_promptly(tmp_path: Path) -> None:
    rx = ReceiverProcess(tmp_path, ["tcp://127.0.0.1:0"])
    started = time.monotonic()
    rx.signal(signal.SIGTERM)
    assert rx.wait(PROMPT) == 0
    assert time.monotonic() - started < PROMPT
    assert "SIGTERM: shutting down" in rx.log
    assert "stopped: 0 connections" in rx.log


async def test_sigterm_closes_idle_connections_at_once(tmp_path: Path) -> None:
    """An idle (negotiated, no copy) connection does not hold shutdown for the 30 s grace."""
    rx = ReceiverProcess(tmp_path, ["tcp://127.0.0.1:0"], ["--grace-period", "30"])
    try:
        with trio.fail_after(PROMPT * 2):
            async with open_host(rx.url) as host:
                await host.negotiate()
                rx.signal(signal.SIGTERM)
                assert await receive_until_eof(host.stream) == b""
            assert await rx.await_exit(PROMPT) == 0
    finally:
        rx.kill()


async def test_sigterm_during_a_copy_grace_period_lets_it_finish(tmp_path: Path) -> None:
    data = random_bytes(6144 * 10 + 5, seed=3)
    (tmp_path / "t.bin").write_bytes(b"old")
    rx = ReceiverProcess(tmp_path, ["tcp://127.0.0.1:0"], ["--grace-period", "30"])
    try:
        with trio.fail_after(PROMPT * 3):
            async with open_host(rx.url) as host:
                assert (await start_copy(host, "/", "t.bin", len(data), force=True)).ok
                await write_range(host, data, 0, 6144 * 5)
                rx.signal(signal.SIGTERM)
                await rx.await_log(r"SIGTERM: shutting down \(open copies get 30\.0 s\)")
                assert rx.proc.poll() is None
                answers = await write_range(host, data, 6144 * 5, len(data))
                assert all(a.ok for a in answers)
                assert (await host.request(host.conn.complete())).ok
                # the copy is done: the receiver closes this connection and exits
                assert await receive_until_eof(host.stream) == b""
            assert await rx.await_exit(PROMPT) == 0
    finally:
        rx.kill()
    assert (tmp_path / "t.bin").read_bytes() == data
    assert temp_files(tmp_path) == []
    assert re.search(r"copy committed: /t\.bin \(61445/61445 bytes", rx.log)
    assert ("stopped: 1 connections (0 refused, 0 evicted), 1 copies committed (61445 bytes),"
            " 0 failed") in rx.log


@pytest.mark.parametrize("transport", ["tcp", "unix"])
async def test_no_new_connections_during_the_grace_period(tmp_path: Path,
                                                          transport: str) -> None:
    """Shutting down stops accepting: a host connecting while a copy still has its grace
    period is refused at once, not left waiting in the listen backlog until the end."""
    with short_tempdir() as d:
        url = "tcp://127.0.0.1:0" if transport == "tcp" else f"unix://{d}/rx.sock"
        rx = ReceiverProcess(tmp_path, [url], ["--grace-period", "30"])
        try:
            with trio.fail_after(PROMPT * 2):
                async with open_host(rx.url) as host:
                    assert (await start_copy(host, "/", "t.bin", 3)).ok
                    rx.signal(signal.SIGTERM)
                    await rx.await_log(r"stopped accepting connections \(1 open\)")
                    with trio.fail_after(PROMPT), pytest.raises((OSError, TransportError)):
                        late = await connect(rx.url)
                        await late.aclose()
                    # the open copy is still served
                    await write_range(host, b"abc", 0, 3)
                    assert (await host.request(host.conn.complete())).ok
                assert await rx.await_exit(PROMPT) == 0
        finally:
            rx.kill()
    assert (tmp_path / "t.bin").read_bytes() == b"abc"


async def test_second_sigterm_aborts_open_copies_now(tmp_path: Path) -> None:
    (tmp_path / "t.bin").write_bytes(b"old content")
    rx = ReceiverProcess(tmp_path, ["tcp://127.0.0.1:0"], ["--grace-period", "60"])
    try:
        with trio.fail_after(PROMPT * 2):
            async with open_host(rx.url) as host:
                assert (await start_copy(host, "/", "t.bin", 100_000, force=True)).ok
                rx.signal(signal.SIGTERM)
                await rx.await_log("SIGTERM: shutting down")
                rx.signal(signal.SIGTERM)
                assert await receive_until_eof(host.stream) == b""
            assert await rx.await_exit(PROMPT) == 0
    finally:
        rx.kill()
    assert "SIGTERM again: aborting open copies now" in rx.log
    assert (tmp_path / "t.bin").read_bytes() == b"old content"
    assert temp_files(tmp_path) == []


# -- idle timeout -----------------------------------------------------------------------

async def test_idle_timeout_closes_a_silent_connection_mid_copy(tmp_path: Path) -> None:
    """--idle-timeout 0.5, in real time: the smoke test of the option and its log lines
    (the bounds, with and without a copy, are test_session's, on a virtual clock)."""
    (tmp_path / "t.bin").write_bytes(b"old")
    with running_receiver(tmp_path, ["tcp://127.0.0.1:0"], ["--idle-timeout", "0.5"]) as rx:
        with trio.fail_after(PROMPT * 2):
            async with open_host(rx.url) as host:
                assert (await start_copy(host, "/", "t.bin", 50_000, force=True)).ok
                await write_range(host, b"n" * 50_000, 0, 6144)
                assert all_temps(tmp_path, rx.proc.pid) >= 1
                started = time.monotonic()
                assert await receive_until_eof(host.stream) == b""
                assert time.monotonic() - started >= 0.4
        await rx.await_log(r"idle for 0\.5 s, closing")
        await rx.await_log(r"copy aborted: /t\.bin \(6144/50000 bytes, [\d.]+ s, [\d.]+ MB/s\)"
                           r" from .*: 0x80004005: unspecified failure: idle timeout")
    assert (tmp_path / "t.bin").read_bytes() == b"old"
    assert temp_files(tmp_path) == []


# -- every copy logged once at the end ----------------------------------------------------

COPY_LINE = (r"^\S+ \S+ (?P<level>INFO|WARNING) gsi\.receiver: copy (?P<outcome>\w+): "
             r"(?P<path>\S+) \((?P<received>\d+)/(?P<size>\d+) bytes, (?P<seconds>[\d.]+) s, "
             r"(?P<mbps>[\d.]+) MB/s\) from (?P<peer>#\d+ 127\.0\.0\.1:\d+)(?:: (?P<why>.*))?$")


def test_every_copy_logged_once_with_path_bytes_speed_outcome_reason(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    (root / "exists.bin").write_bytes(b"x")
    ok = tmp_path / "ok.bin"
    ok.write_bytes(random_bytes(300_000, seed=5))
    exists = tmp_path / "exists.bin"
    exists.write_bytes(b"new")
    with running_receiver(root, ["tcp://127.0.0.1:0"], ["--log-level", "INFO"]) as rx:
        assert run_host_sim(rx.url, ok, "/").returncode == 0
        assert run_host_sim(rx.url, exists, "/").returncode == 1
        rx.wait_log(r"copy \w+: /+exists\.bin")
    lines = [m for line in rx.log.splitlines() if (m := re.match(COPY_LINE, line))]
    assert len(lines) == 2, rx.log
    committed, failed = lines
    assert committed["level"] == "INFO"
    assert committed["outcome"] == "committed"
    assert committed["path"] == "/ok.bin"
    assert committed["received"] == committed["size"] == "300000"
    assert float(committed["seconds"]) > 0
    assert float(committed["mbps"]) > 0
    assert committed["why"] is None
    assert failed["level"] == "WARNING"
    assert failed["outcome"] == "failed"
    assert failed["path"].endswith("/exists.bin")
    assert (failed["received"], failed["size"]) == ("0", "3")
    assert failed["why"] == ("0x80070050: the file exists: target /exists.bin exists "
                             "(OVER_WRITE not set)")
    # exactly once each, and the shutdown summary counts them
    assert sum("/ok.bin" in line for line in rx.log.splitlines()) == 1
    assert "1 copies committed (300000 bytes), 1 failed" in rx.log
