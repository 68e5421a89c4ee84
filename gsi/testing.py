"""Run a real receiver inside your tests.

Three ways to get one, all running the code ``gsi-receiver`` runs, over a real socket:

- :func:`open_guest` (async, trio): a receiver in this process on a temporary Unix
  socket with a temporary destination root (or one you give)::

      from gsi.testing import open_guest
      from host_sim import copy_vm_file

      async def test_upload() -> None:
          async with open_guest() as guest:
              await copy_vm_file(guest.url, "report.pdf", "/data/", create_full_path=True)
              assert guest.path("/data/report.pdf").read_bytes() == ...

  It stops (aborting any open copy cleanly) when the block ends.
- :func:`guest_process` (sync): ``python -m gsi.cli`` in a subprocess, for test suites
  that are not async. It is stopped with SIGTERM at the end of the block, and the block
  raises :class:`GuestProcessError` if the receiver failed (non-zero exit, a traceback in
  its log, or it died early).
- the pytest plugin :mod:`gsi.pytest_plugin` wraps both as fixtures: ``gsi_guest`` and
  ``gsi_guest_process``.

:func:`copy_file_sync` is one Copy-VMFile from synchronous code.
"""

from __future__ import annotations

import contextlib
import functools
import io
import os
import queue
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Final

import trio

from .constants import DATA_FRAGMENT
from .errors import GsiError
from .server import Receiver, ReceiverConfig, ReceiverStats
from .transports import listener_url, open_listeners

if TYPE_CHECKING:
    from host_sim.client import CopyResult

__all__ = [
    "Guest",
    "GuestProcess",
    "GuestProcessError",
    "copy_file_sync",
    "guest_process",
    "open_guest",
    "receiver_args",
]

TRACEBACK_MARK: Final = "Traceback (most recent call last)"
"""A receiver log holding this line failed the test: something raised unexpectedly."""


def _land(root: Path, guest_path: str) -> Path:
    return root.joinpath(*[p for p in guest_path.split("/") if p not in ("", ".")])


@dataclass(frozen=True, slots=True)
class Guest:
    """A running in-process receiver (from :func:`open_guest`).

    Attributes:
        url: where a host connects (``unix:///…``).
        root: the destination root; guest path ``/a/b`` is ``root / "a/b"``.
        receiver: the server object (its ``stats`` count copies).
    """

    url: str
    root: Path
    receiver: Receiver

    @property
    def stats(self) -> ReceiverStats:
        return self.receiver.stats

    def path(self, guest_path: str) -> Path:
        """Where a guest path lands on this machine."""
        return _land(self.root, guest_path)

    async def copy(
        self, source: str | os.PathLike[str], dest_dir: str, *, name: str | None = None,
        create_full_path: bool = False, force: bool = False,
        fragment_size: int = DATA_FRAGMENT, window: int = 1,
    ) -> CopyResult:
        """One Copy-VMFile into this guest (``host_sim.copy_vm_file`` on :attr:`url`).

        Raises:
            gsi.errors.CopyFailed: the guest refused (``.status`` holds its HRESULT).
        """
        from host_sim.client import copy_vm_file

        return await copy_vm_file(self.url, source, dest_dir, name=name,
                                  create_full_path=create_full_path, force=force,
                                  fragment_size=fragment_size, window=window)


def _listen_url(directory: Path) -> str:
    """A Unix socket in ``directory`` (short temp paths: sun_path holds 108 bytes)."""
    if sys.platform == "win32":  # pragma: no cover - trio has no AF_UNIX there
        return "tcp://127.0.0.1:0"
    return f"unix://{directory / 'guest.sock'}"


@asynccontextmanager
async def open_guest(root: str | Path | None = None, *, fsync: bool = False,
                     **config: Any) -> AsyncIterator[Guest]:
    """Start a receiver for the duration of the block.

    Args:
        root: destination root (default: a fresh temporary directory, removed after).
        fsync: fsync on COMPLETE (off by default: tests want speed, not durability).
        **config: any other :class:`gsi.server.ReceiverConfig` field, e.g.
            ``max_fragment=65536`` or ``idle_timeout=5``.
    """
    with tempfile.TemporaryDirectory(prefix="gsi-") as tmp:
        guest_root = Path(root) if root is not None else Path(tmp) / "root"
        guest_root.mkdir(parents=True, exist_ok=True)
        listeners = await open_listeners(_listen_url(Path(tmp)))
        receiver = Receiver(ReceiverConfig(root=guest_root, fsync=fsync, **config))
        async with trio.open_nursery() as nursery:
            await nursery.start(receiver.serve, listeners)
            try:
                yield Guest(url=listener_url(listeners[0]), root=guest_root,
                            receiver=receiver)
            finally:
                nursery.cancel_scope.cancel()


def copy_file_sync(
    url: str, source: str | os.PathLike[str], dest_dir: str, *, name: str | None = None,
    create_full_path: bool = False, force: bool = False, fragment_size: int = DATA_FRAGMENT,
    window: int = 1, native: bool | None = None,
) -> CopyResult:
    """One Copy-VMFile to ``url`` from synchronous code (runs its own ``trio.run``).

    Not for use inside a running trio loop: ``await host_sim.copy_vm_file`` there.

    Raises:
        gsi.errors.CopyFailed: the guest refused (``.status`` holds its HRESULT, the
            message says what the status means) or the connection failed.
        gsi.transports.TransportError: nobody listens at ``url``.
    """
    from host_sim.client import copy_vm_file

    return trio.run(functools.partial(
        copy_vm_file, url, source, dest_dir, name=name, create_full_path=create_full_path,
        force=force, fragment_size=fragment_size, window=window, native=native))


# -- a receiver in a subprocess ---------------------------------------------------------


class GuestProcessError(GsiError):
    """The receiver subprocess did not start, or it failed while it ran."""


_NEGATED_FLAGS: Final = {"fsync": "--no-fsync", "check_free_space": "--no-free-space-check"}


def receiver_args(root: str | Path, *, fsync: bool = False, **config: Any) -> list[str]:
    """``gsi-receiver`` options (after ``--root``/``--listen``) for ReceiverConfig fields.

    ``receiver_args(root, max_fragment=65536, trim_write_echo=True)`` is
    ``["--no-fsync", "--max-fragment", "65536", "--trim-write-echo"]``. The result is
    checked by parsing it with the real CLI parser: the receiver it starts has exactly
    ``ReceiverConfig(root=root, fsync=fsync, **config)``.

    Raises:
        TypeError: a name that is not a ReceiverConfig field.
        ValueError: a field the command line cannot set (e.g. ``framework_versions``), or
            a value the CLI refuses (the message holds the CLI's complaint).
    """
    from . import cli

    wanted = ReceiverConfig(root=Path(root), fsync=fsync, **config)
    args: list[str] = []
    for key, value in {"fsync": fsync, **config}.items():
        flag = "--" + key.replace("_", "-")
        if key in _NEGATED_FLAGS:
            if not value:
                args.append(_NEGATED_FLAGS[key])
        elif isinstance(value, bool):
            if value:
                args.append(flag)
        elif key == "allow_uids":
            for uid in value:
                args += ["--allow-uid", str(uid)]
        elif key == "file_mode" and isinstance(value, int):
            args += [flag, f"{value:o}"]
        elif value is not None:
            args += [flag, str(value)]
    argv = ["--root", str(root), "--listen", "unix:///unused", *args]
    complaint = io.StringIO()
    try:
        with contextlib.redirect_stderr(complaint):
            parsed, unknown = cli.build_parser().parse_known_args(argv)
    except SystemExit:
        raise ValueError(f"gsi-receiver refuses {args}: {complaint.getvalue().strip()}") from None
    if unknown or cli.config_from_args(parsed) != wanted:
        raise ValueError(f"gsi-receiver's command line cannot set {config!r} "
                         f"(tried {args}); use open_guest() / gsi_guest for that")
    return args


@dataclass(eq=False)
class GuestProcess:
    """A ``gsi-receiver`` subprocess (from :func:`guest_process`).

    Attributes:
        url: where a host connects, as the receiver announced it.
        root: the destination root.
        log_path: the receiver's stderr (its log).
        process: the subprocess.
    """

    url: str
    root: Path
    log_path: Path
    process: subprocess.Popen[bytes]
    stdout_lines: list[str] = field(default_factory=list)

    def path(self, guest_path: str) -> Path:
        """Where a guest path lands on this machine."""
        return _land(self.root, guest_path)

    def log(self) -> str:
        """The receiver's log so far."""
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def copy(
        self, source: str | os.PathLike[str], dest_dir: str, *, name: str | None = None,
        create_full_path: bool = False, force: bool = False,
        fragment_size: int = DATA_FRAGMENT, window: int = 1,
    ) -> CopyResult:
        """One Copy-VMFile into this guest; see :func:`copy_file_sync`.

        Raises:
            gsi.errors.CopyFailed: the guest refused (``.status`` holds its HRESULT).
        """
        return copy_file_sync(self.url, source, dest_dir, name=name,
                              create_full_path=create_full_path, force=force,
                              fragment_size=fragment_size, window=window)


def _read_lines(stream: IO[bytes], lines: queue.Queue[str | None]) -> None:
    """Reader thread: every stdout line, then None at EOF (the pipe never fills up)."""
    with stream:
        for raw in stream:
            lines.put(raw.decode("utf-8", "replace").rstrip("\r\n"))
    lines.put(None)


def _log_tail(log_path: Path, lines: int = 40) -> str:
    try:
        text = log_path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        return f"(no log: {exc})"
    tail = text.splitlines()[-lines:]
    return "\n".join(tail) if tail else "(the log is empty)"


def _stop(proc: subprocess.Popen[bytes], timeout: float) -> list[str]:
    """SIGTERM, wait; the problems found (an empty list: a clean stop)."""
    problems = []
    status = proc.poll()
    if status is not None:
        problems.append(f"gsi-receiver exited on its own (status {status}) before the end")
        return problems
    proc.send_signal(signal.SIGTERM)  # Windows: TerminateProcess
    try:
        status = proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        problems.append(f"gsi-receiver did not stop within {timeout} s of SIGTERM; killed")
        return problems
    if status != 0 and sys.platform != "win32":
        problems.append(f"gsi-receiver exited with status {status} after SIGTERM")
    return problems


@contextmanager
def guest_process(
    root: str | Path | None = None, *, fsync: bool = False,
    log_path: str | Path | None = None, startup_timeout: float = 30.0,
    stop_timeout: float = 30.0, **config: Any,
) -> Iterator[GuestProcess]:
    """Run ``python -m gsi.cli`` for the duration of the block.

    The receiver listens on a temporary Unix socket; the block gets it once it has
    announced ``listening on URL``. At the end it is stopped with SIGTERM.

    Args:
        root: destination root (default: a temporary directory, removed after).
        fsync: fsync on COMPLETE (default off: ``--no-fsync``).
        log_path: where the receiver's stderr goes (default: in the temporary directory).
        startup_timeout: seconds to wait for ``listening on``.
        stop_timeout: seconds to wait for the exit after SIGTERM.
        **config: other ReceiverConfig fields, passed as command-line options
            (see :func:`receiver_args`).

    Raises:
        GuestProcessError: the receiver did not start; or, at the end of the block, it
            had exited early, did not exit 0 after SIGTERM, or logged a traceback. The
            message holds the end of its log. (If the block itself raised, that
            exception propagates and the receiver's problems are added as a note.)
    """
    with tempfile.TemporaryDirectory(prefix="gsi-") as tmp:
        tmpdir = Path(tmp)
        guest_root = Path(root) if root is not None else tmpdir / "root"
        guest_root.mkdir(parents=True, exist_ok=True)
        log_file = Path(log_path) if log_path is not None else tmpdir / "gsi-receiver.log"
        argv = [sys.executable, "-m", "gsi.cli", "--root", str(guest_root),
                "--listen", _listen_url(tmpdir), *receiver_args(guest_root, fsync=fsync,
                                                                **config)]
        with log_file.open("ab") as log:  # append: the child and a reader never clash
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                    stderr=log, cwd=tmp)
        assert proc.stdout is not None
        lines: queue.Queue[str | None] = queue.Queue()
        reader = threading.Thread(target=_read_lines, args=(proc.stdout, lines),
                                  name=f"gsi-receiver-{proc.pid}-stdout", daemon=True)
        reader.start()
        try:
            guest = _wait_listening(proc, lines, guest_root, log_file, startup_timeout)
        except BaseException:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            raise
        try:
            yield guest
        except BaseException as exc:
            for problem in _finish(guest, reader, lines, stop_timeout):
                exc.add_note(f"also: {problem} (log: {log_file})")
            raise
        problems = _finish(guest, reader, lines, stop_timeout)
        if problems:
            raise GuestProcessError(f"{'; '.join(problems)}; its log ({log_file}) ends:\n"
                                    f"{_log_tail(log_file)}")


def _finish(guest: GuestProcess, reader: threading.Thread, lines: queue.Queue[str | None],
            stop_timeout: float) -> list[str]:
    """Stop the receiver, collect the rest of its stdout; the problems found."""
    problems = _stop(guest.process, stop_timeout)
    reader.join(stop_timeout)
    with contextlib.suppress(queue.Empty):
        while (line := lines.get_nowait()) is not None:
            guest.stdout_lines.append(line)
    with contextlib.suppress(OSError):
        if TRACEBACK_MARK in guest.log():
            problems.append("gsi-receiver logged a traceback")
    return problems


def _wait_listening(proc: subprocess.Popen[bytes], lines: queue.Queue[str | None],
                    root: Path, log_file: Path, timeout: float) -> GuestProcess:
    deadline = time.monotonic() + timeout
    seen: list[str] = []
    while True:
        try:
            line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            raise GuestProcessError(
                f"gsi-receiver did not announce 'listening on' within {timeout} s; its log "
                f"({log_file}) ends:\n{_log_tail(log_file)}") from None
        if line is None:
            status = proc.wait()
            raise GuestProcessError(
                f"gsi-receiver exited with status {status} before listening; its log "
                f"({log_file}) ends:\n{_log_tail(log_file)}")
        seen.append(line)
        if line.startswith("listening on "):
            return GuestProcess(url=line.removeprefix("listening on ").strip(), root=root,
                                log_path=log_file, process=proc, stdout_lines=seen)
