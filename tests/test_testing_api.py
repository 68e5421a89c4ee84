"""The testing API users put in their CI, used here the way a user would use it.

``gsi_guest`` (pytest-trio; this suite runs in trio_mode) and ``gsi_guest_process`` come
from the pytest plugin that the ``pytest11`` entry point loads; ``open_guest``,
``guest_process``, ``copy_file_sync`` and ``receiver_args`` are imported directly. The
plugin's behaviour in a project of its own (a sync test asking for the async fixture, a
receiver dying under a test, ``-p no:gsi``) runs in a pytest subprocess.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import trio
from e2e_helpers import all_temps

import gsi.testing
from gsi import CopyFailed, CopyFlags, Status
from gsi.testing import (
    Guest,
    GuestProcess,
    GuestProcessError,
    copy_file_sync,
    guest_process,
    open_guest,
    receiver_args,
)
from gsi.transports import TransportError, connect
from host_sim import copy_vm_file, open_host

FRAGMENT = 6144
SIZES = [0, 1, FRAGMENT, 3 * FRAGMENT + 17]


def _source(tmp_path: Path, name: str, size: int, seed: int = 0) -> tuple[Path, bytes]:
    data = random.Random(seed).randbytes(size)
    path = tmp_path / "host" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path, data


# -- gsi_guest: the async fixture (pytest-trio, trio_mode here) -------------------------


@pytest.mark.parametrize("size", SIZES)
async def test_gsi_guest_copies_byte_identically(gsi_guest: Guest, tmp_path: Path,
                                                 size: int) -> None:
    source, data = _source(tmp_path, "blob.bin", size, seed=size)
    with trio.fail_after(10):
        result = await copy_vm_file(gsi_guest.url, source, "/data/in/", create_full_path=True)
    assert gsi_guest.url.startswith("unix:///")
    assert gsi_guest.root == tmp_path / "gsi-root"
    assert gsi_guest.path("/data/in/blob.bin").read_bytes() == data
    assert result.size == size
    assert (gsi_guest.stats.committed, gsi_guest.stats.bytes_committed) == (1, size)


async def test_gsi_guest_refusals_raise_with_the_status(gsi_guest: Guest,
                                                        tmp_path: Path) -> None:
    first, first_data = _source(tmp_path, "notes.txt", 100, seed=1)
    with trio.fail_after(10):
        with pytest.raises(CopyFailed, match="0x80070003") as missing:
            await gsi_guest.copy(first, "/no/such/dir/")
        assert missing.value.status == Status.PATH_NOT_FOUND
        await gsi_guest.copy(first, "/docs/", create_full_path=True)
        second, second_data = _source(tmp_path / "host", "notes.txt", 5000, seed=2)
        with pytest.raises(CopyFailed, match="0x80070050") as exists:
            await gsi_guest.copy(second, "/docs/")
        assert exists.value.status == Status.ALREADY_EXISTS
        assert gsi_guest.path("/docs/notes.txt").read_bytes() == first_data
        await gsi_guest.copy(second, "/docs/", force=True)
    assert gsi_guest.path("/docs/notes.txt").read_bytes() == second_data
    assert (gsi_guest.stats.committed, gsi_guest.stats.failed) == (2, 2)


async def test_gsi_guest_drops_fragments_above_its_framing_maximum(gsi_guest: Guest,
                                                                  tmp_path: Path) -> None:
    # 20 + 52 + 65536 bytes exceed the default receiver's framing maximum (6216): it drops
    # the connection without an answer (PROTOCOL.md section 2), so there is no status.
    source, _ = _source(tmp_path, "big.bin", 70000)
    with trio.fail_after(10), pytest.raises(CopyFailed, match=r"closed|lost") as dropped:
        await gsi_guest.copy(source, "/", fragment_size=65536)
    assert dropped.value.status is None
    assert not gsi_guest.path("/big.bin").exists()
    assert gsi_guest.stats.failed == 1


@pytest.mark.gsi_config(max_fragment=65536, trim_write_echo=True)
async def test_gsi_config_marker_reaches_gsi_guest(gsi_guest: Guest, tmp_path: Path) -> None:
    source, data = _source(tmp_path, "big.bin", 5 * 65536 + 3)
    with trio.fail_after(10):
        await gsi_guest.copy(source, "/", fragment_size=65536, window=4)
    assert gsi_guest.path("/big.bin").read_bytes() == data
    assert gsi_guest.receiver.config.max_fragment == 65536
    assert gsi_guest.receiver.config.trim_write_echo


# -- open_guest directly -----------------------------------------------------------------


async def test_open_guest_with_options_and_a_temporary_root(tmp_path: Path) -> None:
    source, data = _source(tmp_path, "image.raw", (1 << 20) + 3)
    with trio.fail_after(10):
        async with open_guest(max_fragment=65536, trim_write_echo=True) as guest:
            assert not guest.root.is_relative_to(tmp_path)
            await copy_vm_file(guest.url, source, "/images/", create_full_path=True,
                               fragment_size=65536, window=8)
            assert guest.path("/images/image.raw").read_bytes() == data
            url, root = guest.url, guest.root
        assert not root.exists()
        with pytest.raises(TransportError, match="cannot connect"):
            await connect(url)


async def test_open_guest_keeps_a_root_it_was_given(tmp_path: Path) -> None:
    source, data = _source(tmp_path, "kept.bin", 10)
    root = tmp_path / "given" / "root"
    with trio.fail_after(10):
        async with open_guest(root) as guest:
            await guest.copy(source, "/")
    assert (root / "kept.bin").read_bytes() == data


async def test_open_guest_aborts_an_open_copy_when_the_block_ends(tmp_path: Path) -> None:
    root = tmp_path / "root"
    with trio.fail_after(10):
        async with open_guest(root) as guest, open_host(guest.url) as host:
            await host.negotiate()
            start = host.conn.start_copy(file_name="half.bin", path_name="/",
                                         flags=CopyFlags.NONE, file_size=2 * FRAGMENT)
            assert (await host.request(start)).ok
            assert (await host.request(host.conn.write(0, b"x" * FRAGMENT))).ok
            assert guest.receiver.active_connections == 1
            assert all_temps(root) == 1  # the copy's temp file (unnamed, or named)
    assert list(root.iterdir()) == []  # no target, no temp file left behind


# -- gsi_guest_process: the sync fixture ---------------------------------------------------


@pytest.mark.parametrize("size", SIZES)
def test_gsi_guest_process_copies_byte_identically(gsi_guest_process: GuestProcess,
                                                   tmp_path: Path, size: int) -> None:
    source, data = _source(tmp_path, "blob.bin", size, seed=size)
    result = gsi_guest_process.copy(source, "/data/in/", create_full_path=True)
    assert gsi_guest_process.process.pid != os.getpid()
    assert gsi_guest_process.url.startswith("unix:///")
    assert gsi_guest_process.root == tmp_path / "gsi-root"
    assert gsi_guest_process.path("/data/in/blob.bin").read_bytes() == data
    assert result.size == size
    assert "copy committed: /data/in/blob.bin" in gsi_guest_process.log()


def test_gsi_guest_process_refusal_raises_with_the_hosts_message(
    gsi_guest_process: GuestProcess, tmp_path: Path
) -> None:
    source, _ = _source(tmp_path, "a.txt", 10)
    with pytest.raises(CopyFailed) as refused:
        gsi_guest_process.copy(source, "/missing/")
    assert refused.value.status == Status.PATH_NOT_FOUND
    assert str(refused.value) == ("START refused: 0x80070003: the path was not found "
                                  "(use --create-full-path to create it)")
    assert "directory /missing does not exist" in gsi_guest_process.log()


@pytest.mark.gsi_config(max_fragment=65536)
class TestMarkerOnAClass:
    @pytest.mark.gsi_config(trim_write_echo=True, max_connections=3)
    def test_class_and_function_options_merge(self, gsi_guest_process: GuestProcess,
                                              tmp_path: Path) -> None:
        argv = list(gsi_guest_process.process.args)  # type: ignore[arg-type]
        for flag in ("--max-fragment", "65536", "--trim-write-echo", "--max-connections",
                     "3", "--no-fsync"):
            assert flag in argv
        source, data = _source(tmp_path, "big.bin", 3 * 65536 + 1)
        gsi_guest_process.copy(source, "/", fragment_size=65536, window=3)
        assert gsi_guest_process.path("/big.bin").read_bytes() == data

    @pytest.mark.gsi_config(max_fragment=FRAGMENT)
    async def test_the_closest_marker_wins(self, gsi_guest: Guest) -> None:
        assert gsi_guest.receiver.config.max_fragment == FRAGMENT


def test_copy_file_sync_with_a_name(gsi_guest_process: GuestProcess, tmp_path: Path) -> None:
    source, data = _source(tmp_path, "local-name.bin", 2 * FRAGMENT)
    result = copy_file_sync(gsi_guest_process.url, source, "/x/", name="guest-name.bin",
                            create_full_path=True, window=2)
    assert result.file_name == "guest-name.bin"
    assert gsi_guest_process.path("/x/guest-name.bin").read_bytes() == data
    assert not gsi_guest_process.path("/x/local-name.bin").exists()


def test_copy_file_sync_to_nobody(tmp_path: Path) -> None:
    source, _ = _source(tmp_path, "a", 1)
    with pytest.raises(TransportError, match="cannot connect"):
        copy_file_sync(f"unix://{tmp_path}/nobody.sock", source, "/")


# -- guest_process directly: start, stop and what counts as a failure ---------------------


def test_guest_process_stops_cleanly(tmp_path: Path) -> None:
    log = tmp_path / "receiver.log"
    with guest_process(log_path=log) as guest:
        assert guest.stdout_lines == [f"listening on {guest.url}"]
        root = guest.root
    assert guest.process.returncode == 0
    assert "SIGTERM: shutting down" in log.read_text()
    assert not root.exists()  # the temporary root went with the block


def test_guest_process_reports_a_receiver_that_died(tmp_path: Path) -> None:
    with (pytest.raises(GuestProcessError, match="exited on its own") as failed,
          guest_process(log_path=tmp_path / "log") as guest):
        guest.process.kill()
        guest.process.wait()
    assert str(tmp_path / "log") in str(failed.value)


def test_guest_process_reports_a_traceback_in_the_log(tmp_path: Path) -> None:
    with (pytest.raises(GuestProcessError, match="logged a traceback"),
          guest_process(log_path=tmp_path / "log") as guest,
          guest.log_path.open("a") as log):
        log.write(f"{gsi.testing.TRACEBACK_MARK}:\n  boom\n")
    assert guest.process.returncode == 0


def test_guest_process_reports_a_failed_start(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gsi.testing, "_listen_url",
                        lambda directory: f"unix://{directory}/missing/guest.sock")
    log = tmp_path / "log"
    with (pytest.raises(GuestProcessError, match="exited with status 2 before listening") as e,
          guest_process(log_path=log)):
        pytest.fail("the block ran without a receiver")
    assert "cannot listen" in str(e.value)


def test_guest_process_keeps_the_blocks_own_exception(tmp_path: Path) -> None:
    with pytest.raises(KeyError) as raised, guest_process() as guest:
        guest.process.kill()
        guest.process.wait()
        raise KeyError("the test's own failure")
    assert any("exited on its own" in note for note in raised.value.__notes__)


@pytest.mark.parametrize(("config", "args"), [
    ({}, ["--no-fsync"]),
    ({"fsync": True}, []),
    ({"max_fragment": 65536, "trim_write_echo": True},
     ["--no-fsync", "--max-fragment", "65536", "--trim-write-echo"]),
    ({"check_free_space": False, "preallocate": True, "linux_status_codes": True},
     ["--no-fsync", "--no-free-space-check", "--preallocate", "--linux-status-codes"]),
    ({"file_mode": 0o640, "idle_timeout": 2.5, "linux_create_path": False},
     ["--no-fsync", "--file-mode", "640", "--idle-timeout", "2.5"]),
])
def test_receiver_args(config: dict[str, Any], args: list[str]) -> None:
    assert receiver_args("/srv/root", **config) == args


def test_receiver_args_refuses_what_the_cli_cannot_do() -> None:
    with pytest.raises(ValueError, match="cannot set"):
        receiver_args("/r", receive_size=4096)
    with pytest.raises(ValueError, match="must be at least 1"):
        receiver_args("/r", max_fragment=0)
    with pytest.raises(TypeError, match="no_such_option"):
        receiver_args("/r", no_such_option=1)


# -- the plugin in a project of its own -----------------------------------------------------

PLUGIN_CASES = '''
import pytest

def test_sync_test_asks_for_the_async_fixture(gsi_guest):
    pass

def test_receiver_dies_under_the_test(gsi_guest_process):
    gsi_guest_process.process.kill()
    gsi_guest_process.process.wait()

@pytest.mark.gsi_config(receive_size=4096)
def test_option_the_cli_cannot_set(gsi_guest_process):
    pass

@pytest.mark.gsi_config(65536)
def test_positional_marker_argument(gsi_guest_process):
    pass

@pytest.mark.trio
@pytest.mark.gsi_config(no_such_option=1)
async def test_async_fixture_with_an_unknown_option(gsi_guest):
    pass

# after the misuses above: gsi_guest must still work

@pytest.mark.trio
async def test_marker_mode_without_trio_mode(gsi_guest, tmp_path):
    (tmp_path / "f").write_bytes(b"data")
    await gsi_guest.copy(tmp_path / "f", "/")
    assert gsi_guest.path("/f").read_bytes() == b"data"
'''


def _run_pytest(project: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTEST_ADDOPTS", "PYTEST_DISABLE_PLUGIN_AUTOLOAD", "PYTEST_PLUGINS")}
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rA", *args],
        cwd=project, env=env, capture_output=True, text=True, timeout=120, check=False)


@pytest.fixture
def plugin_project(tmp_path: Path) -> Path:
    project = tmp_path / "project"
    project.mkdir()
    (project / "pytest.ini").write_text("[pytest]\n")
    (project / "test_cases.py").write_text(textwrap.dedent(PLUGIN_CASES))
    return project


def test_plugin_outcomes_in_a_fresh_project(plugin_project: Path) -> None:
    run = _run_pytest(plugin_project)
    out = run.stdout
    assert run.returncode == 1, out + run.stderr
    assert "2 passed, 5 errors" in out, out
    assert ("test_sync_test_asks_for_the_async_fixture: gsi_guest is an async fixture for "
            "trio tests") in out
    assert "Trio fixtures can only be used by Trio tests" not in out  # refused before it
    assert "PASSED test_cases.py::test_receiver_dies_under_the_test" in out
    assert "ERROR at teardown of test_receiver_dies_under_the_test" in out
    assert "gsi-receiver exited on its own (status -9)" in out
    assert ("test_option_the_cli_cannot_set: @pytest.mark.gsi_config: gsi-receiver's "
            "command line cannot set {'receive_size': 4096}") in out
    assert ("test_async_fixture_with_an_unknown_option: @pytest.mark.gsi_config: "
            "ReceiverConfig.__init__() got an unexpected keyword argument") in out
    assert "takes keyword options only" in out
    assert "PASSED test_cases.py::test_marker_mode_without_trio_mode" in out


def test_gsi_guest_without_pytest_trio(plugin_project: Path) -> None:
    run = _run_pytest(plugin_project, "-p", "no:trio", "-k", "async_fixture")
    assert run.returncode == 1
    assert ("test_sync_test_asks_for_the_async_fixture: the gsi_guest fixture needs "
            "pytest-trio (pip install pytest-trio)") in run.stdout, run.stdout


def test_plugin_can_be_turned_off(plugin_project: Path) -> None:
    run = _run_pytest(plugin_project, "-p", "no:gsi")
    assert run.returncode == 1
    assert "fixture 'gsi_guest' not found" in run.stdout
    assert "fixture 'gsi_guest_process' not found" in run.stdout
