"""host_sim on Windows, with a stand-in: no Windows runs here.

A subprocess imports trio (as it is on Windows, trio is there before anything of ours),
then takes away what Windows does not have: the POSIX-only ``os`` attributes, AF_VSOCK and
the ``fcntl`` module, and says ``sys.platform == "win32"`` (AF_UNIX stays: trio's Linux
backend needs it for its wakeup socket pair; gsi only reads it with ``getattr``). In that
process every module of ``gsi`` and ``host_sim`` must import, and ``host-sim copy`` must
copy a file to a receiver over ``hyperv://`` with the thread-backed transport (``--transport-mode
threaded``), a Unix socket standing in for the AF_HYPERV one (as in
``test_transports_hyperv.py``). The receiver (a Linux guest) runs in this test's process.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import trio

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

hyperv.hyperv_socket = lambda: socket.socket(AF_UNIX, socket.SOCK_STREAM)
hyperv._sockaddr = lambda address: guest_socket
sys.exit(cli.main(copy_args))
"""


@pytest.mark.parametrize("fault", [
    [],
    pytest.param(["--fault", "reorder:at=write:2"], marks=pytest.mark.xfail(
        strict=True, reason="host_sim/faults.py opens the source with os.O_CLOEXEC and "
                            "reads it with os.pread, which Windows lacks")),
])
async def test_host_sim_imports_and_copies_without_posix(tmp_path: Path,
                                                         fault: list[str]) -> None:
    data = os.urandom(200_000)  # 33 WRITEs, the last one short
    source = tmp_path / "report.bin"
    source.write_bytes(data)
    with trio.fail_after(60):
        async with open_guest() as guest:
            assert guest.url.startswith("unix://")
            done = await trio.run_process(
                [sys.executable, "-c", STANDIN, guest.url.removeprefix("unix://"),
                 "copy", "--to", f"hyperv://loopback/{SVC}", "--transport-mode", "threaded",
                 "--create-full-path", "--window", "4", *fault, str(source), "/in/"],
                capture_stdout=True, capture_stderr=True, check=False)
            stderr = done.stderr.decode(errors="replace")
            assert done.returncode == 0, stderr
            assert "Traceback" not in stderr
            assert guest.path("/in/report.bin").read_bytes() == data
            assert guest.stats.committed == 1


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
