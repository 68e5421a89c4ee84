"""Host CPU per WRITE: what the host simulator's sender spends on each WRITE_TO_FILE.

Runs the benchmark host driver (:mod:`benchmarks.host_driver`, i.e.
``HostClient.copy_file``, full-length WRITE bodies) against the bare answer loop
(``baseline_bare_loop.py``: frames and echoes, no parsing, no files) over a Unix socket,
and divides the driver's own CPU time over the timed span (``getrusage`` of the process,
all its threads: reading the source, building and sending WRITEs, reading answers) by the
number of WRITEs. The answerer runs in its own process, so its CPU is not counted.

With ``--compare DIR`` the same driver also runs from another source tree (``DIR`` first
on ``PYTHONPATH``, e.g. ``git archive``'s export of an older commit), repetitions
interleaved with this tree's, so the two figures come from the same run of a machine
whose load drifts; the ratio is the median of the per-repetition ratios.

    python -m benchmarks.host_cost [--window 64] [--size-mib 64] [--reps 5] [--compare DIR]
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import tempfile
from pathlib import Path

from gsi.constants import DATA_FRAGMENT

from .procs import PYTHON, Server, run_json, set_pinning

HERE = Path(__file__).resolve().parent


def measure(url: str, source: Path, *, window: int, fragment_size: int, tree: Path | None,
            log: Path) -> tuple[float, float]:
    """One timed copy: (host CPU µs per WRITE, MB/s)."""
    env, driver = None, ["-m", "benchmarks.host_driver"]
    if tree is not None:  # the script by path, so that the tree comes first on sys.path
        env = {**os.environ, "PYTHONPATH": str(tree)}
        driver = [str(tree / "benchmarks" / "host_driver.py")]
    result, _ = run_json([PYTHON, *driver, "--to", url,
                          "--window", str(window), "--fragment-size", str(fragment_size),
                          str(source), "/"], log, env=env)
    writes = math.ceil(result["bytes"] / fragment_size)
    return result["cpu_seconds"] / writes * 1e6, result["bytes"] / result["seconds"] / 1e6


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--window", type=int, default=64)
    p.add_argument("--fragment-size", type=int, default=DATA_FRAGMENT)
    p.add_argument("--size-mib", type=int, default=64, help="source file size")
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--compare", type=Path, metavar="DIR",
                   help="also run the driver from this source tree (interleaved)")
    p.add_argument("--no-pin", action="store_true",
                   help="do not pin the answerer and the host to different CPUs")
    args = p.parse_args(argv)
    set_pinning(not args.no_pin)
    trees: dict[str, Path | None] = {"this tree": None}
    if args.compare is not None:
        trees = {f"{args.compare}": args.compare.resolve(), **trees}
    with tempfile.TemporaryDirectory(prefix="gsi-host-cost-") as tmp:
        work = Path(tmp)
        source = work / "source.bin"
        with source.open("wb") as f:
            for _ in range(args.size_mib):
                f.write(os.urandom(1 << 20))
        log = work / "log"
        print(f"host CPU per WRITE, window {args.window}, {args.fragment_size}-byte fragments, "
              f"{args.size_mib} MiB, unix socket, bare answer loop, {args.reps} reps "
              f"(median, min-max)")
        for echo in ("full", "trim"):
            argv_server = [PYTHON, str(HERE / "baseline_bare_loop.py"),
                           "--listen", f"unix://{work}/bare.sock"]
            if echo == "trim":
                argv_server.append("--trim-write-echo")
            server = Server("bare loop", argv_server, log)
            try:
                runs: dict[str, list[tuple[float, float]]] = {name: [] for name in trees}
                for _ in range(args.reps):
                    for name, tree in trees.items():
                        runs[name].append(measure(server.url, source, window=args.window,
                                                  fragment_size=args.fragment_size,
                                                  tree=tree, log=log))
            finally:
                server.stop()
            for name, values in runs.items():
                cpu = [v[0] for v in values]
                rate = [v[1] for v in values]
                print(f"  echo-{echo:<5} {name:<28} {statistics.median(cpu):6.2f} µs/WRITE "
                      f"({min(cpu):.2f}-{max(cpu):.2f})  {statistics.median(rate):7.1f} MB/s")
            if len(runs) == 2:  # each repetition's pair, as in the suite's ratios
                old, new = runs.values()
                ratios = [b[0] / a[0] for a, b in zip(old, new, strict=True)]
                print(f"  echo-{echo:<5} ratio this tree / {args.compare}: "
                      f"{statistics.median(ratios):.2f} ({min(ratios):.2f}-{max(ratios):.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
