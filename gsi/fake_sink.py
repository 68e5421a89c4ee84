"""An in-memory :class:`~gsi.sink_api.Sink` for tests: no disk, faults on demand.

:class:`MemorySink` keeps committed files and directories in dictionaries and answers
exactly as :class:`gsi.sink.FileSink` does for everything that does not depend on a real
filesystem (symlinks, permissions and free space do not exist here): ``..`` ->
ACCESS_DENIED, a missing directory without CREATE_PATH -> PATH_NOT_FOUND, an existing
target without OVER_WRITE -> ALREADY_EXISTS (at begin, and again at commit if it appeared
meanwhile), a directory target -> ALREADY_EXISTS / ACCESS_DENIED with OVER_WRITE, a write
outside ``[0, file_size)`` -> INVALIDARG, a commit of a copy whose data does not end at
``file_size`` -> E_FAIL, and after any failure the copy is aborted. A commit "fsyncs" the
file and the directory (counted) unless made with ``fsync=False``.

Faults: ``fail={"begin" | "write" | "commit": SinkError}`` makes that operation raise the
error (the copy aborted first, as a real failure does); ``gates={operation:
threading.Event}`` makes it wait for the event first (call from a worker thread, as a
session does); ``on_call(operation)`` is called at the start of every operation (a test can
move a ``trio.testing.MockClock`` there, to make an operation take virtual time).

Usage::

    sink = MemorySink()
    session = Session(stream, sink, GuestConnection(), idle_timeout=30)
    ...
    assert sink.files["/data/report.pdf"] == expected
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence

from .constants import CopyFlags, Status
from .errors import SinkError
from .paths import check_file_name, guest_path, split_path_name
from .sink_api import Buffer

__all__ = ["OPERATIONS", "MemoryCopy", "MemorySink"]

OPERATIONS = ("begin", "write", "commit")
"""The operations faults can be attached to (``writev`` counts as ``write``)."""


class MemoryCopy:
    """One file being received into memory; made by :meth:`MemorySink.begin`."""

    def __init__(self, sink: MemorySink, *, target: str, directory: str, overwrite: bool,
                 file_size: int) -> None:
        self.sink = sink
        self.target = target
        self.file_size = file_size
        self.bytes_written = 0
        self.data = bytearray()
        """The temp file's content so far (its length is the highest end written)."""
        self.state = "open"
        """"open", "committed" or "aborted"."""
        self._directory = directory
        self._overwrite = overwrite

    def write(self, offset: int, data: Buffer) -> None:
        self.writev(offset, (data,))

    def writev(self, offset: int, buffers: Sequence[Buffer]) -> None:
        self.sink._operation("write", self)
        self._require_open("write to")
        chunk = b"".join(bytes(memoryview(b).cast("B")) for b in buffers)
        end = offset + len(chunk)
        if offset < 0 or end > self.file_size:
            self.abort()
            raise SinkError(Status.INVALIDARG,
                            f"write of {len(chunk)} bytes at offset {offset} is outside the "
                            f"{self.file_size} bytes of {self.target}")
        if end > len(self.data):
            self.data.extend(bytes(end - len(self.data)))
        self.data[offset:end] = chunk
        self.bytes_written += len(chunk)

    def commit(self) -> None:
        sink = self.sink
        sink._operation("commit", self)
        self._require_open("commit")
        with sink._lock:
            if len(self.data) != self.file_size:
                self.abort()
                raise SinkError(Status.E_FAIL, f"{self.target} got {len(self.data)} bytes, "
                                f"not the announced {self.file_size}; nothing committed")
            if self.target in sink.directories:
                self.abort()
                raise SinkError(Status.ACCESS_DENIED,
                                f"target {self.target} became a directory during the copy")
            if self.target in sink.files and not self._overwrite:
                self.abort()
                raise SinkError(Status.ALREADY_EXISTS,
                                f"target {self.target} appeared during the copy (OVER_WRITE "
                                "not set); it was left untouched")
            if sink.fsync:
                sink.fsyncs.append(("file", self.target))
            sink.files[self.target] = bytes(self.data)
            if sink.fsync:
                sink.fsyncs.append(("directory", self._directory))
            self.state = "committed"
            sink.open_copies.discard(self)

    def abort(self) -> None:
        if self.state == "open":
            self.state = "aborted"
            self.sink.open_copies.discard(self)
        self.data = bytearray()

    def _require_open(self, what: str) -> None:
        if self.state != "open":
            raise SinkError(Status.E_FAIL, f"cannot {what} {self.target}: the copy is not open")

    def __repr__(self) -> str:
        return (f"<MemoryCopy {self.target!r} {self.state} "
                f"{self.bytes_written}/{self.file_size}>")


class MemorySink:
    """Files and directories in memory, behind the :class:`~gsi.sink_api.Sink` protocol.

    Args:
        fsync: record a file and a directory fsync per commit (see :attr:`fsyncs`).
        fail: operation -> the SinkError it raises (every time, until removed).
        gates: operation -> an event the operation waits for first.
        on_call: called with the operation's name at the start of every operation.

    Attributes:
        files: guest path (``/a/b.txt``) -> committed content; tests may add entries.
        directories: existing directories (``/`` always); tests may add entries.
        fsyncs: ``("file", target)`` / ``("directory", path)`` per fsync, in order.
        open_copies: copies begun and neither committed nor aborted.
        calls: every operation, in order, as ``(operation, target)``.
    """

    def __init__(self, *, fsync: bool = True, fail: Mapping[str, SinkError] | None = None,
                 gates: Mapping[str, threading.Event] | None = None,
                 on_call: Callable[[str], None] | None = None) -> None:
        for mapping in (fail or {}, gates or {}):
            unknown = set(mapping) - set(OPERATIONS)
            if unknown:
                raise ValueError(f"unknown sink operations {sorted(unknown)}")
        self.fsync = fsync
        self.fail = dict(fail or {})
        self.gates = dict(gates or {})
        self.on_call = on_call
        self.files: dict[str, bytes] = {}
        self.directories: set[str] = {"/"}
        self.fsyncs: list[tuple[str, str]] = []
        self.open_copies: set[MemoryCopy] = set()
        self.calls: list[tuple[str, str]] = []
        self._lock = threading.Lock()

    def _operation(self, name: str, copy: MemoryCopy | None, target: str = "") -> None:
        """The fault hooks every operation goes through."""
        self.calls.append((name, copy.target if copy is not None else target))
        if self.on_call is not None:
            self.on_call(name)
        gate = self.gates.get(name)
        if gate is not None:
            gate.wait()
        error = self.fail.get(name)
        if error is not None:
            if copy is not None:
                copy.abort()
            raise SinkError(error.status, error.reason)

    def begin(self, path_name: str, file_name: str, flags: CopyFlags,
              file_size: int) -> MemoryCopy:
        parts = split_path_name(path_name)
        check_file_name(file_name)
        target = guest_path(parts, file_name)
        self._operation("begin", None, target)
        if file_size < 0:
            raise SinkError(Status.INVALIDARG, f"negative file size {file_size} for {target}")
        overwrite = bool(flags & CopyFlags.OVER_WRITE)
        with self._lock:
            for i in range(1, len(parts) + 1):
                directory = guest_path(parts[:i])
                if directory in self.directories:
                    continue
                if directory in self.files:
                    raise SinkError(Status.PATH_NOT_FOUND,
                                    f"{directory} is not a directory (on the way to {target})")
                if not flags & CopyFlags.CREATE_PATH:
                    raise SinkError(Status.PATH_NOT_FOUND,
                                    f"directory {directory} does not exist (CREATE_PATH not "
                                    "set)")
                self.directories.add(directory)
            if target in self.directories:
                if overwrite:
                    raise SinkError(Status.ACCESS_DENIED, f"target {target} is a directory "
                                    "and cannot be overwritten")
                raise SinkError(Status.ALREADY_EXISTS, f"target {target} exists (a directory)")
            if target in self.files and not overwrite:
                raise SinkError(Status.ALREADY_EXISTS,
                                f"target {target} exists (OVER_WRITE not set)")
            copy = MemoryCopy(self, target=target, directory=guest_path(parts),
                              overwrite=overwrite, file_size=file_size)
            self.open_copies.add(copy)
        return copy

    def __repr__(self) -> str:
        return f"<MemorySink {len(self.files)} files, {len(self.open_copies)} open copies>"
