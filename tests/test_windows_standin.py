"""host_sim on Windows, with a stand-in: no Windows runs here.

A subprocess imports trio (as it is on Windows, trio is there before anything of ours),
then takes away what Windows does not have: the POSIX-only ``os`` attributes, AF_VSOCK and
the ``fcntl`` module, and says ``sys.platform == "win32"`` (AF_UNIX stays: trio's Linux
backend needs it for its wakeup socket pair; gsi only reads it with ``getattr``). In that
process every module of ``gsi`` and ``host_sim`` must import, and ``host-sim copy`` must
copy a file to a receiver over ``hyperv://`` with the thread-backed transport (``--transport-mode
threaded``), a Unix socket standing in for the AF_HYPERV one (as in
``test_transports_hyperv.py``), with and without ``--fault`` (one or more kinds of each
family of docs/faults.md). The stand-in logs the transport's choice of stream
(``gsi.transports`` at INFO), so the test sees which stream every connection used. The
receiver (a Linux guest) runs in this test's process.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import NamedTuple

import pytest
import trio
from fault_helpers import sessions_gone, temp_files

from gsi.testing import open_guest

SVC = "0000138d-facb-11e6-bd58-64006a7986d3"

POSIX_ONLY_OS = (
    # flags: the sink's and the path walk's, the vmbus emulation's, and a few more
    "O_DIRECTORY", "O_NOFOLLOW", "O_CLOEXEC", "O_NONBLOCK", "O_TMPFILE", "O_PATH",
    "O_NOATIME", "O_DSYNC", "O_SYNC", "O_NOCTTY",
    # functions the Python docs mark "Availability: Unix"
    "fwalk", "pread", "pwrite", "preadv", "pwritev", "posix_fallocate", "posix_fadvise",
    "fstatvfs", "statvfs", "mkfifo", "fchmod", "fchown", "fdatasync", "sync",
    "sched_getaffinity", "getuid", "geteuid", "getgid", "killpg", "setsid", "getloadavg",
    "memfd_create", "copy_file_range", "sendfile", "splice",
)

STANDIN = f"""
import os, pkgutil, socket, sys

import trio  # first: on Windows trio is imported before anything of ours

AF_UNIX = socket.AF_UNIX
guest_socket, *copy_args = sys.argv[1:]
for name in {POSIX_ONLY_OS!r}:
    if hasattr(os, name):
        delattr(os, name)
if hasattr(socket, "AF_VSOCK"):
    del socket.AF_VSOCK
sys.modules["fcntl"] = None  # no such module on Windows: importing it raises ImportError
sys.platform = "win32"

import gsi
import host_sim

for package in (gsi, host_sim):
    for name in package.__all__:
        getattr(package, name)
    for module in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
        __import__(module.name)

from gsi.transports import hyperv
from host_sim import cli
import logging

logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
logging.getLogger("gsi.transports").setLevel(logging.INFO)  # "using the threaded stream"

hyperv.hyperv_socket = lambda: socket.socket(AF_UNIX, socket.SOCK_STREAM)
hyperv._sockaddr = lambda address: guest_socket
sys.exit(cli.main(copy_args))
"""


DATA = os.urandom(200_000)  # 33 WRITEs (write:0 .. write:32), the last one short

COMMITTED: list[list[str]] = [
    [],
    ["reorder:at=write:2"],
    ["duplicate:at=write:5"],
    ["overlap:at=write:3,bytes=100"],
    ["stall:at=write:10,seconds=0.05"],
    ["noread:at=write:1,seconds=0.05"],  # its cancelled receive is kept for the next one
    ["corrupt:at=write:1,field=icmsgsize,value=0"],  # a field the guest ignores
    ["idle:connections=2,seconds=0.05"],  # more connections, opened the same way
]

NOT_COMMITTED: list[tuple[list[str], str]] = [  # a copy the guest must not commit
    (["corrupt:at=write:0,field=size,value=max"], "refused"),
    (["keep-going", "corrupt:at=write:4,field=offset,value=max"], "refused"),
    (["truncate:at=write:4"], "host-closed"),  # cut short, then send_eof
    (["garbage:at=write:2,bytes=64,seed=1"], "host-closed"),
    (["disconnect:bytes=20000"], "host-closed"),
    (["cancel:at=write:3"], "cancelled"),
    (["complete-early:at=write:3"], "refused"),
    (["abandon:at=write:3"], "abandoned"),
]


class Run(NamedTuple):
    status: int
    stdout: str
    stderr: str
    target: bytes | None
    """The guest's copy (None: absent)."""
    committed: int
    """Copies the receiver committed."""


async def run_standin(tmp_path: Path, faults: list[str], mode: str = "threaded") -> Run:
    """``host-sim copy --transport-mode MODE [--fault F]... report.bin /in/`` (DATA) in the
    stand-in against a fresh receiver, which then holds no temp file."""
    source = tmp_path / "report.bin"
    source.write_bytes(DATA)
    with trio.fail_after(60):
        async with open_guest() as guest:
            assert guest.url.startswith("unix://")
            done = await trio.run_process(
                [sys.executable, "-c", STANDIN, guest.url.removeprefix("unix://"),
                 "copy", "--to", f"hyperv://loopback/{SVC}", "--create-full-path",
                 "--window", "4", "--transport-mode", mode,
                 *(arg for fault in faults for arg in ("--fault", fault)),
                 str(source), "/in/"],
                capture_stdout=True, capture_stderr=True, check=False)
            await sessions_gone(guest)
            assert temp_files(guest.root) == []
            target = guest.path("/in/report.bin")
            run = Run(done.returncode, done.stdout.decode(errors="replace"),
                      done.stderr.decode(errors="replace"),
                      target.read_bytes() if target.exists() else None,
                      guest.stats.committed)
    assert "Traceback" not in run.stderr, run.stderr
    return run


def report_line(stdout: str) -> str:
    """The report of the one copy (with faults)."""
    (line,) = [x for x in stdout.splitlines() if x.startswith("fault copy -> /in/report.bin")]
    return line


@pytest.mark.parametrize("fault", COMMITTED, ids=lambda f: " ".join(f) or "no-fault")
async def test_host_sim_imports_and_copies_without_posix(tmp_path: Path,
                                                         fault: list[str]) -> None:
    run = await run_standin(tmp_path, fault)
    assert run.status == 0, run.stderr
    assert run.target == DATA
    assert run.committed == 1
    if fault:
        assert (": committed (committed: yes); applied: " + " ".join(fault)
                in report_line(run.stdout))
    # Every connection, the copy's and any idle one, took the thread-backed stream.
    connections = 1 + sum(int(f.split("connections=")[1].split(",")[0])
                          for f in fault if f.startswith("idle:"))
    assert run.stderr.count("using the threaded stream (forced by native=False)") == connections
    assert "using the native" not in run.stderr


@pytest.mark.parametrize(("fault", "outcome"), NOT_COMMITTED,
                         ids=lambda f: " ".join(f) if isinstance(f, list) else None)
async def test_faults_that_fail_the_copy_without_posix(tmp_path: Path, fault: list[str],
                                                       outcome: str) -> None:
    run = await run_standin(tmp_path, fault)
    assert run.status == 1, run.stderr
    line = report_line(run.stdout)
    assert f": {outcome} (committed: no); applied: " in line, line
    if "keep-going" in fault:  # every message sent all the same, and answered
        assert "writex28 0x80004005, complete 0x80004005" in line, line
    assert all(f in line.split("applied: ")[1].split(";")[0].split() for f in fault), line
    assert run.target is None
    assert run.committed == 0
    assert run.stderr.count("using the threaded stream (forced by native=False)") == 1


@pytest.mark.parametrize("mode", ["native", "threaded"])
async def test_the_fault_host_takes_the_transport_mode(tmp_path: Path, mode: str) -> None:
    """``--transport-mode`` picks the fault host's stream as it does a clean copy's."""
    run = await run_standin(tmp_path, ["reorder:at=write:0"], mode)
    assert run.status == 0, run.stderr
    assert run.target == DATA
    assert ": committed (committed: yes)" in report_line(run.stdout)
    other = "native" if mode == "threaded" else "threaded"
    assert f"using the {mode} stream (forced by native={mode == 'native'})" in run.stderr
    assert f"using the {other}" not in run.stderr


async def test_the_standin_really_removes_posix() -> None:
    """The stand-in is only worth something if the guest side could not run in it."""
    probe = STANDIN.split("import gsi\n")[0] + (
        "from gsi.sink import FileSink\n"
        "try:\n"
        "    FileSink(sys.argv[2])\n"
        "except AttributeError as exc:\n"
        "    print(exc)\n")
    with trio.fail_after(60):
        done = await trio.run_process([sys.executable, "-c", probe, "unused", "."],
                                      capture_stdout=True, check=True)
    assert b"has no attribute 'O_" in done.stdout
