"""Receiver CPU per WRITE of this tree against another source tree, in the same run.

``python -m benchmarks.rx_compare --compare DIR [--transport unix|tcp] [--window 64]
[--trim] [--size-mib 128] [--reps 5] [-- RECEIVER OPTIONS]``: starts ``gsi-receiver
--no-fsync`` from this tree and from ``DIR`` (a checkout of another commit, e.g.
``git archive 5eb8ea8 | tar -x -C DIR``: the receiver runs from it with this Python and
its installed packages), pinned like every benchmark server, and drives both with the
lean client of :mod:`benchmarks.rx_cpu`, alternating copy by copy (a scratch file of the
copy's size written and deleted before each). Prints, for each tree, the receiver's CPU
per WRITE (per round trip at window 1) and MB/s, medians (min-max), and the median of the
per-repetition ratios this / other: on a machine whose speed drifts, only those mean
much. At window 1, 3000 stop-and-wait WRITEs per copy.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

from benchmarks import procs
from benchmarks.rx_cpu import FRAGMENT, Client, measured_copy

_SAW_WRITES = 3000


class _Receiver:
    def __init__(self, tree: Path, tmp: Path, args: argparse.Namespace) -> None:
        self.tree = tree
        self.root = tmp / "root"
        self.root.mkdir(parents=True)
        url = f"unix://{tmp}/rx.sock" if args.transport == "unix" else "tcp://127.0.0.1:0"
        argv = [procs.PYTHON, "-m", "gsi.cli", "--root", str(self.root), "--listen", url,
                "--no-fsync", "--idle-timeout", "600", "--log-level", "WARNING",
                *(["--trim-write-echo"] if args.trim else []), *args.receiver_args]
        self.server = procs.Server(f"receiver ({tree})", argv, tmp / "receiver.log",
                                   cwd=tree)
        self.us: list[float] = []
        self.mbps: list[float] = []


def _ratio(these: list[float], others: list[float]) -> str:
    """Median of the per-repetition ratios; repetitions whose CPU was below the clock
    tick (10 ms: 0 seconds) on the other side are left out."""
    ratios = [a / b for a, b in zip(these, others, strict=True) if b > 0]
    return f"{statistics.median(ratios):.3f}" if ratios else "n/a (below the clock tick)"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--compare", type=Path, required=True, metavar="DIR")
    p.add_argument("--transport", choices=["unix", "tcp"], default="unix")
    p.add_argument("--window", type=int, default=64)
    p.add_argument("--trim", action="store_true", help="receivers with --trim-write-echo")
    p.add_argument("--size-mib", type=int, default=128)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("receiver_args", nargs="*", help="more gsi-receiver options (after --)")
    args = p.parse_args(argv)
    if not (args.compare / "gsi" / "cli.py").is_file():
        p.error(f"{args.compare} is no source tree of gsi (no gsi/cli.py)")
    if procs.PIN is not None:
        os.sched_setaffinity(0, procs.PIN["client"])
    size = (_SAW_WRITES * FRAGMENT if args.window == 1
            else (args.size_mib << 20) // FRAGMENT * FRAGMENT)
    data = os.urandom(size)
    tmp = Path(tempfile.mkdtemp(prefix="rxcmp-"))
    here = Path(__file__).resolve().parent.parent
    receivers = [_Receiver(here, tmp / "this", args),
                 _Receiver(args.compare.resolve(), tmp / "other", args)]
    try:
        clients = [Client(r.server.url, data, args.trim) for r in receivers]
        for rep in range(args.reps):
            for receiver, client in zip(receivers, clients, strict=True):
                seconds, writes, cpu = measured_copy(client, receiver.server, receiver.root,
                                                     f"c{rep}", args.window)
                receiver.us.append(cpu / writes * 1e6)
                receiver.mbps.append(size / seconds / 1e6)
                (receiver.root / f"c{rep}").unlink()
        for client in clients:
            client.close()
    finally:
        for receiver in receivers:
            receiver.server.stop()
    unit = "round trip" if args.window == 1 else "WRITE"
    print(f"{args.transport}, window {args.window}, {'trimmed' if args.trim else 'full'} "
          f"echo, {size >> 20} MiB, {args.reps} alternating repetitions, "
          f"{procs.placement(procs.PIN)}")
    for name, receiver in zip(("this tree", "other tree"), receivers, strict=True):
        print(f"  {name:10s} {statistics.median(receiver.us):7.2f} us CPU per {unit} "
              f"({min(receiver.us):.2f}-{max(receiver.us):.2f}), "
              f"{statistics.median(receiver.mbps):7.1f} MB/s  [{receiver.tree}]")
    this, other = receivers
    print(f"  this / other: CPU {_ratio(this.us, other.us)}, "
          f"MB/s {_ratio(this.mbps, other.mbps)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
