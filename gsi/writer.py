"""The session's write path for one open copy: where received WRITE data goes to the sink.

A batch of WRITEs (:class:`~gsi.events.WriteBatch`) reaches the file in one of two ways:

* **gathered**: a small batch (one contiguous run below :data:`GATHER_BELOW` bytes, the
  stop-and-wait case: one WRITE per received chunk) is copied into a gather buffer on the
  event-loop thread (a ``memcpy``, no system call) and answered at once; the buffer goes to
  the file with one ``pwritev`` when the next data does not continue it or would fill it,
  or at COMPLETE (before the commit). Its WRITEs are answered before their data reaches
  the file: a disk error then fails the next WRITE that reaches the sink, or the COMPLETE,
  and nothing is committed (PROTOCOL.md section 8).
* **straight**: any other batch is written in the connection's writer thread
  (:class:`WriterThread`), the gathered data first, then one ``writev`` per contiguous
  run from the receive buffer's views (no copy); the session waits for it before
  answering and before receiving into that buffer again (the views must stay valid).

One writer thread per connection, one job at a time, rather than
``trio.to_thread.run_sync`` per chunk: measured with ``benchmarks/handoff_cost.py``
(see :class:`WriterThread` and benchmarks/README.md for the figures).

The gather buffer is allocated at the first gathered WRITE (``min(limit, file_size)``
bytes), never at START. Every method that may block runs in a worker thread (see
:class:`gsi.session.Session`).
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable, Sequence
from typing import Any, Final, TypeVar

import trio

from .errors import SinkError
from .events import WriteBatch
from .sink_api import Buffer, SinkCopy

GATHER_BELOW: Final = 64 * 1024
"""Batches with fewer data bytes than this (in one run) are gathered, larger ones written
straight from the receive buffer."""

_T = TypeVar("_T")

GATHERED: Final = -1
"""The run index :meth:`CopyWriter.write_runs` reports when the gathered data failed."""


class CopyWriter:
    """Gathers small WRITE batches for one copy and writes runs to it.

    Args:
        copy: the open copy.
        limit: the gather buffer's size (capped at the copy's ``file_size``).
    """

    __slots__ = ("_buf", "_fill", "_limit", "_start", "copy")

    def __init__(self, copy: SinkCopy, limit: int) -> None:
        self.copy = copy
        self._limit = max(0, min(limit, copy.file_size))
        self._buf = bytearray()
        self._fill = 0
        self._start = 0

    @property
    def gathered(self) -> int:
        """Data bytes answered but not yet handed to the sink."""
        return self._fill

    def gather(self, event: WriteBatch) -> bool:
        """Copy a small batch into the gather buffer (event-loop safe: no system call).

        Returns False, gathering nothing, when the batch is large, has several runs, does
        not continue the gathered data or does not fit: write it with :meth:`write_runs`.
        """
        runs = event.runs
        if not runs:
            return True
        if len(runs) > 1:
            return False
        offset, views = runs[0]
        return self.gather_run(offset, views, event.nbytes)

    def gather_run(self, offset: int, views: Sequence[Buffer], nbytes: int) -> bool:
        """Copy one contiguous run of ``nbytes`` at ``offset`` into the gather buffer
        (event-loop safe); False, gathering nothing, as :meth:`gather`."""
        if not nbytes:
            return True
        fill = self._fill
        if (nbytes >= GATHER_BELOW or (fill and offset != self._start + fill)
                or fill + nbytes >= self._limit):
            return False
        if not self._buf:
            self._buf = bytearray(self._limit)
        if not fill:
            self._start = offset
        buf = self._buf
        for view in views:
            end = fill + len(view)
            buf[fill:end] = view
            fill = end
        self._fill = fill
        return True

    def write_runs(self, runs: list[tuple[int, list[memoryview]]],
                   ) -> tuple[int, SinkError | None]:
        """Blocking: the gathered data, then each run with one ``writev``.

        Returns:
            ``(index, error)`` of the run that failed (:data:`GATHERED` for the gathered
            data), or ``(0, None)``. After a failure the copy is aborted.
        """
        try:
            self.flush()
        except SinkError as exc:
            return GATHERED, exc
        for index, (offset, views) in enumerate(runs):
            try:
                self.copy.writev(offset, views)
            except SinkError as exc:
                return index, exc
        return 0, None

    def flush(self) -> None:
        """Blocking: hand the gathered data to the sink.

        Raises:
            SinkError: from the sink (the copy is aborted).
        """
        if self._fill:
            fill, self._fill = self._fill, 0
            self.copy.writev(self._start, [memoryview(self._buf)[:fill]])

    def commit(self) -> None:
        """Blocking: flush, then commit the copy.

        Raises:
            SinkError: from the sink (the copy is aborted, nothing committed).
        """
        self.flush()
        self.copy.commit()

    def abort(self) -> None:
        """Blocking: drop the gathered data and abort the copy. Never raises."""
        self._fill = 0
        self.copy.abort()


class WriterThread:
    """A connection's writer thread: runs one blocking job at a time off the event loop.

    Started at the first job (a connection that never writes has none), stopped with
    :meth:`stop` (the session does so when its copy ends). The hand-off is as cheap as
    the two threads allow: the job goes over in an attribute and a released lock (one
    futex wake), and its end comes back through an eventfd (a pipe where there is none)
    that the waiting task reads, woken by trio's I/O wait: no queue, no condition
    variable, no ``run_sync_soon``. Waiting for a job is shielded from cancellation, as
    ``trio.to_thread.run_sync`` is: the job keeps using the receive buffer and the copy's
    file descriptor until it returns, so nothing may reuse or close them before.
    """

    __slots__ = ("_channel",)

    def __init__(self) -> None:
        self._channel: _Channel | None = None

    async def run(self, fn: Callable[..., _T], *args: Any) -> _T:
        """``fn(*args)`` in the writer thread; its result, or its exception re-raised."""
        channel = self._channel
        if channel is None:
            channel = self._channel = _Channel()
        channel.job = (fn, args)
        channel.go.release()
        with trio.CancelScope(shield=True):
            await channel.wait_done()
        result, error = channel.result
        if error is not None:
            raise error
        return result  # type: ignore[no-any-return]

    def stop(self) -> None:
        """Let the thread end (it closes its wake-up descriptors). Idempotent."""
        channel, self._channel = self._channel, None
        if channel is not None:
            channel.job = None
            channel.go.release()


class _Channel:
    """One writer thread and its hand-off: ``go`` released with a ``job`` set runs it;
    the thread stores ``result`` and writes to the wake-up descriptor."""

    __slots__ = ("_read_fd", "_write_fd", "go", "job", "result")

    def __init__(self) -> None:
        if hasattr(os, "eventfd"):
            self._read_fd = self._write_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        else:  # no eventfd: a non-blocking pipe
            self._read_fd, self._write_fd = os.pipe()
            os.set_blocking(self._read_fd, False)
        self.go = threading.Lock()
        self.go.acquire()
        self.job: tuple[Callable[..., Any], tuple[Any, ...]] | None = None
        self.result: tuple[Any, BaseException | None] = (None, None)
        threading.Thread(target=self._serve, name="gsi-writer", daemon=True).start()

    async def wait_done(self) -> None:
        """Until the thread has finished the job handed over (waited for first: a job
        that ends before the loop asks is rare, and a read now would only contend for
        the GIL with the thread starting the job)."""
        while True:
            await trio.lowlevel.wait_readable(self._read_fd)
            try:
                os.read(self._read_fd, 8)
                return
            except BlockingIOError:  # woken, but not by this job's end
                continue

    def _serve(self) -> None:
        try:
            while True:
                self.go.acquire()
                job = self.job
                if job is None:
                    return
                fn, args = job
                try:
                    self.result = (fn(*args), None)
                except BaseException as exc:  # handed back to the waiting task
                    self.result = (None, exc)
                os.write(self._write_fd, _ONE)
        finally:
            os.close(self._read_fd)
            if self._write_fd != self._read_fd:
                os.close(self._write_fd)


_ONE: Final = (1).to_bytes(8, sys.byteorder)
"""What an eventfd write adds (a pipe just carries the 8 bytes)."""
