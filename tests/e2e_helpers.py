"""Helpers for the end-to-end tests: a real ``gsi-receiver`` subprocess, ``host-sim`` runs,
filesystem snapshots and a few in-process host steps.

:class:`ReceiverProcess` starts ``python -m gsi.cli --root ROOT --listen URL...``, waits for
its ``listening on URL`` lines and collects stdout and stderr in reader threads, so that a
test can wait for a log line (event-driven, with a timeout; never a blind sleep) and assert
on the whole log afterwards. :meth:`ReceiverProcess.stop` sends SIGTERM and waits.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO

import trio

from gsi.constants import DATA_FRAGMENT, CopyFlags
from host_sim import Answer, HostClient

REPO = Path(__file__).resolve().parents[1]
TEMP_GLOB = ".gsi-*.part"
START_TIMEOUT = 15.0
"""Seconds a receiver gets to print its ``listening on`` lines."""
STOP_TIMEOUT = 10.0
HOST_SIM_TIMEOUT = 60.0


class _Lines:
    """Lines of one pipe, read by a thread; waiters are woken per line."""

    def __init__(self, pipe: IO[str], name: str) -> None:
        self.lines: list[str] = []
        self.closed = False
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._read, args=(pipe,), daemon=True,
                                        name=f"e2e-{name}")
        self._thread.start()

    def _read(self, pipe: IO[str]) -> None:
        try:
            for line in pipe:
                with self._cond:
                    self.lines.append(line.rstrip("\n"))
                    self._cond.notify_all()
        finally:
            with self._cond:
                self.closed = True
                self._cond.notify_all()

    @property
    def text(self) -> str:
        return "\n".join(self.get())

    def get(self, since: int = 0) -> list[str]:
        """The lines so far, from line ``since`` on."""
        with self._cond:
            return self.lines[since:]

    def wait_for(self, pattern: str, timeout: float, *, count: int = 1,
                 since: int = 0) -> list[re.Match[str]]:
        """Wait until ``count`` lines (from line ``since`` on) match ``pattern``
        (re.search); return the matches.

        Raises:
            AssertionError: the timeout passed or the pipe closed first.
        """
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                found = [m for line in self.lines[since:] if (m := regex.search(line))]
                if len(found) >= count:
                    return found[:count]
                left = deadline - time.monotonic()
                if self.closed or left <= 0:
                    why = "the pipe closed" if self.closed else f"{timeout} s passed"
                    raise AssertionError(
                        f"{why} before {count} line(s) matched {pattern!r}; got:\n"
                        + "\n".join(self.lines))
                self._cond.wait(left)

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)


class ReceiverProcess:
    """A running ``gsi-receiver`` (``python -m gsi.cli``).

    Attributes:
        root: its destination root.
        urls: the URLs it printed in its ``listening on`` lines, in order.
        proc: the process.
    """

    def __init__(self, root: Path, listen: Sequence[str], extra: Sequence[str] = (),
                 *, log_level: str = "INFO", prefix: Sequence[str] = ()) -> None:
        """``prefix``: a command that execs the receiver (``unshare ...``), or none."""
        self.root = root
        args = [*prefix, sys.executable, "-m", "gsi.cli", "--root", str(root),
                "--log-level", log_level]
        for url in listen:
            args += ["--listen", url]
        args += list(extra)
        self.args = args
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, cwd=REPO,
                                     env=_child_env())
        assert self.proc.stdout is not None and self.proc.stderr is not None
        self.stdout = _Lines(self.proc.stdout, "stdout")
        self.stderr = _Lines(self.proc.stderr, "stderr")
        self.urls: list[str] = []
        try:
            matches = self.stdout.wait_for(r"^listening on (\S+)$", START_TIMEOUT,
                                           count=len(listen))
        except AssertionError as exc:
            self.kill()
            raise AssertionError(f"{exc}\nstderr:\n{self.stderr.text}") from None
        self.urls = [m[1] for m in matches]

    @property
    def url(self) -> str:
        return self.urls[0]

    @property
    def log(self) -> str:
        """Everything it wrote to stderr so far."""
        return self.stderr.text

    def mark(self) -> int:
        """The number of log lines so far: pass it as ``since`` to look only at later ones."""
        return len(self.stderr.get())

    def log_lines(self, since: int = 0) -> list[str]:
        return self.stderr.get(since)

    def wait_log(self, pattern: str, timeout: float = 10.0, *, count: int = 1,
                 since: int = 0) -> re.Match[str]:
        """Block until the receiver's stderr has ``count`` lines matching ``pattern``
        (from line ``since`` on); return the last of them (call it from a worker thread in
        async code)."""
        return self.stderr.wait_for(pattern, timeout, count=count, since=since)[-1]

    async def await_log(self, pattern: str, timeout: float = 10.0, *, count: int = 1,
                        since: int = 0) -> re.Match[str]:
        """:meth:`wait_log` without blocking the trio loop."""
        return await trio.to_thread.run_sync(
            lambda: self.wait_log(pattern, timeout, count=count, since=since))

    def signal(self, signum: int = signal.SIGTERM) -> None:
        self.proc.send_signal(signum)

    def wait(self, timeout: float = STOP_TIMEOUT) -> int:
        """Wait for exit; the return code. Raises AssertionError (after a kill) on timeout."""
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"receiver did not exit within {timeout} s; stderr:\n"
                                 f"{self.log}") from None
        self.stdout.join(5)
        self.stderr.join(5)
        return rc

    async def await_exit(self, timeout: float = STOP_TIMEOUT) -> int:
        return await trio.to_thread.run_sync(self.wait, timeout)

    def stop(self, timeout: float = STOP_TIMEOUT) -> int:
        """SIGTERM (if still running) and wait; the return code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.wait(timeout)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(STOP_TIMEOUT)


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


@contextlib.contextmanager
def running_receiver(root: Path, listen: Sequence[str], extra: Sequence[str] = (),
                     *, log_level: str = "INFO",
                     expect_rc: int | None = 0) -> Iterator[ReceiverProcess]:
    """Start a receiver; on exit SIGTERM it, wait, and check its exit status."""
    receiver = ReceiverProcess(root, listen, extra, log_level=log_level)
    try:
        yield receiver
    except BaseException:
        receiver.kill()
        raise
    rc = receiver.stop()
    if expect_rc is not None:
        assert rc == expect_rc, f"receiver exited with {rc}; stderr:\n{receiver.log}"


@contextlib.contextmanager
def short_tempdir(prefix: str = "gsi-e2e-") -> Iterator[Path]:
    """A fresh directory with a short path (Unix socket paths are limited to 107 bytes)."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def host_sim_args(url: str, *args: str | os.PathLike[str]) -> list[str]:
    return [sys.executable, "-m", "host_sim.cli", "copy", "--to", url, *map(str, args)]


def run_host_sim(url: str, *args: str | os.PathLike[str],
                 timeout: float = HOST_SIM_TIMEOUT) -> subprocess.CompletedProcess[str]:
    """``host-sim copy --to URL ARGS...``; raises TimeoutExpired if it hangs."""
    return subprocess.run(host_sim_args(url, *args), capture_output=True, text=True,
                          cwd=REPO, env=_child_env(), timeout=timeout, check=False)


def run_receiver_cli(*args: str | os.PathLike[str],
                     timeout: float = 20.0) -> subprocess.CompletedProcess[str]:
    """``gsi-receiver ARGS...`` to completion (for the usage errors)."""
    return subprocess.run([sys.executable, "-m", "gsi.cli", *map(str, args)],
                          capture_output=True, text=True, cwd=REPO, env=_child_env(),
                          timeout=timeout, check=False)


def temp_files(directory: Path) -> list[Path]:
    """Receiver temp files anywhere under ``directory`` (named ones: see open_temps)."""
    return sorted(directory.rglob(TEMP_GLOB))


def open_temps(directory: Path, pid: int | None = None) -> list[int]:
    """Sizes of the unnamed (``O_TMPFILE``) temp files process ``pid`` (default: this
    one) has open anywhere under ``directory``: ``/proc/PID/fd/N`` links to
    ``DIR/#INODE (deleted)``."""
    pid = os.getpid() if pid is None else pid
    sizes = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
            if (link.startswith(f"{directory}/") and link.endswith(" (deleted)")
                    and os.path.basename(link).startswith("#")):
                sizes.append(os.stat(f"/proc/{pid}/fd/{fd}").st_size)
        except FileNotFoundError:  # closed meanwhile
            continue
    return sizes


def all_temps(directory: Path, pid: int | None = None) -> int:
    """Named plus unnamed temp files of process ``pid`` under ``directory``."""
    return len(temp_files(directory)) + len(open_temps(directory, pid))


Snapshot = dict[str, tuple[str, bytes | str | None]]


def snapshot(top: Path, *, exclude: Path | None = None) -> Snapshot:
    """Every entry under ``top`` (symlinks not followed): kind and content / link target,
    mode bits for directories. ``exclude`` (a subtree) is left out."""
    out: Snapshot = {}
    for dirpath, dirnames, filenames in os.walk(top, followlinks=False):
        here = Path(dirpath)
        if exclude is not None and here == exclude:
            dirnames.clear()
            continue
        for name in dirnames + filenames:
            path = here / name
            if exclude is not None and path == exclude:
                continue
            rel = str(path.relative_to(top))
            if path.is_symlink():
                out[rel] = ("link", os.readlink(path))
            elif path.is_dir():
                out[rel] = ("dir", oct(path.stat().st_mode))
            else:
                out[rel] = ("file", path.read_bytes())
    return out


def random_bytes(size: int, seed: int) -> bytes:
    """Deterministic incompressible-looking bytes."""
    import random

    return random.Random(seed).randbytes(size)


# -- in-process host steps (a HostClient over a real connection) -----------------------

async def start_copy(host: HostClient, path_name: str, file_name: str, file_size: int, *,
                     force: bool = False, create: bool = False) -> Answer:
    """NEGOTIATE (once) and START; the START answer."""
    if not host.negotiated:
        await host.negotiate()
    flags = (CopyFlags.OVER_WRITE if force else CopyFlags.NONE) | (
        CopyFlags.CREATE_PATH if create else CopyFlags.NONE)
    return await host.request(host.conn.start_copy(file_name=file_name, path_name=path_name,
                                                   flags=flags, file_size=file_size))


async def write_range(host: HostClient, data: bytes, start: int, stop: int, *,
                      fragment: int = DATA_FRAGMENT) -> list[Answer]:
    """WRITE ``data[start:stop]`` in fragments, stop-and-wait; every answer."""
    answers = []
    for offset in range(start, stop, fragment):
        piece = data[offset:min(offset + fragment, stop)]
        answers.append(await host.request(host.conn.write(offset, piece)))
    return answers


async def receive_until_eof(stream: trio.abc.ReceiveStream, limit: int = 1 << 20) -> bytes:
    """Everything the peer sends until it closes (at most ``limit`` bytes)."""
    got = bytearray()
    while chunk := await stream.receive_some(65536):
        got += chunk
        assert len(got) <= limit, "the peer keeps sending"
    return bytes(got)
