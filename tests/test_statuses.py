"""Every status the receiver answers with, each produced by a real scenario.

``host-sim copy`` (a subprocess) talks to ``gsi-receiver`` (a subprocess) wherever the CLI
can express the scenario; the host's message on stderr and its exit status are checked, and
the receiver's log (stderr) must name the reason. Scenarios the CLI cannot produce (invalid
name fields, unknown operations) go through :class:`HostClient` with hand-made requests.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
from e2e_helpers import (
    ReceiverProcess,
    random_bytes,
    run_host_sim,
    running_receiver,
    start_copy,
    temp_files,
)
from fault_helpers import mounted_tmpfs

from gsi import codec
from gsi.constants import CopyFlags, IcMsgType, Status
from gsi.errors import CopyFailed
from host_sim import HostClient, copy_vm_file, explain_status, open_host

MAX_FILE_SIZE = 100_000
SMALL_MAX_FRAGMENT = 1000
"""With --max-fragment 1000 the framing maximum is 1108 (a START's size), so a WRITE with
1001..1036 data bytes still frames and gets 0x80070057 from the protocol check."""


@pytest.fixture(scope="module")
def receiver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ReceiverProcess]:
    """Stock fragment size (6144), a small --max-file-size."""
    root = tmp_path_factory.mktemp("status-root")
    with running_receiver(root, ["tcp://127.0.0.1:0"],
                          ["--max-file-size", str(MAX_FILE_SIZE)]) as rx:
        yield rx


@pytest.fixture(scope="module")
def small_fragment_receiver(tmp_path_factory: pytest.TempPathFactory
                            ) -> Iterator[ReceiverProcess]:
    root = tmp_path_factory.mktemp("status-smallfrag-root")
    with running_receiver(root, ["tcp://127.0.0.1:0"],
                          ["--max-fragment", str(SMALL_MAX_FRAGMENT)]) as rx:
        yield rx


def _source(tmp_path: Path, name: str, size: int, seed: int = 0) -> Path:
    path = tmp_path / name
    path.write_bytes(random_bytes(size, seed))
    return path


def _assert_refused(result: subprocess.CompletedProcess[str], what: str, message: str) -> None:
    assert result.returncode == 1, (result.returncode, result.stdout, result.stderr)
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].endswith(f"failed: {what} refused: {message}"), result.stderr


def _log_line(rx: ReceiverProcess, *fragments: str, since: int = 0) -> str:
    """The one receiver log line (from line ``since`` on) holding every fragment, in order
    (waits for it to appear)."""
    pattern = ".*".join(re.escape(f) for f in fragments)
    rx.wait_log(pattern, since=since)
    lines = [line for line in rx.log_lines(since) if re.search(pattern, line)]
    assert len(lines) == 1, lines
    return lines[0]


def test_exists_without_force(receiver: ReceiverProcess, tmp_path: Path) -> None:
    src = _source(tmp_path, "exists.bin", 100)
    (receiver.root / "exists").mkdir()
    (receiver.root / "exists" / "exists.bin").write_bytes(b"old")
    result = run_host_sim(receiver.url, src, "/exists/")
    _assert_refused(result, "START", "0x80070050: the file exists (use --force to overwrite)")
    line = _log_line(receiver, "copy failed: /exists/", "exists.bin")
    assert "0x80070050: the file exists: target /exists/exists.bin exists (OVER_WRITE not set)" \
        in line
    assert (receiver.root / "exists" / "exists.bin").read_bytes() == b"old"


def test_missing_directory_without_create_full_path(receiver: ReceiverProcess,
                                                    tmp_path: Path) -> None:
    src = _source(tmp_path, "nodir.bin", 100)
    result = run_host_sim(receiver.url, src, "/no/such/dir/")
    _assert_refused(result, "START",
                    "0x80070003: the path was not found (use --create-full-path to create it)")
    line = _log_line(receiver, "copy failed: /no/such/dir", "nodir.bin")
    assert "0x80070003: the path was not found: directory /no does not exist " \
           "(CREATE_PATH not set)" in line
    assert not (receiver.root / "no").exists()


def test_dotdot_escape(receiver: ReceiverProcess, tmp_path: Path) -> None:
    src = _source(tmp_path, "escape.bin", 100)
    result = run_host_sim(receiver.url, "--create-full-path", "--force", src,
                          "/a/../../escaped/")
    _assert_refused(result, "START", "0x80070005: access denied (the path leaves the guest's "
                                     "destination root or is not writable)")
    line = _log_line(receiver, "copy failed: /a/../../escaped/", "escape.bin")
    assert "0x80070005: access denied: path name '/a/../../escaped/' contains a '..' " \
           "component, which is never allowed" in line
    assert not (receiver.root.parent / "escaped").exists()
    assert not (receiver.root / "a").exists()


@pytest.mark.parametrize(("force", "status", "reason"), [
    pytest.param(True, "0x80070005: access denied (the path leaves the guest's destination "
                       "root or is not writable)",
                 "0x80070005: access denied: target /dirtarget/{n}/victim is a directory and "
                 "cannot be overwritten", id="force"),
    pytest.param(False, "0x80070050: the file exists (use --force to overwrite)",
                 "0x80070050: the file exists: target /dirtarget/{n}/victim exists "
                 "(a directory)", id="no-force"),
])
def test_directory_as_target(receiver: ReceiverProcess, tmp_path: Path, force: bool,
                             status: str, reason: str) -> None:
    n = int(force)
    victim = receiver.root / "dirtarget" / str(n) / "victim"
    victim.mkdir(parents=True)
    (victim / "inside.txt").write_bytes(b"keep")
    src = _source(tmp_path, "victim", 100)
    result = run_host_sim(receiver.url, *(["--force"] if force else []), src,
                          f"/dirtarget/{n}/")
    _assert_refused(result, "START", status)
    line = _log_line(receiver, f"copy failed: /dirtarget/{n}/", "victim (")
    assert reason.format(n=n) in line
    assert victim.is_dir()
    assert [p.name for p in victim.iterdir()] == ["inside.txt"]
    assert temp_files(victim.parent) == []


def test_file_size_above_max_file_size(receiver: ReceiverProcess, tmp_path: Path) -> None:
    src = _source(tmp_path, "toobig.bin", MAX_FILE_SIZE + 1)
    result = run_host_sim(receiver.url, "--create-full-path", src, "/toobig/")
    _assert_refused(result, "START", "0x80070057: invalid argument (the guest refused a field "
                                     "(name, size or fragment); see its log)")
    _log_line(receiver, "copy failed: (refused START)",
              "0x80070057: invalid argument: START: file_size "
              f"{MAX_FILE_SIZE + 1} exceeds the maximum {MAX_FILE_SIZE}")
    assert not (receiver.root / "toobig").exists()
    # exactly at the maximum is fine
    ok = _source(tmp_path, "justfits.bin", MAX_FILE_SIZE, seed=3)
    result = run_host_sim(receiver.url, "--create-full-path", ok, "/toobig/")
    assert result.returncode == 0, result.stderr
    assert (receiver.root / "toobig" / "justfits.bin").read_bytes() == ok.read_bytes()


def test_file_name_with_slash(receiver: ReceiverProcess, tmp_path: Path) -> None:
    src = _source(tmp_path, "plain.bin", 10)
    result = run_host_sim(receiver.url, "--create-full-path", "--name", "sub/evil.bin", src,
                          "/slash/")
    _assert_refused(result, "START", "0x80070057: invalid argument (the guest refused a field "
                                     "(name, size or fragment); see its log)")
    _log_line(receiver, "copy failed: (refused START)",
              "0x80070057: invalid argument: START: file_name "
              "'sub/evil.bin' is empty or contains '/'")
    assert not (receiver.root / "slash").exists()


@pytest.mark.parametrize("trimmed", [False, True], ids=["full-body", "trimmed"])
def test_fragment_above_max_fragment_is_invalidarg_at_write(
        small_fragment_receiver: ReceiverProcess, tmp_path: Path, trimmed: bool) -> None:
    rx = small_fragment_receiver
    mark = rx.mark()
    src = _source(tmp_path, f"frag-{trimmed}.bin", 3000)
    (rx.root / "frag").mkdir(exist_ok=True)
    (rx.root / "frag" / src.name).write_bytes(b"old content")
    result = run_host_sim(rx.url, "--force", "--fragment-size", "1024",
                          *(["--trimmed-writes"] if trimmed else []), src, "/frag/")
    _assert_refused(result, "WRITE", "0x80070057: invalid argument (the guest refused a field "
                                     "(name, size or fragment); see its log)")
    _log_line(rx, "refused request: 0x80070057: invalid argument: WRITE size 1024 exceeds "
                  "the maximum fragment 1000", since=mark)
    # the failed WRITE ended the copy: temp removed, old target untouched; the copy's log
    # line carries the status the host was answered with
    line = _log_line(rx, f"copy aborted: /frag/{src.name} (0/3000 bytes")
    assert line.endswith(": 0x80070057: invalid argument: WRITE size 1024 exceeds the maximum "
                         "fragment 1000"), line
    assert (rx.root / "frag" / src.name).read_bytes() == b"old content"
    assert temp_files(rx.root) == []


def test_fragment_just_above_the_framing_maximum_drops_the_connection(
        receiver: ReceiverProcess, tmp_path: Path) -> None:
    """What actually happens with --fragment-size 6145 against a stock receiver: the WRITE
    message (msgsize 20 + 52 + 6145 = 6217) is above the receiver's framing maximum (6216),
    so it is a framing error, not a 0x80070057 answer: the receiver closes the connection
    without answering and the host reports the lost connection."""
    src = _source(tmp_path, "framing.bin", 7000)
    result = run_host_sim(receiver.url, "--create-full-path", "--fragment-size", "6145", src,
                          "/framing/")
    assert result.returncode == 1
    assert result.stdout == ""
    assert re.fullmatch(rf"host-sim: copy of {re.escape(str(src))} failed: "
                        r"(the guest closed the connection|connection lost: .*)",
                        result.stderr.strip()), result.stderr
    line = _log_line(receiver, "framing error, closing: pipe msgsize 6217 exceeds the "
                               "maximum 6216")
    assert "WARNING" in line
    aborted = _log_line(receiver, "copy aborted: /framing/framing.bin (0/7000 bytes")
    assert "framing error" in aborted
    assert list((receiver.root / "framing").iterdir()) == []


def test_trimmed_writes_fit_where_full_bodies_do_not(small_fragment_receiver: ReceiverProcess,
                                                     tmp_path: Path) -> None:
    """--fragment-size 1100 with a 500-byte file: the full-length WRITE body (52 + 1100) is
    above the framing maximum 1108 - 20; the trimmed one (52 + 500) frames and is accepted."""
    rx = small_fragment_receiver
    src = _source(tmp_path, "trim.bin", 500)
    full = run_host_sim(rx.url, "--create-full-path", "--fragment-size", "1100", src, "/trim/")
    assert full.returncode == 1
    assert "connection" in full.stderr
    trimmed = run_host_sim(rx.url, "--create-full-path", "--fragment-size", "1100",
                           "--trimmed-writes", src, "/trim/")
    assert trimmed.returncode == 0, trimmed.stderr
    assert (rx.root / "trim" / "trim.bin").read_bytes() == src.read_bytes()


# -- scenarios the CLI cannot express: HostClient with hand-made requests --------------

def _start_with_name_field(host: HostClient, field: bytes, *, which: str) -> bytes:
    """A START (tid issued) whose file_name or path_name field is replaced by ``field``."""
    message = bytearray(host.conn.start_copy(file_name="ok.bin", path_name="/names/",
                                             flags=CopyFlags.CREATE_PATH, file_size=0))
    offset = 28 + 36 + (0 if which == "file_name" else 520)
    assert len(field) == 520
    message[offset:offset + 520] = field
    return bytes(message)


@pytest.mark.parametrize(("which", "field", "reason"), [
    pytest.param("file_name", b"A\x00" * 260, "name has no NUL terminator within 260",
                 id="no-nul"),
    pytest.param("path_name", b"A\x00" * 260, "name has no NUL terminator within 260",
                 id="path-no-nul"),
    pytest.param("file_name", (b"x\x00\x00\xd8y\x00").ljust(520, b"\x00"),
                 "name is not valid UTF-16", id="unpaired-surrogate"),
    pytest.param("file_name", bytes(520), "file_name '' is empty", id="empty"),
])
async def test_invalid_name(receiver: ReceiverProcess, which: str, field: bytes,
                            reason: str) -> None:
    with trio.fail_after(10):
        async with open_host(receiver.url) as host:
            await host.negotiate()
            answer = await host.request(_start_with_name_field(host, field, which=which))
            assert answer.status == Status.INVALIDARG
            assert explain_status(answer.status).startswith("0x80070057: invalid argument")
            # the connection is still usable
            ok = await start_copy(host, "/names/", f"after-{which}-{len(reason)}.bin", 0,
                                  create=True)
            assert ok.ok
            assert (await host.request(host.conn.complete())).ok
    await receiver.await_log(r"copy failed: \(refused START\).*0x80070057: invalid "
                             f"argument: START: {re.escape(reason)}")
    assert not (receiver.root / "names" / "ok.bin").exists()


@pytest.mark.parametrize(("msgtype", "operation", "reason"), [
    pytest.param(IcMsgType.FCOPY, 9, "unknown fcopy operation 9", id="fcopy-op-9"),
    pytest.param(IcMsgType.HEARTBEAT, 0, "unknown IC message type 1", id="heartbeat"),
])
async def test_unknown_operation_or_message_type(receiver: ReceiverProcess, msgtype: int,
                                                 operation: int, reason: str) -> None:
    payload = codec.build_message(icmsgtype=msgtype, body=codec.build_fcopy_header(operation),
                                  transaction_id=0)
    with trio.fail_after(10):
        async with open_host(receiver.url) as host:
            await host.negotiate()
            answer = await host.request(host.conn.raw(payload, "unknown"))
            assert answer.status == Status.NOT_SUPPORTED
            assert explain_status(answer.status) == "0x80070032: the request is not supported"
            # answered, not dropped: the next request works
            assert (await host.request(host.conn.cancel())).ok
    await receiver.await_log(f"refused request: 0x80070032: the request is not supported: "
                             f"{reason}")


async def test_fcopy_before_negotiate_and_write_without_copy(receiver: ReceiverProcess) -> None:
    with trio.fail_after(10):
        async with open_host(receiver.url) as host:
            early = await host.request(host.conn.complete())
            assert early.status == Status.E_FAIL
            await host.negotiate()
            stray = await host.request(host.conn.write(0, b"data"))
            assert stray.status == Status.E_FAIL
            no_copy = await host.request(host.conn.complete())
            assert no_copy.status == Status.E_FAIL
    await receiver.await_log("refused request: 0x80004005: .*FCOPY before a successful "
                             "NEGOTIATE")
    await receiver.await_log("refused request: 0x80004005: .*WRITE with no open copy")
    await receiver.await_log("refused request: 0x80004005: .*COMPLETE with no open copy")


# -- disk full: a real 1 MiB tmpfs (needs root and mount permission) -------------------

@pytest.fixture(scope="module")
def small_fs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    with mounted_tmpfs(tmp_path_factory.mktemp("tmpfs"), "1m") as mnt:
        yield mnt


def test_disk_full_at_start_from_the_free_space_check(small_fs: Path, tmp_path: Path) -> None:
    """A (sparse) 4 MiB source for a 1 MiB filesystem: refused at START, before any data."""
    root = small_fs / "start-check"
    root.mkdir()
    src = tmp_path / "huge.img"
    with src.open("wb") as f:
        f.truncate(4 << 20)
    with running_receiver(root, ["tcp://127.0.0.1:0"]) as rx:
        result = run_host_sim(rx.url, "--create-full-path", src, "/d/")
        _assert_refused(result, "START", "0x80070070: not enough space on the disk (the "
                                         "guest's disk has too little space)")
        line = _log_line(rx, "copy failed: /d/", "huge.img")
        assert re.search(r"0x80070070: not enough space on the disk: /d/huge\.img needs "
                         r"4194304 bytes but only \d+ are free there", line), line
    assert not (root / "d").exists()  # refused before creating the directory
    assert temp_files(root) == []


def test_disk_full_during_the_copy_keeps_the_old_target(small_fs: Path, tmp_path: Path) -> None:
    """--no-free-space-check: the data really hits ENOSPC; the WRITE gets 0x80070070, the
    temp file is removed and the old target (overwritten with --force) is untouched."""
    root = small_fs / "enospc"
    root.mkdir()
    old = random_bytes(100_000, seed=7)
    (root / "big.bin").write_bytes(old)
    src = _source(tmp_path, "big.bin", 3 << 20, seed=8)
    with running_receiver(root, ["unix://" + str(tmp_path / "s.sock")],
                          ["--no-free-space-check"]) as rx:
        result = run_host_sim(rx.url, "--force", "--window", "8", src, "/")
        _assert_refused(result, "WRITE", "0x80070070: not enough space on the disk (the "
                                         "guest's disk has too little space)")
        line = _log_line(rx, "copy failed: /big.bin")
        assert "0x80070070: not enough space on the disk: writing /big.bin failed: ENOSPC" \
            in line
    assert (root / "big.bin").read_bytes() == old
    assert temp_files(root) == []
    assert sorted(p.name for p in root.iterdir()) == ["big.bin"]


async def test_copy_vm_file_raises_copy_failed_itself_for_a_refused_write(
        small_fragment_receiver: ReceiverProcess, tmp_path: Path) -> None:
    """The API documents CopyFailed (with the status) for a refused WRITE, not an
    ExceptionGroup from the tasks that send the data."""
    src = _source(tmp_path, "api-frag.bin", 5000)
    with trio.fail_after(10), pytest.raises(CopyFailed) as failed:
        await copy_vm_file(small_fragment_receiver.url, src, "/", fragment_size=1024,
                           window=4)
    assert failed.value.status == Status.INVALIDARG
    assert str(failed.value).startswith("WRITE refused: 0x80070057")
