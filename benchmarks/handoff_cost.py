"""What one hand-off of a received chunk's writes to another thread costs, two ways.

``python -m benchmarks.handoff_cost [--chunks N] [--messages M]``: each of N chunks holds
M 6144-byte WRITE payloads written with one ``os.pwritev`` to a scratch file (page cache),
the event loop waiting for the write before the next chunk (the receive buffer is reused,
so its views must not be overwritten before they are written):

* ``to_thread``: ``trio.to_thread.run_sync`` per chunk (trio's cached worker threads);
* ``queue thread``: one thread per connection fed by a bounded queue
  (``queue.Queue(maxsize=1)``), reporting completion with ``TrioToken.run_sync_soon``
  (what the receiver did before);
* ``writer thread``: the receiver's own :class:`gsi.writer.WriterThread` (the job handed
  over through a released lock, its end signalled through an eventfd).

Prints process CPU and wall microseconds per chunk for each, and the same for the bare
``pwritev`` on the loop thread (the floor). Run it pinned (``taskset -c 1``) for figures
comparable with the receiver's.
"""

from __future__ import annotations

import argparse
import os
import queue
import tempfile
import threading
import time
from collections.abc import Callable

import trio

from gsi.writer import WriterThread

FRAGMENT = 6144


def _bench(label: str, n: int, run: Callable[[], float]) -> None:
    cpu0 = time.process_time()
    wall = run()
    cpu = time.process_time() - cpu0
    print(f"{label:14s} {cpu / n * 1e6:8.1f} us CPU  {wall / n * 1e6:8.1f} us wall per chunk")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--chunks", type=int, default=4000)
    p.add_argument("--messages", type=int, default=1, help="WRITEs per chunk")
    args = p.parse_args(argv)
    buf = bytearray(os.urandom(FRAGMENT * args.messages))
    views = [memoryview(buf)[i * FRAGMENT:(i + 1) * FRAGMENT] for i in range(args.messages)]
    span = FRAGMENT * args.messages
    with tempfile.TemporaryFile() as f:
        fd = f.fileno()

        def write(k: int) -> None:
            os.pwritev(fd, views, (k % 256) * span)

        def inline() -> float:
            t = time.perf_counter()
            for k in range(args.chunks):
                write(k)
            return time.perf_counter() - t

        async def to_thread() -> float:
            t = time.perf_counter()
            for k in range(args.chunks):
                await trio.to_thread.run_sync(write, k)
            return time.perf_counter() - t

        async def writer_thread() -> float:
            writer = WriterThread()
            t = time.perf_counter()
            for k in range(args.chunks):
                await writer.run(write, k)
            wall = time.perf_counter() - t
            writer.stop()
            return wall

        async def queue_thread() -> float:
            token = trio.lowlevel.current_trio_token()
            jobs: queue.Queue[tuple[int, trio.Event] | None] = queue.Queue(maxsize=1)

            def loop() -> None:
                while (job := jobs.get()) is not None:
                    write(job[0])
                    token.run_sync_soon(job[1].set)

            thread = threading.Thread(target=loop, daemon=True)
            thread.start()
            t = time.perf_counter()
            for k in range(args.chunks):
                done = trio.Event()
                jobs.put((k, done))
                await done.wait()
            wall = time.perf_counter() - t
            jobs.put(None)
            thread.join()
            return wall

        _bench("inline", args.chunks, inline)
        _bench("to_thread", args.chunks, lambda: trio.run(to_thread))
        _bench("queue thread", args.chunks, lambda: trio.run(queue_thread))
        _bench("writer thread", args.chunks, lambda: trio.run(writer_thread))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
