"""Receiver CPU per WRITE and per stop-and-wait round trip, next to same-run baselines.

A small harness for the receive path (``python -m benchmarks.rx_cpu``): a lean blocking
client (WRITE prefixes packed with one precompiled struct, data sent with ``sendmsg``
straight from the source in memory, answers counted by their known size: about 1-2 us of
client CPU per message, so the receiver is what is measured) drives

* ``gsi-receiver`` (``python -m gsi.cli``, ``--no-fsync``) at window 64 and at window 1
  (stop-and-wait), 6144-byte fragments, full or trimmed echo, optionally ``--busy-poll``;
* the raw socket-to-file copy (``baseline_raw_copy.py``) for the same bytes;
* the bare answer loop (``baseline_bare_loop.py``) for stop-and-wait.

Every repetition runs baseline then case, each after writing and deleting a scratch file
of the copy's size (the page-cache trap: a fresh file right after a delete writes far
faster than one after none). Receiver CPU is ``utime + stime`` from ``/proc/<pid>/stat``
around the timed span, divided by the number of WRITEs. Servers are pinned to the last
CPU, this client to the first (``--same-cpu`` puts both on the first).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import procs
from benchmarks.matrix import writes_per_file
from gsi import codec
from gsi.constants import CopyFlags
from gsi.transports import DEFAULT_SOCKET_BUFFER, tune_socket
from host_sim.protocol import Answer, HostConnection

FRAGMENT = 6144
_WRITE_OFFSET_AT = 68
_TID_AT = 24


def _connect(url: str) -> socket.socket:
    if url.startswith("unix://"):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        # the buffers gsi.transports (and the raw copy) ask for: on a Unix socket the
        # sender's buffer bounds what a burst can put in flight
        tune_socket(sock, DEFAULT_SOCKET_BUFFER)
        sock.connect(url[len("unix://"):])
    else:
        host, _, port = url[len("tcp://"):].rpartition(":")
        sock = socket.create_connection((host.strip("[]"), int(port)))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def _recv_answer(sock: socket.socket, host: HostConnection) -> None:
    while True:
        answer = host.next_answer()
        if isinstance(answer, Answer):
            if not answer.ok:
                raise SystemExit(f"request failed: {answer}")
            return
        data = sock.recv(1 << 20)
        if not data:
            raise SystemExit("receiver closed the connection")
        host.receive_data(data)


def _exchange(sock: socket.socket, host: HostConnection, request: bytes) -> None:
    sock.sendall(request)
    _recv_answer(sock, host)


class Client:
    """One connection: NEGOTIATE at connect, then copies of ``data`` timed START..COMPLETE."""

    def __init__(self, url: str, data: bytes, trim: bool) -> None:
        self.sock = _connect(url)
        self.host = HostConnection(fragment_size=FRAGMENT)
        _exchange(self.sock, self.host, self.host.negotiate())
        self.data = memoryview(data)
        self.answer_size = 80 if trim else 80 + FRAGMENT

    def copy(self, name: str, window: int, bare: bool = False) -> tuple[float, int]:
        size = len(self.data)
        host, sock = self.host, self.sock
        started = time.perf_counter()
        if not bare:
            _exchange(sock, host, host.start_copy(file_name=name, path_name="/",
                                                  flags=CopyFlags.OVER_WRITE, file_size=size))
        prefix = bytearray(codec.pack_write_prefix(
            transaction_id=0, offset=0, size=FRAGMENT, body_len=52 + FRAGMENT,
            icverframe=host.framework_version or (3, 0),
            icvermsg=host.message_version or (1, 1)))
        count = writes_per_file(size, FRAGMENT)
        assert size % FRAGMENT == 0, "the harness sends whole fragments"
        prefixes = [bytearray(prefix) for _ in range(window)]
        buf = bytearray(1 << 22)
        view = memoryview(buf)
        answer_size = self.answer_size
        sent = answered = 0
        pending = 0  # answer bytes received but not yet a whole answer
        refill = max(1, window // 2)
        while answered < count:
            if sent < count and sent - answered <= window - refill:
                n = min(window - (sent - answered), count - sent)
                iov: list[bytes | bytearray | memoryview] = []
                for i in range(n):
                    k = sent + i
                    p = prefixes[k % window]
                    struct.pack_into("<Q", p, _WRITE_OFFSET_AT, k * FRAGMENT)
                    p[_TID_AT] = k & 0xFF
                    iov.append(p)
                    iov.append(self.data[k * FRAGMENT:(k + 1) * FRAGMENT])
                sock.sendmsg(iov)  # the socket buffers hold a window of 64 x 6 KiB
                sent += n
            got = sock.recv_into(view)
            if not got:
                raise SystemExit("receiver closed the connection")
            if buf[20:24] != b"\x00\x00\x00\x00" and pending == 0:
                raise SystemExit(f"WRITE failed: status {bytes(buf[20:24]).hex()}")
            pending += got
            answered += pending // answer_size
            pending %= answer_size
        if not bare:
            _exchange(sock, host, host.complete())
        seconds = time.perf_counter() - started
        return seconds, count

    def close(self) -> None:
        self.sock.close()


def measured_copy(client: Client, server: procs.Server, root: Path | None, name: str,
                  window: int, *, bare: bool = False) -> tuple[float, int, float]:
    """One copy of the client's data as ``name``, after a scratch file of its size in
    ``root`` (the page-cache trap; None: the server writes no file): (seconds, WRITEs,
    the server's CPU seconds over it). The received file is left in ``root``."""
    if root is not None:
        procs.scratch(root, len(client.data))
    before = server.cpu_seconds()
    seconds, writes = client.copy(name, window, bare=bare)
    return seconds, writes, server.cpu_seconds() - before


def _start(name: str, argv: list[str], log: Path) -> procs.Server:
    return procs.Server(name, argv, log)


def _raw_copy(url: str, source: Path) -> float:
    out = subprocess.run([sys.executable, str(procs.REPO / "benchmarks/baseline_raw_copy.py"),
                          "send", "--to", url, str(source)], check=True,
                         capture_output=True, text=True)
    return float(json.loads(out.stdout)["seconds"])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--transport", choices=["unix", "tcp"], default="unix")
    p.add_argument("--size-mib", type=int, default=48)
    p.add_argument("--saw-count", type=int, default=3000, help="stop-and-wait WRITEs")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--trim", action="store_true", help="receiver with --trim-write-echo")
    p.add_argument("--busy-poll", type=int, default=0, metavar="US")
    p.add_argument("--same-cpu", action="store_true")
    p.add_argument("--skip-window", action="store_true")
    p.add_argument("--skip-saw", action="store_true")
    args = p.parse_args(argv)
    procs.set_pinning(same_cpu=args.same_cpu)
    if procs.PIN is not None:
        os.sched_setaffinity(0, procs.PIN["client"])
    tmp = Path(tempfile.mkdtemp(prefix="rxcpu-"))
    root = tmp / "root"
    root.mkdir()
    raw_out = tmp / "raw"
    raw_out.mkdir()
    size = args.size_mib << 20
    size -= size % FRAGMENT
    data = os.urandom(size)
    source = tmp / "source"
    source.write_bytes(data)
    digest = hashlib.sha256(data).hexdigest()
    saw_data = data[:args.saw_count * FRAGMENT]

    def url(name: str) -> str:
        return f"unix://{tmp}/{name}.sock" if args.transport == "unix" else "tcp://127.0.0.1:0"

    py = sys.executable
    profile = os.environ.get("RX_CPU_PROFILE")  # a path: run the receiver under cProfile
    rx_argv = [py, *(["-m", "cProfile", "-o", profile] if profile else []), "-m", "gsi.cli",
               "--root", str(root), "--listen", url("rx"), "--no-fsync",
               "--idle-timeout", "600", "--log-level", "WARNING"]
    if args.trim:
        rx_argv.append("--trim-write-echo")
    if args.busy_poll:
        rx_argv += ["--busy-poll", str(args.busy_poll)]
    log = tmp / "servers.log"
    rx = _start("receiver", rx_argv, log)
    raw = _start("raw", [py, str(procs.REPO / "benchmarks/baseline_raw_copy.py"), "recv",
                         "--listen", url("raw"), "--outdir", str(raw_out)], log)
    bare_argv = [py, str(procs.REPO / "benchmarks/baseline_bare_loop.py"), "--listen",
                 url("bare")]
    if args.trim:
        bare_argv.append("--trim-write-echo")
    bare = _start("bare", bare_argv, log)
    result: dict[str, list[float]] = {k: [] for k in (
        "rx_us_per_write", "rx_mbps", "raw_mbps", "ratio_raw",
        "saw_rx_us_per_rt", "saw_rtt_us", "saw_bare_rtt_us", "saw_ratio_bare",
        "saw_bare_cpu_us_per_rt")}
    try:
        client = Client(rx.url, data, args.trim)
        saw_client = Client(rx.url, saw_data, args.trim)
        bare_client = Client(bare.url, saw_data, args.trim)
        for rep in range(args.reps):
            if not args.skip_window:
                procs.scratch(raw_out, size)
                raw_s = _raw_copy(raw.url, source)
                for f in raw_out.iterdir():
                    f.unlink()
                secs, count, cpu = measured_copy(client, rx, root, f"f{rep}", 64)
                got = root / f"f{rep}"
                if hashlib.sha256(got.read_bytes()).hexdigest() != digest:
                    raise SystemExit("received file differs from the source")
                got.unlink()
                result["rx_us_per_write"].append(cpu / count * 1e6)
                result["rx_mbps"].append(size / secs / 1e6)
                result["raw_mbps"].append(size / raw_s / 1e6)
                result["ratio_raw"].append(raw_s / secs)
            if not args.skip_saw:
                bsecs, bcount, bcpu = measured_copy(bare_client, bare, None, "b", 1, bare=True)
                result["saw_bare_cpu_us_per_rt"].append(bcpu / bcount * 1e6)
                secs, count, cpu = measured_copy(saw_client, rx, root, f"s{rep}", 1)
                (root / f"s{rep}").unlink()
                result["saw_rx_us_per_rt"].append(cpu / count * 1e6)
                result["saw_rtt_us"].append(secs / count * 1e6)
                result["saw_bare_rtt_us"].append(bsecs / bcount * 1e6)
                result["saw_ratio_bare"].append(bsecs / bcount / (secs / count))
        client.close()
        saw_client.close()
        bare_client.close()
    finally:
        for server in (rx, raw, bare):
            server.stop()
    summary = {k: {"median": round(statistics.median(v), 3), "min": round(min(v), 3),
                   "max": round(max(v), 3)} for k, v in result.items() if v}
    print(json.dumps({"args": vars(args), "placement": procs.PIN,
                      "summary": summary}, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
