"""Where the receiver's CPU per WRITE goes: ``perf`` on a real ``gsi-receiver``.

``python -m benchmarks.rx_profile [--transport unix|tcp] [--window 64] [--trim]``: starts
``gsi-receiver --no-fsync`` (pinned like every benchmark server), drives it with the lean
client of :mod:`benchmarks.rx_cpu` (6144-byte fragments; one warm-up copy), then, over
the measured copies,

* counts the receiver's system calls (``perf stat -e syscalls:sys_enter_*``): receives,
  sends, ``pwritev2``, ``epoll_wait`` and ``futex`` per received chunk (a chunk is one
  send of answers);
* samples it (``perf record``) and splits its CPU by thread (the event-loop thread, the
  writer threads) and by where it runs: the Python interpreter, the kernel, other
  libraries. Each share is converted to microseconds per WRITE with the receiver's CPU
  time from ``/proc`` over the same copies.

The split is the profile behind the bounds in benchmarks/README.md. ``perf`` samples
slow the receiver a little (the per-WRITE figure here is above ``rx_cpu``'s); read the
shares, not the total. Needs ``perf`` with access to the tracepoints (root, or
``kernel.perf_event_paranoid`` <= 1); exits 2 with a message otherwise.
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import procs
from benchmarks.rx_cpu import FRAGMENT, Client, measured_copy

_SYSCALLS = ("recvfrom", "sendto", "pwritev2", "epoll_wait", "futex")
_MAIN = "event loop"


def _perf(argv: list[str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(["perf", *argv], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGINT)
    proc.wait(60)


def _copies(client: Client, root: Path, count: int, window: int,
            server: procs.Server) -> tuple[float, int]:
    """``count`` measured copies; receiver CPU s, WRITEs."""
    cpu = 0.0
    writes = 0
    for i in range(count):
        _, n, used = measured_copy(client, server, root, f"p{i}", window)
        cpu += used
        writes += n
        (root / f"p{i}").unlink()
    return cpu, writes


def _syscalls(path: Path) -> dict[str, int]:
    counts: dict[str, int] = {}
    for line in path.read_text().splitlines():
        match = re.match(r"\s*([\d,]+)\s+syscalls:sys_enter_(\w+)", line)
        if match:
            counts[match.group(2)] = int(match.group(1).replace(",", ""))
    return counts


def _samples(data: Path, main_tid: int) -> dict[tuple[str, str], int]:
    """Samples by (thread, where): where is python, kernel or other."""
    out = subprocess.run(["perf", "report", "-i", str(data), "--no-children", "--sort",
                          "pid,dso", "--stdio", "-g", "none", "-n"],
                         capture_output=True, text=True, check=True).stdout
    split: dict[tuple[str, str], int] = collections.Counter()
    for line in out.splitlines():
        match = re.match(r"\s*[\d.]+%\s+(\d+)\s+(\d+):\S*\s+(.+?)\s*$", line)
        if not match:
            continue
        samples, tid, dso = int(match.group(1)), int(match.group(2)), match.group(3)
        thread = _MAIN if tid == main_tid else "writer threads"
        where = ("python" if "libpython" in dso or dso.startswith("python")
                 else "kernel" if "kernel" in dso else "other")
        split[thread, where] += samples
    return split


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--transport", choices=["unix", "tcp"], default="unix")
    p.add_argument("--window", type=int, default=64)
    p.add_argument("--size-mib", type=int, default=96)
    p.add_argument("--copies", type=int, default=3)
    p.add_argument("--trim", action="store_true", help="receiver with --trim-write-echo")
    args = p.parse_args(argv)
    if shutil.which("perf") is None:
        print("rx_profile: needs perf (linux-perf / linux-tools)", file=sys.stderr)
        return 2
    if procs.PIN is not None:
        os.sched_setaffinity(0, procs.PIN["client"])
    tmp = Path(tempfile.mkdtemp(prefix="rxprof-"))
    root = tmp / "root"
    root.mkdir()
    size = (args.size_mib << 20) // FRAGMENT * FRAGMENT
    url = f"unix://{tmp}/rx.sock" if args.transport == "unix" else "tcp://127.0.0.1:0"
    rx_argv = [procs.PYTHON, "-m", "gsi.cli", "--root", str(root), "--listen", url,
               "--no-fsync", "--idle-timeout", "600", "--log-level", "WARNING",
               *(["--trim-write-echo"] if args.trim else [])]
    server = procs.Server("receiver", rx_argv, tmp / "receiver.log")
    try:
        client = Client(server.url, os.urandom(size), args.trim)
        _copies(client, root, 1, args.window, server)  # warm-up
        stat_out = tmp / "stat.txt"
        stat = _perf(["stat", "-o", str(stat_out), "-p", str(server.pid), "-e",
                      ",".join(f"syscalls:sys_enter_{name}" for name in _SYSCALLS)])
        time.sleep(0.5)  # perf attaches asynchronously; nothing is timed here
        _copies(client, root, args.copies, args.window, server)
        _stop(stat)
        data = tmp / "perf.data"
        record = _perf(["record", "-F", "2999", "-g", "-o", str(data), "-p", str(server.pid)])
        time.sleep(0.5)
        cpu, writes = _copies(client, root, args.copies, args.window, server)
        _stop(record)
        client.close()
        counts = _syscalls(stat_out)
        split = _samples(data, server.pid)
    finally:
        server.stop()
    if not counts or not split:
        print("rx_profile: perf recorded nothing (perf_event_paranoid? see --help)",
              file=sys.stderr)
        return 2
    us = cpu / writes * 1e6
    chunks = max(1, counts.get("sendto", 0))
    print(f"{args.transport}, window {args.window}, {'trimmed' if args.trim else 'full'} "
          f"echo, {writes} WRITEs: receiver {us:.2f} us CPU per WRITE under perf, "
          f"{writes / chunks:.1f} WRITEs per chunk")
    print("system calls per chunk: " + ", ".join(
        f"{name} {counts.get(name, 0) / chunks:.1f}" for name in _SYSCALLS))
    total = sum(split.values())
    print("CPU per WRITE by thread and place (share of the receiver's samples):")
    for (thread, where), samples in sorted(split.items(), key=lambda kv: -kv[1]):
        print(f"  {thread:15s} {where:7s} {samples / total:6.1%}  {us * samples / total:5.2f} us")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
