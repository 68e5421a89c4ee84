"""The host side of a benchmark run: the real host simulator client, timed.

Opens ``--connections`` channels to ``--to`` (connect and NEGOTIATE outside the clock),
then copies on each channel every source, one after another, with
:meth:`host_sim.client.HostClient.copy_file` (the code path ``host-sim copy`` runs; full
length WRITE bodies, as the real host). With one connection the files keep their base
names; with more, connection ``i`` writes ``c<i>-<name>``. Prints
``{"bytes": N, "files": F, "seconds": S, "cpu_seconds": C}``: every byte and file
acknowledged (COMPLETE answered) over the wall-clock span of all copies, and the CPU time
this process (all its threads) spent in that span.

    python -m benchmarks.host_driver --to URL --window 64 --fragment-size 6144 SRC... DEST
    python -m benchmarks.host_driver --to URL --source-dir DIR DEST   # every file in DIR
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from contextlib import AsyncExitStack
from functools import partial
from pathlib import Path

import trio

from gsi.constants import DATA_FRAGMENT
from host_sim.client import HostClient, open_host


async def run(url: str, sources: list[Path], dest: str, *, connections: int, window: int,
              fragment_size: int) -> dict[str, float]:
    async with AsyncExitStack() as stack:
        hosts: list[HostClient] = []
        for _ in range(connections):
            host = await stack.enter_async_context(open_host(url, fragment_size=fragment_size))
            await host.negotiate()
            hosts.append(host)
        totals = {"bytes": 0, "files": 0}

        async def channel(index: int, host: HostClient) -> None:
            for source in sources:
                name = source.name if connections == 1 else f"c{index}-{source.name}"
                result = await host.copy_file(source, dest, name=name, create_full_path=True,
                                              force=True, window=window)
                totals["bytes"] += result.size
                totals["files"] += 1

        cpu = resource.getrusage(resource.RUSAGE_SELF)
        started = time.perf_counter()
        async with trio.open_nursery() as nursery:
            for index, host in enumerate(hosts):
                nursery.start_soon(channel, index, host)
        seconds = time.perf_counter() - started
        end = resource.getrusage(resource.RUSAGE_SELF)
    cpu_seconds = end.ru_utime - cpu.ru_utime + end.ru_stime - cpu.ru_stime
    return {"bytes": totals["bytes"], "files": totals["files"], "seconds": seconds,
            "cpu_seconds": cpu_seconds}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="timed host-side copies for the benchmarks")
    p.add_argument("--to", required=True, metavar="URL")
    p.add_argument("--window", type=int, default=1)
    p.add_argument("--fragment-size", type=int, default=DATA_FRAGMENT)
    p.add_argument("--connections", type=int, default=1)
    p.add_argument("--source-dir", type=Path, help="copy every file in this directory")
    p.add_argument("paths", nargs="+", metavar="SOURCE... DEST")
    args = p.parse_args(argv)
    *names, dest = args.paths
    sources = [Path(n) for n in names]
    if args.source_dir is not None:
        sources += sorted(args.source_dir / n for n in os.listdir(args.source_dir))
    if not sources:
        p.error("nothing to copy")
    result = trio.run(partial(run, args.to, sources, dest, connections=args.connections,
                              window=args.window, fragment_size=args.fragment_size))
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
