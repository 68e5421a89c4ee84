"""Baseline "raw copy": the machine's practical ceiling for a socket-to-file copy.

No protocol at all. ``recv`` accepts connections one after another on a Unix socket or
TCP port; from each it reads every byte until end of stream into a 1 MiB buffer, writes
the buffer with large ``os.write`` calls into ``OUTDIR/raw-<n>`` (fsync at the end with
``--fsync``), then answers one byte so that the sender can stop its clock. ``send``
connects, writes the file's bytes (1 MiB reads, ``sendall``), shuts down its side and
prints ``{"bytes": N, "seconds": S}``: the time from connect to that one-byte answer, the
same span the host simulator times (START to the answer to COMPLETE). ``--buffer-size N``
asks for N-byte SO_SNDBUF/SO_RCVBUF on every stream socket, as gsi.transports does (the
benchmark passes its DEFAULT_SOCKET_BUFFER; 0 leaves the OS default).

    python benchmarks/baseline_raw_copy.py recv --listen unix:///tmp/r.sock --outdir /tmp/out
    python benchmarks/baseline_raw_copy.py send --to unix:///tmp/r.sock FILE

Standard library only, blocking sockets, no threads: deliberately the plainest program.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import sys
import time

CHUNK = 1 << 20


def _tune(sock: socket.socket, size: int) -> None:
    """The same best-effort SO_SNDBUF/SO_RCVBUF as gsi.transports.tune_socket (skipped
    where net.core.wmem_max / rmem_max would cap the request)."""
    if not size:
        return
    for option, cap in ((socket.SO_SNDBUF, "wmem_max"), (socket.SO_RCVBUF, "rmem_max")):
        try:
            with open(f"/proc/sys/net/core/{cap}", encoding="ascii") as f:
                if int(f.read()) < size:
                    continue
        except (OSError, ValueError):
            pass
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, option, size)


def _address(url: str) -> tuple[socket.AddressFamily, str | tuple[str, int]]:
    if url.startswith("unix://"):
        return socket.AF_UNIX, url[len("unix://"):]
    if url.startswith("tcp://"):
        host, _, port = url[len("tcp://"):].rpartition(":")
        return socket.AF_INET, (host.strip("[]"), int(port))
    raise SystemExit(f"unsupported URL {url!r} (unix:// or tcp://)")


def serve(url: str, outdir: str, fsync: bool, buffer_size: int) -> None:
    family, address = _address(url)
    listener = socket.socket(family, socket.SOCK_STREAM)
    if family == socket.AF_INET:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    _tune(listener, buffer_size)  # TCP: inherited by accepted sockets, as in gsi
    listener.bind(address)
    listener.listen(8)
    bound = listener.getsockname()
    shown = f"tcp://{bound[0]}:{bound[1]}" if family == socket.AF_INET else url
    print(f"listening on {shown}", flush=True)
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    number = 0
    while True:
        conn, _ = listener.accept()
        number += 1
        with conn:
            _tune(conn, buffer_size)
            if family == socket.AF_INET:
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            fd = os.open(os.path.join(outdir, f"raw-{number}"),
                         os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
            try:
                fill = 0
                while True:
                    got = conn.recv_into(view[fill:])
                    fill += got
                    if fill == CHUNK or (not got and fill):
                        done = 0
                        while done < fill:
                            done += os.write(fd, view[done:fill])
                        fill = 0
                    if not got:
                        break
                if fsync:
                    os.fsync(fd)
            finally:
                os.close(fd)
            conn.sendall(b"k")


def send(url: str, source: str, buffer_size: int) -> None:
    family, address = _address(url)
    with open(source, "rb", buffering=0) as f:
        sock = socket.socket(family, socket.SOCK_STREAM)
        if family == socket.AF_INET:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        _tune(sock, buffer_size)
        started = time.perf_counter()
        sock.connect(address)
        total = 0
        while chunk := f.read(CHUNK):
            sock.sendall(chunk)
            total += len(chunk)
        sock.shutdown(socket.SHUT_WR)
        if sock.recv(1) != b"k":
            raise SystemExit("the receiver did not confirm the copy")
        seconds = time.perf_counter() - started
        sock.close()
    print(json.dumps({"bytes": total, "seconds": seconds}), flush=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    sub = p.add_subparsers(dest="role", required=True)
    r = sub.add_parser("recv")
    r.add_argument("--listen", required=True)
    r.add_argument("--outdir", required=True)
    r.add_argument("--fsync", action="store_true")
    r.add_argument("--buffer-size", type=int, default=0, metavar="BYTES")
    s = sub.add_parser("send")
    s.add_argument("--to", required=True)
    s.add_argument("source")
    s.add_argument("--buffer-size", type=int, default=0, metavar="BYTES")
    args = p.parse_args(argv)
    try:
        if args.role == "recv":
            serve(args.listen, args.outdir, args.fsync, args.buffer_size)
        else:
            send(args.to, args.source, args.buffer_size)
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
