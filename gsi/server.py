"""The receiver: accepts connections on any number of listeners and serves each in
its own :class:`gsi.session.Session`, with a connection limit and graceful shutdown."""

from __future__ import annotations

import errno
import logging
import socket
import struct
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import trio

from .constants import DATA_FRAGMENT, GUEST_FCOPY_VERSIONS, GUEST_FRAMEWORK_VERSIONS, Version
from .errors import AcceptError, GsiError
from .paths import describe_oserror
from .protocol import GuestConnection
from .session import CopyRecord, Session
from .sink import FileSink
from .trace import TraceRecorder, TraceStream, trace_file_stem

log = logging.getLogger("gsi.receiver")

ACCEPT_CAPACITY_ERRNOS: Final = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM,
                                           errno.ENOBUFS})
"""accept() errors that say the system is out of resources: the receiver logs them and
retries after :data:`ACCEPT_BACKOFF` seconds. Any other OSError from ``accept`` ends
:meth:`Receiver.serve` with an :class:`~gsi.errors.AcceptError` naming the listener
(trio's ``serve_listeners`` policy; the listeners themselves already retry what a vanished
peer causes, such as ECONNABORTED)."""
ACCEPT_BACKOFF: Final = 0.1


@dataclass(frozen=True, slots=True, kw_only=True)
class ReceiverConfig:
    """Everything a receiver can be told (the CLI maps its flags onto this).

    Attributes:
        root: the destination root; guest paths land below it.
        fsync: fsync file and directory before answering COMPLETE.
        max_fragment: the largest WRITE size accepted.
        idle_timeout: seconds of silence before a connection is dropped.
        message_timeout: seconds a message may take to arrive once its first byte has:
            a host trickling a message is dropped after that, whatever its pace.
        max_connections: connections served at once. At the limit a new connection
            evicts the connection idle the longest among those with no open copy
            (waiting for a request); only when every connection has an open copy is the
            new one closed on accept.
        allow_uids: if not empty, a connection on a Unix-socket listener whose peer
            (SO_PEERCRED) runs as another uid is closed on accept. Other listeners (TCP,
            vsock, vmbus) are not filtered: a TCP listener is open to every local user.
        temp_files: "auto" (unnamed temp files where the filesystem has them) or
            "named" (see :mod:`gsi.temps`).
        max_file_size: START with a larger file_size gets 0x80070057.
        file_mode: mode of committed files (None: 0o644 less the umask).
        trim_write_echo: answer WRITEs without their data.
        linux_status_codes: only answer with the codes the Linux daemons use.
        grace_period: on shutdown, seconds open copies get to finish.
        check_free_space: refuse a START whose file_size exceeds the free space.
        preallocate: reserve the file's space at START.
        linux_create_path: CREATE_PATH creates the last component of path_name only
            when it ends in "/", as the Linux daemons do.
        receive_size: the most bytes one receive takes (the receive buffer starts at
            16 KiB and grows, doubling each time a receive fills it, up to this).
        write_buffer: a lone WRITE (stop-and-wait) is gathered with the next contiguous
            ones up to this many bytes per ``pwrite`` (the sink's coalesce buffer,
            ``min(write_buffer, file_size)``, allocated at the first such WRITE, not at
            START); runs of WRITEs received together go straight to the file with one
            ``pwritev`` each.
        busy_poll: microseconds a connection keeps trying non-blocking receives after
            sending answers before it sleeps in the event loop (0: off; sockets only).
        max_ranges: disjoint byte ranges one copy may have received (out-of-order WRITEs);
            beyond it the WRITE is refused (0x80070057) and the copy ends.
        trace: a directory where each connection's bytes are recorded, one file per
            connection (docs/traces.md); None records nothing. A traced connection holds
            up to 1 MiB more (its record buffer).

    Memory bound, whatever a host sends: a connection holds its receive buffer (16 KiB
    until a receive fills it, then growing up to about ``receive_size`` + M, M being the
    largest message the framing accepts: 80 + ``max_fragment``, at least 1116; a full echo
    is sent from it, patched in place), the answers to one chunk that are not sent from it
    (< ``receive_size`` + M), the open copy's write buffer (``write_buffer``, from its first
    lone WRITE on) and its received ranges (about 64 bytes per range, ``max_ranges`` at
    most): ``2 * (receive_size + M) + write_buffer + 64 * max_ranges``, about 4 MiB with
    the defaults; a connection with a copy open and no data yet holds about 20 KiB. The
    total is ``max_connections`` times that on top of the process itself (about 30 MiB):
    lower ``max_connections``, ``receive_size`` or ``write_buffer`` to lower it.
    Connections beyond ``max_connections`` evict an idle one or are closed on
    accept, never queued.
    """

    root: Path
    fsync: bool = True
    max_fragment: int = DATA_FRAGMENT
    idle_timeout: float = 60.0
    message_timeout: float = 10.0
    max_connections: int = 256
    allow_uids: tuple[int, ...] = ()
    temp_files: str = "auto"
    max_file_size: int = (1 << 64) - 1
    file_mode: int | None = None
    trim_write_echo: bool = False
    linux_status_codes: bool = False
    grace_period: float = 10.0
    check_free_space: bool = True
    preallocate: bool = False
    linux_create_path: bool = False
    framework_versions: tuple[Version, ...] = GUEST_FRAMEWORK_VERSIONS
    message_versions: tuple[Version, ...] = GUEST_FCOPY_VERSIONS
    receive_size: int = 1 << 20
    write_buffer: int = 1 << 20
    max_ranges: int = 16384
    trace: Path | None = None
    busy_poll: int = 0


@dataclass(slots=True)
class ReceiverStats:
    """Counters since start."""

    connections: int = 0
    refused_connections: int = 0
    evicted_connections: int = 0
    committed: int = 0
    failed: int = 0
    bytes_committed: int = 0
    last_records: list[CopyRecord] = field(default_factory=list)

    def add(self, record: CopyRecord) -> None:
        if record.outcome == "committed":
            self.committed += 1
            self.bytes_committed += record.size
        else:
            self.failed += 1
        self.last_records.append(record)
        del self.last_records[:-100]


class Receiver:
    """Serves connections into one FileSink.

    Use :meth:`serve` inside a nursery; call :meth:`shutdown` (or cancel) to stop.
    """

    def __init__(self, config: ReceiverConfig) -> None:
        self.config = config
        self.sink = FileSink(config.root, fsync=config.fsync, file_mode=config.file_mode,
                             check_free_space=config.check_free_space,
                             preallocate=config.preallocate,
                             linux_create_path=config.linux_create_path,
                             coalesce_bytes=config.write_buffer,
                             temp_files=config.temp_files)
        self.stats = ReceiverStats()
        self._sessions: set[Session] = set()
        self._accepting = trio.CancelScope()
        self._connections_done = trio.Event()

    @property
    def active_connections(self) -> int:
        return len(self._sessions)

    def _new_connection(self) -> GuestConnection:
        c = self.config
        return GuestConnection(max_fragment=c.max_fragment, trim_write_echo=c.trim_write_echo,
                               max_file_size=c.max_file_size,
                               linux_status_codes=c.linux_status_codes,
                               framework_versions=c.framework_versions,
                               message_versions=c.message_versions,
                               max_ranges=c.max_ranges, receive_size=c.receive_size)

    async def serve(self, listeners: list[trio.abc.Listener[trio.abc.Stream]], *,
                    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Accept and serve until :meth:`shutdown`; then wait for the sessions.

        Raises:
            AcceptError: (in an exception group) a listener's ``accept`` failed with an
                errno other than :data:`ACCEPT_CAPACITY_ERRNOS`; open copies are aborted.
        """
        await trio.to_thread.run_sync(self.sink.check_temp_files)
        removed = await trio.to_thread.run_sync(self.sink.cleanup_stale_temps)
        for name in removed:
            log.info("removed a stale temp file left by a dead receiver: %s", name)
        try:
            async with trio.open_nursery() as sessions:
                with self._accepting:
                    async with trio.open_nursery() as accepters:
                        for listener in listeners:
                            accepters.start_soon(self._accept_loop, listener, sessions)
                        task_status.started()
                # Shutting down: no new connections (close the listeners now, so that a
                # host connecting meanwhile is refused instead of waiting in the backlog
                # for the whole grace period); give open copies the grace period.
                with trio.CancelScope(shield=True):
                    for listener in listeners:
                        await trio.aclose_forcefully(listener)
                log.info("stopped accepting connections (%d open)", len(self._sessions))
                for session in list(self._sessions):
                    session.request_stop()
                with trio.move_on_after(self.config.grace_period):
                    while self._sessions:
                        await self._wait_sessions_changed()
                sessions.cancel_scope.cancel()
        finally:
            with trio.CancelScope(shield=True):
                for listener in listeners:
                    await trio.aclose_forcefully(listener)
                await trio.to_thread.run_sync(self.sink.close)

    async def _wait_sessions_changed(self) -> None:
        self._connections_done = trio.Event()
        await self._connections_done.wait()

    def shutdown(self) -> None:
        """Stop accepting; idle connections close now, open copies get the grace period."""
        self._accepting.cancel()

    async def _accept_loop(self, listener: trio.abc.Listener[trio.abc.Stream],
                           sessions: trio.Nursery) -> None:
        name = _listener_name(listener)  # now: a failed listener may not know it any more
        while True:
            try:
                stream = await listener.accept()
            except OSError as exc:
                if exc.errno not in ACCEPT_CAPACITY_ERRNOS:
                    raise AcceptError(f"accepting on {name} failed: {describe_oserror(exc)}",
                                      listener=name, errno=exc.errno) from exc
                log.error("accept failed: %s; retrying in %s seconds",
                          describe_oserror(exc), ACCEPT_BACKOFF)
                await trio.sleep(ACCEPT_BACKOFF)
                continue
            self.stats.connections += 1
            if not (self._admit(stream) and self._make_room()):
                self.stats.refused_connections += 1
                await trio.aclose_forcefully(stream)
                continue
            peer = _peer_name(stream, self.stats.connections)
            if self.config.trace is not None:
                stream = self._traced(stream, peer, listener)
            session = Session(stream, self.sink, self._new_connection(),
                              idle_timeout=self.config.idle_timeout,
                              message_timeout=self.config.message_timeout,
                              receive_size=self.config.receive_size,
                              peer=peer,
                              on_record=self.stats.add,
                              busy_poll=self.config.busy_poll / 1e6,
                              gather_bytes=self.config.write_buffer)
            self._sessions.add(session)
            sessions.start_soon(self._run_session, session)

    def _traced(self, stream: trio.abc.Stream, peer: str,
                listener: trio.abc.Listener[trio.abc.Stream]) -> TraceStream:
        """The stream wrapped in a recorder writing to a new file in ``config.trace``."""
        from . import __version__

        assert self.config.trace is not None
        url = _listener_name(listener, "?")
        started = time.time_ns()
        metadata = {"format": "gsi-trace", "peer": peer, "listener": url,
                    "receiver": f"gsi-receiver {__version__}",
                    "start_time": datetime.fromtimestamp(started / 1e9, UTC).isoformat(),
                    "start_unix_ns": started, "options": trace_options(self.config)}
        recorder = TraceRecorder(self.config.trace,
                                 trace_file_stem(started, self.stats.connections), metadata)
        return TraceStream(stream, recorder)
    def _admit(self, stream: trio.abc.Stream) -> bool:
        """--allow-uid: a Unix-socket peer must run as one of the allowed uids."""
        allowed = self.config.allow_uids
        sock = getattr(stream, "socket", None)
        if not allowed or sock is None or sock.family != getattr(socket, "AF_UNIX", None):
            return True
        try:
            creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                    struct.calcsize("3i"))
            pid, uid, _gid = struct.unpack("3i", creds)
        except (OSError, AttributeError) as exc:
            log.warning("refusing a connection: its peer's uid is unknown: %s", exc)
            return False
        if uid in allowed:
            return True
        log.warning("refusing a connection from uid %d (pid %d): not an --allow-uid", uid, pid)
        return False

    def _make_room(self) -> bool:
        """Below max_connections, or after evicting a connection waiting for a request with
        no open copy: True. False if every connection has a copy open (or is busy).

        The victim is the one idle the longest among those that never sent a byte, else
        among those never answered (no whole request yet), else among all: a host that
        talks keeps its slot while bare connections come and go."""
        live = [s for s in self._sessions if not s.evicted]
        if len(live) < self.config.max_connections:
            return True
        idle = [s for s in live if s.evictable]
        if not idle:
            log.warning("refusing a connection: %d connections open, each with an open copy",
                        len(live))
            return False
        victim = min(idle, key=lambda s: (s.heard, s.answered, s.last_active))
        self.stats.evicted_connections += 1
        log.warning("%s: evicted for a new connection (%d connections open, it was idle the"
                    " longest: %.1f s)", victim.peer, len(live),
                    trio.current_time() - victim.last_active)
        victim.evict()
        return True

    async def _run_session(self, session: Session) -> None:
        try:
            await session.run()
        except Exception:
            log.exception("%s: connection failed", session.peer)
        finally:
            self._sessions.discard(session)
            self._connections_done.set()


TRACE_OPTIONS = ("max_fragment", "max_file_size", "trim_write_echo", "linux_status_codes",
                 "linux_create_path", "check_free_space", "max_ranges",
                 "framework_versions", "message_versions")
"""ReceiverConfig fields that change answers: a trace records them so that a replay can
run a receiver configured the same way."""


def trace_options(config: ReceiverConfig) -> dict[str, object]:
    """The answer-changing options of ``config``, as JSON values."""
    return {name: [list(v) for v in value] if name.endswith("_versions") else value
            for name in TRACE_OPTIONS for value in [getattr(config, name)]}


def config_options(options: dict[str, Any]) -> dict[str, Any]:
    """:func:`trace_options` back to ReceiverConfig keyword arguments (unknown keys are
    left out: a newer receiver may record more)."""
    out: dict[str, Any] = {}
    for name in TRACE_OPTIONS:
        if name in options:
            value = options[name]
            out[name] = (tuple(tuple(v) for v in value) if name.endswith("_versions")
                         else value)
    return out


def _listener_name(listener: trio.abc.Listener[Any], unknown: str = "") -> str:
    """The URL ``listener`` is bound to; else ``unknown``, or the listener's type name."""
    from .transports import listener_url

    try:
        return listener_url(listener)
    except (TypeError, GsiError, OSError):
        return unknown or type(listener).__name__


def _peer_name(stream: trio.abc.Stream, number: int) -> str:
    """``#7 127.0.0.1:50312`` where the peer has an address, else ``#7``."""
    sock = getattr(stream, "socket", None)
    try:
        peer = sock.getpeername() if sock is not None else None
    except OSError:
        peer = None
    if isinstance(peer, tuple):
        return f"#{number} {peer[0]}:{peer[1]}"
    return f"#{number}"
