"""Load: 64 concurrent copies of 8 MiB with mixed windows, while 8 connections send
garbage and 8 sit idle, against a real ``gsi-receiver`` process (``--no-fsync``).

Every good copy must arrive byte for byte, every garbage connection must be closed by
the receiver without anything committed, every idle one must be closed after the idle
timeout, and the receiver's peak RSS (``VmHWM``) must stay under RSS_BOUND_MIB.

The bound comes from ReceiverConfig's memory bound: about 30 MiB for the process, and
per connection with an open copy its 1 MiB write buffer plus the receive chunk, the
framer's bytes and one batch of answers (3 x 256 KiB at most, far less in practice):
30 + 64 x 1.8 + 16 x 0.8 = ~158 MiB at worst for the 80 connections here, so 200 MiB
leaves room for the allocator while still failing on any per-connection leak or an
unbounded buffer (512 MiB go through the receiver).
"""

from __future__ import annotations

import hashlib
import random
import re
import time
from pathlib import Path

import trio
from fault_helpers import proc_status_kib, temp_files

from gsi.testing import guest_process
from gsi.transports import connect
from host_sim import copy_vm_file, faulty_copy, parse_fault

COPIES = 64
SIZE = 8 << 20
SOURCES = 8
WINDOWS = (1, 8, 32, 128)
IDLE = 5.0
"""The receiver's idle timeout: long enough that no good copy, however slow under
load, pauses that long; the idle connections are closed after it."""
RSS_BOUND_MIB = 200
GARBAGE = [
    ["garbage:at=negotiate,bytes=65536,seed=0"],
    ["garbage:at=negotiate,bytes=1000000,seed=1"],
    ["garbage:at=start,bytes=4096,seed=2"],
    ["garbage:at=write:10,bytes=65536,seed=3"],
    ["garbage:at=write:100,bytes=200000,seed=7"],
    ["corrupt:at=write:0,field=msgsize,value=max"],
    ["corrupt:at=write:5,field=pipe-flags,value=0"],
    ["truncate:at=write:20,keep=30"],
]
IDLERS = 8


async def test_load_with_garbage_and_idle_connections(tmp_path: Path) -> None:
    sources = []
    for i in range(SOURCES):
        path = tmp_path / f"source{i}"
        path.write_bytes(random.Random(i).randbytes(SIZE))
        sources.append((path, hashlib.sha256(path.read_bytes()).hexdigest()))
    junk_source = random.Random(99).randbytes(1 << 20)
    root = tmp_path / "root"
    copied: dict[int, float] = {}
    garbage_reports = []
    idle_closed: list[float] = []

    async def good(i: int) -> None:
        path, _ = sources[i % SOURCES]
        result = await copy_vm_file(guest.url, path, "/load", name=f"c{i}",
                                    create_full_path=True, window=WINDOWS[i % len(WINDOWS)])
        copied[i] = result.seconds

    async def garbage(i: int) -> None:
        report = await faulty_copy(guest.url, junk_source, "/junk", name=f"g{i}",
                                   create_full_path=True, window=1 + 4 * (i % 3),
                                   plan=[parse_fault(s) for s in GARBAGE[i]],
                                   answer_timeout=60)
        garbage_reports.append(report)

    async def idle() -> None:
        stream = await connect(guest.url)
        started = trio.current_time()
        try:
            data = await stream.receive_some(1)
        except trio.BrokenResourceError:
            data = b""
        assert data == b""  # closed by the receiver, nothing sent
        idle_closed.append(trio.current_time() - started)
        await stream.aclose()

    with guest_process(root, idle_timeout=IDLE, log_path=tmp_path / "receiver.log") as guest:
        pid = guest.process.pid
        rss_before = proc_status_kib(pid, "VmRSS")
        started = time.perf_counter()
        with trio.fail_after(240):
            async with trio.open_nursery() as nursery:
                for _ in range(IDLERS):
                    nursery.start_soon(idle)
                for i in range(len(GARBAGE)):
                    nursery.start_soon(garbage, i)
                for i in range(COPIES):
                    nursery.start_soon(good, i)
        seconds = time.perf_counter() - started
        peak_mib = proc_status_kib(pid, "VmHWM") / 1024
        assert guest.process.poll() is None  # alive after all of it
    log = guest.log()

    print(f"\nload: {COPIES} copies x {SIZE >> 20} MiB ({COPIES * SIZE >> 20} MiB) in "
          f"{seconds:.1f} s with windows {WINDOWS}; faults: {len(GARBAGE)} garbage + "
          f"{IDLERS} idle connections; receiver RSS {rss_before / 1024:.1f} MiB at start, "
          f"peak {peak_mib:.1f} MiB (bound {RSS_BOUND_MIB} MiB)")
    assert sorted(copied) == list(range(COPIES))
    for i in range(COPIES):
        target = root / "load" / f"c{i}"
        assert hashlib.sha256(target.read_bytes()).hexdigest() == sources[i % SOURCES][1], i
    for report in garbage_reports:
        assert report.committed is False, report
        assert report.guest_closed, report
    assert len(garbage_reports) == len(GARBAGE)
    assert not any((root / "junk").glob("g*"))
    assert len(idle_closed) == IDLERS
    assert all(IDLE * 0.95 <= s < IDLE + 15 for s in idle_closed), idle_closed
    assert temp_files(root) == []
    assert peak_mib < RSS_BOUND_MIB, f"peak RSS {peak_mib:.1f} MiB"
    stopped = re.search(r"stopped: (\d+) connections \((\d+) refused, 0 evicted\), (\d+)"
                        r" copies committed", log)
    assert stopped is not None, log[-2000:]
    assert int(stopped[3]) == COPIES
    assert int(stopped[1]) == COPIES + len(GARBAGE) + IDLERS and int(stopped[2]) == 0
    assert "Traceback" not in log
