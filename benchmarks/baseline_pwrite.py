"""Baseline "per-fragment write": the file written in 6144-byte ``pwrite`` calls, no network.

This is what the Linux daemon does for every WRITE_TO_FILE (one ``pwrite`` per fragment).
The source is read in 1 MiB chunks (as the host simulator reads it) and each chunk is
written with one ``os.pwrite`` per ``--fragment`` bytes into DEST (created, truncated;
fsync at the end with ``--fsync``). Prints ``{"bytes": N, "seconds": S}`` for the span
from opening DEST to closing it.

    python benchmarks/baseline_pwrite.py SOURCE DEST [--fragment 6144] [--fsync] [--via-sink]

With ``--via-sink`` the same fragments go through the receiver's own write path instead
(:class:`gsi.sink.FileSink`: temp file, coalesced ``pwrite``s, commit by rename), still
without network: the two figures side by side show what coalescing does to the file side
alone.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

CHUNK = 1 << 20


def copy(source: str, dest: str, fragment: int, fsync: bool) -> tuple[int, float]:
    chunk_size = max(fragment, CHUNK // fragment * fragment)
    with open(source, "rb", buffering=0) as f:
        started = time.perf_counter()
        fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        try:
            offset = 0
            while chunk := f.read(chunk_size):
                view = memoryview(chunk)
                for pos in range(0, len(view), fragment):
                    piece = view[pos:pos + fragment]
                    if os.pwrite(fd, piece, offset) != len(piece):
                        raise OSError("short pwrite")
                    offset += len(piece)
            if fsync:
                os.fsync(fd)
        finally:
            os.close(fd)
        return offset, time.perf_counter() - started


def copy_via_sink(source: str, dest: str, fragment: int, fsync: bool) -> tuple[int, float]:
    from gsi.constants import CopyFlags
    from gsi.sink import FileSink

    chunk_size = max(fragment, CHUNK // fragment * fragment)
    size = os.path.getsize(source)
    with open(source, "rb", buffering=0) as f, FileSink(
            os.path.dirname(dest) or ".", fsync=fsync, check_free_space=False) as sink:
        started = time.perf_counter()
        copy = sink.begin("/", os.path.basename(dest), CopyFlags.OVER_WRITE, size)
        offset = 0
        while chunk := f.read(chunk_size):
            view = memoryview(chunk)
            for pos in range(0, len(view), fragment):
                piece = view[pos:pos + fragment]
                copy.write(offset, piece)
                offset += len(piece)
        copy.commit()
        return offset, time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("source")
    p.add_argument("dest")
    p.add_argument("--fragment", type=int, default=6144)
    p.add_argument("--fsync", action="store_true")
    p.add_argument("--via-sink", action="store_true",
                   help="write through gsi's FileSink (coalesced) instead of raw pwrites")
    args = p.parse_args(argv)
    run = copy_via_sink if args.via_sink else copy
    total, seconds = run(args.source, args.dest, args.fragment, args.fsync)
    print(json.dumps({"bytes": total, "seconds": seconds}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
