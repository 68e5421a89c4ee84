"""Memory per connection holding an open copy with no data yet.

``python -m benchmarks.open_copies_rss [--connections N]``: starts ``gsi-receiver`` on a
Unix socket, reads its RSS (``/proc/<pid>/status`` VmRSS), opens N connections that each
NEGOTIATE and START a 1 GiB copy (and send no data), reads the RSS again and prints the
difference per connection. The copies are then cancelled and the receiver stopped.
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import procs
from gsi.constants import CopyFlags
from host_sim.protocol import Answer, HostConnection


def _rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def _request(sock: socket.socket, host: HostConnection, request: bytes) -> Answer:
    sock.sendall(request)
    while not isinstance(answer := host.next_answer(), Answer):
        host.receive_data(sock.recv(65536))
    return answer


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--connections", type=int, default=256)
    args = p.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="rss-"))
    (tmp / "root").mkdir()
    rx = procs.Server("receiver", [sys.executable, "-m", "gsi.cli", "--root", str(tmp / "root"),
                                   "--listen", f"unix://{tmp}/rx.sock", "--no-fsync",
                                   "--log-level", "WARNING", "--max-connections",
                                   str(args.connections + 1)], tmp / "log")
    try:
        time.sleep(0.5)
        before = _rss(rx.pid)
        conns = []
        for n in range(args.connections):
            sock = socket.socket(socket.AF_UNIX)
            sock.connect(f"{tmp}/rx.sock")
            host = HostConnection()
            assert _request(sock, host, host.negotiate()).ok
            start = host.start_copy(file_name=f"f{n}", path_name="/",
                                    flags=CopyFlags.OVER_WRITE, file_size=1 << 30)
            assert _request(sock, host, start).ok
            conns.append((sock, host))
        time.sleep(0.5)
        after = _rss(rx.pid)
        for sock, host in conns:
            _request(sock, host, host.cancel())
            sock.close()
    finally:
        rx.stop()
    print(json.dumps({"connections": args.connections, "rss_before": before,
                      "rss_after": after,
                      "bytes_per_open_copy": (after - before) // args.connections}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
