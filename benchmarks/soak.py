"""Soak: N minutes of mixed copies and faults against a real ``gsi-receiver`` process.

Not a test (it is not in ``.ci/run``): run it by hand, e.g. before a release::

    python -m benchmarks.soak --minutes 10 --workers 8

Workers copy files of random sizes with random windows, most of them with a random
fault plan (the faults of ``docs/faults.md``), some clean with ``host_sim.copy_vm_file``.
After every copy the target is checked against what the guest answered (PROTOCOL.md
section 8): new content if a COMPLETE was answered 0, old content if not, either when a
COMPLETE went unanswered (the target is then retired, so a late commit cannot race a
later copy). At the end: no temp file may remain, nothing may have changed outside the
root, the receiver must exit cleanly with no traceback in its log.

Reports copies done, faults injected, bytes verified, the receiver's peak RSS, and every
invariant violation; the exit status is 1 if there was any.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import trio

from gsi.errors import CopyFailed
from gsi.sink import TEMP_NAME_RE
from host_sim import copy_vm_file
from host_sim.fault_plan import FaultPlan
from host_sim.faults import FaultyHost

FRAGMENT = 6144
IDLE_TIMEOUT = 1.0
FIELD_VALUES = {
    "write": {"size": ["max", "+1", "-1", "0"], "offset": ["max", "+{size}"],
              "operation": ["0", "2", "3", "7"], "msgsize": ["19", "-1", "+1", "max"],
              "pipe-flags": ["0", "2"], "icmsgtype": ["5", "max"],
              "transaction-id": ["+1"], "icmsgsize": ["0"]},
    "start": {"file-size": ["+1", "max"], "copy-flags": ["0", "1", "3"],
              "msgsize": ["19", "-1", "max"], "icflags": ["0"]},
    "complete": {"operation": ["3", "9"], "msgsize": ["-1", "+1"], "transaction-id": ["+3"]},
    "negotiate": {"frame-count": ["0", "101"], "msg-count": ["40", "max"]},
}
"""Detectable corruptions only (docs/faults.md): no in-range offsets, no smaller file sizes
(with a fault dropping the WRITEs beyond them, the guest rightly commits what START
announced); START stays a START."""


@dataclass
class Stats:
    copies: int = 0
    clean_copies: int = 0
    committed: int = 0
    faults: int = 0
    faults_by_kind: collections.Counter[str] = field(default_factory=collections.Counter)
    outcomes: collections.Counter[str] = field(default_factory=collections.Counter)
    bytes_verified: int = 0
    violations: list[str] = field(default_factory=list)
    peak_rss_mib: float = 0.0


def random_spec(rnd: random.Random, writes: int, size: int) -> str:
    def point(start: bool = True) -> str:
        if writes and rnd.random() < 0.7:
            return f"write:{rnd.randrange(writes)}"
        return rnd.choice(["negotiate", "start", "complete"] if start else ["complete"])

    kind = rnd.choice(["disconnect", "disconnect", "cancel", "stall", "complete-early",
                       "abandon", "duplicate", "reorder", "overlap", "corrupt", "corrupt",
                       "garbage", "truncate", "noread", "idle", "keep-going"])
    write = f"write:{rnd.randrange(max(writes, 1))}"
    if kind == "disconnect":
        return rnd.choice([f"disconnect:at={point()}",
                           f"disconnect:bytes={rnd.randrange(1200 + size + 100 * writes)}",
                           f"disconnect:messages={rnd.randrange(writes + 4)}"])
    if kind in ("cancel", "complete-early", "abandon"):
        return f"{kind}:at={point(start=False)}"
    if kind == "stall":
        return f"stall:at={point()},seconds={rnd.choice([0.01, 0.1, IDLE_TIMEOUT * 1.3])}"
    if kind in ("duplicate", "reorder"):
        return f"{kind}:at={write}"
    if kind == "overlap":
        return f"overlap:at={write},bytes={rnd.randint(1, FRAGMENT)}"
    if kind == "corrupt":
        message = rnd.choice(["write", "write", "start", "complete", "negotiate"])
        at = write if message == "write" else message
        name = rnd.choice(sorted(FIELD_VALUES[message]))
        value = rnd.choice(FIELD_VALUES[message][name]).format(size=max(size, 1))
        return f"corrupt:at={at},field={name},value={value}"
    if kind == "garbage":
        return f"garbage:at={point()},bytes={rnd.randint(1, 20000)},seed={rnd.randrange(999)}"
    if kind == "truncate":
        return f"truncate:at={point()},keep={rnd.randrange(100)}"
    if kind == "noread":
        return f"noread:at={point()},seconds={rnd.choice([0, 0.05])}"
    if kind == "idle":
        return f"idle:connections={rnd.randint(1, 3)},seconds={rnd.choice([0.05, 3])}"
    return "keep-going"


def vm_kib(pid: int, name: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(name + ":"):
            return int(line.split()[1])
    return 0


def snapshot_outside(top: Path) -> dict[str, str]:
    """Everything beside the root but the soak's own files (work/, the socket, the log)."""
    out = {}
    for path in sorted(top.rglob("*")):
        if (path.is_relative_to(top / "root") or path.is_relative_to(top / "work")
                or path.name in ("guest.sock", "receiver.log")):
            continue
        out[str(path.relative_to(top))] = (hashlib.sha256(path.read_bytes()).hexdigest()
                                           if path.is_file() and not path.is_symlink() else "")
    return out


class Soak:
    def __init__(self, top: Path, url: str, seed: int, deadline: float) -> None:
        self.top = top
        self.root = top / "root"
        self.url = url
        self.seed = seed
        self.deadline = deadline
        self.stats = Stats()
        self.expected: dict[str, set[bytes | None]] = {}
        self.retired: set[str] = set()

    def check(self, target: str, when: str, detail: object = "") -> None:
        try:
            got: bytes | None = (self.root / target.lstrip("/")).read_bytes()
        except FileNotFoundError:
            got = None
        if got not in self.expected[target]:
            sizes = sorted(-1 if e is None else len(e) for e in self.expected[target])
            self.stats.violations.append(
                f"{target}: unexpected content {when}: {'absent' if got is None else len(got)}"
                f" bytes, expected sizes {sizes}; {detail}")

    async def worker(self, number: int) -> None:
        rnd = random.Random(self.seed * 1000 + number)
        directory = f"/w{number}"
        (self.root / directory.lstrip("/")).mkdir()
        (self.root / directory.lstrip("/") / "esc").symlink_to(self.top / "outside")
        generation = 0
        target = f"{directory}/t{generation}"
        self.expected[target] = {None}
        host = FaultyHost(self.url, fragment_size=FRAGMENT, answer_timeout=20)
        try:
            while time.monotonic() < self.deadline:
                size = rnd.choice([0, 1, FRAGMENT, rnd.randrange(64 << 10),
                                   rnd.randrange(2 << 20)])
                data = rnd.randbytes(size)
                name = target.rpartition("/")[2]
                if rnd.random() < 0.05:  # through a symlink out of the root: always refused
                    with trio.fail_after(120):
                        escape = await host.copy(data, f"{directory}/esc", name="x",
                                                 force=True)
                    self.stats.copies += 1
                    self.stats.outcomes[escape.outcome] += 1
                    if escape.committed is not False:
                        self.stats.violations.append(f"{directory}/esc/x: {escape}")
                    continue
                if rnd.random() < 0.3:
                    committed = await self._clean(directory, name, data, rnd)
                    last = "a clean copy"
                else:
                    writes = -(-size // FRAGMENT)
                    plan = FaultPlan.parse(random_spec(rnd, writes, size)
                                           for _ in range(rnd.randint(1, 3)))
                    host.window = rnd.choice([1, 2, 8, 32])
                    host.full_write_body = rnd.random() < 0.8
                    try:
                        with trio.fail_after(120):
                            report = await host.copy(data, directory, name=name, plan=plan,
                                                     force=rnd.random() < 0.85)
                    except trio.TooSlowError:
                        self.stats.violations.append(f"{target}: copy hung ({plan})")
                        return
                    self.stats.faults += len(report.applied)
                    for spec in report.applied:
                        self.stats.faults_by_kind[spec.partition(":")[0]] += 1
                    self.stats.outcomes[report.outcome] += 1
                    committed = report.committed
                    last = f"plan {plan}, window {host.window}: {report}"
                self.stats.copies += 1
                if committed is True:
                    self.stats.committed += 1
                    self.expected[target] = {data}
                    before = len(self.stats.violations)
                    self.check(target, "after a commit", last)
                    if len(self.stats.violations) == before:
                        self.stats.bytes_verified += size
                elif committed is False:
                    self.check(target, "after a copy that was not committed", last)
                else:  # unknown: retire the target, check it at the end
                    self.expected[target].add(data)
                    self.retired.add(target)
                    generation += 1
                    target = f"{directory}/t{generation}"
                    self.expected[target] = {None}
        finally:
            await host.aclose()

    async def _clean(self, directory: str, name: str, data: bytes,
                     rnd: random.Random) -> bool:
        self.stats.clean_copies += 1
        source = self.top / "work" / f"clean-{directory.strip('/')}"
        source.write_bytes(data)
        try:
            with trio.fail_after(120):
                await copy_vm_file(self.url, source, directory, name=name, force=True,
                                   window=rnd.choice([1, 16, 64]))
        except CopyFailed as exc:
            self.stats.violations.append(f"clean copy to {directory}/{name} failed: {exc}")
            return False
        self.stats.outcomes["committed"] += 1
        return True


async def _run(top: Path, url: str, pid: int, args: argparse.Namespace) -> Stats:
    soak = Soak(top, url, args.seed, time.monotonic() + args.minutes * 60)

    async def sample_rss() -> None:
        while True:
            soak.stats.peak_rss_mib = vm_kib(pid, "VmHWM") / 1024
            await trio.sleep(1)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(sample_rss)
        async with trio.open_nursery() as workers:
            for number in range(args.workers):
                workers.start_soon(soak.worker, number)
        # Every connection is closed: the receiver drops its sessions and their temps.
        with trio.move_on_after(30):
            while temps := [p for p in soak.root.rglob("*") if TEMP_NAME_RE.fullmatch(p.name)]:
                await trio.sleep(0.05)
        for path in temps:
            soak.stats.violations.append(f"temp file left: {path.relative_to(soak.root)}")
        for target in soak.expected:
            soak.check(target, "at the end")
        soak.stats.peak_rss_mib = vm_kib(pid, "VmHWM") / 1024
        nursery.cancel_scope.cancel()
    return soak.stats


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=1.0)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--seed", type=int, default=int(time.time()))
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="gsi-soak-") as tmp:
        top = Path(tmp)
        (top / "root").mkdir()
        (top / "outside").mkdir()
        (top / "work").mkdir()
        (top / "outside" / "x").write_text("outside the root\n")
        outside_before = snapshot_outside(top)
        log_path = top / "receiver.log"
        with log_path.open("wb") as log:
            receiver = subprocess.Popen(
                [sys.executable, "-m", "gsi.cli", "--root", str(top / "root"), "--listen",
                 f"unix://{top / 'guest.sock'}", "--no-fsync", "--idle-timeout",
                 str(IDLE_TIMEOUT), "--log-level", "WARNING"],
                stdout=subprocess.PIPE, stderr=log, text=True)
        assert receiver.stdout is not None
        line = receiver.stdout.readline()
        if not line.startswith("listening on "):
            receiver.kill()
            print(f"soak: the receiver did not start: {line!r}", file=sys.stderr)
            return 2
        url = line.removeprefix("listening on ").strip()
        started = time.perf_counter()
        try:
            stats = trio.run(_run, top, url, receiver.pid, args)
        finally:
            alive = receiver.poll() is None
            with contextlib.suppress(ProcessLookupError):
                receiver.send_signal(signal.SIGTERM)
            code = receiver.wait(timeout=30)
        seconds = time.perf_counter() - started
        if not alive:
            stats.violations.append("the receiver died during the soak")
        if code != 0:
            stats.violations.append(f"the receiver exited with {code}")
        if "Traceback" in log_path.read_text(errors="replace"):
            stats.violations.append("a traceback in the receiver's log")
        if snapshot_outside(top) != outside_before:
            stats.violations.append("something changed outside the root")
    print(f"soak: {seconds / 60:.1f} min, seed {args.seed}, {args.workers} workers")
    print(f"  copies: {stats.copies} ({stats.committed} committed, "
          f"{stats.clean_copies} clean); outcomes: {dict(stats.outcomes)}")
    print(f"  faults injected: {stats.faults} {dict(stats.faults_by_kind)}")
    print(f"  bytes verified: {stats.bytes_verified} ({stats.bytes_verified / 2**20:.1f} MiB)")
    print(f"  receiver peak RSS: {stats.peak_rss_mib:.1f} MiB")
    print(f"  invariant violations: {len(stats.violations)}")
    for violation in stats.violations[:20]:
        print(f"    {violation}")
    if args.json is not None:
        figures = {"minutes": seconds / 60, "seed": args.seed, "workers": args.workers,
                   "copies": stats.copies, "committed": stats.committed,
                   "clean_copies": stats.clean_copies, "faults": stats.faults,
                   "faults_by_kind": dict(stats.faults_by_kind),
                   "outcomes": dict(stats.outcomes), "bytes_verified": stats.bytes_verified,
                   "peak_rss_mib": stats.peak_rss_mib, "violations": stats.violations}
        args.json.write_text(json.dumps(figures, indent=2))
    return 1 if stats.violations else 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
