"""What a session needs of the filesystem: the :class:`Sink` and :class:`SinkCopy` protocols.

:class:`gsi.sink.FileSink` is the real implementation; tests use fakes that keep files in
memory. Every method may block on a disk (a real sink calls ``open``, ``pwritev``,
``fsync``, ``link``, ``rename``, ``unlink``): the session runs them in worker threads,
never on the event-loop thread.

A copy's life: :meth:`Sink.begin` resolves and checks the destination and returns a
:class:`SinkCopy`; :meth:`SinkCopy.writev` puts runs of data at their offsets (any order,
overlaps allowed: the result is as if each run were written in order);
:meth:`SinkCopy.commit` makes the data the target in one step; :meth:`SinkCopy.abort`
drops it, leaving the target untouched. Failures raise :class:`gsi.errors.SinkError`
carrying the status the host is answered with; after a failure the copy is already
aborted.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, TypeAlias

from .constants import CopyFlags

Buffer: TypeAlias = bytes | bytearray | memoryview
"""Bytes the sink may read from (``collections.abc.Buffer`` from Python 3.12 on)."""


class SinkCopy(Protocol):
    """One file being received; made by :meth:`Sink.begin`."""

    @property
    def target(self) -> str:
        """The guest-visible path, for logs (``/a/b/file.txt``)."""
        ...

    @property
    def file_size(self) -> int:
        """The size announced at START."""
        ...

    @property
    def bytes_written(self) -> int:
        """Data bytes accepted so far (overlaps counted again)."""
        ...

    def write(self, offset: int, data: Buffer) -> None:
        """Put ``data`` at ``offset``; the caller may reuse ``data`` once this returns.

        Raises:
            SinkError: the copy is aborted first.
        """
        ...

    def writev(self, offset: int, buffers: Sequence[Buffer]) -> None:
        """Put the concatenation of ``buffers`` at ``offset`` (one contiguous run). Byte
        buffers: each one's ``len()`` is its size in bytes (memoryviews of format "B").

        Raises:
            SinkError: the copy is aborted first.
        """
        ...

    def commit(self) -> None:
        """Make the received data the target (fsync, then link or rename, as configured).

        Raises:
            SinkError: nothing was committed (unless the reason says the target is in place
                and only its directory fsync failed); the copy is aborted.
        """
        ...

    def abort(self) -> None:
        """Drop the data; the target is untouched. Idempotent, never raises."""
        ...


class Sink(Protocol):
    """Where received files go."""

    def begin(self, path_name: str, file_name: str, flags: CopyFlags,
              file_size: int) -> SinkCopy:
        """Start receiving ``path_name/file_name`` of ``file_size`` bytes.

        Raises:
            SinkError: with the status PROTOCOL.md section 8 gives; nothing is left behind.
        """
        ...
