"""Session traces: every byte of one connection, both directions, with timestamps.

``gsi-receiver --trace DIR`` wraps each accepted stream in a :class:`TraceStream` before
its session sees it, so the protocol code is untouched. The format (docs/traces.md)::

    header   8s magic b"GSITRACE" | u16 version (1) | u16 reserved (0)
             | u32 metadata length N | N bytes of UTF-8 JSON (an object)
    records  u8 direction (0 host->guest, 1 guest->host) | u64 t_ns | u32 length
             | length bytes

All integers are little-endian. ``t_ns`` counts nanoseconds since the connection was
accepted, on a monotonic clock. A record of length 0 marks the end of that direction: the
host closed (or shut down) its side, or the receiver closed the connection. The metadata
names the peer, the listener URL, the receiver's version, the start time and the
receiver options that change answers (``options``: ReceiverConfig field names).

Recording never blocks the event loop: records go to an in-memory buffer that is written
to the file by a worker thread whenever it holds ``flush_bytes`` and when the connection
ends; the file is created (exclusively) and closed in worker threads too. A trace that
cannot be written is logged once and dropped; the session goes on.
"""

from __future__ import annotations

import enum
import json
import logging
import os
import struct
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO, Final

import trio

from .errors import GsiError

log = logging.getLogger("gsi.receiver")

MAGIC: Final = b"GSITRACE"
VERSION: Final = 1
HEADER: Final = struct.Struct("<8sHHI")
"""magic, version, reserved, metadata length."""
RECORD: Final = struct.Struct("<BQI")
"""direction, t_ns, length."""
SUFFIX: Final = ".trace"
FLUSH_BYTES: Final = 1 << 20
MAX_METADATA: Final = 1 << 20


class Direction(enum.IntEnum):
    """Which way a record's bytes went."""

    HOST_TO_GUEST = 0
    GUEST_TO_HOST = 1

    @property
    def arrow(self) -> str:
        return "host->guest" if self is Direction.HOST_TO_GUEST else "guest->host"


class TraceFormatError(GsiError):
    """The file is not a trace this code can read."""


@dataclass(frozen=True, slots=True)
class TraceRecord:
    direction: Direction
    t_ns: int
    data: bytes

    @property
    def is_eof(self) -> bool:
        return not self.data


@dataclass(frozen=True, slots=True)
class Trace:
    """A parsed trace.

    Attributes:
        metadata: the header's JSON object.
        records: in recording order (the receiver's order of events).
        truncated: bytes after the last whole record (the receiver died mid-write).
    """

    version: int
    metadata: dict[str, Any]
    records: list[TraceRecord]
    truncated: int = 0

    def stream(self, direction: Direction) -> bytes:
        """Every byte that went one way, joined."""
        return b"".join(r.data for r in self.records if r.direction == direction)


def encode_header(metadata: Mapping[str, Any]) -> bytes:
    meta = json.dumps(dict(metadata), ensure_ascii=False, sort_keys=True).encode()
    return HEADER.pack(MAGIC, VERSION, 0, len(meta)) + meta


def encode_record(direction: Direction, t_ns: int, data: bytes | bytearray | memoryview,
                  ) -> bytes:
    return RECORD.pack(direction, t_ns, len(data)) + bytes(data)


def parse_trace(data: bytes) -> Trace:
    """Parse a whole trace file's bytes.

    Raises:
        TraceFormatError: no trace magic, an unknown version, bad metadata or an unknown
            direction.
    """
    if len(data) < HEADER.size or data[:len(MAGIC)] != MAGIC:
        raise TraceFormatError("not a gsi trace (no GSITRACE magic)")
    _, version, _, meta_len = HEADER.unpack_from(data)
    if version != VERSION:
        raise TraceFormatError(f"trace format version {version}; this code reads {VERSION}")
    end = HEADER.size + meta_len
    if meta_len > MAX_METADATA or end > len(data):
        raise TraceFormatError(f"metadata length {meta_len} overruns the file")
    try:
        metadata = json.loads(data[HEADER.size:end].decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise TraceFormatError(f"metadata is not UTF-8 JSON: {exc}") from None
    if not isinstance(metadata, dict):
        raise TraceFormatError("metadata is not a JSON object")
    records = []
    pos = end
    while pos + RECORD.size <= len(data):
        direction, t_ns, length = RECORD.unpack_from(data, pos)
        if direction not in (0, 1):
            raise TraceFormatError(f"record at byte {pos}: unknown direction {direction}")
        if pos + RECORD.size + length > len(data):
            break
        body = data[pos + RECORD.size:pos + RECORD.size + length]
        records.append(TraceRecord(Direction(direction), t_ns, body))
        pos += RECORD.size + length
    return Trace(version, metadata, records, truncated=len(data) - pos)


def read_trace(path: str | Path) -> Trace:
    """Read and parse a trace file (blocking: call it from a thread in async code)."""
    return parse_trace(Path(path).read_bytes())


def trace_file_stem(started_unix_ns: int, number: int) -> str:
    """``20261130T210653.123456Z-000007``: start time (UTC) and connection number."""
    stamp = datetime.fromtimestamp(started_unix_ns / 1e9, UTC)
    return f"{stamp:%Y%m%dT%H%M%S.%f}Z-{number:06d}"


def _create_file(directory: Path, stem: str) -> tuple[BinaryIO, Path]:
    """A new file (never an existing one, never through a symlink) for the trace,
    ``stem.trace``, else ``stem-N.trace``; mode 0600: a trace holds the copied data."""
    for n in range(1000):
        path = directory / f"{stem}{'' if n == 0 else f'-{n}'}{SUFFIX}"
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL
                         | getattr(os, "O_CLOEXEC", 0), 0o600)
        except FileExistsError:
            continue
        return os.fdopen(fd, "wb", buffering=0), path
    raise FileExistsError(f"no free trace file name for {stem} in {directory}")


class TraceRecorder:
    """Buffers one connection's records and writes them to a new file in ``directory``.

    Args:
        directory: where the trace file is created (on the first flush).
        stem: the file name without suffix.
        metadata: the header's JSON object.
        flush_bytes: buffered bytes that trigger a write.
    """

    def __init__(self, directory: Path, stem: str, metadata: Mapping[str, Any], *,
                 flush_bytes: int = FLUSH_BYTES) -> None:
        self.directory = directory
        self.stem = stem
        self.path: Path | None = None
        self._t0 = time.monotonic_ns()
        self._buf = bytearray(encode_header(metadata))
        self._flush_bytes = flush_bytes
        self._file: BinaryIO | None = None
        self._failed = False
        self._closed = False

    def now(self) -> int:
        return time.monotonic_ns() - self._t0

    async def add(self, direction: Direction, t_ns: int,
                  data: bytes | bytearray | memoryview) -> None:
        """Record bytes (copied now); write the buffer out if it is full."""
        if self._failed or self._closed:
            return
        self._buf += RECORD.pack(direction, t_ns, len(data))
        self._buf += data
        if len(self._buf) >= self._flush_bytes:
            await self._flush()

    async def _flush(self) -> None:
        chunk, self._buf = self._buf, bytearray()
        if self._failed or not chunk:
            return
        # Shielded: the bytes of a receive that already happened must not be lost to a
        # cancellation of the session (a bounded write to a local file).
        with trio.CancelScope(shield=True):
            try:
                await trio.to_thread.run_sync(self._write, chunk)
            except OSError as exc:
                self._failed = True
                log.error("trace %s: cannot write, recording stopped: %s", self.stem, exc)

    def _write(self, chunk: bytearray) -> None:
        """Worker thread: create the file on first use, append."""
        if self._file is None:
            self._file, self.path = _create_file(self.directory, self.stem)
        view = memoryview(chunk)
        while view:  # unbuffered: what a flush wrote is in the file
            view = view[self._file.write(view):]

    async def aclose(self) -> None:
        """Record the receiver's end of the connection, write everything, close."""
        if self._closed:
            return
        await self.add(Direction.GUEST_TO_HOST, self.now(), b"")
        self._closed = True
        await self._flush()
        file, self._file = self._file, None
        if file is not None:
            with trio.CancelScope(shield=True):
                try:
                    await trio.to_thread.run_sync(file.close)
                except OSError as exc:
                    log.error("trace %s: cannot close: %s", self.stem, exc)


class TraceStream(trio.abc.HalfCloseableStream):
    """A stream that records what passes through it; nothing else changes.

    Deliberately a plain :class:`trio.abc.HalfCloseableStream` with no ``socket``
    attribute: code that reads sockets directly falls back to the generic stream path.
    """

    def __init__(self, inner: trio.abc.Stream, recorder: TraceRecorder) -> None:
        self.inner = inner
        self.recorder = recorder

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        t_ns = self.recorder.now()
        await self.inner.send_all(data)
        await self.recorder.add(Direction.GUEST_TO_HOST, t_ns, data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        data = await self.inner.receive_some(max_bytes)
        await self.recorder.add(Direction.HOST_TO_GUEST, self.recorder.now(), data)
        return data

    async def send_eof(self) -> None:
        if not isinstance(self.inner, trio.abc.HalfCloseableStream):
            raise trio.ClosedResourceError("the traced stream cannot half-close")
        await self.inner.send_eof()

    async def aclose(self) -> None:
        try:
            await self.inner.aclose()
        finally:
            with trio.CancelScope(shield=True):
                await self.recorder.aclose()
