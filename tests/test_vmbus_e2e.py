"""End to end through an emulated vmbus channel, in separate processes.

``python -m gsi.cli --listen vmbus-emu:///…?ring_size=…`` in one process, ``python -m
host_sim.cli copy --to vmbus-emu:///…`` in others (one after another, each attaching to
the same channel as its host), real ring buffers in a shared file between them. The same
scenarios run over a Unix socket, and the outcomes (exit codes, guest statuses, files)
must be the same. 1 MiB through a 12 KiB or 16 KiB data area wraps both rings many
times. CANCEL is driven from this process with the HostClient API over the emulator's
host stream.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio

from gsi.constants import CopyFlags
from gsi.transports import connect
from host_sim import HostClient

SIZES = (0, 1, 6144, 6145, (1 << 20) + 3)
TRANSPORTS = ("unix", "vmbus-emu:0x4000", "vmbus-emu:0x5000")
STATUS = re.compile(r"0x[0-9a-fA-F]{8}")


def listen_url(transport: str, tmp_path: Path) -> str:
    if transport == "unix":
        return f"unix://{tmp_path}/guest.sock"
    ring_size = transport.split(":")[1]
    return f"vmbus-emu://{tmp_path}/ring?ring_size={ring_size}"


@asynccontextmanager
async def receiver_process(tmp_path: Path, url: str, root: Path) -> AsyncIterator[str]:
    """A ``gsi-receiver`` subprocess; yields the URL it announced; stops it with SIGTERM
    and checks it exits 0 without a traceback."""
    log_path = tmp_path / "receiver.log"
    with log_path.open("wb") as log:
        proc = await trio.lowlevel.open_process(
            [sys.executable, "-m", "gsi.cli", "--root", str(root), "--listen", url,
             "--no-fsync"], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log)
    assert proc.stdout is not None
    try:
        buffer = b""
        with trio.fail_after(15):
            while b"\n" not in buffer:
                chunk = await proc.stdout.receive_some()
                assert chunk, f"the receiver exited: {log_path.read_text()}"
                buffer += chunk
        line = buffer.decode().splitlines()[0]
        assert line.startswith("listening on "), line
        yield line.removeprefix("listening on ")
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        with trio.fail_after(15):
            await proc.wait()
        await proc.stdout.aclose()
    log_text = log_path.read_text()
    assert proc.returncode == 0, log_text
    assert "Traceback" not in log_text, log_text


async def host_sim(url: str, *args: str | Path) -> tuple[int, str | None, str]:
    """``host-sim copy --to URL ARGS``: (exit code, the guest status it printed, stderr)."""
    with trio.fail_after(60):
        result = await trio.run_process(
            [sys.executable, "-m", "host_sim.cli", "copy", "--to", url, "--no-progress",
             *map(str, args)], capture_stdout=True, capture_stderr=True, check=False)
    err = result.stderr.decode()
    found = STATUS.search(err)
    return result.returncode, found.group(0).lower() if found else None, err


def snapshot(root: Path) -> dict[str, int]:
    """Every file under the root with its size (temp files would show up here)."""
    return {str(p.relative_to(root)): p.stat().st_size
            for p in sorted(root.rglob("*")) if p.is_file()}


EXPECTED_OUTCOMES = [
    ("sizes", 0, None),
    ("exists", 1, "0x80070050"),
    ("force", 0, None),
    ("path not found", 1, "0x80070003"),
    ("create path", 0, None),
]
EXPECTED_FILES = {
    **{f"sizes/s{n}.bin": n for n in SIZES},
    "sizes/s1.bin": 7,
    "a/b/c/s1048579.bin": (1 << 20) + 3,
}


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_copy_scenarios_same_as_sockets(tmp_path: Path, transport: str) -> None:
    root, src = tmp_path / "root", tmp_path / "src"
    root.mkdir()
    src.mkdir()
    sources = []
    for n in SIZES:
        sources.append(src / f"s{n}.bin")
        sources[-1].write_bytes(os.urandom(n))
    outcomes = []
    async with receiver_process(tmp_path, listen_url(transport, tmp_path), root) as url:
        rc, status, err = await host_sim(url, "--create-full-path", *sources, "/sizes/")
        outcomes.append(("sizes", rc, status))
        for source in sources:
            assert (root / "sizes" / source.name).read_bytes() == source.read_bytes(), err

        rc, status, _ = await host_sim(url, sources[1], "/sizes/")
        outcomes.append(("exists", rc, status))
        assert (root / "sizes/s1.bin").read_bytes() == sources[1].read_bytes()

        replacement = src / "new" / "s1.bin"
        replacement.parent.mkdir()
        replacement.write_bytes(b"7 bytes")
        rc, status, _ = await host_sim(url, "--force", replacement, "/sizes/")
        outcomes.append(("force", rc, status))
        assert (root / "sizes/s1.bin").read_bytes() == b"7 bytes"

        rc, status, _ = await host_sim(url, sources[3], "/missing/dir/")
        outcomes.append(("path not found", rc, status))

        rc, status, _ = await host_sim(url, "--create-full-path", sources[4], "/a/b/c/")
        outcomes.append(("create path", rc, status))
    assert outcomes == EXPECTED_OUTCOMES
    assert snapshot(root) == EXPECTED_FILES
    assert sorted(p.name for p in tmp_path.iterdir()) == ["receiver.log", "root", "src"]


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_cancel_through_the_host_api(tmp_path: Path, transport: str) -> None:
    root = tmp_path / "root"
    root.mkdir()
    source = tmp_path / "after.bin"
    source.write_bytes(os.urandom(20000))
    async with receiver_process(tmp_path, listen_url(transport, tmp_path), root) as url:
        with trio.fail_after(20):
            stream = await connect(url)
            client = HostClient(stream)
            try:
                await client.negotiate()
                conn = client.conn
                answer = await client.request(conn.start_copy(
                    file_name="cancelled.bin", path_name="/", flags=CopyFlags.NONE,
                    file_size=3 * 6144))
                assert answer.ok
                assert (await client.request(conn.write(0, b"x" * 6144))).ok
                answer = await client.request(conn.cancel())
                assert (answer.kind, answer.status) == ("CANCEL_FCOPY", 0)
                assert snapshot(root) == {}  # no partial file, no temp file
                # The channel carries on: WRITE with no open copy, then a whole copy.
                answer = await client.request(conn.write(0, b"y"))
                assert answer.status == 0x80004005
                await client.copy_file(source, "/")
            finally:
                await stream.aclose()
    assert snapshot(root) == {"after.bin": 20000}
    assert (root / "after.bin").read_bytes() == source.read_bytes()
