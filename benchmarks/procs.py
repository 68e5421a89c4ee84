"""Processes of a benchmark run: servers that announce their URL, timed host runs, what
``/proc`` says about a server (CPU seconds, peak RSS), and the two measuring traps of
these machines handled in one place: where the processes run (``PIN``, ``set_pinning``)
and the page-cache state before a timed write (``scratch``)."""

from __future__ import annotations

import json
import os
import resource
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

PYTHON = sys.executable
REPO = Path(__file__).resolve().parent.parent
_TICKS = os.sysconf("SC_CLK_TCK")
_CPUS = sorted(os.sched_getaffinity(0))
PIN: dict[str, list[int]] | None = (
    {"server": _CPUS[-1:], "client": _CPUS[:1]} if len(_CPUS) >= 2 else None)
"""Servers run on the last CPU, clients on the first (one core each, as on two machines'
worth of a 2-core box): stop-and-wait latency then does not depend on where the scheduler
happens to put the two processes (a round trip across two CPUs costs several times one on
a single CPU). ``set_pinning`` changes it."""


def set_pinning(enabled: bool = True, *, same_cpu: bool = False) -> None:
    """Servers and clients on separate CPUs (the default), all on the first CPU
    (``same_cpu``), or wherever the scheduler puts them (``enabled=False``)."""
    global PIN
    if not enabled:
        PIN = None
    elif same_cpu:
        PIN = {"server": _CPUS[:1], "client": _CPUS[:1]}
    else:
        PIN = {"server": _CPUS[-1:], "client": _CPUS[:1]} if len(_CPUS) >= 2 else None


def placement(pin: dict[str, list[int]] | None) -> str:
    """A pinning (``PIN``) in words, for the reports."""
    if pin is None:
        return "not pinned (the scheduler places servers and clients)"
    if pin["server"] == pin["client"]:
        return f"servers and clients all pinned to CPU {_cpus(pin['server'])}"
    return (f"servers (receivers, answerers) pinned to CPU {_cpus(pin['server'])}, clients "
            f"(host driver, baseline senders) to CPU {_cpus(pin['client'])}")


def _cpus(cpus: list[int]) -> str:
    return ",".join(str(c) for c in cpus)


def scratch(directory: Path, size: int) -> None:
    """Write ``size`` bytes to a scratch file in ``directory`` and delete it.

    The page-cache trap: a file written right after another was deleted runs several
    times faster than one written after none (freed pages are at hand), so every timed
    run that writes a file, receiver and baseline alike, gets this first, outside its
    timed span, in the directory it writes into."""
    path = directory / ".scratch"
    block = memoryview(bytes(min(size, 1 << 20)))
    with open(path, "wb") as f:
        left = size
        while left:
            left -= f.write(block[:left])
    path.unlink()


def _pin(role: str) -> Callable[[], None] | None:
    if PIN is None:
        return None
    cpus = PIN[role]
    return lambda: os.sched_setaffinity(0, cpus)


class ServerError(RuntimeError):
    pass


class Server:
    """A server process started from ``argv`` that prints ``listening on URL`` first
    (run in ``cwd``: ``python -m`` imports from there, this repository by default)."""

    def __init__(self, name: str, argv: list[str], log: Path, *, cwd: Path = REPO) -> None:
        self.name = name
        self._log = log.open("ab")
        self.proc = subprocess.Popen(argv, cwd=cwd, stdout=subprocess.PIPE,
                                     stderr=self._log, stdin=subprocess.DEVNULL,
                                     preexec_fn=_pin("server"))
        self.url = self._wait_url()

    def _wait_url(self, timeout: float = 20.0) -> str:
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        line = b""
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self.proc.stdout], [], [], 0.1)
            if ready:
                line = self.proc.stdout.readline()
                if line.startswith(b"listening on "):
                    return line.decode().split()[-1]
            if self.proc.poll() is not None:
                break
        self.stop()
        raise ServerError(f"{self.name} did not start (see {self._log.name}): {line!r}")

    @property
    def pid(self) -> int:
        return self.proc.pid

    def cpu_seconds(self) -> float:
        """utime + stime so far, from /proc/<pid>/stat."""
        stat = Path(f"/proc/{self.pid}/stat").read_text()
        fields = stat[stat.rindex(")") + 2:].split()
        return (int(fields[11]) + int(fields[12])) / _TICKS

    def peak_rss(self) -> int:
        """VmHWM in bytes, from /proc/<pid>/status."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
        raise ServerError("no VmHWM")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self._log.close()


def run_json(argv: list[str], log: Path, timeout: float = 1800,
             env: dict[str, str] | None = None) -> tuple[dict[str, Any], float]:
    """Run a program that prints one JSON object last; (that object, its CPU seconds).
    ``env``: the program's environment (default: this one's)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    with log.open("ab") as err:
        done = subprocess.run(argv, cwd=REPO, stdout=subprocess.PIPE, stderr=err,
                              stdin=subprocess.DEVNULL, timeout=timeout, check=False,
                              preexec_fn=_pin("client"), env=env)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise ServerError(f"{' '.join(argv[:4])}... exited {done.returncode} (see {log})")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    result: dict[str, Any] = json.loads(done.stdout.decode().strip().splitlines()[-1])
    return result, cpu
