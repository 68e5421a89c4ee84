"""Run the benchmark suite: ``python -m benchmarks.run [--quick]`` (or ``make bench``).

Starts, for each case, the receiver under test (``python -m gsi.cli``) and the baseline
servers as separate processes over a real transport, runs the host driver and the
baseline clients as separate processes, repetition by repetition (baselines interleaved
with the case), each run that writes a file right after writing and deleting a scratch
file of its size where it writes (``procs.scratch``), checks every received file against
the source's SHA-256 after each run (outside the timed span) and removes it. Receiver and
host CPU are reported per WRITE. Writes ``results/<mode>-<stamp>.json`` and
``results/latest-<mode>.{json,md,png}``; see ``benchmarks/README.md``.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict
from functools import partial
from pathlib import Path
from typing import Any

from gsi.transports import DEFAULT_SOCKET_BUFFER

from . import matrix, procs, report
from .matrix import STOCK, Case
from .procs import PYTHON, REPO, Server, run_json

RESULTS = Path(__file__).resolve().parent / "results"
HERE = Path(__file__).resolve().parent
RAW_BUFFER = DEFAULT_SOCKET_BUFFER or 0
"""The raw copy asks for the same socket buffers as gsi.transports unix:// streams (0: OS
default); tcp:// streams keep the kernel's autotuning on both sides."""


def _digest(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


class Workspace:
    """The temp dir of a run: sources (made once), receiver roots, logs."""

    def __init__(self, base: Path) -> None:
        self.dir = base
        self.logs = base / "logs"
        self.logs.mkdir()
        self._digests: dict[Path, str] = {}
        self._dirs: dict[tuple[int, int], Path] = {}

    def source(self, size: int, *, sparse: bool = False) -> Path:
        """A source file of random bytes (zeros, sparse, for the 4 GiB memory check)."""
        path = self.dir / f"src-{'zero-' if sparse else ''}{size}.bin"
        if path not in self._digests:
            h = hashlib.sha256()
            with path.open("wb") as f:
                if sparse:
                    f.truncate(size)
                    zeros = bytes(1 << 24)
                    for _ in range(size // len(zeros)):
                        h.update(zeros)
                    h.update(bytes(size % len(zeros)))
                else:
                    left = size
                    while left:
                        chunk = os.urandom(min(left, 1 << 22))
                        f.write(chunk)
                        h.update(chunk)
                        left -= len(chunk)
            self._digests[path] = h.hexdigest()
        return path

    def small_files(self, count: int, size: int) -> Path:
        key = (count, size)
        if key not in self._dirs:
            folder = self.dir / f"small-{count}x{size}"
            folder.mkdir()
            for i in range(count):
                data = os.urandom(size)
                path = folder / f"f{i:05d}.bin"
                path.write_bytes(data)
                self._digests[path] = hashlib.sha256(data).hexdigest()
            self._dirs[key] = folder
        return self._dirs[key]

    def check(self, received: Path, source: Path) -> None:
        """Verify a received file against its source, then remove it."""
        got = _digest(received)
        if got != self._digests[source]:
            raise RuntimeError(f"{received} differs from {source}")
        received.unlink()

    def log(self, name: str) -> Path:
        return self.logs / f"{name}.log"


def _stats(values: list[float]) -> dict[str, Any]:
    return {"runs": values, "median": statistics.median(values), "min": min(values),
            "max": max(values)}


def _raw_buffer(case: Case) -> int:
    return RAW_BUFFER if case.transport == "unix" else 0


def _url(case: Case, ws: Workspace, role: str, index: int) -> str:
    if case.transport == "unix":
        return f"unix://{ws.dir}/{index}-{role}.sock"
    if case.transport == "vmbus-emu":  # the listener creates the ring and FIFO files
        return f"vmbus-emu://{ws.dir}/{index}-{role}.ring"
    return "tcp://127.0.0.1:0"


def run_case(case: Case, index: int, ws: Workspace) -> dict[str, Any]:
    root = ws.dir / f"root-{index}"
    root.mkdir()
    rawdir = ws.dir / f"raw-{index}"
    rawdir.mkdir()
    tag = f"{index:02d}"
    receiver_argv = [PYTHON, "-m", "gsi.cli", "--root", str(root),
                     "--listen", _url(case, ws, "gsi", index),
                     "--max-fragment", str(max(case.fragment, STOCK)),
                     "--idle-timeout", "600", "--log-level", "WARNING"]
    if not case.fsync:
        receiver_argv.append("--no-fsync")
    if case.echo == "trim":
        receiver_argv.append("--trim-write-echo")
    servers: dict[str, Server] = {}
    try:
        servers["case"] = Server("gsi-receiver", receiver_argv, ws.log(f"{tag}-receiver"))
        if "raw" in case.baselines:
            servers["raw"] = Server("raw copy receiver", [
                PYTHON, str(HERE / "baseline_raw_copy.py"), "recv",
                "--listen", _url(case, ws, "raw", index), "--outdir", str(rawdir),
                "--buffer-size", str(_raw_buffer(case))]
                + (["--fsync"] if case.fsync else []), ws.log(f"{tag}-raw"))
        if "bare" in case.baselines:
            servers["bare"] = Server("bare loop", [
                PYTHON, str(HERE / "baseline_bare_loop.py"),
                "--listen", _url(case, ws, "bare", index)]
                + (["--trim-write-echo"] if case.echo == "trim" else []), ws.log(f"{tag}-bare"))
        return _measure(case, ws, servers, root, rawdir, tag)
    finally:
        for server in servers.values():
            server.stop()
        shutil.rmtree(root, ignore_errors=True)
        shutil.rmtree(rawdir, ignore_errors=True)


def _measure(case: Case, ws: Workspace, servers: dict[str, Server], root: Path,
             rawdir: Path, tag: str) -> dict[str, Any]:
    sparse = case.kind == "rss"
    per_conn = ws.source(case.size, sparse=sparse) if case.kind != "files" else None
    small = ws.small_files(case.files, case.size) if case.kind == "files" else None
    total_src = ws.source(case.total_bytes) if "raw" in case.baselines else None
    driver = [PYTHON, "-m", "benchmarks.host_driver", "--window", str(case.window),
              "--fragment-size", str(case.fragment), "--connections", str(case.connections)]
    if small is not None:
        driver_tail = ["--source-dir", str(small), "/files/"]
    else:
        assert per_conn is not None
        driver_tail = [str(per_conn), "/"]

    def value(result: dict[str, Any]) -> float:
        if case.kind == "files":
            return float(result["files"] / result["seconds"])
        return float(result["bytes"] / result["seconds"] / 1e6)

    runs: dict[str, list[float]] = {name: [] for name in ("case", *case.baselines)}
    cpu: dict[str, float] = {name: 0.0 for name in runs}
    client_cpu: dict[str, float] = {name: 0.0 for name in runs}
    raw_count = 0

    def timed(name: str, argv: list[str], check: Callable[[], None],
              writes_into: Path | None = None, size: int = 0) -> None:
        """Run one client (after a scratch file of ``size`` bytes was written and deleted
        in ``writes_into``, where the run writes); its server's CPU and the client's own
        (the host driver's figure for the timed span where it gives one) are added up."""
        if writes_into is not None:
            procs.scratch(writes_into, size)
        server = servers.get(name)
        before = server.cpu_seconds() if server else 0.0
        result, child_cpu = run_json(argv, ws.log(f"{tag}-{name}-client"))
        child_cpu = float(result.get("cpu_seconds", child_cpu))  # the timed span only
        cpu[name] += server.cpu_seconds() - before if server else child_cpu
        client_cpu[name] += child_cpu
        runs[name].append(value(result))
        check()

    for _ in range(case.reps):
        if "raw" in case.baselines:
            assert total_src is not None
            raw_count += 1
            received = rawdir / f"raw-{raw_count}"
            timed("raw", [PYTHON, str(HERE / "baseline_raw_copy.py"), "send", "--to",
                          servers["raw"].url, str(total_src),
                          "--buffer-size", str(_raw_buffer(case))],
                  partial(ws.check, received, total_src), rawdir, case.total_bytes)
        for name in ("pwrite", "sink"):
            if name in case.baselines:
                assert per_conn is not None
                dest = ws.dir / f"{name}.bin"
                timed(name, [PYTHON, str(HERE / "baseline_pwrite.py"), str(per_conn),
                             str(dest), "--fragment", str(STOCK)]
                      + (["--via-sink"] if name == "sink" else [])
                      + (["--fsync"] if case.fsync else []),
                      partial(ws.check, dest, per_conn), ws.dir, case.size)
        if "bare" in case.baselines:
            timed("bare", [*driver, "--to", servers["bare"].url, *driver_tail], lambda: None)

        def check_case() -> None:
            if small is not None:
                for path in sorted(small.iterdir()):
                    ws.check(root / "files" / path.name, path)
            else:
                assert per_conn is not None
                for i in range(case.connections):
                    name = per_conn.name if case.connections == 1 else f"c{i}-{per_conn.name}"
                    ws.check(root / name, per_conn)

        timed("case", [*driver, "--to", servers["case"].url, *driver_tail], check_case,
              root, case.total_bytes)
    return _summary(case, servers, runs, cpu, client_cpu)


def per_write(case: Case, cpu_seconds: float) -> float:
    """Microseconds of CPU per WRITE over all repetitions of ``case``."""
    return cpu_seconds * 1e6 / max(1, case.writes * case.reps)


def _summary(case: Case, servers: dict[str, Server], runs: dict[str, list[float]],
             cpu: dict[str, float], client_cpu: dict[str, float]) -> dict[str, Any]:
    gib_moved = case.total_bytes * case.reps / (1 << 30)
    out: dict[str, Any] = {"label": case.label, **asdict(case),
                           "unit": "files/s" if case.kind == "files" else "MB/s",
                           **_stats(runs["case"])}
    out["writes_per_run"] = case.writes
    out["receiver_cpu_us_per_write"] = per_write(case, cpu["case"])
    out["host_cpu_us_per_write"] = per_write(case, client_cpu["case"])
    out["receiver_cpu_s_per_gib"] = cpu["case"] / gib_moved
    out["receiver_peak_rss_mib"] = servers["case"].peak_rss() / (1 << 20)
    out["host_cpu_s_per_gib"] = client_cpu["case"] / gib_moved
    if case.kind == "files":
        out["receiver_cpu_ms_per_file"] = cpu["case"] * 1000 / (case.files * case.reps)
        out["host_cpu_ms_per_file"] = client_cpu["case"] * 1000 / (case.files * case.reps)
    baselines: dict[str, Any] = {}
    for name in case.baselines:
        stats = _stats(runs[name])
        # Each repetition ran the baseline right before the case: the ratio is the median
        # of those paired ratios, which a machine whose speed drifts between repetitions
        # disturbs far less than a ratio of the two medians (also kept).
        stats["ratio"] = statistics.median(
            c / b for c, b in zip(runs["case"], runs[name], strict=True))
        stats["ratio_of_medians"] = out["median"] / stats["median"]
        if name == "sink":  # the write path alone: coalesced sink / per-fragment pwrite
            stats["vs_pwrite"] = statistics.median(
                a / b for a, b in zip(runs["sink"], runs["pwrite"], strict=True))
        stats["cpu_s_per_gib"] = cpu[name] / gib_moved
        # per WRITE of the case: for raw copy and pwrite, per the same bytes
        stats["cpu_us_per_write"] = per_write(case, cpu[name])
        if name == "bare":  # the same host driver, against an answerer that does nothing
            stats["host_cpu_us_per_write"] = per_write(case, client_cpu[name])
        baselines[name] = stats
    out["baselines"] = baselines
    out["verified"] = True
    out["loadavg_end"] = os.getloadavg()[0]
    return out


def machine() -> dict[str, Any]:
    def version(dist: str) -> str | None:
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            return None

    cpu_model = ""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu_model = line.split(":", 1)[1].strip()
            break
    mem = Path("/proc/meminfo").read_text().splitlines()[0].split()[1]
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True,
                                text=True, check=False).stdout.strip()
    except OSError:
        commit = ""
    return {
        "platform": platform.platform(), "cpu": cpu_model, "cpus": os.cpu_count(),
        "mem_gib": round(int(mem) / (1 << 20), 1), "python": sys.version.split()[0],
        "implementation": platform.python_implementation(),
        "versions": {d: version(d) for d in ("gsi", "trio", "construct", "matplotlib")},
        "git_commit": commit, "loadavg_start": os.getloadavg(), "pinning": procs.PIN,
        "placement": procs.placement(procs.PIN),
    }


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--quick", action="store_true",
                   help="the trimmed matrix (about 2 minutes; the full one: about 13)")
    p.add_argument("--only", metavar="TEXT", help="run only cases whose label contains TEXT")
    p.add_argument("--reps", type=int, help="override the repetitions of every case")
    p.add_argument("--out", type=Path, default=RESULTS, help="results directory")
    p.add_argument("--tmp", type=Path, default=None, help="parent of the temp dir")
    pin = p.add_mutually_exclusive_group()
    pin.add_argument("--no-pin", action="store_true",
                     help="do not pin servers and clients to separate CPUs")
    pin.add_argument("--same-cpu", action="store_true",
                     help="pin servers and clients all to the first CPU")
    args = p.parse_args(argv)
    procs.set_pinning(not args.no_pin, same_cpu=args.same_cpu)
    # SIGTERM unwinds like Ctrl-C: every server is stopped and the temp dir removed.
    signal.signal(signal.SIGTERM, _interrupt)
    mode = "quick" if args.quick else "full"
    cases = matrix.quick() if args.quick else matrix.full()
    if args.only:
        cases = [c for c in cases if args.only in c.label]
    if args.reps:
        cases = [Case(**{**asdict(c), "reps": args.reps}) for c in cases]
    started = time.time()
    host = machine()  # before the cases: its load average is the one at the start
    command = "python -m benchmarks.run" + (" --quick" if args.quick else "") + (
        " --same-cpu" if args.same_cpu else "") + (" --no-pin" if args.no_pin else "")
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="gsi-bench-", dir=args.tmp) as tmp:
        ws = Workspace(Path(tmp).resolve())  # vmbus-emu:// wants an absolute path
        for index, case in enumerate(cases):
            t0 = time.perf_counter()
            result = run_case(case, index, ws)
            results.append(result)
            base = "  ".join(f"{n} {b['median']:.1f} ({b['ratio']:.2f}x)"
                             for n, b in result["baselines"].items())
            print(f"[{index + 1}/{len(cases)}] {case.label}: {result['median']:.1f} "
                  f"{result['unit']} (min {result['min']:.1f} max {result['max']:.1f})  {base}"
                  f"  rx {result['receiver_cpu_us_per_write']:.1f} us/WRITE"
                  f"  host {result['host_cpu_us_per_write']:.1f} us/WRITE"
                  f"  rss {result['receiver_peak_rss_mib']:.1f} MiB"
                  f"  [{time.perf_counter() - t0:.0f}s]", flush=True)
    doc: dict[str, Any] = {"mode": mode, "command": command, "started": time.strftime(
        "%Y-%m-%dT%H:%M:%S%z", time.localtime(started)), "seconds": time.time() - started,
        "machine": host, "cases": results}
    doc["targets"] = report.targets(doc)
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(started))
    text = json.dumps(doc, indent=1)
    if not args.only:
        (args.out / f"{mode}-{stamp}.json").write_text(text)
    latest = args.out / (f"latest-{mode}" if not args.only else "partial")
    latest.with_suffix(".json").write_text(text)
    latest.with_suffix(".md").write_text(report.markdown(doc))
    chart = report.chart(doc, latest.with_suffix(".png"))
    if mode == "full" and not args.only and args.out == RESULTS:
        report.update_readme(doc, HERE / "README.md", latest.with_suffix(".png").name)
    print(report.targets_markdown(doc["targets"]))
    print(f"wrote {latest.with_suffix('.json')}, .md" + (", .png" if chart else "")
          + f" in {doc['seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
